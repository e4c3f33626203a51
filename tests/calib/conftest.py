"""Fixtures of the calibration tests: one simulated mini night (with injected anomalies) processed by every
calibration step, on SQLite and — when UPAD_TEST_DATABASE_URL is set — on PostgreSQL."""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from .helpers import ensure_epochs_table, gradient, light_leak, register_as_is, rewrite_raw, saturate

PG_URL = os.environ.get("UPAD_TEST_DATABASE_URL")
CALIB_STEPS = ("instrument_signature", "master_bias", "master_dark", "master_flat", "bad_pixel_mask", "master_fringe", "master_illumination")

#: The simulated night: enough flats for the 0.3 % flat accuracy, 6 darks for the faintest hot pixels, 3 dithers.
SIM = dict(n_bias=9, n_dark=6, n_dome_flats=12, n_sky_flats=10, n_dithers=3, workers=2)

BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=[
        pytest.mark.postgres,
        pytest.mark.skipif(not PG_URL, reason="UPAD_TEST_DATABASE_URL is not set (PostgreSQL tests skipped)"),
    ]),
]


@dataclass
class Night:
    """A simulated night with its truth and the anomalies injected into its raw frames."""

    out: Path
    result: Any
    manifest: dict
    anomalies: dict[str, str]  # file name -> what was done


@pytest.fixture(scope="session")
def night(tmp_path_factory) -> Night:
    from upad.sim import SimConfig, simulate
    from upad.sim.truth import load_manifest

    out = tmp_path_factory.mktemp("calib-night")
    # The independent world (issue 10): the night carries the instrument-signature sequences (photon-transfer
    # pairs, linearity series) which the instrument_signature step measures and the master flat leaves out.
    res = simulate("mini", seed=11, out=out, nights=1, tiles=2, filters=["rSDSS", "zSDSS"], compress=False,
                   config=SimConfig(**SIM))
    anomalies = {}
    bias = [f for f in res.frames if f["kind"] == "bias"][3]
    rewrite_raw(out / bias["file"], light_leak)
    anomalies[Path(bias["file"]).name] = "light leak"
    flat = [f for f in res.frames if f["kind"] == "flat-dome" and f["filter"] == "rSDSS"][2]
    rewrite_raw(out / flat["file"], saturate)
    anomalies[Path(flat["file"]).name] = "saturated"
    flat = [f for f in res.frames if f["kind"] == "flat-dome" and f["filter"] == "zSDSS"][4]
    rewrite_raw(out / flat["file"], gradient)
    anomalies[Path(flat["file"]).name] = "gradient"
    return Night(out, res, load_manifest(out), anomalies)


def _pg_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session", params=BACKENDS)
def session_db_url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('calib-db') / 'upad.sqlite'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_url(schema)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@dataclass
class Pipeline:
    """The night ingested and processed by every calibration step."""

    night: Night
    settings: Any
    db: Any
    counts: dict
    corrupted: str  # file name of the archived dark that was truncated after ingest


@pytest.fixture(scope="session")
def pipeline(night: Night, session_db_url: str, tmp_path_factory) -> Pipeline:
    from upad.db import Database
    from upad.execution import LocalExecutor
    from upad.flow.scheduler import Scheduler, SchedulerOptions
    from upad.ingest.service import ingest_paths
    from upad.settings import Settings

    root = tmp_path_factory.mktemp("calib-root")
    settings = Settings(root=root, db_url=session_db_url)
    settings.create_layout()
    db = Database(session_db_url)
    db.upgrade()
    ensure_epochs_table(db)
    report = ingest_paths(db, settings, [night.out / "raw"], mode="copy")
    assert report.counts["registered"] == len(night.result.frames), report.counts
    # a dark corrupted in the archive after ingest (disk error): the master dark must exclude it, not crash
    dark = [f for f in night.result.frames if f["kind"] == "dark"][1]
    archived = next(root.glob(f"raw/*/{Path(dark['file']).name}"))
    archived.write_bytes(archived.read_bytes()[:20000])
    register_as_is(db, archived)
    executor = LocalExecutor(2)
    try:
        sched = Scheduler(db, settings, executor, options=SchedulerOptions(
            steps=CALIB_STEPS, poll_seconds=0.05, min_replan_seconds=0.0))
        counts = sched.run(until_idle=True)
    finally:
        executor.close()
    yield Pipeline(night, settings, db, counts, Path(dark["file"]).name)
    db.dispose()


@pytest.fixture
def calib_db(database):
    """The shared ``database`` fixture (SQLite / PostgreSQL) with the calib_epochs table."""
    ensure_epochs_table(database)
    return database
