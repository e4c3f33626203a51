"""``upad run``, ``upad reprocess``, ``upad runs``, ``upad flag``: drive the processing flow."""
from __future__ import annotations

import contextlib
import sys
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from upad.cli.common import NIGHT, common_options, console, emit_json, json_option, log_to_console, progress, stdout
from upad.cli.runreport import SUMMARY_KEYS, ProgressLines, failed_for_good, summary_line
from upad.db import open_database
from upad.db.queries import list_runs
from upad.execution import make_executor
from upad.flow.invalidate import flag_frame, flag_product
from upad.flow.scheduler import Scheduler, SchedulerOptions
from upad.settings import Settings


def _executor_options(func: Any) -> Any:
    opts = [
        click.option("--executor", type=click.Choice(["local", "dask", "jobqueue", "inline"]), default="local",
                     show_default=True, envvar="UPAD_EXECUTOR",
                     help="Where jobs run: local process pool, Dask (LocalCluster or --scheduler), dask-jobqueue "
                          "(SGE/Slurm, --cluster-config), or inline in this process (debugging)."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Worker processes (local pool / Dask LocalCluster). Default: CPU count."),
        click.option("--scheduler", "dask_scheduler", default=None, metavar="tcp://HOST:PORT",
                     help="Address of a running Dask scheduler (with --executor dask)."),
        click.option("--cluster-config", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="TOML file describing the SGE/Slurm cluster (with --executor jobqueue)."),
        click.option("--step", "steps", multiple=True, help="Only these steps (repeatable). Default: all."),
        click.option("--lease-seconds", type=click.FloatRange(min=1), default=60.0, show_default=True,
                     help="A running job whose scheduler stops renewing its lease this long is re-queued."),
        click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
                     help="Attempts for jobs that fail transiently (deterministic failures are not retried)."),
        click.option("--memory-budget", "memory_budget_gb", type=click.FloatRange(min=0.1), default=None,
                     help="GB that running jobs may use together (by memory class). Default: no limit."),
        click.option("--name", "run_name", default=None, help="Name of this processing run (default: timestamped)."),
        click.option("--replan-seconds", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
                     help="How often the daemon looks for newly ready work (e.g. newly ingested frames)."),
        click.option("--min-free-mb", type=click.FloatRange(min=0.0), default=200.0, show_default=True,
                     help="No new job starts while the data root's disk has less free space than this (MB); the "
                          "run pauses, says why, and resumes when space is freed."),
        click.option("--db-outage-seconds", type=click.FloatRange(min=0.0, max=7 * 86400.0), default=900.0,
                     show_default=True,
                     help="How long to ride out an unreachable database (reconnecting with back-off) before "
                          "stopping with the error."),
        click.option("--blocked-retry-seconds", type=click.FloatRange(min=1.0), default=900.0, show_default=True,
                     help="A daemon queues its blocked jobs (environment faults) again this often; they are also "
                          "queued at every new run, when the file they wait for appears, and by `upad retry`."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def _scheduler(settings: Settings, *, executor: str | None, workers: int | None, dask_scheduler: str | None,
               cluster_config: str | None, steps: tuple[str, ...], lease_seconds: float, max_attempts: int,
               memory_budget_gb: float | None, run_name: str | None, command: str, replan_seconds: float = 10.0,
               min_free_mb: float = 200.0, db_outage_seconds: float = 900.0, blocked_retry_seconds: float = 900.0,
               on_event: Any = None) -> Scheduler:
    db = open_database(settings.db_url)
    options = SchedulerOptions(lease_seconds=lease_seconds, heartbeat_seconds=min(5.0, lease_seconds / 3),
                               max_attempts=max_attempts, steps=steps or None, memory_budget_gb=memory_budget_gb,
                               replan_seconds=replan_seconds, min_free_mb=min_free_mb,
                               db_outage_seconds=db_outage_seconds, blocked_retry_seconds=blocked_retry_seconds)
    ex = make_executor(executor, workers=workers, scheduler=dask_scheduler,
                       cluster_config=cluster_config) if executor else None
    return Scheduler(db, settings, ex, options=options, run_name=run_name, command=command, on_event=on_event)


def _print_plan(report: Any, as_json: bool, verbose: bool) -> None:
    rows = [{"step": u.step, "unit": u.unit.key, "status": u.status, "reason": u.reason,
             "provenance_id": u.provenance_id} for u in report.units]
    if as_json:
        emit_json({"summary": report.by_status(), "units": [r for r in rows if verbose or r["status"] != "current"]})
        return
    table = Table(title="what would run, and why the rest waits")
    for col in ("step", "unit", "status", "reason"):
        table.add_column(col)
    for r in rows:
        if r["status"] == "current" and not verbose:
            continue
        colour = {"would-run": "green", "waiting": "yellow", "failed": "red"}.get(r["status"], "white")
        table.add_row(r["step"], r["unit"], f"[{colour}]{r['status']}[/]", r["reason"])
    stdout.print(table)
    summary = Table(title="summary per step")
    summary.add_column("step")
    summary.add_column("counts")
    for step, counts in report.by_status().items():
        summary.add_row(step, ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    stdout.print(summary)


@click.command("run")
@common_options
@_executor_options
@click.option("--until-idle", is_flag=True, help="Exit when nothing is ready, queued or running.")
@click.option("--dry-run", is_flag=True, help="List what would run and why each waiting item is not ready; "
                                              "change nothing.")
@click.option("--verbose", "-v", is_flag=True, help="With --dry-run: also list units already up to date.")
@click.option("--max-seconds", type=float, default=None, help="Stop after this many seconds.")
@click.option("--full-plan", is_flag=True, help="Plan every unit of every step on the first pass, not only the "
                                                "nights that changed since the last pass (a check after repairs "
                                                "made outside upad).")
@click.option("--progress-seconds", type=click.FloatRange(min=0.1, max=86400.0), default=30.0, show_default=True,
              help="Without a terminal (cron, redirected stderr): write a progress line (jobs done / running / "
                   "queued / failed per step) this often, and one at the end. On a terminal a progress bar shows.")
@json_option
def run(settings: Settings, until_idle: bool, dry_run: bool, verbose: bool, max_seconds: float | None,
        full_plan: bool, progress_seconds: float, as_json: bool, **kw: Any) -> None:
    """Process what is ready: plan jobs, dispatch them to the executor, record results, loop.

    Without --until-idle it runs as a daemon that also picks up newly ingested frames (Ctrl-C stops it after the
    running jobs finish). Safe to kill at any moment: run it again and it resumes.

    Each job that fails is reported once (a line with its step, unit and error); the run ends with a summary of
    its counts. Exit status 1 when a job failed for good during the run (see `upad status`).
    """
    if dry_run:
        sched = _scheduler(settings, executor=None, command="upad run --dry-run", **{k: v for k, v in kw.items()
                                                                                      if k != "executor"})
        _print_plan(sched.plan(dry_run=True), as_json, verbose)
        return
    on_terminal = console.is_terminal
    bar = progress(disable=as_json or not on_terminal)
    task_id = None
    totals = {"done": 0, "failed": 0, "total": 0}

    def on_event(kind: str, info: dict[str, Any]) -> None:
        # the bar only: failures are reported by the scheduler's log record (log_to_console below), once
        if task_id is None:
            return
        if kind == "started":
            totals["total"] = max(totals["total"], totals["done"] + totals["failed"] + 1)
        if kind == "done":
            totals["done"] += 1
        if kind == "failed" and not info.get("retry"):
            totals["failed"] += 1
        if kind in ("planned", "done", "failed"):
            pending = sched.pending()
            totals["total"] = totals["done"] + totals["failed"] + sum(pending.values())
        bar.update(task_id, total=totals["total"], completed=totals["done"] + totals["failed"],
                   description=f"jobs ({totals['failed']} failed)")

    sched = _scheduler(settings, command=" ".join(["upad", *sys.argv[1:]]), on_event=on_event, **kw)
    sched.options.full_first_pass = full_plan
    console.print(f"[bold]upad run[/] on {escape(sched.executor.describe())}; database {escape(repr(sched.db))}",
                  soft_wrap=True)
    lines = None if as_json or on_terminal else ProgressLines(
        sched.db, console, interval=progress_seconds, run_name=lambda: sched.run_name,
        retried=lambda: sched.counts.get("retried", 0))
    try:
        with log_to_console("upad.scheduler", "upad.execution"), bar, (lines or contextlib.nullcontext()):
            if not bar.disable:
                task_id = bar.add_task("jobs", total=None)
            counts = sched.run(until_idle=until_idle, max_seconds=max_seconds)
    finally:
        sched.executor.close()
    if lines is not None:
        lines.emit()  # the last progress line: where every step stands at the end
    failures = failed_for_good(counts)
    if as_json:
        emit_json({"run": sched.run_name, **dict.fromkeys(SUMMARY_KEYS, 0), **counts, "ok": failures == 0})
    else:
        console.print(escape(summary_line(sched.run_name, counts)), soft_wrap=True, highlight=False)
        if failures:
            n_failed, n_blocked = int(counts.get("failed", 0)), int(counts.get("blocked", 0))
            parts = ([f"{n_failed} job(s) failed for good (their data or the code)"] if n_failed else []) + (
                [f"{n_blocked} blocked by their environment (fix the cause — the error says which —, then "
                 "`upad retry`; the next `upad run` also tries them again)"] if n_blocked else [])
            console.print(f"[red]{' and '.join(parts)}[/] during this run: `upad status` lists the jobs with their "
                          "errors, `upad runs` the runs' counts", soft_wrap=True)
        else:
            console.print("see `upad status`, `upad products`, `upad runs`")
    if failures:
        click.get_current_context().exit(1)


@click.command("reprocess")
@common_options
@_executor_options
@click.option("--since", type=NIGHT, default=None, help="Only units of nights on or after this date.")
@click.option("--dry-run", is_flag=True, help="Only list what would be rebuilt.")
@json_option
def reprocess(settings: Settings, since: str | None, dry_run: bool, as_json: bool, **kw: Any) -> None:
    """Rebuild the products of --step whose inputs, configuration or code version changed.

    Old products stay (immutable); the new ones become current and what was built from the old ones is rebuilt in
    turn. Then run `upad run --until-idle` (or keep a daemon running) to execute the queued jobs.
    """
    if not kw.get("steps"):
        raise click.UsageError("reprocess needs at least one --step")
    sched = _scheduler(settings, executor=None, command=" ".join(["upad", *sys.argv[1:]]),
                       **{k: v for k, v in kw.items() if k != "executor"})
    report = sched.plan(dry_run=dry_run, force_steps=kw["steps"], since=since)
    if as_json:
        emit_json({"created": report.created, "summary": report.by_status()})
        return
    _print_plan(report, False, False)
    if not dry_run:
        console.print(f"{report.created} job(s) queued; run `upad run --until-idle` to execute them")


@click.command("runs")
@common_options
@json_option
def runs(settings: Settings, as_json: bool) -> None:
    """List processing runs (name, executor, state, counts)."""
    db = open_database(settings.db_url)
    rows = list_runs(db)
    db.dispose()
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"{len(rows)} runs")
    for col in ("id", "name", "state", "started", "ended", "executor", "summary"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["id"]), r["name"], r["state"], r["started_at"], r["ended_at"] or "-", r["executor"],
                      ", ".join(f"{k} {v}" for k, v in sorted(r["summary"].items())))
    stdout.print(table)


@click.command("flag")
@common_options
@click.argument("target")
@click.option("--invalid/--valid", "invalid", default=True, help="Flag invalid (default) or valid again.")
@click.option("--reason", default="", help="Why (required with --invalid).")
@click.option("--product", "is_product", is_flag=True, help="TARGET is a product id (e.g. a calibration frame) "
                                                              "to mark bad.")
@json_option
def flag(settings: Settings, target: str, invalid: bool, reason: str, is_product: bool, as_json: bool) -> None:
    """Flag a raw frame (id or file name) invalid: every product built from it becomes stale and is rebuilt
    without it. With --product, mark a product bad instead."""
    db = open_database(settings.db_url)
    with db.session() as s:
        if is_product:
            if not target.isdigit():
                raise click.BadParameter("a product id is a number", param_hint="TARGET")
            if not reason:
                raise click.UsageError("--reason is required")
            result = flag_product(s, int(target), reason=reason)
        else:
            result = flag_frame(s, target, invalid=invalid, reason=reason)
    # queue the rebuilds right away (the scheduler's plan; execution happens in `upad run`)
    sched = Scheduler(db, settings, None, command="upad flag")
    result["jobs_queued"] = sched.plan().created
    db.dispose()
    if as_json:
        emit_json(result)
        return
    console.print(f"flagged; {len(result['stale_products'])} product(s) stale, "
                  f"{len(result['cancelled_jobs'])} queued job(s) cancelled, {result['jobs_queued']} rebuild job(s) "
                  "queued — run `upad run --until-idle`")


COMMANDS = [run, reprocess, runs, flag]
