"""What runs on a worker: ``execute_task(payload) -> outcome``.

The payload and the outcome are plain dicts (picklable, JSON-safe) so that every executor — a local process pool,
Dask, a batch node — can carry them. The worker never touches the database: the scheduler alone turns outcomes into
state.
"""
from __future__ import annotations

import importlib
import io
import logging
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from upad.errors import InputChangedError, MissingInputError
from upad.flow.faults import classify
from upad.flow.step import DataError, ResolvedInput, Task, get_step
from upad.io.atomic import file_stat, sha256_file

log = logging.getLogger("upad.worker")


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (Linux VmHWM), so that the next :func:`peak_rss_mb` is the peak since now."""
    # Linux: writing 5 to clear_refs resets VmHWM, so the peak measured after the job is this job's own.
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float | None:
    """Peak RSS of this process in MB (since start or the last :func:`reset_peak_rss`)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover - non-POSIX
        return None


def release_free_memory() -> None:
    """Give the memory freed by a finished job back to the operating system (glibc ``malloc_trim``).

    A pool worker runs job after job; the large arrays of one job are freed, but glibc may keep the pages of its
    per-thread arenas mapped, so that the next job's peak adds to them. Dask's workers do the same between tasks
    (``distributed``'s memory manager). A no-op where glibc is absent.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: file roles of a product that no step reads (pictures for people)
PICTURE_ROLES = frozenset({"preview", "qc_plot"})


def verify_inputs(inputs: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Check that every raw frame a job reads is the file that was registered, and that the files of every product
    it reads are there, before the job uses them.

    A frame whose file's :func:`file_stat` equals the one recorded when its SHA-256 was last verified is taken as
    is; otherwise the file is hashed again: the same SHA-256 (a ``touch``, a ``chmod``, a copy back) returns the new
    stat for the scheduler to record, another one raises :class:`~upad.errors.InputChangedError`.

    Returns
    -------
    dict
        ``{frame id: stat}`` of the frames verified by their hash.
    """
    verified: dict[str, dict[str, int]] = {}
    for item in inputs:
        if item["kind"] == "product":
            # a product's files are immutable archive files: they must be there (a missing one is an environment
            # fault — an unmounted or restored archive —, the job waits for it); not hashed again (large). Its
            # pictures (previews, QC plots) are for people: no step reads them, a missing one holds no job back
            meta = item.get("meta", {})
            roles = list(meta.get("file_roles") or [])
            for k, path in enumerate(item["paths"]):
                if k < len(roles) and roles[k] in PICTURE_ROLES:
                    continue
                if not os.path.exists(path):
                    raise MissingInputError(
                        f"input product {item['id']} ({meta.get('step', '?')} {meta.get('unit_key', '')}) is missing "
                        f"its file {path}", path=path,
                        hint=f"restore the file, or `upad flag --product {item['id']} --reason ...` to rebuild it")
            continue
        if item["kind"] != "frame" or not item.get("meta", {}).get("sha256"):
            continue
        path = item["paths"][0]
        try:
            now = file_stat(path)
        except FileNotFoundError as exc:
            raise MissingInputError(f"raw frame {item['meta'].get('filename')} is missing from the archive ({path})",
                                    path=path, hint="restore or mount it, or flag the frame invalid") from exc
        if now == item["meta"].get("file_stat"):
            continue
        sha = sha256_file(path)
        if sha != item["meta"]["sha256"]:
            raise InputChangedError(
                f"raw frame {item['meta'].get('filename')} ({path}) changed after it was registered: SHA-256 "
                f"{sha[:12]}… is not the registered {item['meta']['sha256'][:12]}…; it is quarantined and the frame "
                "flagged invalid — ingest the new file as a new frame", frame_id=int(item["id"]), path=path,
                sha256=sha)
        verified[str(item["id"])] = now
    return verified


def _load_plugins(modules: list[str]) -> None:
    for mod in modules:
        importlib.import_module(mod)


def execute_task(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one job attempt described by ``payload``; never raises (failures are returned)."""
    t0 = time.perf_counter()
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root_logger = logging.getLogger("upad")
    root_logger.addHandler(handler)
    previous_level = root_logger.level
    if root_logger.level == logging.NOTSET or root_logger.level > logging.INFO:
        root_logger.setLevel(logging.INFO)
    outcome: dict[str, Any] = {
        "job_id": payload["job_id"], "attempt_id": payload["attempt_id"], "host": socket.gethostname(),
        "pid": os.getpid(), "worker": payload.get("worker_name") or f"{socket.gethostname()}:{os.getpid()}",
    }
    reset_peak_rss()
    try:
        _load_plugins(payload.get("plugins", []))
        step = get_step(payload["step"])
        staging = Path(payload["staging"])
        staging.mkdir(parents=True, exist_ok=True)
        task = Task(
            step=payload["step"], job_id=payload["job_id"], attempt_id=payload["attempt_id"],
            provenance_id=payload["provenance_id"], unit_key=payload["unit_key"], context=payload["context"],
            # the typed configuration, as recorded with the job's provenance (the scheduler checked its hash)
            config=step.config_class.from_mapping(payload["config"], where=f"steps.{step.name}"),
            inputs=tuple(ResolvedInput(kind=i["kind"], id=i["id"], role=i["role"], paths=tuple(i["paths"]),
                                       meta=i["meta"]) for i in payload["inputs"]),
            root=payload["root"], staging=str(staging),
        )
        outcome["verified"] = verify_inputs(payload["inputs"])
        result = step.run(task)
        declared = {o.role for o in step.outputs}
        files = []
        for f in result.files:
            staged = Path(f.staged)
            if not staged.is_file():
                raise DataError(f"step {task.step} declared output {f.final} but did not write {staged}")
            if declared and f.role not in declared:
                raise ValueError(f"step {task.step} wrote a file of role {f.role!r} that it does not declare "
                                 f"(declared outputs: {sorted(declared)})")
            files.append({"role": f.role, "staged": str(staged), "final": f.final, "sha256": sha256_file(staged),
                          "size": staged.stat().st_size})
        outcome.update(ok=True, files=files, meta=result.meta, qc_status=result.qc_status,
                       good_after=result.good_after.isoformat() if result.good_after else None,
                       good_until=result.good_until.isoformat() if result.good_until else None)
    except BaseException as exc:  # noqa: BLE001 - a worker reports every failure
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        log.error("%s failed: %s", payload.get("step"), exc)
        fault = classify(exc)
        if isinstance(exc, InputChangedError):
            outcome["input_changed"] = [{"frame_id": exc.frame_id, "path": exc.path, "sha256": exc.sha256}]
        outcome.update(ok=False, error=f"{type(exc).__name__}: {exc}", transient=fault.transient,
                       fault=fault.category, waits_for=fault.waits_for,
                       traceback="".join(traceback.format_exception(exc))[-4000:])
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(previous_level)
    outcome["wall_seconds"] = time.perf_counter() - t0
    outcome["peak_rss_mb"] = peak_rss_mb()
    release_free_memory()
    outcome["log"] = buf.getvalue()[-4000:]
    return outcome
