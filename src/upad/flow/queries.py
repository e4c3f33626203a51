"""What a step's ``plan`` may ask of the database: a few query helpers, restricted to the scope of the pass.

A planning pass of the scheduler (:meth:`upad.flow.scheduler.Scheduler.plan`) hands every step a
:class:`PlanContext`. Its helpers return the rows a step groups into units — raw frames, current products —
already restricted to the **scope** of the pass: the nights touched by changes since the step last planned
(new or (in)validated frames, new, current, stale or bad products; see :mod:`upad.flow.changes`) and the nights of
the units that were waiting. A full pass (first pass of a step, new configuration or code version,
``upad run --dry-run``, ``upad reprocess``) has no restriction. Step modules hold no SQL of their own: what they need
beyond these helpers belongs in a query module of their domain (e.g. :mod:`upad.calib.queries`), which receives the
session and the scope.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from upad.db.models import Frame, Job, Product

__all__ = ["PlanContext", "Scope", "current_products", "failed_units", "frames", "session_scope"]


@dataclass(frozen=True)
class Scope:
    """Which units a planning pass looks at: every unit (``full``) or those of ``nights``."""

    full: bool = True
    nights: frozenset[str] = field(default_factory=frozenset)
    reason: str = ""

    def covers(self, night: str | None) -> bool:
        """Whether a unit of ``night`` is in scope (units without a night are only planned in full passes)."""
        return self.full or (night is not None and night in self.nights)

    def describe(self) -> str:
        if self.full:
            return f"full ({self.reason})" if self.reason else "full"
        return f"{len(self.nights)} night(s)" + (f": {', '.join(sorted(self.nights)[:5])}" if self.nights else "")


def _nights_wanted(scope: Scope | None, nights: Iterable[str] | None) -> set[str] | None:
    """The nights a query is restricted to (``None``: no restriction)."""
    if nights is not None:
        wanted = set(nights)
        if scope is not None and not scope.full:
            wanted &= scope.nights
        return wanted
    if scope is not None and not scope.full:
        return set(scope.nights)
    return None


def _in_scope(stmt: Select, column: Any, scope: Scope | None, nights: Iterable[str] | None) -> Select:
    wanted = _nights_wanted(scope, nights)
    return stmt if wanted is None else stmt.where(column.in_(sorted(wanted)))


#: Observation dates the flow plans (``[start, end)``, naive UTC): a stored value outside them (a header's
#: 9999-12-31 registered before ingest checked dates) is left out of every step's planning and reported by
#: :func:`unplannable_frames`, so that no date arithmetic of a step can fail on it.
PLANNABLE_DATES = (dt.datetime(1950, 1, 1), dt.datetime(2200, 1, 1))

#: The frame columns planning sees (the full header and the per-amplifier QC stay in the database).
FRAME_COLUMNS = tuple(c for c in Frame.__table__.columns if c.name not in ("header", "qc_bias", "qc_reasons"))


def frames(session: Session, *, obs_types: Sequence[str] | None = None, valid: bool | None = True,
           nights: Iterable[str] | None = None, scope: Scope | None = None,
           instrument: str | None = None) -> list[Any]:
    """Registered frames (valid ones by default) of the given observation types, ordered by observation time.

    Rows with the frame's attributes (``f.id``, ``f.night``, ``f.filename``, ``f.obs_type``, ``f.filter``,
    ``f.date_obs`` …; not its header), read-only: planning a night of a million-frame archive builds no ORM objects.
    """
    if _nights_wanted(scope, nights) == set():
        return []  # nothing in scope (an empty IN can make a database scan the whole table)
    stmt = select(*FRAME_COLUMNS).where(Frame.date_obs >= PLANNABLE_DATES[0], Frame.date_obs < PLANNABLE_DATES[1])
    if valid is not None:
        stmt = stmt.where(Frame.valid.is_(valid))
    if obs_types:
        stmt = stmt.where(Frame.obs_type.in_(list(obs_types)))
    if instrument:
        stmt = stmt.where(Frame.instrument == instrument)
    stmt = _in_scope(stmt, Frame.night, scope, nights)
    return list(session.execute(stmt.order_by(Frame.date_obs, Frame.id)))


def unplannable_frames(session: Session, *, limit: int = 100) -> list[Any]:
    """Valid frames whose observation date is outside :data:`PLANNABLE_DATES` (id, filename, date_obs)."""
    return list(session.execute(
        select(Frame.id, Frame.filename, Frame.date_obs).where(
            Frame.valid.is_(True), (Frame.date_obs < PLANNABLE_DATES[0]) | (Frame.date_obs >= PLANNABLE_DATES[1]))
        .order_by(Frame.id).limit(limit)))


def current_products(session: Session, kind: str | None = None, *, step: str | None = None,
                     qc: Sequence[str] | None = None, nights: Iterable[str] | None = None,
                     scope: Scope | None = None, context: dict[str, Any] | None = None,
                     usable: bool = True) -> list[Product]:
    """Current products of a kind (or a step): complete and not marked bad when ``usable``; with ``qc``, only those
    whose QC status is one of them; with ``context``, only those whose unit context has these values (e.g.
    ``{"tile_id": 12, "filter": "rSDSS"}``). Ordered by id."""
    if _nights_wanted(scope, nights) == set():
        return []
    stmt = select(Product).where(Product.is_current.is_(True))
    if kind is not None:
        stmt = stmt.where(Product.kind == kind)
    if step is not None:
        stmt = stmt.where(Product.step == step)
    if usable:
        stmt = stmt.where(Product.state == "complete", Product.is_bad.is_(False))
    if qc is not None:
        stmt = stmt.where(Product.qc_status.in_(list(qc)))
    stmt = _in_scope(stmt, Product.night, scope, nights)
    rows = list(session.scalars(stmt.order_by(Product.id)))
    if context:
        rows = [p for p in rows if all((p.context or {}).get(k) == v for k, v in context.items())]
    return rows


def session_scope(session: Session) -> tuple[Scope, int]:
    """The scope of the planning pass a session belongs to, and how many nights around it a lookup may reach
    (a full scope outside planning: ``upad calib lookup``, the review tools)."""
    return session.info.get("upad_scope") or Scope(), int(session.info.get("upad_scope_reach") or 0)


def failed_units(session: Session, step: str) -> set[str]:
    """Unit keys of ``step`` whose latest job failed for good (a recorded error, no retry left): a grouping step
    does not wait for them. Failed jobs are few; the query starts from them (an index on the job state)."""
    failed = {k for (k,) in session.execute(select(Job.unit_key).where(Job.step == step, Job.state == "failed"))}
    if not failed:
        return set()
    latest: dict[str, str] = {}
    keys = sorted(failed)
    for i in range(0, len(keys), 500):
        for key, state in session.execute(select(Job.unit_key, Job.state).where(
                Job.step == step, Job.unit_key.in_(keys[i:i + 500])).order_by(Job.id)):
            latest[key] = state
    return {k for k, st in latest.items() if st == "failed"}


class PlanContext:
    """The query helpers of one step's planning pass (see the module documentation).

    Attributes
    ----------
    session : Session
        The pass's read-only session (for a domain query module; steps themselves use the helpers).
    scope : Scope
        The nights this pass looks at.
    step : str
        The step being planned.
    """

    def __init__(self, session: Session, scope: Scope | None = None, step: str = "", *, reach: int = 0) -> None:
        self.session = session
        self.scope = scope or Scope()
        self.step = step
        # the session carries the scope to the domain query modules (calibration series and lookups)
        session.info["upad_scope"] = self.scope
        session.info["upad_scope_reach"] = reach

    def frames(self, *obs_types: str, valid: bool | None = True, nights: Iterable[str] | None = None,
               instrument: str | None = None) -> list[Any]:
        """Frames of these observation types in the scope (every type when none is given): read-only rows."""
        return frames(self.session, obs_types=obs_types or None, valid=valid, nights=nights, scope=self.scope,
                      instrument=instrument)

    def failed_units(self, step: str) -> set[str]:
        """Units of ``step`` in the scope whose reduction failed for good (see :func:`failed_units`)."""
        return failed_units(self.session, step)

    def current_products(self, kind: str | None = None, *, step: str | None = None,
                         qc: Sequence[str] | None = None, nights: Iterable[str] | None = None,
                         context: dict[str, Any] | None = None) -> list[Product]:
        """Usable current products of ``kind`` (or ``step``) in the scope (see :func:`current_products`)."""
        return current_products(self.session, kind, step=step, qc=qc, nights=nights, scope=self.scope,
                                context=context)
