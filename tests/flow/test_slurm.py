"""The jobqueue executor against a real Slurm: `upad run --executor jobqueue` submits Dask workers as batch jobs and
gives the same products (provenance ids, file contents) as the local process pool.

Needs a running Slurm whose node can run a job now: `.ci/start-slurm` starts a single-node one (root, Debian's
slurm-wlm and munge; see docs/scaling.md). Skips otherwise — and fails if `.ci/run` said it started one
(``UPAD_TEST_SLURM=1``) but it does not work.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest
from conftest import HERE, add_frames, subprocess_env
from sqlalchemy import select
from test_scheduler import TOY, check_archive, make

from upad.db.models import Attempt, Product, Run

NIGHTS = ["2025-03-01", "2025-03-02"]
SKIP = "Slurm not running: start it with .ci/start-slurm (see docs/scaling.md)"


def _cmd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


@functools.cache
def slurm_problem() -> str | None:
    """Why Slurm cannot run a test job here (None: it can): the commands, a usable node, and `srun true`."""
    missing = [c for c in ("sinfo", "srun", "sbatch", "scancel", "squeue", "scontrol") if not shutil.which(c)]
    if missing:
        return f"no {', '.join(missing)} on PATH"
    try:
        states = _cmd("sinfo", "-h", "-o", "%t").stdout.split()
        if not any(s.rstrip("*~#!%$@^-") in ("idle", "mix", "alloc", "comp") for s in states):
            return f"sinfo shows no usable node (states: {states or 'none'})"
        ran = _cmd("srun", "-N1", "-n1", "-t", "1", "--immediate=30", "true", timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    if ran.returncode != 0:
        return f"`srun true` failed: {ran.stderr.strip()[-300:]}"
    return None


@pytest.fixture
def slurm():
    problem = slurm_problem()
    if problem:
        if os.environ.get("UPAD_TEST_SLURM") == "1":
            pytest.fail(f".ci/run started Slurm (UPAD_TEST_SLURM=1) but it does not work: {problem}")
        pytest.skip(f"{SKIP} [{problem}]")


def cluster_toml(tmp_path, job_name: str, *, python: str = sys.executable, worker_timeout: float = 120) -> str:
    """A cluster file for the single-node Slurm of .ci/start-slurm: one batch job of (at most) 2 single-threaded
    Dask workers on the loopback interface, running this Python with this checkout's upad and the toy steps."""
    cpus = min(int(n) for n in _cmd("sinfo", "-h", "-o", "%c").stdout.split())
    cores = max(1, min(2, cpus))
    pythonpath = subprocess_env()["PYTHONPATH"]
    assert str(HERE) in pythonpath.split(os.pathsep)
    return f"""
[cluster]
kind = "slurm"
cores = {cores}
processes = {cores}
memory = "2GB"
walltime = "00:10:00"
interface = "lo"
job_name = "{job_name}"
python = "{python}"
local_directory = "{tmp_path / 'dask'}"
log_directory = "{tmp_path / 'slurm-logs'}"
job_script_prologue = ["export PYTHONPATH='{pythonpath}'", "export UPAD_PLUGINS=toysteps"]
jobs = 1
worker_timeout = {worker_timeout}
"""


def test_run_through_slurm_matches_local_pool(slurm, flow_env, tmp_path):
    settings, db = flow_env
    add_frames(db, settings.root, 4, NIGHTS)
    job_name = f"upad-test-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "slurm.toml"
    cfg.write_text(cluster_toml(tmp_path, job_name))
    # the job script dask-jobqueue submits: this Python, the exports, Dask on the loopback interface
    script = subprocess.run([sys.executable, "-m", "upad.cli.main", "cluster", "script", "--config", str(cfg)],
                            env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert script.returncode == 0, script.stderr
    assert f"#SBATCH -J {job_name}" in script.stdout and "export UPAD_PLUGINS=toysteps" in script.stdout
    assert sys.executable in script.stdout and "--interface lo" in script.stdout

    cmd = [sys.executable, "-m", "upad.cli.main", "run", "--root", str(settings.root), "--db", settings.db_url,
           "--until-idle", "--executor", "jobqueue", "--cluster-config", str(cfg),
           *[a for step in TOY for a in ("--step", step)]]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((tmp_path / "slurm-logs").glob("*")))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\nbatch job logs:\n{logs}"
    check_archive(settings, db)

    # every attempt ran on a Dask worker inside one of our Slurm batch jobs
    with db.session() as s:
        attempts = list(s.scalars(select(Attempt)))
        executors = {r.executor for r in s.scalars(select(Run))}
        rows = s.execute(select(Product.provenance_id, Product.files).where(Product.is_current.is_(True))).all()
    assert len(rows) == 4 + 2 + 4
    assert {a.state for a in attempts} == {"succeeded"} and len(attempts) == len(rows)
    assert executors == {"dask (SLURMCluster)"}
    job_ids = set()
    for a in attempts:
        m = re.fullmatch(r"\S+:\d+ dask \S+ batch job (\d+)", a.worker or "")
        assert m, f"attempt {a.id} did not run in a batch job: worker {a.worker!r}"
        job_ids.add(m.group(1))
    for job_id in job_ids:
        info = _cmd("scontrol", "show", "job", "-o", job_id).stdout
        assert f"JobName={job_name} " in info, info
        # the run ended its batch jobs (the cluster is closed, the jobs cancelled), leaving nothing behind
        assert re.search(r"JobState=(CANCELLED|COMPLETED|COMPLETING) ", info), info
    assert _cmd("squeue", "-h", "-n", job_name, "-t", "PD,R").stdout.strip() == ""

    # the same inputs through the local process pool: the same provenance ids, the same file contents
    from upad.db import Database
    from upad.execution import LocalExecutor
    from upad.settings import Settings

    other = Database(f"sqlite:///{tmp_path / 'local.sqlite'}")
    other.upgrade()
    s2 = Settings(root=tmp_path / "local-root", db_url=other.url)
    s2.create_layout()
    add_frames(other, s2.root, 4, NIGHTS)
    ex = LocalExecutor(workers=2)
    try:
        make(s2, other, ex).run(until_idle=True)
    finally:
        ex.close()
    with other.session() as s:
        local = s.execute(select(Product.provenance_id, Product.files).where(Product.is_current.is_(True))).all()
    other.dispose()
    assert sorted(p for p, _ in rows) == sorted(p for p, _ in local)
    for _, files in local:
        f = files[0]
        assert (settings.root / f["path"]).read_bytes() == (s2.root / f["path"]).read_bytes()


def test_refused_submission_is_a_clear_error(slurm, flow_env, tmp_path):
    """A job the batch system refuses (here an unknown partition) ends `upad run` with sbatch's message at once,
    instead of waiting forever for workers."""
    settings, db = flow_env
    add_frames(db, settings.root, 2, NIGHTS)
    cfg = tmp_path / "slurm.toml"
    cfg.write_text(cluster_toml(tmp_path, f"upad-test-{uuid.uuid4().hex[:8]}") + "queue = 'no-such-partition'\n")
    cmd = [sys.executable, "-m", "upad.cli.main", "run", "--root", str(settings.root), "--db", settings.db_url,
           "--until-idle", "--executor", "jobqueue", "--cluster-config", str(cfg)]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "the batch system refused the jobs" in proc.stdout + proc.stderr
    assert "no-such-partition" in proc.stdout + proc.stderr


def test_workers_that_never_connect_are_a_clear_error(slurm, flow_env, tmp_path):
    """A batch job whose worker cannot start (here: no such Python) ends `upad run` after worker_timeout, naming the
    batch job, instead of waiting forever."""
    settings, db = flow_env
    add_frames(db, settings.root, 2, NIGHTS)
    cfg = tmp_path / "slurm.toml"
    cfg.write_text(cluster_toml(tmp_path, f"upad-test-{uuid.uuid4().hex[:8]}", python="/nonexistent/python",
                                worker_timeout=3))
    cmd = [sys.executable, "-m", "upad.cli.main", "run", "--root", str(settings.root), "--db", settings.db_url,
           "--until-idle", "--executor", "jobqueue", "--cluster-config", str(cfg)]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    m = re.search(r"no Dask worker connected \(batch jobs: (\d+)\)", out)
    assert m, out[-3000:]
    assert "/nonexistent/python" in "".join(p.read_text() for p in (tmp_path / "slurm-logs").glob("*.err"))
