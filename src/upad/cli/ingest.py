"""``upad ingest`` and ``upad quarantine``: register raw frames, list refused files."""
from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table
from sqlalchemy import select

from upad.cli.common import common_options, console, emit_json, json_option, progress, stdout
from upad.db import QuarantinedFile, open_database
from upad.errors import UpadError
from upad.ingest.errors import CATEGORIES
from upad.ingest.service import (
    MODES,
    FileOutcome,
    IngestReport,
    collect_files,
    ingest_paths,
    watch,
)
from upad.settings import Settings

_STYLE = {"registered": "green", "already_registered": "cyan", "conflict": "magenta", "quarantined": "yellow",
          "failed": "bold red", "skipped": "dim"}


def _check_root(settings: Settings) -> None:
    if not (settings.root / "raw").is_dir():
        raise UpadError(f"the data root {settings.root} has no archive layout (raw/, quarantine/ …)",
                        hint="run `upad init` with the same --root/--db first")


def _summary(report: IngestReport) -> None:
    counts = Table(title="ingest summary", show_header=True, header_style="bold")
    counts.add_column("outcome")
    counts.add_column("files", justify="right")
    for status, n in report.counts.items():
        counts.add_row(f"[{_STYLE[status]}]{status}[/]", str(n))
    stdout.print(counts)
    problems = [o for o in report.outcomes if o.status in ("conflict", "quarantined", "failed", "skipped")]
    if problems:
        table = Table(title="refused or failed files", show_header=True, header_style="bold", show_lines=False)
        table.add_column("file")
        table.add_column("outcome")
        table.add_column("category")
        table.add_column("reason", overflow="fold")
        for o in problems:
            table.add_row(o.filename, f"[{_STYLE[o.status]}]{o.status}[/]" + (" (known)" if o.already else ""),
                          o.category or "-", o.reason or "-")
        stdout.print(table)
    warned = [o for o in report.outcomes if o.status == "registered" and o.qc_status in ("warn", "fail")]
    if warned:
        console.print(f"[yellow]{len(warned)} registered frame(s) with quick-look QC warn/fail[/] "
                      "(qc_status and qc_reasons in the frames table)")
    if report.interrupted:
        console.print("[yellow]interrupted[/]: files not reached are ingested by the next run")


def _line(outcome: FileOutcome) -> None:
    extra = outcome.category or outcome.qc_status or ""
    console.print(f"[{_STYLE[outcome.status]}]{outcome.status:>18}[/] {outcome.filename} {extra}")


@click.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--mode", type=click.Choice(MODES), default="copy", show_default=True,
              help="copy: keep the sources; move: remove each source once it is registered (a file modified within "
                   "ingest.limits.settle_s is left for a later pass); "
                   "link: archive a symbolic link to the source (which must stay in place).")
@click.option("--strict", is_flag=True,
              help="Exit with status 1 when any file was refused (quarantined) or conflicted.")
@click.option("--watch", "watch_", is_flag=True,
              help="Keep polling the directories; ingest each new file once its size is stable. Stop with Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.0), default=5.0, show_default=True,
              help="Seconds between polls (--watch).")
@click.option("--max-polls", type=click.IntRange(min=1), default=None,
              help="Stop watching after this many polls (--watch).")
@common_options
@json_option
def ingest(paths: tuple[Path, ...], mode: str, strict: bool, watch_: bool, interval: float, max_polls: int | None,
           settings: Settings, as_json: bool) -> None:
    """Verify, archive and register raw frames (files or directories).

    Every file is checked (FITS structure, completeness, checksums, pixel type, shape, header keys), archived under
    ROOT/raw/<night>/ and registered with its quick-look QC. Refused files go to ROOT/quarantine/<date>/ with a
    reason (`upad quarantine` lists them); the batch always goes on. Running it again is safe: registered files
    are recognised by content (SHA-256). Files still being written (move mode, --watch) or claimed by a concurrent
    ingest are skipped and left in place for a later pass.

    Exit status: 0; 1 when a file could not be processed (it is left in place) or, with --strict, when any file was
    refused or conflicted; 2 for a usage error.
    """
    db = open_database(settings.db_url)
    try:
        _check_root(settings)
        if watch_:
            dirs = [p for p in paths if p.is_dir()]
            if len(dirs) != len(paths):
                raise UpadError("--watch needs directories", hint="name the incoming directories to poll")
            if not as_json:
                console.print(f"watching {', '.join(map(str, dirs))} every {interval:g} s (Ctrl-C to stop)")
            report = watch(db, settings, dirs, mode=mode, interval=interval, max_polls=max_polls,
                           progress=None if as_json else _line)
        else:
            files = collect_files(paths, exclude=[settings.root])
            with progress(disable=as_json) as bar:
                task = bar.add_task("ingest", total=len(files))

                def advance(outcome: FileOutcome) -> None:
                    bar.advance(task)
                    if outcome.status in ("conflict", "quarantined", "failed"):
                        bar.console.print(f"[{_STYLE[outcome.status]}]{outcome.status}[/] {outcome.filename} "
                                          f"({outcome.category or 'error'})")

                # the paths as given: a symbolic link is followed only inside the directory it was found in
                report = ingest_paths(db, settings, paths, mode=mode, strict=strict, progress=advance)
    finally:
        db.dispose()
    if as_json:
        emit_json({**report.to_dict(), "strict": strict, "exit_code": report.exit_code(strict=strict)})
    else:
        _summary(report)
    code = report.exit_code(strict=strict)
    if code:
        click.get_current_context().exit(code)


@click.command("quarantine")
@click.option("--all", "show_all", is_flag=True, help="Include entries marked resolved.")
@click.option("--category", type=click.Choice(sorted(CATEGORIES)), default=None, help="Only this category.")
@common_options
@json_option
def quarantine(show_all: bool, category: str | None, settings: Settings, as_json: bool) -> None:
    """List the files ingest refused, with the reasons and where the copies are."""
    db = open_database(settings.db_url)
    try:
        with db.session() as s:
            query = select(QuarantinedFile).order_by(QuarantinedFile.id)
            if not show_all:
                query = query.where(QuarantinedFile.resolved.is_(False))
            if category:
                query = query.where(QuarantinedFile.category == category)
            rows = list(s.scalars(query))
    finally:
        db.dispose()
    items = [{"id": r.id, "filename": r.filename, "category": r.category, "reason": r.reason,
              "original_path": r.original_path, "quarantine_path": r.quarantine_path, "sha256": r.sha256,
              "size_bytes": r.size_bytes, "detected_at": r.detected_at.isoformat(timespec="seconds"),
              "resolved": r.resolved} for r in rows]
    if as_json:
        emit_json(items)
        return
    if not items:
        stdout.print("[green]no quarantined files[/]")
        return
    table = Table(title=f"quarantine ({len(items)})", header_style="bold")
    for col in ("id", "detected (UTC)", "category", "file", "reason", "copy"):
        table.add_column(col, overflow="fold")
    for it in items:
        table.add_row(str(it["id"]), it["detected_at"], it["category"], it["filename"], it["reason"],
                      it["quarantine_path"] or "-")
    stdout.print(table)


COMMANDS = [ingest, quarantine]
