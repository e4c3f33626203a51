"""Options and helpers shared by every ``upad`` command."""
from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click
from rich.console import Console
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
