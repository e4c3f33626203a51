"""``upad retry``: queue again the jobs that are blocked (or failed) once their cause is fixed."""
from __future__ import annotations


import click
from rich.table import Table
from sqlalchemy import func, select

from upad.cli.common import common_options, console, emit_json, json_option, stdout
from upad.db import open_database
from upad.db.models import Job
from upad.flow.scheduler import Scheduler
from upad.settings import Settings


@click.command("retry")
@common_options
@click.option("--step", "steps", multiple=True, help="Only jobs of these steps (repeatable). Default: every step.")
@click.option("--failed", "include_failed", is_flag=True,
              help="Also jobs that failed for good (bad data or a code error), e.g. after a fix; by default only "
                   "blocked jobs (their environment was wrong: disk full, read-only archive, missing input).")
@click.option("--dry-run", is_flag=True, help="Only list the jobs that would be queued again.")
@json_option
def retry(settings: Settings, steps: tuple[str, ...], include_failed: bool, dry_run: bool, as_json: bool) -> None:
    """Queue again blocked jobs (and with --failed, failed ones) after their cause was fixed.

    A job whose failure came from its environment is retried with back-off and then parked as `blocked`; a new
    `upad run` tries it again by itself, and so does a daemon once the missing file it waits for appears. Use this
    command after fixing the cause (freeing disk space, making the archive writable …) to queue them right away, then
    run `upad run --until-idle` (or let the daemon pick them up).
    """
    db = open_database(settings.db_url)
    states = ("blocked", "failed") if include_failed else ("blocked",)
    try:
        if dry_run:
            with db.session() as s:
                stmt = select(Job.id, Job.step, Job.unit_key, Job.state, Job.error).where(Job.state.in_(states))
                if steps:
                    stmt = stmt.where(Job.step.in_(steps))
                rows = [dict(r._mapping) for r in s.execute(stmt.order_by(Job.id))]
            if as_json:
                emit_json({"would_queue": rows})
                return
            table = Table(title=f"{len(rows)} job(s) would be queued again")
            for col in ("id", "step", "unit", "state", "last error"):
                table.add_column(col)
            for r in rows:
                table.add_row(str(r["id"]), r["step"], r["unit_key"], r["state"], (r["error"] or "")[:120])
            stdout.print(table)
            return
        sched = Scheduler(db, settings, None, command="upad retry", options=None)
        if steps:
            from upad.flow.step import all_steps

            unknown = set(steps) - {s.name for s in all_steps()}
            if unknown:
                raise click.BadParameter(f"unknown step(s) {sorted(unknown)}", param_hint="--step")
        ids = sched.requeue(states=states, steps=steps or None, reason="upad retry")
        with db.session() as s:
            left = dict(s.execute(select(Job.state, func.count()).where(Job.state.in_(("blocked", "failed")))
                                  .group_by(Job.state)).all())
    finally:
        db.dispose()
    if as_json:
        emit_json({"queued": ids, "left": left})
        return
    console.print(f"{len(ids)} job(s) queued again; run `upad run --until-idle` (or keep a daemon running)"
                  + (f"; still: {', '.join(f'{v} {k}' for k, v in sorted(left.items()))}" if left else ""))


COMMANDS = [retry]
