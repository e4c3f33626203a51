"""Readiness on real databases (rows only, no pixels): complete series, waiting reasons in `upad run --dry-run`,
fallback windows, epochs."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from upad.calib.config import LookupConfig
from upad.calib.epochs import Breakpoint
from upad.calib.lookup import select_masters
from upad.calib.planning import night_start
from upad.calib.store import add_breakpoint, load_breakpoints, retract_breakpoint
from upad.flow.scheduler import Scheduler, SchedulerOptions
from upad.settings import Settings

from .helpers import add_frame, add_master

FUTURE = "2031-05-10"  # a night that is not over yet


@pytest.fixture
def settings(tmp_path, calib_db):
    s = Settings(root=tmp_path / "root", db_url=calib_db.url)
    s.create_layout()
    return s


@pytest.fixture
def toy_reduce():
    from upad.flow.step import register_step, unregister_step

    from .toyreduce import ToyReduce

    register_step(ToyReduce)
    yield ToyReduce
    unregister_step("toy_reduce")


def plan(db, settings, steps):
    return Scheduler(db, settings, None, options=SchedulerOptions(steps=steps)).plan(dry_run=True)


def units(report, step):
    return {u.unit.key: u for u in report.units if u.step == step}


def test_a_bias_series_waits_until_complete(calib_db, settings):
    t0 = night_start(FUTURE) + dt.timedelta(hours=3)
    with calib_db.session() as s:
        for k in range(3):
            add_frame(s, night=FUTURE, obs_type="bias", date_obs=t0 + dt.timedelta(seconds=30 * k), exptime=0.0)
    u = units(plan(calib_db, settings, ["master_bias"]), "master_bias")[f"mini/MODE_5/readout/{FUTURE}"]
    assert u.status == "waiting" and "may still grow" in u.reason and "3 bias frames so far" in u.reason
    with calib_db.session() as s:  # the operators moved on: a dark after the biases closes the series
        add_frame(s, night=FUTURE, obs_type="dark", date_obs=t0 + dt.timedelta(minutes=5), exptime=300.0)
    report = plan(calib_db, settings, ["master_bias", "master_dark"])
    assert units(report, "master_bias")[f"mini/MODE_5/readout/{FUTURE}"].status == "would-run"
    dark = units(report, "master_dark")[f"mini/MODE_5/readout/{FUTURE}"]
    assert dark.status == "waiting" and "may still grow" in dark.reason


def test_too_few_frames_wait_with_a_reason(calib_db, settings):
    night = "2025-04-02"
    t0 = night_start(night) + dt.timedelta(hours=3)
    with calib_db.session() as s:
        for k in range(2):
            add_frame(s, night=night, obs_type="flat-dome", date_obs=t0 + dt.timedelta(seconds=30 * k),
                      filter_name="gSDSS", exptime=5.0)
    u = units(plan(calib_db, settings, ["master_flat"]), "master_flat")[f"mini/MODE_5/readout/gSDSS/dome/{night}"]
    assert u.status == "waiting" and "only 2 valid dome flats" in u.reason and "min_frames = 3" in u.reason


def test_science_waits_with_reason_in_dry_run_and_falls_back_within_window(calib_db, settings, toy_reduce):
    from upad.cli.main import main

    n1, n4, n20 = "2025-05-01", "2025-05-04", "2025-05-20"
    with calib_db.session() as s:
        b1 = add_master(s, kind="bias", night=n1)
        f1 = add_master(s, kind="flat", night=n1, filter_name="rSDSS", flat_type="dome")
        for night in (n1, n4, n20):
            add_frame(s, night=night, obs_type="science", date_obs=night_start(night) + dt.timedelta(hours=10))
    report = plan(calib_db, settings, ["toy_reduce"])
    got = {k.split("/")[0]: u for k, u in units(report, "toy_reduce").items()}
    assert got[n1].status == "would-run"
    assert {r.id for r in got[n1].unit.inputs if r.kind == "product"} == {b1, f1}
    assert got[n4].status == "would-run"  # fallback 3 nights back, within ±10
    assert got[n4].unit.context["masters"]["flat"] == {**got[n4].unit.context["masters"]["flat"], "rule": "fallback",
                                                       "distance_nights": -3}
    assert got[n20].status == "waiting"
    assert "no master bias for mini/MODE_5/readout within ±10 nights of 2025-05-20" in got[n20].reason
    assert "no dome/sky master flat" in got[n20].reason
    # the same reasons through `upad run --dry-run --json`
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["run", "--root", str(settings.root), "--db", calib_db.url, "--dry-run", "--json",
                   "--step", "toy_reduce"])
    assert rc == 0
    out = json.loads(buf.getvalue())
    waiting = [u for u in out["units"] if u["status"] == "waiting"]
    assert len(waiting) == 1 and "±10 nights of 2025-05-20" in waiting[0]["reason"]
    # a narrower window (the reduction step's configuration) makes night 4 wait too
    (settings.root / "upad.toml").write_text("[steps.toy_reduce]\nfallback_nights = 2\n")
    report = plan(calib_db, settings, ["toy_reduce"])
    got = {k.split("/")[0]: u for k, u in units(report, "toy_reduce").items()}
    assert got[n4].status == "waiting" and "±2 nights" in got[n4].reason


def test_masters_are_not_shared_across_an_epoch_breakpoint(calib_db):
    n1, n5, n7 = "2025-06-01", "2025-06-05", "2025-06-07"
    with calib_db.session() as s:
        for night in (n1, n5):
            add_master(s, kind="bias", night=night)
            add_master(s, kind="flat", night=night, filter_name="rSDSS", flat_type="dome")
        frame = add_frame(s, night=n7, obs_type="science", date_obs=night_start(n7) + dt.timedelta(hours=8))
    with calib_db.session() as s:
        sel = select_masters(s, frame, LookupConfig())
        assert sel.chosen["flat"].night == n5 and sel.chosen["flat"].rule == "fallback"
        bp = add_breakpoint(s, Breakpoint(time=night_start("2025-06-06"), instrument="mini", kinds=("flat",),
                                          reason="new baffle"))
    with calib_db.session() as s:
        sel = select_masters(s, frame, LookupConfig())
        assert "flat" in sel.missing and "other epochs" in sel.missing["flat"].reason
        assert "new baffle" in sel.missing["flat"].reason
        assert sel.chosen["bias"].night == n5  # the breakpoint is for flats only
        retract_breakpoint(s, bp, reason="declared by mistake")
    with calib_db.session() as s:
        assert load_breakpoints(s) == []
        assert len(load_breakpoints(s, include_retracted=True)) == 1
        sel = select_masters(s, frame, LookupConfig())
        assert sel.chosen["flat"].night == n5
