"""End to end: simulate → ingest → run, on SQLite and PostgreSQL, and the `upad demo` command itself."""
from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import func, select

from upad.db.models import Frame, Product
from upad.execution import LocalExecutor
from upad.flow.scheduler import Scheduler, SchedulerOptions
from upad.ingest.service import ingest_paths
from upad.settings import Settings
from upad.sim import simulate


@pytest.fixture(scope="module")
def sim_night(tmp_path_factory):
    return simulate(instrument="mini", seed=7, out=tmp_path_factory.mktemp("sim"), nights=1, tiles=1)


def test_simulate_ingest_run(sim_night, database, tmp_path):
    settings = Settings(root=tmp_path / "root", db_url=database.url)
    settings.create_layout()
    report = ingest_paths(database, settings, [sim_night.out / "raw"], mode="copy")
    n = len(sim_night.raw_files)
    assert report.registered == n and report.quarantined == 0
    # a second ingest of the same files registers nothing new
    again = ingest_paths(database, settings, [sim_night.out / "raw"], mode="copy")
    assert again.already_registered == n and again.registered == 0
    with database.session() as s:
        types = dict(s.execute(select(Frame.obs_type, func.count()).group_by(Frame.obs_type)).all())
        truth_types = {}
        for f in sim_night.frames:
            truth_types[f["kind"]] = truth_types.get(f["kind"], 0) + 1
        assert types == truth_types
        # quick-look bias per amplifier agrees with the simulator's truth bias levels
        bias = s.scalars(select(Frame).where(Frame.obs_type == "bias")).first()
        truth = next(f for f in sim_night.frames if f["file"].endswith(bias.filename))
        assert np.allclose(bias.qc_bias, truth["bias"]["mean_data_adu"], atol=1.0)
    ex = LocalExecutor(2)
    try:
        counts = Scheduler(database, settings, ex, options=SchedulerOptions(steps=["raw_preview"])).run()
    finally:
        ex.close()
    assert counts["done"] == n
    with database.session() as s:
        products = list(s.scalars(select(Product).where(Product.step == "raw_preview")))
    assert len(products) == n
    for p in products[:3]:
        assert (settings.root / p.files[0]["path"]).stat().st_size > 1000


def test_upad_demo_command(tmp_path, capsys):
    from upad.cli.main import main

    root = tmp_path / "demo"
    assert main(["demo", "--root", str(root), "--json", "--workers", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ingest"]["registered"] == summary["frames"]["total"] > 24
    assert summary["ingest"]["quarantined"] == 0
    assert summary["flow"]["failed_jobs"] == []
    assert summary["flow"]["products"]["raw_preview"]["current"] == summary["frames"]["total"]
    assert (root / "upad.sqlite").exists()
    # ... through the coadds and their catalogs into the science database
    for step in ("coadd", "tile_mask", "catalog_dual", "tile_calibration", "sciencedb_load"):
        assert summary["flow"]["products"][step]["current"] >= 1, step
    assert summary["science_db"].endswith("science.sqlite") and (root / "science.sqlite").exists()
    # raw frames are archived by night and are readable FITS with the data in HDU 1
    raw = sorted((root / "raw").rglob("*.fits.fz"))
    assert len(raw) == summary["frames"]["total"]
    with fits.open(raw[0]) as hdul:
        assert hdul[1].data.dtype.kind in "ui"
