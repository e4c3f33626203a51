"""The instrument signature in the processing flow: planned from a night with a photon-transfer / linearity
sequence, made as a master with validity, and used by the master flat and the reduction (measured gains,
linearity, crosstalk with the CROSSTALK mask bit)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sqlalchemy import select

from upad.calib.signature_step import split_sequence
from upad.sim import SimConfig, simulate

STEPS = ("instrument_signature", "master_bias", "master_flat", "bad_pixel_mask", "master_illumination", "reduce")


def test_split_sequence_pairs_and_series():
    # two ordinary flats series of 4 at 5 s, pairs at 1 and 2 s, a rising series 3, 4, 6 s
    t = [5, 5, 1, 1, 2, 2, 5, 5, 3, 4, 6]
    pairs, series = split_sequence(t)
    assert sorted(pairs) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert sorted(t[i] for i in series) == [1, 2, 3, 4, 6]  # never the group of four at 5 s


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    from upad.db import Database
    from upad.execution import LocalExecutor
    from upad.flow.scheduler import Scheduler, SchedulerOptions
    from upad.ingest.service import ingest_paths
    from upad.settings import Settings

    out = tmp_path_factory.mktemp("sigflow-sim")
    cfg = SimConfig(draw_signature=True, n_bias=4, n_dark=0, n_dome_flats=3, n_sky_flats=0, n_ptc_pairs=5,
                    n_linearity_flats=8, n_dithers=2, bright_stars_per_tile=24, filters=("rSDSS",))
    simulate("mini", seed=5, out=out, nights=1, tiles=1, config=cfg, compress=False)
    manifest = json.loads((out / "truth" / "manifest.json").read_text())
    root = tmp_path_factory.mktemp("sigflow-root")
    url = f"sqlite:///{root / 'upad.sqlite'}"
    settings = Settings(root=root, db_url=url)
    settings.create_layout()
    (root / "reference").mkdir(exist_ok=True)
    shutil.copy(out / "reference" / "refcat.fits", root / "reference" / "refcat.fits")
    db = Database(url)
    db.upgrade()
    ingest_paths(db, settings, [out / "raw"], mode="copy")
    executor = LocalExecutor(2)
    try:
        Scheduler(db, settings, executor, options=SchedulerOptions(steps=STEPS, poll_seconds=0.05,
                                                                   min_replan_seconds=0.0)).run(until_idle=True)
    finally:
        executor.close()
    yield manifest, db, settings
    db.dispose()


def _products(db, step):
    from upad.db.models import Product

    with db.session() as s:
        return list(s.scalars(select(Product).where(Product.step == step, Product.is_current.is_(True))))


def test_signature_master_is_made_with_validity_and_measured_values(flow):
    manifest, db, settings = flow
    truth = manifest["camera"]["signature"]
    (p,) = _products(db, "instrument_signature")
    assert p.state == "complete" and p.good_after is not None and p.good_until is not None
    assert p.meta["n_pairs"] >= 5 and p.meta["n_linearity"] >= 8
    assert p.meta["qc"]["gain"]["status"] == "measured"
    assert np.all(np.abs(np.array(p.meta["gain"]) / truth["gain_e_per_adu"] - 1) < 0.01)
    assert np.all(np.abs(np.array(p.meta["read_noise_e"]) / truth["read_noise_e"] - 1) < 0.01)
    assert p.meta["linearity"] is not None and p.meta["crosstalk"] is not None


def test_flat_and_reduction_use_the_signature(flow):
    from upad.db.models import ProvenanceInput
    from upad.io.products import read_reduced_frame

    manifest, db, settings = flow
    (sig,) = _products(db, "instrument_signature")
    flats = _products(db, "master_flat")
    reduced = _products(db, "reduce")
    assert flats and reduced
    with db.session() as s:
        for p in flats + reduced:
            roles = {(r.role, r.input_id) for r in s.scalars(select(ProvenanceInput).where(
                ProvenanceInput.provenance_id == p.provenance_id, ProvenanceInput.input_kind == "product"))}
            assert ("signature", sig.id) in roles, (p.step, roles)
    flagged = 0
    from upad import maskbits

    for p in reduced:
        rf = read_reduced_frame(p.files, root=settings.root)
        flagged += int(np.count_nonzero(rf.mask & maskbits.CROSSTALK))
    assert flagged > 0


