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
    worker_timeout = 600      # seconds jobs may wait with no Dask worker connected (0: wait forever)

    [cluster.adapt]
    minimum_jobs = 0
    maximum_jobs = 50
"""
from __future__ import annotations

import logging
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from upad.errors import UpadError
from upad.execution.dask import DaskExecutor

log = logging.getLogger("upad.execution")

_KINDS = ("slurm", "sge")
_PASSTHROUGH = ("queue", "cores", "processes", "memory", "walltime", "account", "project", "job_extra_directives",
                "job_script_prologue", "local_directory", "log_directory", "interface", "resource_spec",
                "worker_extra_args", "job_name", "python", "shebang")
#: default ``worker_timeout``: how long jobs may wait with no Dask worker connected before ``upad run`` gives up
DEFAULT_WORKER_TIMEOUT = 600.0


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
    unknown = set(cfg) - set(_PASSTHROUGH) - {"kind", "jobs", "adapt", "worker_timeout"}
    if unknown:
        raise UpadError(f"{path}: unknown [cluster] keys {sorted(unknown)}",
                        hint=f"known: kind, jobs, adapt, worker_timeout, {', '.join(_PASSTHROUGH)}")
    timeout = cfg.get("worker_timeout", DEFAULT_WORKER_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise UpadError(f"{path}: worker_timeout must be a number of seconds >= 0 (0: wait forever), got {timeout!r}")
    return cfg


def make_cluster(cfg: dict[str, Any]) -> Any:
    """Create (without starting any batch job) the dask-jobqueue cluster object described by ``cfg``."""
    from dask_jobqueue import SGECluster, SLURMCluster

    kwargs: dict[str, Any] = {k: cfg[k] for k in _PASSTHROUGH if k in cfg}
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


def _submission_error(exc: BaseException) -> str:
    """The batch system's own words from a failed submission (dask-jobqueue wraps sbatch's/qsub's stderr)."""
    text = str(exc)
    if "stderr:" in text:
        text = text.split("stderr:", 1)[1]
    return " ".join(text.split()) or type(exc).__name__


def submit_jobs(cluster: Any, jobs: int, path: str | Path) -> None:
    """Submit ``jobs`` batch jobs now and wait for the batch system's answer (not for the jobs to start).

    dask-jobqueue submits in the background and only logs a refused submission (unknown partition, account, too
    much memory …): ``upad run`` would then wait forever for workers that never come. Here a refusal is an error.
    """
    from distributed.core import Status

    async def scale_and_submit() -> None:
        cluster.scale(jobs=jobs)
        await cluster._correct_state()  # what SpecCluster.__init__ awaits: apply the scale, i.e. submit the jobs

    error = None
    try:
        cluster.sync(scale_and_submit)
    except Exception as exc:  # noqa: BLE001 - reported below
        error = _submission_error(exc)
    # a job whose submission failed has no batch job id; it must be marked failed, or closing the cluster trips on it
    refused = [job for job in cluster.workers.values() if getattr(job, "job_id", "") is None]
    for job in refused:
        job.status = Status.failed
    if error or refused:
        raise UpadError(f"the batch system refused the jobs of {path}: {error or 'see the log above'}",
                        hint="check queue, account, cores, memory and walltime against the cluster's limits; "
                             "`upad cluster script --config FILE` prints the job script (try it with "
                             "`sbatch --test-only` or `qsub -w v`)")


class JobqueueExecutor(DaskExecutor):
    """A :class:`DaskExecutor` whose workers are batch jobs on SGE or Slurm.

    It owns its cluster: :meth:`close` cancels the batch jobs. While jobs are in flight and no Dask worker is
    connected (batch jobs still pending, refused, or dead before their worker connected) for more than
    ``worker_timeout`` seconds, :meth:`wait` raises :class:`~upad.errors.UpadError`, instead of waiting forever.
    """

    name = "jobqueue"

    def __init__(self, cluster: Any, *, worker_timeout: float | None = DEFAULT_WORKER_TIMEOUT) -> None:
        super().__init__(cluster=cluster)
        self._own_cluster = cluster  # DaskExecutor.close() closes it: the batch jobs are cancelled
        self.worker_timeout = float(worker_timeout) if worker_timeout else None
        self._starved_since: float | None = None
        self._warned_at = 0.0

    @classmethod
    def from_file(cls, path: str | Path) -> "JobqueueExecutor":
        cfg = load_cluster_config(path)
        cluster = make_cluster(cfg)
        try:
            if "adapt" in cfg:
                cluster.adapt(**cfg["adapt"])
            else:
                submit_jobs(cluster, int(cfg.get("jobs", 1)), path)
            return cls(cluster=cluster, worker_timeout=cfg.get("worker_timeout", DEFAULT_WORKER_TIMEOUT))
        except BaseException:
            cluster.close()
            raise

    def _batch_jobs(self) -> str:
        ids = [str(getattr(job, "job_id", None)) for job in getattr(self._own_cluster, "workers", {}).values()]
        return ", ".join(ids) or "none"

    def wait(self, handles: Iterable[Any], timeout: float) -> list[Any]:
        handles = list(handles)
        done = super().wait(handles, timeout)
        if done or not handles:
            self._starved_since = None
            return done
        try:
            n_workers = len(self.client.scheduler_info()["workers"])
        except Exception:  # noqa: BLE001 - the scheduler is gone: no workers
            n_workers = 0
        now = time.monotonic()
        if n_workers:
            self._starved_since = None
            return done
        if self._starved_since is None:
            self._starved_since = now
        waited = now - self._starved_since
        if self.worker_timeout is not None and waited > self.worker_timeout:
            raise UpadError(f"{len(handles)} job(s) waited {waited:.0f} s and no Dask worker connected "
                            f"(batch jobs: {self._batch_jobs()})",
                            hint="see the batch jobs' state (squeue / qstat) and their logs (log_directory): a job "
                                 "still pending, or a worker that died at start (python, PYTHONPATH, interface); "
                                 "raise worker_timeout in the cluster file for a busy queue (0: wait forever)")
        if waited > 60 and now - self._warned_at > 300:
            self._warned_at = now
            log.warning("no Dask worker connected for %.0f s; batch jobs %s", waited, self._batch_jobs())
        return done
