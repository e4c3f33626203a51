"""Executors: Dask LocalCluster over TCP gives the same products as the local pool; dask-jobqueue job scripts."""
from __future__ import annotations

import pytest
from conftest import add_frames
from sqlalchemy import select
from test_scheduler import check_archive, make

from upad.db.models import Attempt, Product
from upad.errors import UpadError

NIGHTS = ["2025-03-01", "2025-03-02"]


def test_dask_local_cluster_over_tcp(flow_env, tmp_path):
    from upad.execution.dask import DaskExecutor

    settings, db = flow_env
    add_frames(db, settings.root, 6, NIGHTS)
    ex = DaskExecutor(workers=2)
    try:
        assert ex.client.scheduler.address.startswith("tcp://")
        counts = make(settings, db, ex).run(until_idle=True)
    finally:
        ex.close()
    assert counts["done"] == 14
    check_archive(settings, db)
    with db.session() as s:
        provs = sorted(p for (p,) in s.execute(select(Product.provenance_id).where(Product.is_current.is_(True))))
        pids = {a.pid for a in s.scalars(select(Attempt))}
    assert len(pids) >= 1
    # the same inputs through the inline executor: the same provenance ids, the same file contents
    from upad.db import Database
    from upad.settings import Settings

    other = Database(f"sqlite:///{tmp_path / 'inline.sqlite'}")
    other.upgrade()
    s2 = Settings(root=tmp_path / "inline-root", db_url=other.url)
    s2.create_layout()
    add_frames(other, s2.root, 6, NIGHTS)
    make(s2, other).run(until_idle=True)
    with other.session() as s:
        rows = s.execute(select(Product.provenance_id, Product.files).where(Product.is_current.is_(True))).all()
    assert sorted(p for p, _ in rows) == provs
    for _, files in rows:
        f = files[0]
        assert (settings.root / f["path"]).read_bytes() == (s2.root / f["path"]).read_bytes()


SLURM = """
[cluster]
kind = "slurm"
queue = "batch"
cores = 4
processes = 2
memory = "16GB"
walltime = "02:00:00"
account = "jpas"
job_extra_directives = ["--exclusive"]
job_script_prologue = ["source /opt/upad/venv/bin/activate"]
jobs = 3
"""

SGE = """
[cluster]
kind = "sge"
queue = "all.q"
cores = 8
processes = 4
memory = "32GB"
walltime = "04:00:00"
resource_spec = "h_vmem=4G"
"""


def test_slurm_job_script(tmp_path):
    from upad.execution.jobqueue import job_script

    cfg = tmp_path / "slurm.toml"
    cfg.write_text(SLURM)
    script = job_script(cfg)
    assert "#SBATCH -p batch" in script
    assert "#SBATCH -A jpas" in script
    assert "#SBATCH -n 1" in script and "--cpus-per-task=4" in script
    assert "#SBATCH -t 02:00:00" in script
    assert "#SBATCH --exclusive" in script
    assert "source /opt/upad/venv/bin/activate" in script
    assert "distributed.cli.dask_worker" in script or "dask-worker" in script or "dask worker" in script
    assert "--nworkers 2" in script and "--nthreads 2" in script


def test_sge_job_script(tmp_path):
    from upad.execution.jobqueue import job_script

    cfg = tmp_path / "sge.toml"
    cfg.write_text(SGE)
    script = job_script(cfg)
    assert "#$ -q all.q" in script
    assert "#$ -l h_rt=04:00:00" in script
    assert "h_vmem=4G" in script
    assert "--nworkers 4" in script and "--nthreads 2" in script


@pytest.mark.parametrize("text, message", [
    ("[cluster]\nkind = 'pbs'\ncores = 1\nmemory = '1GB'\n", "kind must be one of"),
    ("[cluster]\nkind = 'slurm'\nmemory = '1GB'\n", "needs 'cores'"),
    ("[cluster]\nkind = 'slurm'\ncores = 1\nmemory = '1GB'\nbogus = 1\n", "unknown"),
    ("not toml [", "not valid TOML"),
    ("[cluster]\nkind = 'slurm'\ncores = 1\nmemory = '1GB'\nworker_timeout = -1\n", "worker_timeout must be"),
])
def test_bad_cluster_config(tmp_path, text, message):
    from upad.execution.jobqueue import load_cluster_config

    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(UpadError, match=message):
        load_cluster_config(cfg)


def test_cli_cluster_script(tmp_path, capsys):
    from upad.cli.main import main

    cfg = tmp_path / "slurm.toml"
    cfg.write_text(SLURM)
    assert main(["cluster", "script", "--config", str(cfg)]) == 0
    assert "#SBATCH" in capsys.readouterr().out
