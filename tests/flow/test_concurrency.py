"""Two schedulers at once on PostgreSQL never run the same job twice (SELECT … FOR UPDATE SKIP LOCKED)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import add_frames, subprocess_env
from sqlalchemy import func, select
from test_scheduler import check_archive

from upad.db.models import Attempt, Job, Product


@pytest.mark.postgres
def test_two_schedulers_never_run_a_job_twice(flow_env):
    settings, db = flow_env
    if db.backend != "postgresql":
        pytest.skip("SQLite has a single writer; concurrent schedulers are a PostgreSQL feature")
    (settings.root / "upad.toml").write_text("[steps.toy_a]\nsleep = 0.05\n[steps.toy_c]\nsleep = 0.05\n")
    n = 40
    add_frames(db, settings.root, n, ["2025-03-01", "2025-03-02"])
    procs = []
    for k in range(2):
        log = open(settings.root / "logs" / f"sched{k}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "upad.cli.main", "run", "--root", str(settings.root), "--db", settings.db_url,
             "--until-idle", "--workers", "1", "--step", "toy_a", "--step", "toy_b", "--step", "toy_c",
             "--name", f"sched-{k}"], env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT))
    for k, p in enumerate(procs):
        assert p.wait(timeout=300) == 0, (settings.root / "logs" / f"sched{k}.log").read_text()[-3000:]
    expected = n + 2 + n
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == expected
        assert s.scalar(select(func.count()).select_from(Product)) == expected
        per_job = dict(s.execute(select(Attempt.job_id, func.count()).group_by(Attempt.job_id)).all())
        assert set(per_job.values()) == {1}, "a job was attempted twice"
        schedulers = {a.scheduler for a in s.scalars(select(Attempt))}
    assert len(schedulers) == 2, "both schedulers should have done part of the work"
    check_archive(settings, db)
