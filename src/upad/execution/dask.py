"""Dask distributed executor: a LocalCluster it starts, or an existing scheduler (``tcp://host:8786``)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from upad.errors import UpadError
from upad.execution import Executor, lost_outcome
from upad.flow.worker import execute_task

#: environment variables naming the batch job a process runs in (Slurm, SGE)
_BATCH_JOB_VARS = ("SLURM_JOB_ID", "JOB_ID")


def execute_on_dask_worker(payload: dict[str, Any]) -> dict[str, Any]:
    """:func:`execute_task` on a Dask worker; the attempt's ``worker`` also names the Dask worker and, on a batch
    node, the batch job (``vm:1234 dask SLURMCluster-0-1 batch job 17``), so that an attempt can be traced to its
    batch job's log."""
    import os

    outcome = execute_task(payload)
    parts = [str(outcome.get("worker") or "")]
    try:
        from distributed import get_worker

        parts.append(f"dask {get_worker().name}")
    except ValueError:  # not on a worker (cannot happen through the executor)
        pass
    job = next((os.environ[v] for v in _BATCH_JOB_VARS if os.environ.get(v)), None)
    if job:
        parts.append(f"batch job {job}")
    outcome["worker"] = " ".join(p for p in parts if p)[:255]
    return outcome


class DaskExecutor(Executor):
    """Runs jobs on a Dask cluster.

    Parameters
    ----------
    address
        ``tcp://host:port`` of a running Dask scheduler; ``None`` starts a ``LocalCluster`` of ``workers``
        single-threaded worker processes.
    workers
        Number of workers of the LocalCluster (ignored with ``address``).
    cluster
        An existing cluster object (used by :class:`~upad.execution.jobqueue.JobqueueExecutor`).
    """

    name = "dask"

    def __init__(self, address: str | None = None, *, workers: int | None = None, cluster: Any = None) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError:  # pragma: no cover - distributed is a dependency
            raise UpadError("Dask distributed is not installed", hint="pip install 'distributed'") from None
        self._own_cluster = None
        if cluster is not None:
            self.client = Client(cluster)
            self._label = f"dask ({type(cluster).__name__})"
        elif address:
            try:
                self.client = Client(address, timeout="20s")
            except OSError as exc:
                raise UpadError(f"cannot reach the Dask scheduler at {address}: {exc}",
                                hint="start it with `dask scheduler` or drop --scheduler to use a LocalCluster") from None
            self._label = f"dask scheduler {address}"
        else:
            import os

            n = max(1, workers or (os.cpu_count() or 1))
            self._own_cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                             dashboard_address=None, protocol="tcp://")
            self.client = Client(self._own_cluster)
            self._label = f"dask LocalCluster ({n} workers, {self._own_cluster.scheduler_address})"
        self._fixed_capacity = workers

    @property
    def capacity(self) -> int:
        try:
            n = sum(w.get("nthreads", 1) for w in self.client.scheduler_info()["workers"].values())
        except Exception:  # pragma: no cover - scheduler gone
            n = 0
        return max(1, n or (self._fixed_capacity or 1))

    def describe(self) -> str:
        return self._label

    def submit(self, payload: dict[str, Any]) -> Any:
        key = f"upad-job{payload['job_id']}-attempt{payload['attempt_id']}"
        return self.client.submit(execute_on_dask_worker, payload, key=key, pure=False, retries=0)

    def wait(self, handles: Iterable[Any], timeout: float) -> list[Any]:
        from distributed import wait

        handles = list(handles)
        try:
            wait(handles, timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        return [h for h in handles if h.done()]

    def outcome(self, handle: Any, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            return handle.result()
        except Exception as exc:  # KilledWorker, CancelledError, CommClosedError …
            return lost_outcome(payload, f"dask lost the task: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        self.client.close()
        if self._own_cluster is not None:
            self._own_cluster.close()
