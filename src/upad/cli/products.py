"""``upad products`` and ``upad history``: products with their provenance, and what happened to a frame."""
from __future__ import annotations

import click
from rich.table import Table

from upad.cli.common import common_options, emit_json, json_option, stdout
from upad.db import open_database
from upad.db.queries import frame_history, list_products
from upad.settings import Settings


@click.command("products")
@common_options
@json_option
@click.option("--step", help="Only products of this step.")
@click.option("--current", "current_only", is_flag=True, help="Only current products.")
@click.option("--limit", type=click.IntRange(min=1), default=None)
def products(settings: Settings, as_json: bool, step: str | None, current_only: bool, limit: int | None) -> None:
    """List products with their files, state and provenance id."""
    db = open_database(settings.db_url)
    rows = list_products(db, step=step, current_only=current_only, limit=limit)
    db.dispose()
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"{len(rows)} products")
    for col in ("id", "step", "unit", "state", "provenance", "qc", "files"):
        table.add_column(col)
    for r in rows:
        state = "current" if r["current"] else r["state"]
        if r["is_bad"]:
            state += " (bad)"
        table.add_row(str(r["id"]), r["step"], r["unit"], state, r["provenance_id"][:12], r["qc_status"] or "-",
                      "\n".join(f["path"] for f in r["files"]))
    stdout.print(table)


@click.command("history")
@common_options
@json_option
@click.argument("frame")
def history(settings: Settings, as_json: bool, frame: str) -> None:
    """Every operation on FRAME (id or file name): events, jobs, attempts, config hashes, inputs, outputs."""
    db = open_database(settings.db_url)
    h = frame_history(db, frame)
    db.dispose()
    if as_json:
        emit_json(h)
        return
    f = h["frame"]
    stdout.print(f"[bold]{f['filename']}[/] (frame {f['id']}) {f['obs_type']} {f['filter'] or ''} night {f['night']} "
                 f"— {'valid' if f['valid'] else '[red]invalid[/]'}")
    for e in h["events"]:
        stdout.print(f"  {e['time']}  {e['event']}  {e['detail']}")
    for op in h["operations"]:
        prod = op["product"]
        state = "-" if prod is None else ("current" if prod["current"] else prod["state"])
        stdout.print(f"  [cyan]{op['step']}[/] {op['unit']} prov {op['provenance_id'][:12]} config "
                     f"{op['config_hash'][:8]} job {op['job']['state'] if op['job'] else '-'} product {state}")
        for a in op["attempts"]:
            stdout.print(f"      attempt {a['number']}: {a['state']} on {a['worker'] or '?'} "
                         f"{a['wall_seconds'] or 0:.2f}s {a['error'] or ''}")
        if prod:
            for fl in prod["files"]:
                stdout.print(f"      → {fl['path']}")


COMMANDS = [products, history]
