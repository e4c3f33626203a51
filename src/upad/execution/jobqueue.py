"""dask-jobqueue executor: Dask workers submitted as SGE or Slurm batch jobs.

The cluster is described in a TOML file (see ``docs/scaling.md``)::

    [cluster]
    kind = "slurm"            # or "sge"
    queue = "batch"
    cores = 4                 # per batch job
    processes = 4             # Dask workers per batch job
    memory = "16GB"           # per batch job
    walltime = "04:00:00"
    account = "jpas"          # optional
    job_extra_directives = ["--exclusive"]
    job_script_prologue = ["source /opt/upad/venv/bin/activate"]
    local_directory = "/scratch/$USER"
    jobs = 8                  # batch jobs to start (or use [cluster.adapt])

    [cluster.adapt]
    minimum_jobs = 0
    maximum_jobs = 50
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from upad.errors import UpadError
from upad.execution.dask import DaskExecutor

_KINDS = ("slurm", "sge")
_PASSTHROUGH = ("queue", "cores", "processes", "memory", "walltime", "account", "project", "job_extra_directives",
                "job_script_prologue", "local_directory", "log_directory", "interface", "resource_spec",
                "worker_extra_args", "job_name", "python", "shebang")


def load_cluster_config(path: str | Path) -> dict[str, Any]:
    """Read and check a cluster configuration file; returns its ``[cluster]`` table."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UpadError(f"cluster configuration {path} does not exist", hint="see docs/scaling.md") from None
    except tomllib.TOMLDecodeError as exc:
        raise UpadError(f"{path} is not valid TOML: {exc}", hint="see docs/scaling.md for an example") from None
    cfg = data.get("cluster")
    if not isinstance(cfg, dict):
        raise UpadError(f"{path} has no [cluster] table", hint="see docs/scaling.md for an example")
    kind = cfg.get("kind")
    if kind not in _KINDS:
        raise UpadError(f"{path}: cluster kind must be one of {_KINDS}, got {kind!r}")
    for required in ("cores", "memory"):
        if required not in cfg:
            raise UpadError(f"{path}: [cluster] needs {required!r}", hint="e.g. cores = 4, memory = '16GB'")
    unknown = set(cfg) - set(_PASSTHROUGH) - {"kind", "jobs", "adapt"}
    if unknown:
        raise UpadError(f"{path}: unknown [cluster] keys {sorted(unknown)}",
                        hint=f"known: kind, jobs, adapt, {', '.join(_PASSTHROUGH)}")
    return cfg


def make_cluster(cfg: dict[str, Any]) -> Any:
    """Create (without starting any batch job) the dask-jobqueue cluster object described by ``cfg``."""
    from dask_jobqueue import SGECluster, SLURMCluster

    kwargs = {k: cfg[k] for k in _PASSTHROUGH if k in cfg}
    if cfg["kind"] == "sge" and "account" in kwargs:
        kwargs["project"] = kwargs.pop("account")
    cls = SLURMCluster if cfg["kind"] == "slurm" else SGECluster
    return cls(**kwargs)


def job_script(path: str | Path) -> str:
    """The batch script dask-jobqueue would submit for the configuration at ``path``."""
    cluster = make_cluster(load_cluster_config(path))
    try:
        return cluster.job_script()
    finally:
        cluster.close()


class JobqueueExecutor(DaskExecutor):
    """A :class:`DaskExecutor` whose workers are batch jobs on SGE or Slurm."""

    name = "jobqueue"

    @classmethod
    def from_file(cls, path: str | Path) -> "JobqueueExecutor":
        cfg = load_cluster_config(path)
        cluster = make_cluster(cfg)
        if "adapt" in cfg:
            cluster.adapt(**cfg["adapt"])
        else:
            cluster.scale(jobs=int(cfg.get("jobs", 1)))
        return cls(cluster=cluster)
