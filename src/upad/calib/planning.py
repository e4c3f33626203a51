"""Calibration series in the database and the master units they make (scheduler side, read-only).

A *series* is the set of valid raw frames of one kind, instrumental configuration and night: the biases of
``mini/MODE_5/readout`` on 2025-03-01, the dome flats in rSDSS, the science frames in zSDSS (for fringe maps and
illumination corrections). A master is made from a *complete* series only, otherwise a master built from a partial
series would be superseded (and everything built from it made stale) as soon as the next frame arrives:

- calibration series (bias, dark, flats) are complete when a later frame of the same instrument has been ingested
  (any type: the operators moved on) or the night is over;
- science series (fringe, illumination) are complete when a frame of a later night has been ingested or the night is
  over.

Nights follow the raw-format contract: night ``N`` runs from ``N 12:00`` local mean time at the instrument's site to
the next noon (:mod:`upad.nights`, re-exported here as :func:`night_start`, :func:`night_end`, :func:`night_of`; UTC);
a nightly master is valid over its night at its instrument's site.

:func:`planned_masters` builds the units of every master step (ready, or waiting with a reason and a state), used by
the steps' ``plan`` and by the lookup to know whether a master of a night is still to come.
"""
from __future__ import annotations

import datetime as dt
import functools
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from upad.calib import lookup, rules
from upad.calib.config import (
    BadPixelConfig,
    MasterBiasConfig,
    MasterDarkConfig,
    MasterFlatConfig,
    MasterFringeConfig,
    MasterIllumConfig,
    SignatureConfig,
)
from upad.calib.lookup import Choice, find_master, select_flat
from upad.calib.model import (
    KIND_OF,
    STEP_OF,
    ConfigKey,
    FrameInfo,
    frame_info,
    frame_key,
    instrument_site,
    night_distance,
)
from upad.calib.queries import cache as _cache
from upad.calib.queries import candidates, instrument_extent, latest_job, load_frames
from upad.config import StepConfig
from upad.db.models import Product, utcnow
from upad.flow.step import InputRef, Unit
from upad.nights import default_site, night_end, night_of, night_start

__all__ = [
    "KIND_OF",
    "STEP_OF",
    "ConfigKey",
    "FrameInfo",
    "PlannedMaster",
    "Series",
    "default_config",
    "expected_reason",
    "frame_info",
    "frame_key",
    "instrument_site",
    "latest_job",
    "load_frames",
    "night_distance",
    "night_end",
    "night_of",
    "night_start",
    "now_utc",
    "planned_masters",
    "series",
    "series_complete",
]

_OBS_TYPES = {"bias": ("bias",), "dark": ("dark",), "flat": ("flat-dome", "flat-sky"), "science": ("science",)}
FLAT_TYPE_OF_OBS = {"flat-dome": "dome", "flat-sky": "sky"}

_DEFAULT_CONFIGS: dict[str, type[StepConfig]] = {
    "bias": MasterBiasConfig, "dark": MasterDarkConfig, "flat": MasterFlatConfig, "fringe": MasterFringeConfig,
    "illumination": MasterIllumConfig, "bpm": BadPixelConfig, "signature": SignatureConfig}


@functools.cache
def default_config(kind: str) -> StepConfig:
    """The default configuration of the step making masters of ``kind`` (configurations are immutable: one each)."""
    return _DEFAULT_CONFIGS[kind]()


# ------------------------------------------------------------------------------------------------------ time
# night_start(night, site), night_end(night, site), night_of(when, site): upad.nights (one definition; the site is
# the instrument's, e.g. ``night_end(s.night, s.key.instrument)``).


def __getattr__(name: str) -> Any:
    if name == "SITE_LONGITUDE":  # deprecated: the site is the instrument's (upad.nights, Instrument.site)
        return default_site().longitude
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def now_utc(session: Session | None = None) -> dt.datetime:
    """The current UTC time; ``session.info['upad_now']`` overrides it (tests, replays)."""
    if session is not None and session.info.get("upad_now") is not None:
        return session.info["upad_now"]
    return utcnow()


# ------------------------------------------------------------------------------------------------------ series
@dataclass
class Series:
    """Valid raw frames of one kind, configuration and night."""

    kind: str
    key: ConfigKey
    night: str
    frames: list[FrameInfo] = field(default_factory=list)

    @property
    def first(self) -> dt.datetime:
        return self.frames[0].date_obs

    @property
    def last(self) -> dt.datetime:
        return self.frames[-1].date_obs

    def pointings(self) -> int:
        """Distinct pointings (RA, Dec rounded to 1 arcsec; frames without coordinates count apart)."""
        seen = set()
        for f in self.frames:
            seen.add((round(f.ra * 3600), round(f.dec * 3600)) if f.ra is not None and f.dec is not None
                     else ("id", f.id))
        return len(seen)

    def context(self, kind: str | None = None) -> dict[str, Any]:
        f0 = self.frames[0]
        ctx = {"night": self.night, "kind": kind or self.kind, "instrument": self.key.instrument,
               "telescope": f0.telescope, "detector": f0.detector, "layout": self.key.layout,
               "read_mode": self.key.read_mode, "n_frames": len(self.frames),
               "first": self.first.isoformat(timespec="seconds"), "last": self.last.isoformat(timespec="seconds")}
        if self.key.filter is not None:
            ctx["filter"] = self.key.filter
        if self.key.flat_type is not None:
            ctx["flat_type"] = self.key.flat_type
        return ctx


def series(session: Session, what: str) -> list[Series]:
    """Series of ``what`` (``bias``, ``dark``, ``flat``, ``science``), cached per session."""
    cache = _cache(session)
    ck = ("series", what)
    if ck in cache:
        return cache[ck]
    groups: dict[tuple[ConfigKey, str], Series] = {}
    for fi in load_frames(session, _OBS_TYPES[what]):
        base = frame_key(fi)
        if what in ("bias", "dark"):
            key = base.for_kind("bias")
        elif what == "flat":
            if not fi.filter:
                continue
            key = ConfigKey(base.instrument, base.layout, base.read_mode, fi.filter, FLAT_TYPE_OF_OBS[fi.obs_type])
        else:
            if not fi.filter:
                continue
            key = ConfigKey(base.instrument, base.layout, base.read_mode, fi.filter)
        s = groups.get((key, fi.night))
        if s is None:
            s = groups[(key, fi.night)] = Series(what, key, fi.night)
        s.frames.append(fi)
    out = sorted(groups.values(), key=lambda s: (s.night, s.key.prefix()))
    cache[ck] = out
    return out


def series_complete(session: Session, s: Series, *, rule: str) -> tuple[bool, str]:
    """Whether series ``s`` is complete (see the module documentation); the reason when it is not.

    ``rule``: ``'next_frame'`` (calibrations) or ``'next_night'`` (science series).
    """
    last_time, last_night = instrument_extent(session, s.key.instrument)
    complete, why = rules.series_completion(now=now_utc(session),
                                            night_end=night_end(s.night, instrument_site(s.key.instrument)),
                                            series_last=s.last, series_night=s.night, instrument_last=last_time,
                                            instrument_last_night=last_night, rule=rule)
    return complete, "" if complete else f"the {s.kind} series of night {s.night} may still grow: {why}"


# ------------------------------------------------------------------------------------------------------ units
#: States of a planned master: ``ready``; waiting for its series to complete (``incomplete``) or for an input
#: master that will come (``pending``) — both *expected*; or not possible now: too few frames (``insufficient``),
#: a required input master missing (``missing``).
STATES = ("ready", "incomplete", "pending", "insufficient", "missing")


@dataclass
class PlannedMaster:
    """A master unit with its readiness state (see :data:`STATES`)."""

    kind: str
    key: ConfigKey
    night: str
    unit: Unit
    state: str

    @property
    def expected(self) -> bool:
        return self.state in ("ready", "incomplete", "pending")


def expected_reason(session: Session, pm: PlannedMaster) -> str | None:
    """Why the master of unit ``pm`` is still to come (being built, ready to be built, or waiting for its series or
    inputs), or ``None`` when it will not come without a change (too few frames, a required input missing, its
    job failed, or it exists and was marked bad)."""
    job = latest_job(session, STEP_OF[pm.kind], pm.unit.key)
    if job is not None:
        if job.state in ("queued", "running"):
            return f"the master {pm.kind} {pm.unit.key} is being built (job {job.id}, {job.state})"
        if job.state == "failed":
            return None
        if job.state == "done" and job.product_id is not None:
            prod = session.get(Product, job.product_id)
            if prod is not None and (prod.is_bad or prod.is_current):
                return None
    if pm.state == "ready":
        return f"the master {pm.kind} {pm.unit.key} is ready to be built"
    if pm.state in ("incomplete", "pending"):
        return f"the master {pm.kind} {pm.unit.key} is not built yet: {pm.unit.reason}"
    return None


def _config_key(config: StepConfig) -> Any:
    try:
        return (type(config).__name__, hash(config), config)  # immutable configurations compare by value
    except TypeError:
        return type(config).__name__ + json.dumps(config.as_dict(), sort_keys=True, default=str)


def session_config(session: Session, kind: str) -> StepConfig:
    """The configuration of the step making masters of ``kind`` in this planning pass: the data root's (the
    scheduler puts every step's configuration in ``session.info['upad_step_configs']``), else the default. A lookup
    must see what the step will really build (e.g. no illumination correction when ``build_flat_types`` is empty)."""
    configs = session.info.get("upad_step_configs") or {}
    return configs.get(STEP_OF[kind]) or default_config(kind)


def planned_masters(session: Session, kind: str, config: StepConfig | None = None) -> dict[str, PlannedMaster]:
    """Every unit of the step that makes masters of ``kind``, by unit key (cached per session and config; the
    configuration defaults to the pass's, :func:`session_config`)."""
    config = config or session_config(session, kind)
    cache = _cache(session)
    ck = ("planned", kind, _config_key(config))
    if ck in cache:
        return cache[ck]
    cache[ck] = {}  # guards against re-entry
    builder = {"bias": _bias_units, "dark": _dark_units, "flat": _flat_units, "fringe": _fringe_units,
               "illumination": _illum_units, "bpm": _bpm_units, "signature": _signature_units}[kind]
    out = {pm.unit.key: pm for pm in builder(session, config)}
    cache[ck] = out
    return out


def _frames_refs(frames: Iterable[FrameInfo], role: str = "raw") -> list[InputRef]:
    return [InputRef("frame", f.id, role) for f in frames]


def _series_state(session: Session, s: Series, *, min_frames: int, rule: str, label: str,
                  min_pointings: int = 1) -> tuple[str, str]:
    complete, why = series_complete(session, s, rule=rule)
    return rules.series_state(complete=complete, why=why, n_frames=len(s.frames), min_frames=min_frames,
                              night=s.night, label=label,
                              pointings=s.pointings() if min_pointings > 1 else 1, min_pointings=min_pointings)


def _unit(s: Series, key: ConfigKey, inputs: list[InputRef], state: str, reason: str, kind: str,
          extra: dict[str, Any] | None = None) -> PlannedMaster:
    ctx = s.context(kind)
    if key.flat_type is not None:
        ctx["flat_type"] = key.flat_type
    ctx.update(extra or {})
    unit = Unit(key=key.unit_key(s.night), inputs=inputs, ready=state == "ready", reason=reason, context=ctx,
                priority=50)
    return PlannedMaster(kind, key, s.night, unit, state)


def _need(session: Session, kind: str, key: ConfigKey, s: Series, config: StepConfig, *, required: bool,
          inputs: list[InputRef], reasons: list[str], state: list[str], flat_type: str | None = None,
          any_flat: bool = False) -> Any:
    """Look up an input master for series ``s``; update ``inputs``, ``reasons`` and the state."""
    if any_flat:
        res = select_flat(session, key, when=s.first, night=s.night, config=config, required=required)
    else:
        res = find_master(session, kind, key.for_kind(kind, flat_type=flat_type), when=s.first, night=s.night,
                          config=config, required=required, flat_type=flat_type)
    if isinstance(res, Choice):
        inputs.append(InputRef("product", res.product_id, kind))
        return res
    if res.expected:
        reasons.append(res.reason)
        if state[0] == "ready":
            state[0] = "pending"
    elif required:
        reasons.append(res.reason)
        if state[0] in ("ready", "pending"):
            state[0] = "missing"
    return res


def _calib_units(session: Session, config: StepConfig, what: str, kind: str,
                 needs: Sequence[tuple[str, bool]], *, of: Sequence[Series] | None = None) -> list[PlannedMaster]:
    out = []
    for s in (series(session, what) if of is None else of):
        key = s.key
        label = {"bias": "bias frames", "dark": "dark frames"}.get(what, f"{key.flat_type} flats")
        st, why = _series_state(session, s, min_frames=config.min_frames, rule="next_frame", label=label)
        inputs = _frames_refs(s.frames)
        reasons = [why] if why else []
        state = [st]
        if st in ("ready", "incomplete"):
            for need_kind, required in needs:
                if need_kind == "dark" and not getattr(config, "use_dark", True):
                    continue
                _need(session, need_kind, key, s, config, required=required, inputs=inputs, reasons=reasons,
                      state=state)
        if st == "incomplete":
            state[0] = "incomplete"
        out.append(_unit(s, key, inputs, state[0], "; ".join(reasons), kind))
    return out


def _bias_units(session: Session, config: StepConfig) -> list[PlannedMaster]:
    return _calib_units(session, config, "bias", "bias", ())


def _dark_units(session: Session, config: StepConfig) -> list[PlannedMaster]:
    return _calib_units(session, config, "dark", "dark", (("bias", True), ("signature", False)))


def _flat_units(session: Session, config: StepConfig) -> list[PlannedMaster]:
    min_exptimes = session_config(session, "signature").min_exptimes
    flats = [f for f in (without_signature_sequence(s, min_exptimes=min_exptimes) for s in series(session, "flat"))
             if f.frames]
    return _calib_units(session, config, "flat", "flat", (("bias", True), ("dark", False), ("signature", False)),
                        of=flats)


def without_signature_sequence(s: Series, *, min_exptimes: int) -> Series:
    """A dome-flat series without the frames of its photon-transfer / linearity sequence (the master flat's inputs).

    A dome series of at least ``min_exptimes`` distinct exposure times holds a signature sequence
    (:func:`_signature_units`); its pairs and linearity series are the flats of an exposure time taken at most
    twice (:func:`upad.calib.signature_step.split_sequence`). They measure the detector, not the response: levels
    from a few hundred ADU (a flat's noise 10 x an ordinary one's) to the non-linear top of the ADC range, and
    sub-second exposures that carry the shutter's timing pattern. A group of three or more flats of one exposure
    time is an ordinary flat series and stays. Other series are returned unchanged.
    """
    if s.key.flat_type != "dome":
        return s
    count: dict[float, int] = defaultdict(int)
    for f in s.frames:
        count[round(f.exptime, 3)] += 1
    if len(count) < min_exptimes:
        return s
    return Series(s.kind, s.key, s.night, [f for f in s.frames if count[round(f.exptime, 3)] > 2])


def _fringing_filters(instrument: str) -> set[str]:
    from upad.instruments import get_filter_system, get_instrument

    try:
        fs = get_filter_system(get_instrument(instrument).filter_system)
    except KeyError:
        return set()
    return {f.name for f in fs.filters if f.fringing}


def _science_units(session: Session, config: StepConfig, kind: str) -> list[PlannedMaster]:
    out = []
    for s in series(session, "science"):
        if kind == "fringe":
            wanted = set(config.filters) if config.filters else _fringing_filters(s.key.instrument)
            if s.key.filter not in wanted:
                continue
            variants: list[str | None] = [None]
        else:
            variants = list(config.build_flat_types)
        st, why = _series_state(session, s, min_frames=config.min_frames, rule="next_night",
                                label=f"{s.key.filter} science frames", min_pointings=config.min_pointings)
        for flat_type in variants:
            key = s.key if flat_type is None else ConfigKey(s.key.instrument, s.key.layout, s.key.read_mode,
                                                            s.key.filter, flat_type)
            inputs = _frames_refs(s.frames)
            reasons = [why] if why else []
            state = [st]
            if st in ("ready", "incomplete"):
                _need(session, "bias", key, s, config, required=True, inputs=inputs, reasons=reasons, state=state)
                _need(session, "dark", key, s, config, required=False, inputs=inputs, reasons=reasons, state=state)
                _need(session, "signature", key, s, config, required=False, inputs=inputs, reasons=reasons,
                      state=state)
                if flat_type is None:
                    _need(session, "flat", key, s, config, required=True, inputs=inputs, reasons=reasons,
                          state=state, any_flat=True)
                else:
                    _need(session, "flat", key, s, config, required=True, inputs=inputs, reasons=reasons,
                          state=state, flat_type=flat_type)
            if st == "incomplete":
                state[0] = "incomplete"
            out.append(_unit(s, key, inputs, state[0], "; ".join(reasons), kind))
    return out


def _fringe_units(session: Session, config: StepConfig) -> list[PlannedMaster]:
    return _science_units(session, config, "fringe")


def _illum_units(session: Session, config: StepConfig) -> list[PlannedMaster]:
    return _science_units(session, config, "illumination")


def _bpm_units(session: Session, config: StepConfig) -> list[PlannedMaster]:
    """One bad-pixel mask per configuration and night with darks or flats: the night's master dark (or the nearest
    valid one) and every master flat of the night."""
    nights: dict[tuple[ConfigKey, str], list[Series]] = defaultdict(list)
    for what in ("dark", "flat"):
        for s in series(session, what):
            nights[(s.key.for_kind("bpm"), s.night)].append(s)
    flat_planned = planned_masters(session, "flat")
    flat_cands = candidates(session, "flat")
    out = []
    for (key, night), group in sorted(nights.items(), key=lambda kv: (kv[0][1], kv[0][0].prefix())):
        ref = min(group, key=lambda s: s.first)
        inputs: list[InputRef] = []
        reasons: list[str] = []
        state = "ready"
        dark = find_master(session, "dark", key, when=ref.first, night=night, config=config, required=False)
        if isinstance(dark, Choice):
            inputs.append(InputRef("product", dark.product_id, "dark"))
        elif dark.expected:
            state, reasons = "pending", [dark.reason]
        flats = [c for c in flat_cands if c.night == night and key.matches(c.context)]
        inputs += [InputRef("product", c.product_id, "flat") for c in flats]
        have = {c.unit_key for c in flats}
        pending = [pm for k, pm in flat_planned.items() if pm.night == night and k not in have
                   and pm.key.for_kind("bpm") == key and expected_reason(session, pm) is not None]
        if pending:
            state = "pending"
            reasons.append(f"waiting for {len(pending)} master flat(s) of night {night} "
                           f"({', '.join(sorted(p.unit.key for p in pending)[:3])})")
        if state == "ready" and not inputs:
            state = "missing"
            reasons.append(f"no master dark within ±{config.fallback_nights} nights and no master flat of night "
                           f"{night}: nothing to find bad pixels in")
        s0 = Series("bpm", key, night, sorted((f for s in group for f in s.frames), key=lambda f: f.date_obs))
        out.append(_unit(s0, key, inputs, state, "; ".join(reasons), "bpm",
                         {"n_flats": len(flats), "has_dark": isinstance(dark, Choice)}))
    return out


def _signature_units(session: Session, config: StepConfig) -> list[PlannedMaster]:
    """One instrument signature per configuration and night whose dome flats of one filter have at least
    ``min_exptimes`` distinct exposure times (a photon-transfer / linearity sequence): those flats, the night's bias
    frames (``bias_raw``) and science frames (``science``, for the crosstalk). Complete when the night is over (or
    a later night has been ingested): the crosstalk needs the night's science frames."""
    bias = {(s.key.for_kind("signature"), s.night): s for s in series(session, "bias")}
    sci: dict[tuple[ConfigKey, str], list[FrameInfo]] = defaultdict(list)
    for s in series(session, "science"):
        sci[(s.key.for_kind("signature"), s.night)].extend(s.frames)
    best: dict[tuple[ConfigKey, str], Series] = {}
    for s in series(session, "flat"):
        if s.key.flat_type != "dome":
            continue
        n_t = len({round(f.exptime, 3) for f in s.frames})
        if n_t < config.min_exptimes:
            continue
        k = (s.key.for_kind("signature"), s.night)
        if k not in best or n_t > len({round(f.exptime, 3) for f in best[k].frames}):
            best[k] = s
    out = []
    for (key, night), s in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0].prefix())):
        complete, why = series_complete(session, s, rule="next_night")
        st, reason = rules.series_state(complete=complete, why=why, n_frames=len(s.frames),
                                        min_frames=config.min_frames, night=night, label="signature flats")
        inputs = _frames_refs(s.frames)
        b = bias.get((key, night))
        if b is not None:
            inputs += _frames_refs(b.frames, "bias_raw")
        inputs += _frames_refs(sorted(sci.get((key, night), []), key=lambda f: f.date_obs), "science")
        s0 = Series("signature", key, night, s.frames)
        out.append(_unit(s0, key, inputs, st, reason, "signature",
                         {"sequence_filter": s.key.filter, "n_bias": len(b.frames) if b else 0,
                          "n_science": len(sci.get((key, night), []))}))
    return out


def expected_master(session: Session, kind: str, key: ConfigKey, night: str) -> str | None:
    """Why the master of ``kind``, configuration ``key`` and ``night`` is still to come, or ``None`` (the answer
    the lookup needs before it falls back to another night's master)."""
    pm = planned_masters(session, kind).get(key.unit_key(night))
    return None if pm is None else expected_reason(session, pm)


lookup.set_expected_source(expected_master)
