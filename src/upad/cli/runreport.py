"""What ``upad run`` tells an operator: progress lines without a terminal, the final summary, the exit status.

On a terminal ``upad run`` shows a rich progress bar. Under cron, in a batch job or with stderr redirected the bar
is off, and :class:`ProgressLines` writes a plain line every ``--progress-seconds`` instead (and one at the end):
the jobs of each step that are done, running, queued and failed, read from the database. Each job that fails is
reported once, by the scheduler's own log record (see :func:`upad.cli.common.log_to_console`).
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from sqlalchemy import func, or_, select

from upad.cli.common import utc_stamp
from upad.db.models import Job, utcnow
from upad.db.session import Database

#: States in the order a progress line lists them (others follow, sorted).
STATE_ORDER = ("done", "running", "queued", "failed", "blocked")

#: Counts of :attr:`Scheduler.counts` that always appear in the final summary, zeros included.
SUMMARY_KEYS = ("done", "failed", "blocked", "retried")

#: Counts that mean a job failed for good during the run (the exit status is then 1).
FAILURE_KEYS = ("failed", "blocked")


def job_counts(db: Database, *, since: dt.datetime) -> dict[str, Counter[str]]:
    """Jobs per step and state: every queued or running job, and those that changed state since ``since``
    (naive UTC, the database convention: done, failed … during this run)."""
    with db.session() as s:
        rows = s.execute(select(Job.step, Job.state, func.count())
                         .where(or_(Job.state.in_(("queued", "running")), Job.updated_at >= since))
                         .group_by(Job.step, Job.state)).all()
    out: dict[str, Counter[str]] = {}
    for step, state, n in rows:
        out.setdefault(step, Counter())[state] += n
    return out


def _ordered(counts: Mapping[str, int], *, zeros: tuple[str, ...] = ()) -> list[tuple[str, int]]:
    keys = [k for k in STATE_ORDER if counts.get(k) or k in zeros]
    keys += sorted(k for k in counts if k not in STATE_ORDER and counts[k])
    return [(k, int(counts.get(k, 0))) for k in keys]


def progress_line(per_step: Mapping[str, Counter[str]], *, run_name: str | None, elapsed: float,
                  retried: int = 0) -> str:
    """One plain line: the totals (done, running, queued, failed always shown), then each step's counts."""
    total: Counter[str] = Counter()
    for c in per_step.values():
        total.update(c)
    head = ", ".join(f"{k} {v}" for k, v in _ordered(total, zeros=("done", "running", "queued", "failed")))
    if retried:
        head += f", retried {retried}"
    steps = "; ".join(f"{step}: " + ", ".join(f"{k} {v}" for k, v in _ordered(c))
                      for step, c in sorted(per_step.items()) if any(c.values()))
    return f"run {run_name or '(starting)'} +{elapsed:.0f}s: {head}" + (f" | {steps}" if steps else "")


class ProgressLines:
    """Writes :func:`progress_line` to ``console`` every ``interval`` seconds from a background thread.

    Parameters
    ----------
    db : Database
        The run's database (one short session per line).
    console : Console
        Where the lines go (stderr).
    interval : float
        Seconds between two lines.
    run_name : callable
        Returns the run's name (known once the scheduler has started its run).
    retried : callable
        Returns the number of transient failures retried so far.
    """

    def __init__(self, db: Database, console: Console, *, interval: float, run_name: Any = lambda: None,
                 retried: Any = lambda: 0) -> None:
        self.db, self.console, self.interval = db, console, interval
        self._run_name, self._retried = run_name, retried
        self.since = utcnow()
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error_shown = False

    def line(self) -> str:
        per_step = job_counts(self.db, since=self.since)
        return progress_line(per_step, run_name=self._run_name(), elapsed=time.monotonic() - self._t0,
                             retried=self._retried())

    def emit(self) -> None:
        """Print one line now (a database that cannot be read is said once, then skipped)."""
        try:
            text = self.line()
        except Exception as exc:  # noqa: BLE001 - progress output must never stop the run
            if not self._error_shown:
                self._error_shown = True
                self.console.print(f"{utc_stamp()} progress: cannot read the job counts: {escape(str(exc))}",
                                   soft_wrap=True, highlight=False)
            return
        self._error_shown = False
        self.console.print(f"{utc_stamp()} {escape(text)}", soft_wrap=True, highlight=False)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.emit()

    def __enter__(self) -> ProgressLines:
        self._thread = threading.Thread(target=self._loop, name="upad-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def failed_for_good(counts: Mapping[str, int]) -> int:
    """Jobs of the run that failed for good (failed, or blocked once their retries were spent)."""
    return sum(int(counts.get(k, 0)) for k in FAILURE_KEYS)


def summary_line(run_name: str | None, counts: Mapping[str, int]) -> str:
    """The last line of ``upad run``: every count, the usual ones even when zero."""
    shown = ", ".join(f"{k} {int(counts.get(k, 0))}" for k in SUMMARY_KEYS)
    rest = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k not in SUMMARY_KEYS and v)
    ran = int(counts.get("done", 0)) + failed_for_good(counts)
    if not ran and not counts.get("claimed") and not counts.get("retried"):
        return f"run {run_name}: nothing to do (0 jobs: {shown}" + (f"; {rest}" if rest else "") + ")"
    return f"run {run_name}: {shown}" + (f" ({rest})" if rest else "")
