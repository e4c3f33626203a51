"""Which masters apply to a frame, and why: one function, used by the reduction step and by ``upad calib lookup``.

:func:`select_masters` answers for a science frame; :func:`find_master` for one kind of master (it is also what the
master steps use for their own inputs, e.g. the master bias of a flat). The rules, per kind:

1. **same configuration**: instrument (camera on its telescope), raw layout, read mode; plus the filter for flats,
   fringe maps and illumination corrections, and the flat type for flats and illumination corrections;
2. **usable**: the current version of its unit, complete, not marked bad (``upad flag ID --product``);
3. **same epoch**: no operator-declared breakpoint (``upad calib epochs``) for this configuration and kind lies
   between the master's night and the frame;
4. **valid at the frame's time** (``good_after <= DATE-OBS < good_until``: a nightly master is valid over its
   night); among several, the closest in time;
5. otherwise, if a master of the frame's own night is **still to come** (its series is being taken, it is ready or
   being built), the frame **waits** for it (``wait_for_expected``);
6. otherwise the **nearest** usable master within ``fallback_nights`` nights (earlier one first on a tie) is used,
   and the answer says it is a fallback;
7. otherwise the kind is **missing**: a required kind makes the frame wait, with a reason that says what is missing
   and what to do; an optional kind is skipped.

Flats follow the preference order of ``flat_types`` (e.g. dome, then sky): a valid flat of any preferred type beats
a fallback; the illumination correction must have been made against a flat of the same type as the flat chosen.
Fringe maps are looked up only for filters with ``fringing = true``.

Everything is read-only; results are cached in ``session.info`` for the duration of the session (one planning
pass of the scheduler).
"""
from __future__ import annotations

import datetime as dt
import functools
from dataclasses import asdict, dataclass, field
from typing import Any

from collections.abc import Callable

from sqlalchemy.orm import Session

from upad.calib import queries, rules
from upad.calib.config import CalibLookupBase, LookupConfig
from upad.calib.epochs import applies, epoch_bounds
from upad.calib.model import (
    Candidate,
    ConfigKey,
    FrameInfo,
    frame_info,
    frame_key,
    instrument_site,
    night_distance,
)
from upad.calib.queries import candidates
from upad.flow.step import InputRef
from upad.nights import night_of

__all__ = [
    "Candidate",
    "Choice",
    "MasterSelection",
    "Missing",
    "candidates",
    "find_master",
    "select_flat",
    "select_masters",
]


@dataclass
class Choice:
    """The master chosen for one kind."""

    kind: str
    product_id: int
    provenance_id: str
    unit_key: str
    night: str
    rule: str  # 'valid' | 'fallback'
    reason: str
    distance_nights: int = 0
    flat_type: str | None = None
    qc_status: str | None = None
    good_after: str | None = None
    good_until: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": "chosen", **asdict(self)}


@dataclass
class Missing:
    """No master for one kind: ``expected`` when one is still to come (then the frame waits for it)."""

    kind: str
    reason: str
    expected: bool = False
    required: bool = True
    epoch_note: str = ""

    @property
    def waiting(self) -> bool:
        return self.expected or self.required

    def to_dict(self) -> dict[str, Any]:
        status = "waiting" if self.expected else ("missing" if self.required else "skipped")
        return {"status": status, **asdict(self)}


@dataclass
class MasterSelection:
    """The answer of :func:`select_masters` for one frame."""

    frame_id: int
    filename: str
    configuration: dict[str, Any]
    chosen: dict[str, Choice] = field(default_factory=dict)
    missing: dict[str, Missing] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """True when nothing required is missing and nothing expected is still to come."""
        return not any(m.waiting for m in self.missing.values())

    @property
    def reason(self) -> str:
        """Why the frame waits (empty when ready)."""
        return "; ".join(m.reason for m in self.missing.values() if m.waiting)

    def inputs(self) -> list[InputRef]:
        """The chosen masters as inputs of a unit, with the kind as role (``bias``, ``flat`` …)."""
        return [InputRef("product", c.product_id, kind) for kind, c in self.chosen.items()]

    def record(self) -> dict[str, Any]:
        """A compact, JSON-safe record of the choice and its reasons (for a product's meta or context)."""
        return {kind: {"product": c.product_id, "provenance": c.provenance_id[:12], "rule": c.rule,
                       "night": c.night, "distance_nights": c.distance_nights} for kind, c in self.chosen.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"frame_id": self.frame_id, "filename": self.filename, "configuration": self.configuration,
                "ready": self.ready, "reason": self.reason,
                "masters": {**{k: c.to_dict() for k, c in self.chosen.items()},
                            **{k: m.to_dict() for k, m in self.missing.items()}},
                "notes": self.notes}


def _indexed(session: Session, kind: str, key: ConfigKey) -> tuple[list[str], list[Candidate]]:
    """Usable masters of ``kind`` with configuration ``key``, sorted by night (with the list of their nights)."""
    cache = queries.cache(session)
    ck = ("index", kind)
    if ck not in cache:
        index: dict[tuple[str, ...], list[Candidate]] = {}
        for c in candidates(session, kind):
            ctx = c.context
            index.setdefault((ctx.get("instrument"), ctx.get("layout"), ctx.get("read_mode"), ctx.get("filter"),
                              ctx.get("flat_type")), []).append(c)
        cache[ck] = {k: ([c.night for c in v], v) for k, v in
                     ((k, sorted(v, key=lambda c: (c.night, c.product_id))) for k, v in index.items())}
    out_n: list[str] = []
    out_c: list[Candidate] = []
    for k, (nights, cands) in cache[ck].items():
        if key.matches(dict(zip(("instrument", "layout", "read_mode", "filter", "flat_type"), k))):
            out_n += nights
            out_c += cands
    if len(cache[ck]) > 1:
        order = sorted(range(len(out_c)), key=lambda i: (out_n[i], out_c[i].product_id))
        out_n, out_c = [out_n[i] for i in order], [out_c[i] for i in order]
    return out_n, out_c


def _window(session: Session, kind: str, key: ConfigKey, night: str, nights: int) -> list[Candidate]:
    """Usable masters of ``kind`` and ``key`` whose night is within ``nights`` (at least 1) of ``night``."""
    import bisect

    all_nights, cands = _indexed(session, kind, key)
    d = dt.date.fromisoformat(night)
    span = dt.timedelta(days=max(1, nights))
    lo = bisect.bisect_left(all_nights, (d - span).isoformat())
    hi = bisect.bisect_right(all_nights, (d + span).isoformat())
    return cands[lo:hi]


def _epoch(session: Session, kind: str, key: ConfigKey, when: dt.datetime) -> tuple[dt.datetime | None,
                                                                                   dt.datetime | None, list[str]]:
    bps = [b for b in queries.breakpoints(session) if applies(b, instrument=key.instrument, filter_name=key.filter,
                                                          kind=kind)]
    start, end = epoch_bounds(when, bps)
    reasons = [f"{b.time.isoformat(timespec='minutes')} ({b.reason})" for b in bps
               if b.time in (start, end)]
    return start, end, reasons


#: Tells whether the master of a kind, configuration and night is still to come (and why), or ``None``. The
#: lookup does not plan masters: :mod:`upad.calib.planning`, which does, registers its answer here when it is
#: imported (the package imports it), so the two modules do not import each other.
ExpectedSource = Callable[[Session, str, ConfigKey, str], "str | None"]
_EXPECTED: list[ExpectedSource] = []


def set_expected_source(source: ExpectedSource) -> None:
    """Register the function that says whether a master of a night is still to come (see :data:`ExpectedSource`)."""
    _EXPECTED[:] = [source]


def _expected(session: Session, kind: str, key: ConfigKey, night: str) -> str | None:
    return _EXPECTED[0](session, kind, key, night) if _EXPECTED else None


def find_master(session: Session, kind: str, key: ConfigKey, *, when: dt.datetime, night: str | None = None,
                config: CalibLookupBase | None = None, required: bool = True,
                flat_type: str | None = None) -> Choice | Missing:
    """The master of ``kind`` for configuration ``key`` at time ``when`` (see the module rules).

    Parameters
    ----------
    session : a database session (read-only use).
    kind : ``bias``, ``dark``, ``flat``, ``fringe``, ``illumination`` or ``bpm``.
    key : the configuration (:meth:`ConfigKey.for_kind` of the frame's).
    when : the frame's ``DATE-OBS`` (UTC).
    night : the frame's night (default: from ``when``).
    config : lookup parameters (``fallback_nights``, ``wait_for_expected``).
    required : whether a missing master makes the frame wait.
    flat_type : restrict flats and illumination corrections to this flat type.
    """
    config = config or _default_lookup()
    night = night or night_of(when, instrument_site(key.instrument))
    key = key.for_kind(kind, flat_type=flat_type)
    window = config.fallback_nights
    # masters are valid over their night: only those within the fallback window (at least ±1 night) can apply
    cands = _window(session, kind, key, night, window)
    start, end, bp_reasons = _epoch(session, kind, key, when)
    usable = [c for c in cands if rules.in_epoch(c, start, end)]
    n_other_epoch = len(cands) - len(usable)
    what = f"master {kind} for {key.describe()}"

    def choice(c: Candidate, rule: str, reason: str) -> Choice:
        return Choice(kind, c.product_id, c.provenance_id, c.unit_key, c.night, rule, reason,
                      night_distance(night, c.night), c.context.get("flat_type"), c.qc_status,
                      c.good_after.isoformat() if c.good_after else None,
                      c.good_until.isoformat() if c.good_until else None)

    best = rules.best_valid(usable, when)
    if best is not None:
        return choice(best, "valid", f"{what}: product {best.product_id} ({best.unit_key}) is valid at "
                                     f"{when.isoformat(timespec='seconds')}")
    if config.wait_for_expected:
        exp = _expected(session, kind, key, night)
        if exp is not None:
            return Missing(kind, f"waiting for the {what} of night {night}: {exp}", expected=True,
                           required=required)
    best = rules.nearest_fallback(usable, night, window)
    if best is not None:
        d = night_distance(night, best.night)
        return choice(best, "fallback", f"{what}: none valid on night {night}; fallback to product "
                                        f"{best.product_id} of night {best.night} ({d:+d} nights, window "
                                        f"±{window})")
    epoch_note = ""
    if n_other_epoch:
        epoch_note = (f"; {n_other_epoch} master(s) exist in other epochs (breakpoints "
                      f"{', '.join(bp_reasons) or 'declared'})")
    hint = ("take calibration frames, widen fallback_nights" if required
            else "it is optional and will be skipped")
    return Missing(kind, f"no {what} within ±{window} nights of {night}{epoch_note} ({hint})", expected=False,
                   required=required, epoch_note=epoch_note)


@functools.cache
def _default_lookup() -> LookupConfig:
    return LookupConfig()


@functools.cache
def _lookup_config(fallback_nights: int, flat_types: tuple[str, ...]) -> CalibLookupBase:
    """A lookup configuration without waiting (configurations are immutable: made once each)."""
    return CalibLookupBase.from_mapping({"fallback_nights": fallback_nights, "flat_types": flat_types,
                                         "wait_for_expected": False})


def select_flat(session: Session, key: ConfigKey, *, when: dt.datetime, night: str | None = None,
                config: CalibLookupBase | None = None, required: bool = True) -> Choice | Missing:
    """The flat for ``key`` following the preference order of ``config.flat_types``: a valid flat of the first
    type that has one; else wait for an expected one (in preference order); else the nearest fallback (ties go to
    the preferred type)."""
    config = config or _default_lookup()
    night = night or night_of(when, instrument_site(key.instrument))
    strict = _lookup_config(0, tuple(config.flat_types))
    results = {t: find_master(session, "flat", key, when=when, night=night, config=strict, required=required,
                              flat_type=t) for t in config.flat_types}
    for t in config.flat_types:
        r = results[t]
        if isinstance(r, Choice) and r.rule == "valid":
            return r
    if config.wait_for_expected:
        for t in config.flat_types:
            exp = _expected(session, "flat", key.for_kind("flat", flat_type=t), night)
            if exp is not None:
                return Missing("flat", f"waiting for the {t} flat of night {night} for {key.filter}: {exp}",
                               expected=True, required=required)
    loose = _lookup_config(config.fallback_nights, tuple(config.flat_types))
    fallbacks = []
    epoch_notes = []
    for rank, t in enumerate(config.flat_types):
        r = find_master(session, "flat", key, when=when, night=night, config=loose, required=required, flat_type=t)
        if isinstance(r, Choice):
            fallbacks.append((abs(r.distance_nights), r.distance_nights > 0, rank, r))
        elif r.epoch_note:
            epoch_notes.append(f"{t}{r.epoch_note}")
    if fallbacks:
        return min(fallbacks, key=lambda x: x[:3])[3]
    types = "/".join(config.flat_types)
    note = "".join(epoch_notes)
    failed = _failed_flats(session, key, night, config.flat_types)
    return Missing("flat", f"no {types} master flat for {key.for_kind('fringe').describe()} within "
                           f"±{config.fallback_nights} nights of {night}{note}{failed} (take flats in {key.filter}, "
                           "or widen fallback_nights)", expected=False, required=required, epoch_note=note)


def _failed_flats(session: Session, key: ConfigKey, night: str, flat_types: tuple[str, ...] | list[str]) -> str:
    """``'; the sky master flat of night N failed: <why>'`` for every flat type whose master of the night was tried
    and failed (all flats excluded by the flat-field QC …), ``'; the sky flats of night N cannot make a master:
    <why>'`` where the night's flats are too few: what ``upad run --dry-run`` shows."""
    from upad.calib.planning import planned_masters

    out = []
    planned = None
    for t in flat_types:
        unit_key = key.for_kind("flat", flat_type=t).unit_key(night)
        job = queries.latest_job(session, "master_flat", unit_key)
        if job is not None and job.state == "failed":
            why = " ".join(str(job.error or "no reason recorded").split())
            out.append(f"; the {t} master flat of night {night} failed: {why[:400]}")
            continue
        if job is None:
            planned = planned_masters(session, "flat") if planned is None else planned
            pm = planned.get(unit_key)
            if pm is not None and pm.state in ("insufficient", "missing") and pm.unit.reason:
                out.append(f"; the {t} flats of night {night} cannot make a master: {pm.unit.reason}")
    return "".join(out)


def _frame(session: Session, frame: Any) -> FrameInfo:
    if isinstance(frame, FrameInfo):
        return frame
    if isinstance(frame, int):
        return queries.frame(session, frame)
    return frame_info(frame)


def _fringes(instrument: str, filter_name: str | None) -> bool:
    from upad.instruments import get_filter_system, get_instrument

    if not filter_name:
        return False
    try:
        f = get_filter_system(get_instrument(instrument).filter_system).lookup(filter_name)
    except KeyError:
        return False
    return bool(f and f.fringing)


def select_masters(session: Session, frame: Any, config: LookupConfig | None = None, *,
                   kinds: tuple[str, ...] | None = None) -> MasterSelection:
    """Every master that applies to ``frame`` (a ``Frame`` row, its id, or a :class:`FrameInfo`), and why.

    This is the one lookup of upad: the reduction step builds its unit from it (``selection.ready``,
    ``selection.reason``, ``selection.inputs()``) and ``upad calib lookup`` prints it.

    Parameters
    ----------
    session : a database session (read-only use).
    frame : the science (or any) frame.
    config : lookup parameters (default :class:`LookupConfig`).
    kinds : restrict to these kinds (default ``config.kinds``).
    """
    config = config or _default_lookup()
    fi = _frame(session, frame)
    base = frame_key(fi)
    kinds = tuple(kinds or config.kinds)
    sel = MasterSelection(fi.id, fi.filename, {"instrument": base.instrument, "telescope": fi.telescope,
                                               "detector": fi.detector, "layout": base.layout,
                                               "read_mode": base.read_mode, "filter": base.filter,
                                               "date_obs": fi.date_obs.isoformat(timespec="seconds"),
                                               "night": fi.night})
    when, night = fi.date_obs, fi.night
    for kind in kinds:
        required = kind in config.required
        if kind == "fringe":
            if not _fringes(base.instrument, base.filter):
                sel.notes.append(f"fringe: filter {base.filter} does not fringe (not looked up)")
                continue
        if kind == "flat":
            res = select_flat(session, base, when=when, night=night, config=config, required=required)
        elif kind == "illumination":
            flat = sel.chosen.get("flat")
            if flat is None:
                res = Missing("illumination", "no flat chosen, so no illumination correction (it must match the "
                                              "flat's type)", expected=False, required=required)
            else:
                res = find_master(session, "illumination", base, when=when, night=night, config=config,
                                  required=required, flat_type=flat.flat_type)
        else:
            res = find_master(session, kind, base, when=when, night=night, config=config, required=required)
        if isinstance(res, Choice):
            sel.chosen[kind] = res
        else:
            sel.missing[kind] = res
    return sel
