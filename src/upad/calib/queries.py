"""The SQL of calibration planning and lookup, in one place (read-only, cached per session).

Everything here reads the process database for :mod:`upad.calib.planning` (series of calibration frames, the extent
of an instrument's data, the latest job of a master unit) and :mod:`upad.calib.lookup` (the usable masters); the
decisions are made by the pure functions of :mod:`upad.calib.rules`. Inside a planning pass the reads are restricted
to the nights of the pass's scope (:func:`upad.flow.queries.session_scope`), and a lookup's masters to the nights
within reach of them.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from upad.calib.model import STEP_OF, Candidate, FrameInfo, frame_info
from upad.calib.store import load_breakpoints
from upad.db.models import Frame, Job, Product
from upad.flow.queries import PLANNABLE_DATES, session_scope

__all__ = ["breakpoints", "cache", "candidates", "frame", "instrument_extent", "latest_job", "load_frames"]


def cache(session: Session) -> dict[Any, Any]:
    """The per-session cache of planning and lookup reads (one planning pass, one command)."""
    return session.info.setdefault("upad_calib_cache", {})


def load_frames(session: Session, obs_types: Sequence[str]) -> list[FrameInfo]:
    """Valid frames of these observation types in the scope of the planning pass, in time order (cached per
    session)."""
    key = ("frames", tuple(obs_types))
    memo = cache(session)
    if key not in memo:
        cols = (Frame.id, Frame.filename, Frame.instrument, Frame.telescope, Frame.detector, Frame.layout,
                Frame.read_mode, Frame.obs_type, Frame.filter, Frame.exptime, Frame.date_obs, Frame.night, Frame.ra,
                Frame.dec)
        stmt = select(*cols).where(Frame.valid.is_(True), Frame.obs_type.in_(list(obs_types)),
                                   Frame.date_obs >= PLANNABLE_DATES[0], Frame.date_obs < PLANNABLE_DATES[1])
        scope, _ = session_scope(session)
        if not scope.full:
            stmt = stmt.where(Frame.night.in_(sorted(scope.nights)))
        rows = session.execute(stmt.order_by(Frame.date_obs, Frame.id))
        memo[key] = [FrameInfo(*r[:9], float(r[9] or 0.0), *r[10:]) for r in rows]
    return memo[key]


def instrument_extent(session: Session, instrument: str) -> tuple[dt.datetime | None, str | None]:
    """Latest ``date_obs`` and latest night of any ingested frame of an instrument (cached per session; two index
    look-ups, whatever the size of the archive)."""
    memo = cache(session).setdefault("extent", {})
    if instrument not in memo:
        t = session.scalar(select(func.max(Frame.date_obs)).where(
            Frame.instrument == instrument, Frame.date_obs >= PLANNABLE_DATES[0], Frame.date_obs < PLANNABLE_DATES[1]))
        n = session.scalar(select(Frame.night).where(Frame.instrument == instrument, Frame.date_obs == t)
                           .limit(1)) if t is not None else None
        memo[instrument] = (t, n)
    return memo[instrument]


def latest_job(session: Session, step: str, unit_key: str) -> Job | None:
    """The most recent job of a unit (cached per session for all units of ``step``)."""
    memo = cache(session).setdefault(("jobs", step), {})
    if unit_key not in memo:
        memo[unit_key] = session.scalar(select(Job).where(Job.step == step, Job.unit_key == unit_key)
                                         .order_by(Job.id.desc()).limit(1))
    return memo[unit_key]


def candidates(session: Session, kind: str) -> list[Candidate]:
    """Usable masters of ``kind`` (current, complete, not bad), cached per session."""
    memo = cache(session)
    key = ("candidates", kind)
    if key not in memo:
        stmt = (select(Product.id, Product.provenance_id, Product.unit_key, Product.context, Product.good_after,
                       Product.good_until, Product.qc_status)
                .where(Product.step == STEP_OF[kind], Product.is_current.is_(True), Product.is_bad.is_(False),
                       Product.state == "complete"))
        scope, reach = session_scope(session)
        if not scope.full and not scope.nights:
            memo[key] = []  # a pass with nothing in scope looks nothing up
            return memo[key]
        if not scope.full and scope.nights:
            # a planning pass of a few nights: only masters within reach of them (the widest fallback window)
            lo = dt.date.fromisoformat(min(scope.nights)) - dt.timedelta(days=reach + 1)
            hi = dt.date.fromisoformat(max(scope.nights)) + dt.timedelta(days=reach + 1)
            stmt = (stmt.where(Product.kind == STEP_OF[kind], Product.night >= lo.isoformat(),
                               Product.night <= hi.isoformat())
                    # the (kind, night) index: SQLite, without statistics, would walk every current master
                    .with_hint(Product, "INDEXED BY ix_products_kind_night", "sqlite"))
        rows = session.execute(stmt.order_by(Product.id))
        out = []
        for pid, prov, ukey, ctx, ga, gu, qc in rows:
            ctx = ctx or {}
            night = ctx.get("night") or ukey.rsplit("/", 1)[-1]
            out.append(Candidate(pid, prov, ukey, night, ga, gu, ctx, qc))
        memo[key] = out
    return memo[key]




def breakpoints(session: Session) -> list[Any]:
    """The active epoch breakpoints (operator-declared), cached per session."""
    c = cache(session)
    if "breakpoints" not in c:
        c["breakpoints"] = load_breakpoints(session)
    return c["breakpoints"]


def frame(session: Session, frame_id: int) -> FrameInfo:
    """A frame by id, as planning sees it (``KeyError`` when there is none)."""
    row = session.get(Frame, frame_id)
    if row is None:
        raise KeyError(f"no frame {frame_id}")
    return frame_info(row)
