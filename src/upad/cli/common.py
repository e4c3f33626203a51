"""Options and helpers shared by every ``upad`` command."""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import re
import sys
from collections.abc import Iterator
from typing import Any, Callable

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from upad.settings import Settings

#: Messages, progress bars and errors (stderr).
console = Console(stderr=True)


def _stdout_width() -> int | None:
    if sys.stdout.isatty():
        return None  # the terminal's
    import os

    # a pipe or a file: tables keep their columns instead of being squeezed into 80 characters
    return int(os.environ.get("COLUMNS") or 0) or 200


#: What a command answers — tables and listings (stdout, so that ``upad frames > list.txt`` works).
stdout = Console(width=_stdout_width())


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--root`` and ``--db`` to a command and pass the resolved :class:`Settings` as ``settings``."""

    @click.option("--root", "root", type=click.Path(file_okay=False), default=None, envvar="UPAD_ROOT",
                  help="Data root (archive layout). Env UPAD_ROOT; default ./upad-data.")
    @click.option("--db", "db_url", default=None, envvar="UPAD_DB_URL",
                  help="Database URL (sqlite:///… or postgresql+psycopg://…). Env UPAD_DB_URL; "
                       "default SQLite inside the root.")
    @functools.wraps(func)
    def wrapper(*args: Any, root: str | None, db_url: str | None, **kwargs: Any) -> Any:
        return func(*args, settings=Settings.resolve(root, db_url), **kwargs)

    return wrapper


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--json`` (machine-readable output on stdout)."""
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")(func)


def emit_json(obj: Any) -> None:
    """Write ``obj`` as JSON on stdout."""
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def progress(*, disable: bool = False) -> Progress:
    """A rich progress bar for long work (written to stderr; hidden when ``disable``)."""
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=False,
    )


class NightType(click.ParamType):
    """A night or date written ``YYYY-MM-DD`` (a real calendar date); converts to that string.

    Nights are stored as ``YYYY-MM-DD`` text, so a value in any other form (``2025-3-1``, ``20250301``,
    ``2025-02-30``) would silently match nothing: it is refused with a message naming the expected format.
    """

    name = "YYYY-MM-DD"
    _FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if isinstance(value, dt.date):
            return value.isoformat()[:10]
        text = str(value).strip()
        if self._FORMAT.fullmatch(text):
            try:
                return dt.date.fromisoformat(text).isoformat()
            except ValueError as exc:
                self.fail(f"{value!r} is not a valid date ({exc}); expected YYYY-MM-DD, e.g. 2025-03-01",
                          param, ctx)
        self.fail(f"{value!r} is not a date in the form YYYY-MM-DD (e.g. 2025-03-01)", param, ctx)


#: The click type of every option or argument that takes a night or a date.
NIGHT = NightType()


class ConsoleLogHandler(logging.Handler):
    """Log records as single lines through :data:`console` (so that they never tear a progress bar).

    Without a terminal (cron, a redirected stderr) each line starts with the UTC time, like a log file.
    """

    _STYLES = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "bold red"}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            level = record.levelname.lower()
            style = next((v for k, v in sorted(self._STYLES.items(), reverse=True) if record.levelno >= k), "")
            prefix = "" if console.is_terminal else f"{utc_stamp(record.created)} "
            head = f"[{style}]{level}[/]" if style else level
            # soft_wrap: one record, one line, whatever the width (greppable logs)
            console.print(f"{escape(prefix)}{head}: {escape(msg)}", soft_wrap=True, highlight=False)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def utc_stamp(t: float | None = None) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` of the epoch time ``t`` (default now)."""
    when = dt.datetime.now(dt.timezone.utc) if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def log_to_console(*names: str, level: int = logging.WARNING) -> Iterator[ConsoleLogHandler]:
    """Show the records of the loggers ``names`` at ``level`` and above on :data:`console` while the block runs.

    Without it a command that configures no logging leaves its records to Python's last-resort handler, which
    writes them raw onto stderr, past any progress bar, next to what the command itself prints.
    """
    handler = ConsoleLogHandler(level)
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
