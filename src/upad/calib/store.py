"""Operator-declared calibration epochs: the ``calib_epochs`` table.

Breakpoints live in the process database (the single source of truth), so that the lookup that the scheduler runs
sees exactly what ``upad calib epochs`` shows. A breakpoint is never deleted: it is retracted (``active = false``,
with a reason), so that the lookups made before stay explainable.

The table is defined in :mod:`upad.db.models` (:class:`~upad.db.models.CalibEpoch`, schema revision 0003).
"""
from __future__ import annotations

import getpass
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from upad.calib.epochs import Breakpoint
from upad.db.models import CalibEpoch, utcnow
from upad.errors import UpadError

__all__ = ["TABLE", "CalibEpoch", "add_breakpoint", "load_breakpoints", "retract_breakpoint", "table_exists"]

TABLE = "calib_epochs"

_CACHE_KEY = "upad_calib_epochs"


def table_exists(session: Session) -> bool:
    """Whether the ``calib_epochs`` table exists in this database (cached per session)."""
    key = _CACHE_KEY + ":exists"
    if key not in session.info:
        session.info[key] = inspect(session.connection()).has_table(TABLE)
    return bool(session.info[key])


def _require(session: Session) -> None:
    if not table_exists(session):
        raise UpadError("this database has no calib_epochs table (epoch breakpoints)",
                        hint="upgrade the schema with `upad db upgrade` (it needs the migration that adds "
                             "calib_epochs)")


def load_breakpoints(session: Session, *, include_retracted: bool = False) -> list[Breakpoint]:
    """Every active breakpoint, in time order (cached per session; none when the table does not exist)."""
    if not include_retracted and _CACHE_KEY in session.info:
        return session.info[_CACHE_KEY]
    if not table_exists(session):
        return []
    stmt = select(CalibEpoch).order_by(CalibEpoch.time, CalibEpoch.id)
    if not include_retracted:
        stmt = stmt.where(CalibEpoch.active.is_(True))
    out = [Breakpoint(time=e.time, instrument=e.instrument, filter=e.filter, kinds=tuple(e.kinds or ()),
                      reason=e.reason, id=e.id, source=e.source) for e in session.scalars(stmt)]
    if not include_retracted:
        session.info[_CACHE_KEY] = out
    return out


def add_breakpoint(session: Session, bp: Breakpoint, *, metric: dict[str, Any] | None = None,
                   who: str | None = None) -> int:
    """Declare a breakpoint; returns its id. An identical active one (same time, instrument, filter, kinds) is
    not added twice."""
    from upad.calib.config import KINDS

    _require(session)
    if not bp.reason.strip():
        raise UpadError("an epoch breakpoint needs a reason", hint="add --reason 'what changed'")
    bad = [k for k in bp.kinds if k not in KINDS]
    if bad:
        raise UpadError(f"unknown master kind(s) {bad}", hint=f"known kinds: {', '.join(KINDS)}")
    for e in session.scalars(select(CalibEpoch).where(CalibEpoch.time == bp.time, CalibEpoch.active.is_(True))):
        if (e.instrument, e.filter, sorted(e.kinds or [])) == (bp.instrument, bp.filter, sorted(bp.kinds)):
            return e.id
    if who is None:
        try:
            who = getpass.getuser()
        except Exception:  # pragma: no cover - no user name
            who = None
    row = CalibEpoch(time=bp.time, instrument=bp.instrument, filter=bp.filter, kinds=list(bp.kinds),
                     reason=bp.reason, source=bp.source, metric=metric, created_at=utcnow(), created_by=who,
                     active=True)
    session.add(row)
    session.flush()
    session.info.pop(_CACHE_KEY, None)
    return row.id


def retract_breakpoint(session: Session, epoch_id: int, *, reason: str) -> None:
    """Retract (deactivate) a breakpoint, keeping it for the record."""
    _require(session)
    row = session.get(CalibEpoch, epoch_id)
    if row is None:
        raise UpadError(f"no epoch breakpoint {epoch_id}", hint="see `upad calib epochs`")
    if not reason:
        raise UpadError("retracting a breakpoint needs a reason", hint="add --reason 'why'")
    row.active, row.retracted_reason = False, reason
    session.info.pop(_CACHE_KEY, None)
