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
