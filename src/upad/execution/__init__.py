"""Where jobs run: a local process pool (default), Dask distributed, dask-jobqueue (SGE/Slurm), or inline.

Every executor runs :func:`upad.flow.worker.execute_task` on a payload and hands back its outcome; it never touches
the database. The scheduler talks to the :class:`Executor` interface only.
"""
from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing
import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from upad.errors import UpadError
from upad.flow.worker import execute_task

__all__ = ["Executor", "InlineExecutor", "LocalExecutor", "make_executor", "lost_outcome"]


def lost_outcome(payload: dict[str, Any], error: str) -> dict[str, Any]:
    """The outcome recorded when a worker died or the executor lost the task: transient, so it is retried."""
    return {"job_id": payload["job_id"], "attempt_id": payload["attempt_id"], "ok": False, "transient": True,
            "lost": True, "error": error, "host": None, "pid": None, "worker": None, "wall_seconds": None,
            "peak_rss_mb": None, "log": ""}


class Executor(ABC):
    """Runs payloads somewhere and reports their outcomes."""

    name: str = "executor"

    @property
    @abstractmethod
    def capacity(self) -> int:
        """How many jobs may run at once."""

    @abstractmethod
    def submit(self, payload: dict[str, Any]) -> Any:
        """Start one job; return a handle (a future)."""

    @abstractmethod
    def wait(self, handles: Iterable[Any], timeout: float) -> list[Any]:
        """Block up to ``timeout`` seconds until at least one handle is done; return the done ones."""

    @abstractmethod
    def outcome(self, handle: Any, payload: dict[str, Any]) -> dict[str, Any]:
        """The outcome of a finished handle (a lost worker gives :func:`lost_outcome`)."""

    def describe(self) -> str:
        return self.name

    def close(self) -> None:  # noqa: B027 - optional
        """Release workers."""


class InlineExecutor(Executor):
    """Runs each job in the scheduler's own process at submission (debugging, tests)."""

    name = "inline"

    @property
    def capacity(self) -> int:
        return 1

    def submit(self, payload: dict[str, Any]) -> cf.Future:
        fut: cf.Future = cf.Future()
        fut.set_result(execute_task(payload))
        return fut

    def wait(self, handles: Iterable[Any], timeout: float) -> list[Any]:
        return [h for h in handles if h.done()]

    def outcome(self, handle: cf.Future, payload: dict[str, Any]) -> dict[str, Any]:
        return handle.result()


def _worker_init() -> None:
    """Pool-worker initialiser: die with the scheduler (Linux PR_SET_PDEATHSIG), ignore Ctrl-C (the scheduler
    handles it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - not Linux
        return
    if os.getppid() == 1:  # the forkserver died before we could ask
        os._exit(0)


class LocalExecutor(Executor):
    """A local process pool (the default): ``workers`` processes on this machine."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or (os.cpu_count() or 1))
        self._ctx = multiprocessing.get_context("forkserver")
        # imported once in the forkserver, inherited by every worker it forks: a fresh worker starts its first job
        # without seconds of imports (the built-in steps bring astropy, scipy, numba; the reduction sep and the
        # matplotlib of its QC plot). A module that cannot be imported is skipped.
        self._ctx.set_forkserver_preload(["upad.execution._forkserver", "upad.flow.worker", "numpy",
                                          "astropy.io.fits", "upad.flow.builtin", "sep", "matplotlib.figure",
                                          "matplotlib.backends.backend_agg", "PIL.Image"])
        self._pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=self._ctx, initializer=_worker_init)

    @property
    def capacity(self) -> int:
        return self.workers

    def describe(self) -> str:
        return f"local process pool ({self.workers} workers)"

    def _replace_pool(self, broken: cf.ProcessPoolExecutor) -> None:
        """A worker died: every job in flight in ``broken`` is lost (outcome() reports them); start a new pool."""
        if broken is self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()

    def submit(self, payload: dict[str, Any]) -> cf.Future:
        try:
            fut = self._pool.submit(execute_task, payload)
        except cf.process.BrokenProcessPool:
            self._replace_pool(self._pool)
            fut = self._pool.submit(execute_task, payload)
        fut.upad_pool = self._pool  # type: ignore[attr-defined]
        return fut

    def wait(self, handles: Iterable[Any], timeout: float) -> list[Any]:
        done, _ = cf.wait(list(handles), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def outcome(self, handle: cf.Future, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            return handle.result()
        except cf.process.BrokenProcessPool as exc:
            self._replace_pool(getattr(handle, "upad_pool", None))
            return lost_outcome(payload, f"worker process died: {exc}")
        except cf.CancelledError:
            return lost_outcome(payload, "task cancelled")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def make_executor(kind: str, *, workers: int | None = None, scheduler: str | None = None,
                  cluster_config: str | None = None) -> Executor:
    """Build the executor named ``kind``: ``local``, ``inline``, ``dask`` or ``jobqueue``."""
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "inline":
        return InlineExecutor()
    if kind == "dask":
        from upad.execution.dask import DaskExecutor

        return DaskExecutor(address=scheduler, workers=workers)
    if kind == "jobqueue":
        if not cluster_config:
            raise UpadError("--executor jobqueue needs --cluster-config FILE",
                            hint="see docs/scaling.md for the SGE/Slurm configuration file")
        from upad.execution.jobqueue import JobqueueExecutor

        return JobqueueExecutor.from_file(cluster_config)
    raise UpadError(f"unknown executor {kind!r}", hint="use one of: local, dask, jobqueue, inline")
