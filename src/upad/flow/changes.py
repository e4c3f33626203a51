"""The change journal: what happened in the database that can make units of a step ready, or obsolete.

Every flush of a session records, in ``flow_changes``, the frames registered or (in)validated and the products
registered, made current, made stale or marked bad (and unmarked) — whoever made the change: ingest, the
scheduler, ``upad flag``. The scheduler reads the journal from where each step's planning left off
(:class:`~upad.db.models.PlanCursor`) and re-plans only the nights it touches (plus the units that were waiting):
a new night is planned in the same time whether the archive holds a thousand frames or a million.

The hooks are SQLAlchemy mapper events on frames and products (collected during a flush, inserted in one statement
at its end), so ORM writes are journalled without the writers knowing. Bulk SQL statements (``update(...)``, ``insert(...)`` without the ORM)
bypass it: code that writes frames or products that way calls :func:`record` itself.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import event, insert, inspect
from sqlalchemy.orm import Session, object_session

from upad.db.models import Frame, FlowChange, Product, utcnow

__all__ = ["install", "record"]

_INSTALLED = False


def _changed(obj: Any, attr: str) -> bool:
    hist = inspect(obj).attrs[attr].history
    return bool(hist.added or hist.deleted)


def _frame_event(obj: Frame, new: bool) -> str | None:
    if new:
        return "new"
    if _changed(obj, "valid"):
        return "valid" if obj.valid else "invalid"
    return None


def _product_event(obj: Product, new: bool) -> str | None:
    if new:
        return "new"
    if _changed(obj, "is_bad"):
        return "bad" if obj.is_bad else "good"
    if _changed(obj, "is_current"):
        return "current" if obj.is_current else "stale"
    if _changed(obj, "state") and obj.state == "stale":
        return "stale"
    return None


def _night_of_product(obj: Product) -> str | None:
    if obj.night:
        return obj.night
    ctx = obj.context or {}
    night = ctx.get("night")
    return str(night)[:10] if night else None


def _pending(target: Any) -> dict[tuple[str, int], dict[str, Any]] | None:
    session = object_session(target)
    return None if session is None else session.info.setdefault("upad_journal", {})


def _on_frame(new: bool) -> Any:
    def listener(mapper: Any, connection: Any, target: Frame) -> None:
        ev = _frame_event(target, new)
        pending = _pending(target) if ev else None
        if pending is not None:
            pending[("frame", target.id)] = {"subject": "frame", "subject_id": target.id, "step": None,
                                             "night": target.night, "event": ev}
    return listener


def _on_product(new: bool) -> Any:
    def listener(mapper: Any, connection: Any, target: Product) -> None:
        ev = _product_event(target, new)
        pending = _pending(target) if ev else None
        if pending is not None:
            # one entry per product and flush (its latest event): planning needs the night, not every transition
            pending[("product", target.id)] = {"subject": "product", "subject_id": target.id, "step": target.step,
                                               "night": _night_of_product(target), "event": ev}
    return listener


def _after_flush(session: Session, flush_context: Any) -> None:
    pending = session.info.pop("upad_journal", None)
    if pending:
        now = utcnow()
        session.connection().execute(insert(FlowChange), [{**row, "time": now} for row in pending.values()])


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
        # mapper events fire only for frames and products (no scan of the session's objects at every flush); the
        # rows collected during a flush are inserted at its end, in one statement
        event.listen(Frame, "after_insert", _on_frame(True))
        event.listen(Frame, "after_update", _on_frame(False))
        event.listen(Product, "after_insert", _on_product(True))
        event.listen(Product, "after_update", _on_product(False))
        event.listen(Session, "after_flush", _after_flush)
        _INSTALLED = True
