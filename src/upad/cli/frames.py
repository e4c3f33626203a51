"""``upad frames`` and ``upad status``: what the database holds."""
from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from upad.cli.common import NIGHT, common_options, emit_json, json_option, stdout
from upad.db import open_database
from upad.db.models import OBS_TYPES
from upad.db.queries import flow_summary, list_frames, list_quarantine, status_summary
from upad.settings import Settings


def _fmt(v: object, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


@click.command("frames")
@common_options
@json_option
@click.option("--night", type=NIGHT, help="Only this night (YYYY-MM-DD).")
@click.option("--type", "obs_type", type=click.Choice(OBS_TYPES), help="Only this observation type.")
@click.option("--filter", "filter_name", help="Only this filter (J-PLUS name, e.g. rSDSS).")
@click.option("--tile", "tile_id", type=int, help="Only this tile id.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many frames.")
def frames(settings: Settings, as_json: bool, night: str | None, obs_type: str | None, filter_name: str | None,
           tile_id: int | None, limit: int | None) -> None:
    """List registered raw frames with their metadata and quick-look QC."""
    db = open_database(settings.db_url)
    rows = list_frames(db, night=night, obs_type=obs_type, filter_name=filter_name, tile_id=tile_id, limit=limit)
    db.dispose()
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"{len(rows)} frames")
    for col in ("id", "filename", "night", "type", "filter", "exptime", "tile", "state", "qc", "sky", "noise",
                "fwhm\""):
        table.add_column(col, justify="right" if col in ("id", "exptime", "sky", "noise", "fwhm\"") else "left")
    for r in rows:
        qc = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]fail[/]"}.get(r["qc_status"], "?")
        table.add_row(str(r["id"]), r["filename"], r["night"], r["obs_type"], r["filter"] or "-",
                      _fmt(r["exptime"], 1), _fmt(r["tile_id"]), r["state"] + ("" if r["valid"] else " (invalid)"),
                      qc, _fmt(r["qc_sky_median"], 1), _fmt(r["qc_sky_noise"], 1), _fmt(r["qc_fwhm"]))
    stdout.print(table)


@click.command("status")
@common_options
@json_option
def status(settings: Settings, as_json: bool) -> None:
    """Count frames per state, type and QC outcome, jobs and products per step and state; list failed jobs and
    quarantined files with their reasons."""
    db = open_database(settings.db_url)
    summary = status_summary(db)
    summary["quarantined_files"] = list_quarantine(db)
    summary["flow"] = flow_summary(db)
    # why the units that wait are not ready (the scheduler's own readiness rules, nothing is changed)
    from upad.flow.scheduler import Scheduler

    summary["waiting"] = [{"step": u.step, "unit": u.unit.key, "reason": u.reason}
                          for u in Scheduler(db, settings, None).plan(dry_run=True).units if u.status == "waiting"]
    db.dispose()
    if as_json:
        emit_json(summary)
        return
    fr = summary["frames"]
    stdout.print(f"[bold]{fr['total']} frames[/] over {len(fr['nights'])} night(s); {fr['invalid']} flagged invalid")
    table = Table(title="frames")
    table.add_column("group")
    table.add_column("value")
    table.add_column("count", justify="right")
    for group, key in (("state", "by_state"), ("type", "by_obs_type"), ("quick-look QC", "by_qc_status")):
        for value, n in sorted(fr[key].items()):
            table.add_row(group, value, str(n))
    stdout.print(table)
    flow = summary["flow"]
    if flow["jobs"] or flow["products"]:
        ft = Table(title="processing flow")
        for col in ("step", "jobs", "products"):
            ft.add_column(col)
        for step in sorted(set(flow["jobs"]) | set(flow["products"])):
            ft.add_row(step, ", ".join(f"{k} {v}" for k, v in sorted(flow["jobs"].get(step, {}).items())),
                       ", ".join(f"{k} {v}" for k, v in sorted(flow["products"].get(step, {}).items())))
        stdout.print(ft)
        for f in flow["failed_jobs"][:20]:
            if f.get("state") == "blocked":
                stdout.print(f"[yellow]blocked[/] {escape(f['step'])} {escape(f['unit'])}: {escape(f['error'] or '')}"
                             " — fix the cause, then `upad retry`", soft_wrap=True)
            else:
                stdout.print(f"[red]failed[/] {escape(f['step'])} {escape(f['unit'])}: {escape(f['error'] or '')}",
                             soft_wrap=True)
    waiting = summary["waiting"]
    if waiting:
        wt = Table(title=f"{len(waiting)} units waiting (first 20; `upad run --dry-run` lists all)")
        for col in ("step", "unit", "why"):
            wt.add_column(col)
        for w in waiting[:20]:
            wt.add_row(w["step"], w["unit"], w["reason"])
        stdout.print(wt)
    q = summary["quarantined_files"]
    if q:
        qt = Table(title=f"{len(q)} quarantined files")
        for col in ("filename", "category", "reason"):
            qt.add_column(col)
        for row in q:
            qt.add_row(row["filename"], row["category"], row["reason"])
        stdout.print(qt)
    else:
        stdout.print("no quarantined files")


COMMANDS = [frames, status]
