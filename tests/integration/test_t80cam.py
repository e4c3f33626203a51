"""Full-size T80Cam frames: simulated in the readout layout and ingested, bias levels checked against truth."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sqlalchemy import select

from upad.db import Database
from upad.db.models import Frame
from upad.ingest.service import ingest_paths
from upad.settings import Settings
from upad.sim import SimConfig, simulate


@pytest.mark.slow
def test_t80cam_bias_and_science_frame(tmp_path):
    # one backend is enough here: the subject is the full-size camera, not the database
    database = Database(f"sqlite:///{tmp_path / 'upad.sqlite'}")
    database.upgrade()
    # the default (independent) world without its photon-transfer / linearity sequence (22 full-size dome flats)
    cfg = dataclasses.replace(SimConfig(), n_bias=1, n_dark=0, n_dome_flats=0, n_sky_flats=0, n_dithers=1,
                              n_ptc_pairs=0, n_linearity_flats=0)
    sim = simulate(instrument="t80cam", seed=5, out=tmp_path / "sim", nights=1, tiles=1, filters=["rSDSS"],
                   config=cfg)
    assert sim.counts() == {"bias": 1, "science": 1}
    settings = Settings(root=tmp_path / "root", db_url=database.url)
    settings.create_layout()
    report = ingest_paths(database, settings, [sim.out / "raw"])
    assert report.registered == 2 and report.quarantined == 0
    with database.session() as s:
        frames = {f.obs_type: f for f in s.scalars(select(Frame))}
    assert (frames["bias"].naxis1, frames["bias"].naxis2) == (9648, 9340)
    assert frames["science"].layout == "readout" and frames["science"].instrument == "t80cam"
    truth = {f["kind"]: f for f in sim.frames}
    assert len(frames["bias"].qc_bias) == 16
    assert np.allclose(frames["bias"].qc_bias, truth["bias"]["bias"]["mean_data_adu"], atol=1.0)
    # the quick-look FWHM (a rough figure, seconds per frame) is within 20 % of the simulated seeing
    assert frames["science"].qc_fwhm == pytest.approx(truth["science"]["fwhm_arcsec"], rel=0.2)
