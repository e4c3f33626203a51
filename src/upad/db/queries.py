"""Read-only queries over the process database, shared by the command line and the portals."""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from upad.db.models import Frame, QuarantinedFile
from upad.db.session import Database

#: Frame columns shown by ``upad frames`` (JSON output has these keys).
FRAME_COLUMNS = ("id", "filename", "night", "obs_type", "filter", "exptime", "date_obs", "tile_id", "airmass",
                 "instrument", "layout", "state", "valid", "qc_status", "qc_sky_median", "qc_sky_noise",
                 "qc_saturated_fraction", "qc_fwhm", "qc_reasons", "path", "sha256")


def frame_to_dict(frame: Frame) -> dict[str, Any]:
    d = {c: getattr(frame, c) for c in FRAME_COLUMNS}
    d["date_obs"] = frame.date_obs.isoformat(timespec="milliseconds")
    return d


def list_frames(db: Database, *, night: str | None = None, obs_type: str | None = None, filter_name: str | None = None,
                tile_id: int | None = None, state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Registered frames, ordered by observation time, optionally filtered."""
    stmt = select(Frame).order_by(Frame.date_obs, Frame.id)
    if night:
        stmt = stmt.where(Frame.night == night)
    if obs_type:
        stmt = stmt.where(Frame.obs_type == obs_type)
    if filter_name:
        stmt = stmt.where(Frame.filter == filter_name)
    if tile_id is not None:
        stmt = stmt.where(Frame.tile_id == tile_id)
    if state:
        stmt = stmt.where(Frame.state == state)
    if limit:
        stmt = stmt.limit(limit)
    with db.session() as s:
        return [frame_to_dict(f) for f in s.scalars(stmt)]


def list_quarantine(db: Database, *, include_resolved: bool = False) -> list[dict[str, Any]]:
    """Files refused by ingest, newest first, with their reasons."""
    stmt = select(QuarantinedFile).order_by(QuarantinedFile.detected_at.desc(), QuarantinedFile.id.desc())
    if not include_resolved:
        stmt = stmt.where(QuarantinedFile.resolved.is_(False))
    with db.session() as s:
        return [{"id": q.id, "filename": q.filename, "category": q.category, "reason": q.reason,
                 "original_path": q.original_path, "quarantine_path": q.quarantine_path,
                 "detected_at": q.detected_at.isoformat(timespec="seconds")} for q in s.scalars(stmt)]


def status_summary(db: Database) -> dict[str, Any]:
    """Counts of frames per state, observation type and QC status, and of quarantined files per category."""
    with db.session() as s:
        by_state = dict(s.execute(select(Frame.state, func.count()).group_by(Frame.state)).all())
        by_type = dict(s.execute(select(Frame.obs_type, func.count()).group_by(Frame.obs_type)).all())
        by_qc = dict(s.execute(select(Frame.qc_status, func.count()).group_by(Frame.qc_status)).all())
        invalid = s.scalar(select(func.count()).select_from(Frame).where(Frame.valid.is_(False)))
        nights = [n for (n,) in s.execute(select(Frame.night).distinct().order_by(Frame.night))]
        quarantine = dict(s.execute(
            select(QuarantinedFile.category, func.count())
            .where(QuarantinedFile.resolved.is_(False)).group_by(QuarantinedFile.category)).all())
    return {
        "frames": {"total": sum(by_state.values()), "by_state": by_state, "by_obs_type": by_type,
                   "by_qc_status": by_qc, "invalid": invalid, "nights": nights},
        "quarantine": {"total": sum(quarantine.values()), "by_category": quarantine},
    }


def list_runs(db: Database) -> list[dict[str, Any]]:
    """Processing runs, newest first."""
    from upad.db.models import Run

    with db.session() as s:
        return [{"id": r.id, "name": r.name, "state": r.state, "command": r.command, "host": r.host, "pid": r.pid,
                 "executor": r.executor, "started_at": r.started_at.isoformat(timespec="seconds"),
                 "ended_at": r.ended_at.isoformat(timespec="seconds") if r.ended_at else None,
                 "summary": r.summary or {}} for r in s.scalars(select(Run).order_by(Run.id.desc()))]


def product_to_dict(p: Any, *, with_inputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    d = {"id": p.id, "step": p.step, "kind": p.kind, "unit": p.unit_key, "state": p.state, "current": p.is_current,
         "provenance_id": p.provenance_id, "created_at": p.created_at.isoformat(timespec="seconds"),
         "files": p.files, "qc_status": p.qc_status, "meta": p.meta, "context": p.context,
         "good_after": p.good_after.isoformat() if p.good_after else None,
         "good_until": p.good_until.isoformat() if p.good_until else None,
         "is_bad": p.is_bad, "bad_reason": p.bad_reason, "stale_reason": p.stale_reason,
         "job_id": p.job_id, "run_id": p.run_id}
    if with_inputs is not None:
        d["inputs"] = with_inputs
    return d


def list_products(db: Database, *, step: str | None = None, current_only: bool = False,
                  limit: int | None = None) -> list[dict[str, Any]]:
    """Products with their files and provenance id."""
    from upad.db.models import Product

    stmt = select(Product).order_by(Product.id)
    if step:
        stmt = stmt.where(Product.step == step)
    if current_only:
        stmt = stmt.where(Product.is_current.is_(True))
    if limit:
        stmt = stmt.limit(limit)
    with db.session() as s:
        return [product_to_dict(p) for p in s.scalars(stmt)]


def flow_summary(db: Database) -> dict[str, Any]:
    """Jobs and products per step and state."""
    from upad.db.models import Job, Product

    with db.session() as s:
        jobs: dict[str, dict[str, int]] = {}
        for step, state, n in s.execute(select(Job.step, Job.state, func.count()).group_by(Job.step, Job.state)):
            jobs.setdefault(step, {})[state] = n
        products: dict[str, dict[str, int]] = {}
        for step, state, cur, n in s.execute(select(Product.step, Product.state, Product.is_current, func.count())
                                             .group_by(Product.step, Product.state, Product.is_current)):
            key = "current" if cur else state
            products.setdefault(step, {})[key] = products.get(step, {}).get(key, 0) + n
        # failed for good (data or code) and blocked (the environment: `upad retry` once fixed), with their errors
        failed = [{"job": j.id, "step": j.step, "unit": j.unit_key, "error": j.error, "state": j.state,
                   "waits_for": j.waits_for}
                  for j in s.scalars(select(Job).where(Job.state.in_(("failed", "blocked"))).order_by(Job.id)
                                     .limit(1000))]
    return {"jobs": jobs, "products": products, "failed_jobs": failed}


def frame_history(db: Database, ref: str) -> dict[str, Any]:
    """Every operation on a frame: its events, and every product built from it (directly or transitively) with
    the jobs, attempts, configuration hashes, inputs and outputs."""
    from upad.db.models import (
        Attempt,
        FrameEvent,
        Job,
        Product,
        Provenance,
        ProvenanceInput,
    )
    from upad.flow.invalidate import find_frame

    with db.session() as s:
        frame = find_frame(s, ref)
        events = [{"time": e.time.isoformat(timespec="seconds"), "event": e.event, "detail": e.detail}
                  for e in s.scalars(select(FrameEvent).where(FrameEvent.frame_id == frame.id)
                                     .order_by(FrameEvent.id))]
        operations = []
        frontier: list[tuple[str, int]] = [("frame", frame.id)]
        seen: set[tuple[str, int]] = set()
        while frontier:
            kind, ident = frontier.pop(0)
            if (kind, ident) in seen:
                continue
            seen.add((kind, ident))
            provs = [p for (p,) in s.execute(select(ProvenanceInput.provenance_id).where(
                ProvenanceInput.input_kind == kind, ProvenanceInput.input_id == ident))]
            for prov_id in provs:
                prov = s.get(Provenance, prov_id)
                job = s.scalar(select(Job).where(Job.provenance_id == prov_id))
                product = s.scalar(select(Product).where(Product.provenance_id == prov_id))
                inputs = [{"kind": i.input_kind, "id": i.input_id, "role": i.role} for i in prov.inputs]
                attempts = [] if job is None else [
                    {"number": a.number, "state": a.state, "host": a.host, "worker": a.worker,
                     "started_at": a.started_at.isoformat(timespec="seconds"),
                     "ended_at": a.ended_at.isoformat(timespec="seconds") if a.ended_at else None,
                     "wall_seconds": a.wall_seconds, "peak_rss_mb": a.peak_rss_mb, "error": a.error}
                    for a in s.scalars(select(Attempt).where(Attempt.job_id == job.id).order_by(Attempt.number))]
                operations.append({
                    "via": f"{kind} {ident}", "step": prov.step, "unit": prov.unit_key, "provenance_id": prov_id,
                    "code_version": prov.code_version, "config_hash": prov.config_hash, "config": prov.config,
                    "inputs": inputs, "job": None if job is None else {"id": job.id, "state": job.state,
                                                                       "error": job.error},
                    "attempts": attempts, "product": None if product is None else product_to_dict(product)})
                if product is not None:
                    frontier.append(("product", product.id))
        return {"frame": frame_to_dict(frame), "events": events, "operations": operations}
