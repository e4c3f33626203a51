"""``upad coadd``: force the coadd of one tile in one filter now, optionally of a selection of its exposures."""
from __future__ import annotations

import getpass
import re
import socket
import sys
from typing import Any

import click
from rich.markup import escape
from sqlalchemy import func, select

from upad.cli.common import common_options, console, emit_json, json_option, progress
from upad.db import open_database
from upad.db.models import CoaddRequest, Frame, Job, PlanWaiting, Product, Tile, utcnow
from upad.errors import UpadError
from upad.settings import Settings


def _resolve_tile(s: Any, tile: str) -> int:
    """The pointing (``ref_tile_id``) named by ``tile``: its id, or its name (``TILE-00042``, any case)."""
    text = tile.strip()
    row = None
    if text.isdigit():
        row = s.get(Tile, int(text))
        if row is None and s.scalar(select(func.count()).select_from(Frame).where(Frame.tile_id == int(text))):
            return int(text)  # frames of a tile without a TILE row (made by hand): their id is the pointing
    else:
        row = s.scalars(select(Tile).where(func.upper(Tile.name) == text.upper())).first()
    if row is None:
        n = s.scalar(select(func.count()).select_from(Tile)) or 0
        raise UpadError(f"unknown tile {tile!r}: no pointing has this id or name ({n} known)",
                        hint="give a pointing id (ref_tile_id) or name, e.g. 42 or TILE-00042: `upad tiles list "
                             "--all` lists them, `upad frames` shows the tile of every frame")
    return int(row.id)


def queue_request(db: Any, tile: str, filter_name: str, *, selection: str | None,
                  requested_by: str | None = None) -> dict[str, Any]:
    """Check a coadd request and record it (one per instrument that observed the tile in the filter).

    Returns
    -------
    dict
        ``ref_tile_id``, ``filter``, ``requests`` (``[{id, unit_key}]``), ``exposures`` (valid science frames of the
        tile in the filter), ``selected`` (those the selection keeps).

    Raises
    ------
    UpadError
        Unknown tile; a filter in which the tile has no valid science frame; an invalid regular expression; a
        selection that keeps no exposure. Nothing is written then.
    """
    from upad.coadd.step import tile_unit_key
    from upad.flow.changes import record

    pattern = None
    if selection is not None:
        try:
            pattern = re.compile(selection)
        except re.error as exc:
            raise UpadError(f"--select {selection!r} is not a valid regular expression: {exc}",
                            hint="Python `re` syntax, searched in the raw file name, e.g. --select '2026-03-0[12]' "
                                 "or --select 'T80Cam_.*_000[1-3]'") from None
    with db.session() as s:
        ref = _resolve_tile(s, tile)
        frames = s.execute(select(Frame.id, Frame.filename, Frame.filter, Frame.instrument, Frame.night).where(
            Frame.tile_id == ref, Frame.obs_type == "science", Frame.valid.is_(True))
            .order_by(Frame.date_obs, Frame.id)).all()
        observed = sorted({f.filter for f in frames if f.filter})
        by_lower = {f.lower(): f for f in observed}
        filt = by_lower.get(filter_name.strip().lower())
        if filt is None:
            hint = (f"it was observed in: {', '.join(observed)}" if observed else
                    "it has no valid science frame at all (`upad frames` lists them; flagged frames do not count)")
            raise UpadError(f"tile {ref} was never observed in {filter_name!r} (no valid science frame)", hint=hint)
        fs = [f for f in frames if f.filter == filt]
        chosen = [f for f in fs if pattern is None or pattern.search(f.filename)]
        if not chosen:
            names = ", ".join(f.filename for f in fs[:5]) + (" …" if len(fs) > 5 else "")
            raise UpadError(f"--select {selection!r} matches none of the {len(fs)} exposure(s) of tile {ref} in "
                            f"{filt}", hint=f"it is searched in the raw file names: {names}")
        out = []
        for inst in sorted({f.instrument for f in fs}):
            key = tile_unit_key(inst, ref, filt)
            req = CoaddRequest(unit_key=key, instrument=inst, ref_tile_id=ref, filter=filt, selection=selection,
                               force=True, requested_by=(requested_by or "")[:255] or None)
            s.add(req)
            s.flush()
            # journalled for the coadd step: the next planning pass looks at the tile's night
            night = max(f.night for f in fs if f.instrument == inst)
            record(s, "request", [req.id], event="new", night=str(night)[:10], step="coadd")
            out.append({"id": req.id, "unit_key": key, "requested_at": req.requested_at})
    return {"ref_tile_id": ref, "filter": filt, "requests": out, "exposures": len(fs), "selected": len(chosen)}


def request_outcome(db: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Where a request stands: the latest coadd job of its unit created since it was made (state, error, what it
    waits for, its product) or, without one, why the unit waits."""
    with db.session() as s:
        job = s.scalars(select(Job).where(Job.step == "coadd", Job.unit_key == request["unit_key"],
                                          Job.created_at >= request["requested_at"])
                        .order_by(Job.id.desc()).limit(1)).first()
        out: dict[str, Any] = {"request": request["id"], "unit": request["unit_key"]}
        if job is None:
            cur = s.scalars(select(Product).where(Product.step == "coadd", Product.unit_key == request["unit_key"],
                                                  Product.is_current.is_(True))).first()
            waiting = s.get(PlanWaiting, ("coadd", request["unit_key"]))
            if waiting is not None:
                out.update(state="waiting", reason=waiting.reason)
            elif cur is not None:
                out.update(state="current", reason="the current coadd already has these inputs",
                           product=_product(cur))
                req = s.get(CoaddRequest, request["id"])
                if req.served_at is None:  # served as it is: the unit follows the configuration again later
                    req.served_at = utcnow()
            else:
                out.update(state="not planned", reason="the coadd step has not planned it yet (run `upad run "
                                                       "--step coadd --until-idle`)")
            return out
        out.update(state=job.state, job=job.id, reason=job.error or "", waits_for=job.waits_for)
        if job.product_id is not None:
            out["product"] = _product(s.get(Product, job.product_id))
    return out


def _product(p: Product) -> dict[str, Any]:
    return {"id": p.id, "current": bool(p.is_current), "state": p.state, "qc_status": p.qc_status,
            "n_exposures": (p.meta or {}).get("n_exposures"), "qc_reasons": (p.meta or {}).get("qc_reasons", []),
            "files": [f["path"] for f in p.files or []]}


@click.command("coadd")
@common_options
@click.argument("tile")
@click.option("--filter", "filter_name", required=True, help="The filter (as in the frames, e.g. rSDSS).")
@click.option("--select", "selection", default=None, metavar="REGEXP",
              help="Only the exposures whose raw file name matches this regular expression (searched, Python "
                   "syntax). Default: the step's configured selection (`steps.coadd.select`, usually all).")
@click.option("--no-run", is_flag=True, help="Only queue the request (and its job); `upad run` makes it.")
@click.option("--executor", type=click.Choice(["local", "inline"]), default="local", show_default=True,
              help="Where the coadd runs: a local process pool or this process.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: CPU count).")
@json_option
def coadd(settings: Settings, tile: str, filter_name: str, selection: str | None, no_run: bool, executor: str,
          workers: int | None, as_json: bool) -> None:
    """Coadd TILE (a pointing id or name, e.g. 42 or TILE-00042) in one filter now.

    The coadd is forced: it is made from the exposures usable now, even while others are still to be reduced or
    fewer than the survey plans were observed (the planner otherwise waits). --select keeps only some exposures:
    the request is recorded in the database (not in the configuration, whose hash stays), so the coadd has its own
    provenance and product; the older coadd of the tile stays, superseded. Once exposures of the tile are reduced
    after it, the tile is coadded again under the configuration.

    By default the coadd step then runs until idle (like `upad run --step coadd --until-idle`); --no-run only
    queues it. Exit status 1 when the coadd did not succeed (the reason is printed).
    """
    from upad.cli.run import _scheduler

    who = f"{' '.join(['upad', *sys.argv[1:]])} ({getpass.getuser()}@{socket.gethostname()})"
    db = open_database(settings.db_url)
    try:
        queued = queue_request(db, tile, filter_name, selection=selection, requested_by=who)
    finally:
        db.dispose()
    if not as_json:
        console.print(f"coadd of tile {queued['ref_tile_id']} in {escape(queued['filter'])} requested: "
                      f"{queued['selected']} of {queued['exposures']} exposure(s) selected", soft_wrap=True)
    sched = _scheduler(settings, executor=None if no_run else executor, workers=workers, dask_scheduler=None,
                       cluster_config=None, steps=("coadd",), lease_seconds=60.0, max_attempts=3,
                       memory_budget_gb=None, run_name=None, command=who)
    try:
        if no_run:
            sched.plan()
        else:
            bar = progress(disable=as_json or not console.is_terminal)
            task_id = bar.add_task("coadd", total=None)

            def on_event(kind: str, info: dict[str, Any]) -> None:
                if kind in ("planned", "done", "failed", "started"):
                    pending = sched.pending()
                    done = sched.counts.get("done", 0) + sched.counts.get("failed", 0)
                    bar.update(task_id, total=done + sum(pending.values()), completed=done,
                               description=f"coadd jobs ({sched.counts.get('failed', 0)} failed)")

            sched.on_event = on_event
            try:
                with bar:
                    sched.run(until_idle=True)
            finally:
                sched.executor.close()
        outcomes = [request_outcome(sched.db, r) for r in queued["requests"]]
    finally:
        sched.db.dispose()
    ok_states = ("queued", "running", "done", "current") if no_run else ("done", "current")
    ok = all(o["state"] in ok_states and (o.get("product") or {}).get("qc_status") != "fail" for o in outcomes)
    if as_json:
        emit_json({**{k: v for k, v in queued.items() if k != "requests"}, "outcomes": outcomes, "ok": ok})
    else:
        for o in outcomes:
            p = o.get("product") or {}
            if p and p.get("qc_status") != "fail":
                console.print(f"[green]{escape(o['unit'])}[/]: coadd product {p['id']} ({p['n_exposures']} "
                              f"exposure(s), QC {p['qc_status']}): {escape(', '.join(p['files'][:1]))}",
                              soft_wrap=True)
            elif p:
                console.print(f"[red]{escape(o['unit'])}[/]: the coadd failed its QC: "
                              f"{escape('; '.join(p['qc_reasons'][:4]))}", soft_wrap=True)
            else:
                extra = f" (waits for {o['waits_for']})" if o.get("waits_for") else ""
                hint = " — run `upad run --step coadd --until-idle` to make it" if o["state"] == "queued" else ""
                console.print(f"[{'green' if o['state'] in ok_states else 'red'}]{escape(o['unit'])}[/]: "
                              f"{o['state']}{': ' + escape(o['reason']) if o.get('reason') else ''}{extra}{hint}",
                              soft_wrap=True)
    if not ok:
        click.get_current_context().exit(1)


COMMANDS = [coadd]
