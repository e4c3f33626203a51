"""The change journal: what happened in the database that can make units of a step ready, or obsolete.

Every flush of a session records, in ``flow_changes``, the frames registered or (in)validated and the products
registered, made current, made stale or marked bad (and unmarked) — whoever made the change: ingest, the
scheduler, ``upad flag``. The scheduler reads the journal from where each step's planning left off
(:class:`~upad.db.models.PlanCursor`) and re-plans only the nights it touches (plus the units that were waiting):
a new night is planned in the same time whether the archive holds a thousand frames or a million.

The hook is a SQLAlchemy ``after_flush`` listener on every :class:`~sqlalchemy.orm.Session`, so ORM writes are
journalled without the writers knowing. Bulk SQL statements (``update(...)``, ``insert(...)`` without the ORM)
bypass it: code that writes frames or products that way calls :func:`record` itself.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import event, insert, inspect
from sqlalchemy.orm import Session

from upad.db.models import Frame, FlowChange, Product, utcnow

__all__ = ["install", "record"]

_INSTALLED = False


def _changed(obj: Any, attr: str) -> bool:
    hist = inspect(obj).attrs[attr].history
    return bool(hist.added or hist.deleted)


def _frame_events(obj: Frame, new: bool) -> list[str]:
    if new:
        return ["new"]
    if _changed(obj, "valid"):
        return ["valid" if obj.valid else "invalid"]
    return []


def _product_events(obj: Product, new: bool) -> list[str]:
    if new:
        return ["new"]
    out = []
    if _changed(obj, "is_current"):
        out.append("current" if obj.is_current else "stale")
    elif _changed(obj, "state") and obj.state == "stale":
        out.append("stale")
    if _changed(obj, "is_bad"):
        out.append("bad" if obj.is_bad else "good")
    return out


def _night_of_product(obj: Product) -> str | None:
    if obj.night:
        return obj.night
    ctx = obj.context or {}
    night = ctx.get("night")
    return str(night)[:10] if night else None


def _after_flush(session: Session, flush_context: Any) -> None:
    rows: list[dict[str, Any]] = []
    now = utcnow()
    for objects, new in ((session.new, True), (session.dirty, False)):
        for obj in objects:
            if isinstance(obj, Frame):
                rows += [{"time": now, "subject": "frame", "subject_id": obj.id, "step": None, "night": obj.night,
                          "event": ev} for ev in _frame_events(obj, new)]
            elif isinstance(obj, Product):
                rows += [{"time": now, "subject": "product", "subject_id": obj.id, "step": obj.step,
                          "night": _night_of_product(obj), "event": ev} for ev in _product_events(obj, new)]
    if rows:
        session.connection().execute(insert(FlowChange), rows)


def record(session: Session, subject: str, ids: Iterable[int], *, event: str, night: str | None = None,
           step: str | None = None) -> None:
    """Journal changes made without the ORM (bulk statements)."""
    now = utcnow()
    rows = [{"time": now, "subject": subject, "subject_id": i, "step": step, "night": night, "event": event}
            for i in ids]
    if rows:
        session.execute(insert(FlowChange), rows)


def install() -> None:
    """Register the journal hook on every session (idempotent)."""
    global _INSTALLED
    if not _INSTALLED:
        event.listen(Session, "after_flush", _after_flush)
        _INSTALLED = True
