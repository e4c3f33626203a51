"""The data of calibration planning and lookup: frames as planning sees them, instrumental configurations, master
candidates (plain data, no database)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from upad.instruments import Site
from upad.nights import default_site, site_of

__all__ = ["KIND_OF", "STEP_OF", "Candidate", "ConfigKey", "FrameInfo", "frame_info", "frame_key", "instrument_site",
           "night_distance"]

#: Step name of each kind of master.
STEP_OF = {"bias": "master_bias", "dark": "master_dark", "flat": "master_flat", "fringe": "master_fringe",
           "illumination": "master_illumination", "bpm": "bad_pixel_mask", "signature": "instrument_signature"}
KIND_OF = {v: k for k, v in STEP_OF.items()}

def instrument_site(instrument: str | None) -> Site:
    """The site of an instrument key (the nights of its frames and masters); the survey's default site for an
    instrument whose description file is not found (its frames stay in the database: planning must not stop)."""
    try:
        return site_of(instrument)
    except KeyError:
        return default_site()


def night_distance(a: str, b: str) -> int:
    """``b - a`` in nights."""
    return (dt.date.fromisoformat(b) - dt.date.fromisoformat(a)).days


@dataclass(frozen=True)
class FrameInfo:
    """What planning needs of a raw frame."""

    id: int
    filename: str
    instrument: str
    telescope: str | None
    detector: str | None
    layout: str
    read_mode: str | None
    obs_type: str
    filter: str | None
    exptime: float
    date_obs: dt.datetime
    night: str
    ra: float | None
    dec: float | None


def frame_info(f: Any) -> FrameInfo:
    """A :class:`FrameInfo` from a ``Frame`` row (or any object with the same attributes)."""
    return FrameInfo(f.id, f.filename, f.instrument, getattr(f, "telescope", None), getattr(f, "detector", None),
                     f.layout, f.read_mode, f.obs_type, f.filter, float(f.exptime or 0.0), f.date_obs, f.night,
                     f.ra, f.dec)


@dataclass(frozen=True)
class ConfigKey:
    """An instrumental configuration: instrument (camera on its telescope), raw layout, read mode, and for some
    kinds the filter and the flat type."""

    instrument: str
    layout: str
    read_mode: str
    filter: str | None = None
    flat_type: str | None = None

    def for_kind(self, kind: str, *, flat_type: str | None = None) -> ConfigKey:
        """The part of the configuration that matters for a master of ``kind``."""
        if kind in ("bias", "dark", "bpm", "signature"):
            return ConfigKey(self.instrument, self.layout, self.read_mode)
        if kind == "fringe":
            return ConfigKey(self.instrument, self.layout, self.read_mode, self.filter)
        return ConfigKey(self.instrument, self.layout, self.read_mode, self.filter, flat_type or self.flat_type)

    def prefix(self) -> str:
        parts = [self.instrument, self.read_mode, self.layout]
        if self.filter is not None:
            parts.append(self.filter)
        if self.flat_type is not None:
            parts.append(self.flat_type)
        return "/".join(parts)

    def unit_key(self, night: str) -> str:
        return f"{self.prefix()}/{night}"

    def matches(self, context: dict[str, Any]) -> bool:
        """Whether a product's context has this configuration."""
        return (context.get("instrument") == self.instrument and context.get("layout") == self.layout
                and context.get("read_mode") == self.read_mode
                and (self.filter is None or context.get("filter") == self.filter)
                and (self.flat_type is None or context.get("flat_type") == self.flat_type))

    def describe(self) -> str:
        return self.prefix()


def frame_key(fi: FrameInfo) -> ConfigKey:
    """The configuration of a frame (its read mode defaults to the instrument's)."""
    read_mode = fi.read_mode
    if not read_mode:
        from upad.instruments import get_instrument

        try:
            read_mode = get_instrument(fi.instrument).default_read_mode
        except KeyError:
            read_mode = "-"
    return ConfigKey(fi.instrument, fi.layout, read_mode, fi.filter)


@dataclass(frozen=True)
class Candidate:
    """A usable master (current, complete, not bad)."""

    product_id: int
    provenance_id: str
    unit_key: str
    night: str
    good_after: dt.datetime | None
    good_until: dt.datetime | None
    context: dict[str, Any]
    qc_status: str | None

    @property
    def reference_time(self) -> dt.datetime | None:
        if self.good_after is not None and self.good_until is not None:
            return self.good_after + (self.good_until - self.good_after) / 2
        return self.good_after or self.good_until


