"""Contract test: what ``upad simulate`` writes (docs/raw-format.md), ingest registers, with QC close to the truth."""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from upad.db import Frame
from upad.ingest import ingest_paths
from upad.settings import Settings

sim = pytest.importorskip("upad.sim")


@pytest.mark.parametrize("convention,layout,compress", [("oaj", "readout", True), ("t80s", "archived", False)])
def test_simulated_night_is_ingested(database, settings: Settings, tmp_path: Path, convention: str, layout: str,
                                     compress: bool) -> None:
    cfg = dataclasses.replace(sim.SimConfig(), n_bias=2, n_dark=1, n_dome_flats=1, n_sky_flats=1, n_dithers=2,
                              workers=1)
    result = sim.simulate("mini", seed=3, out=tmp_path / "sim", tiles=1, filters=["rSDSS"], layout=layout,
                          convention=convention, compress=compress, config=cfg)
    report = ingest_paths(database, settings, [tmp_path / "sim" / "raw"])
    assert report.counts["registered"] == len(result.frames), [(o.filename, o.reason) for o in report.outcomes]

    truth = {Path(f["file"]).name: f for f in result.frames}
    with database.session() as s:
        rows = list(s.scalars(select(Frame)))
    assert Counter(r.obs_type for r in rows) == Counter(f["kind"] for f in result.frames)
    for r in rows:
        t = truth[r.filename]
        assert r.night == t["night"] and r.layout == layout and r.header_convention == convention.upper()
        assert r.qc_status in ("ok", "warn"), (r.filename, r.qc_reasons)
        if r.obs_type == "science":
            assert r.filter == t["filter"] and r.tile_id is not None
            assert r.qc_fwhm == pytest.approx(t["fwhm_arcsec"], rel=0.2)
            if layout == "readout":
                assert r.qc_sky_median == pytest.approx(float(np.mean(t["sky_adu"])), rel=0.05)
