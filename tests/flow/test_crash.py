"""Real kills: SIGKILL of the scheduler or of a worker at several points, then `upad run` again.

Every product must end complete, none duplicated, and no corrupt or orphan file may remain.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import add_frames, subprocess_env
from sqlalchemy import func, select
from test_scheduler import check_archive, current_values

from upad.db.models import Attempt, Job, Product

NIGHTS = ["2025-03-01", "2025-03-02"]
N_FRAMES = 12
EXPECTED = N_FRAMES + len(NIGHTS) + N_FRAMES


def upad_run(settings, *extra: str, log=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "upad.cli.main", "run", "--root", str(settings.root), "--db", settings.db_url,
           "--until-idle", "--workers", "2", "--lease-seconds", "3", "--step", "toy_a", "--step", "toy_b",
           "--step", "toy_c", *extra]
    log = log or settings.root / "logs" / "run.log"
    with open(log, "a") as fh:  # a file, not a pipe: a killed run must not leave a reader waiting
        env = subprocess_env()
        env["UPAD_TEST_RUN_ROOT"] = str(settings.root)  # lets the test find processes left behind
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True)


def wait_exit(proc, settings, timeout=180) -> str:
    proc.wait(timeout=timeout)
    return (settings.root / "logs" / "run.log").read_text()[-5000:]


def wait_for(db, condition, timeout=60.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with db.session() as s:
            if condition(s):
                return True
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def n_products(s):
    return s.scalar(select(func.count()).select_from(Product))


def n_running(s):
    return s.scalar(select(func.count()).select_from(Job).where(Job.state == "running"))


def descendants(pid: int) -> list[int]:
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def orphans_of_run(settings) -> list[int]:
    """Processes still running that were started for this data root's runs (forkserver or workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
                environ = (entry / "environ").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "multiprocessing" in cmd and f"UPAD_TEST_RUN_ROOT={settings.root}" in environ:
                found.append(int(entry.name))
    return found


def finish_and_check(settings, db):
    proc = upad_run(settings)
    out = wait_exit(proc, settings)
    assert proc.returncode == 0, out
    check_archive(settings, db)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Product)) == EXPECTED
        assert s.scalar(select(func.count()).select_from(Job)) == EXPECTED
        assert s.scalar(select(func.count()).select_from(Job).where(Job.state != "done")) == 0
        # no job ever ran twice at the same time, and every job has exactly one successful attempt
        for job in s.scalars(select(Job)):
            assert [a.state for a in job.attempts].count("succeeded") == 1
    b = current_values(db, "toy_b")
    a = current_values(db, "toy_a")
    for night in NIGHTS:
        assert b[night] == sum(v for k, v in a.items() if k.startswith(night))


KILL_POINTS = {
    "first-claim": lambda s: n_running(s) > 0,
    "some-products": lambda s: n_products(s) >= 5,
    "after-masters": lambda s: s.scalar(select(func.count()).select_from(Product)
                                        .where(Product.step == "toy_b")) >= 1,
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_scheduler_then_rerun(flow_env, point):
    settings, db = flow_env
    (settings.root / "upad.toml").write_text("[steps.toy_a]\nsleep = 0.1\n[steps.toy_c]\nsleep = 0.1\n")
    add_frames(db, settings.root, N_FRAMES, NIGHTS)
    proc = upad_run(settings)
    try:
        wait_for(db, KILL_POINTS[point])
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # the forkserver and pool workers die with their scheduler (PR_SET_PDEATHSIG)
    deadline = time.monotonic() + 10
    while orphans_of_run(settings) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not orphans_of_run(settings), "worker processes outlived their scheduler"
    with db.session() as s:
        interrupted = n_products(s)
    assert interrupted < EXPECTED
    finish_and_check(settings, db)


def test_kill_scheduler_twice_mid_registration(flow_env):
    settings, db = flow_env
    (settings.root / "upad.toml").write_text("[steps.toy_a]\nsleep = 0.02\n[steps.toy_c]\nsleep = 0.02\n")
    add_frames(db, settings.root, N_FRAMES, NIGHTS)
    for threshold in (3, 14):
        proc = upad_run(settings)
        try:
            wait_for(db, lambda s, t=threshold: n_products(s) >= t)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        with db.session() as s:
            assert n_products(s) < EXPECTED  # killed before the end
    finish_and_check(settings, db)


def test_kill_worker_is_retried(flow_env):
    settings, db = flow_env
    (settings.root / "upad.toml").write_text("[steps.toy_a]\nsleep = 0.3\n")
    add_frames(db, settings.root, N_FRAMES, NIGHTS)
    proc = upad_run(settings)
    try:
        wait_for(db, lambda s: n_running(s) > 0 and n_products(s) >= 2)
        # pool workers are the grandchildren of the scheduler (scheduler → forkserver → workers)
        kids = set(descendants(proc.pid))
        workers = [p for p in kids if any(p in descendants(k) for k in kids)]
        assert workers, "no worker process found"
        os.kill(workers[0], signal.SIGKILL)
        out = wait_exit(proc, settings)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    with db.session() as s:
        lost = s.scalars(select(Attempt).where(Attempt.state == "lost")).all()
        assert lost and all("died" in a.error for a in lost)
    check_archive(settings, db)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.state != "done")) == 0
        assert s.scalar(select(func.count()).select_from(Product)) == EXPECTED


def test_daemon_picks_up_new_frames_and_stops_gracefully(flow_env):
    settings, db = flow_env
    add_frames(db, settings.root, 2, NIGHTS[:1])
    cmd = [sys.executable, "-m", "upad.cli.main", "run", "--root", str(settings.root), "--db", settings.db_url,
           "--workers", "1", "--step", "toy_a", "--replan-seconds", "0.5", "--name", "daemon"]
    with open(settings.root / "logs" / "daemon.log", "w") as log:
        proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(db, lambda s: n_products(s) == 2)
        # frames ingested while the daemon runs are processed without restarting it
        add_frames(db, settings.root, 3, NIGHTS[:1], start_id=50)
        wait_for(db, lambda s: n_products(s) == 5)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, (settings.root / "logs" / "daemon.log").read_text()[-3000:]
    from upad.db.models import Run

    with db.session() as s:
        run = s.scalars(select(Run).where(Run.name == "daemon")).one()
        assert run.state == "stopped" and run.ended_at is not None
        assert n_running(s) == 0
    check_archive(settings, db)
