"""Observing nights: the one definition, used by ingest (a frame's night) and by calibration (a master's validity).

Night ``N`` (``YYYY-MM-DD``, the local date at its start) runs from local *mean* noon of date ``N`` at the
instrument's site to the next local mean noon (docs/raw-format.md)::

    night_of(t)    = date(t − 12 h + longitude / 15 h)
    night_start(N) = N 00:00 + 12 h − longitude / 15 h      (UTC)
    night_end(N)   = night_start(N) + 24 h                  (exclusive)

Times are naive UTC datetimes. The site is the instrument's (:attr:`upad.instruments.Instrument.site`, the
``[site]`` table of its file); every function takes a :class:`~upad.instruments.Site`, an
:class:`~upad.instruments.Instrument` or an instrument key (``'t80cam'``). Local mean time (from the longitude)
rather than civil time keeps every night exactly 24 hours long, without daylight-saving jumps.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from upad.instruments import Instrument, Site, get_instrument

__all__ = ["DEFAULT_INSTRUMENT", "NOON_HOURS", "default_site", "night_end", "night_of", "night_start", "site_of"]

#: Local mean time (hours) at which one night ends and the next begins.
NOON_HOURS = 12.0

#: The survey's home instrument, whose site is used where no instrument is known (``default_site``).
DEFAULT_INSTRUMENT = "t80cam"

SiteLike = Site | Instrument | str


def default_site() -> Site:
    """The site of :data:`DEFAULT_INSTRUMENT` (Javalambre)."""
    return get_instrument(DEFAULT_INSTRUMENT).site


def site_of(where: SiteLike | Any | None) -> Site:
    """The site of ``where``: a :class:`Site`, an :class:`Instrument` (or anything with a ``site``), an instrument
    key, or ``None`` for :func:`default_site`.

    Raises
    ------
    KeyError
        An unknown instrument key.
    """
    if where is None:
        return default_site()
    if isinstance(where, Site):
        return where
    if isinstance(where, str):
        return get_instrument(where).site
    site = getattr(where, "site", None)
    if isinstance(site, Site):
        return site
    raise TypeError(f"expected a Site, an Instrument or an instrument key, got {type(where).__name__}")


def _offset(site: Site) -> dt.timedelta:
    """UTC of local mean noon minus 00:00 of the same date."""
    return dt.timedelta(hours=NOON_HOURS - site.longitude / 15.0)


def night_of(when: dt.datetime, site: SiteLike | None = None) -> str:
    """The night (``YYYY-MM-DD``) of a naive UTC time at ``site`` (see the module documentation)."""
    return (when - _offset(site_of(site))).date().isoformat()


def night_start(night: str | dt.date, site: SiteLike | None = None) -> dt.datetime:
    """Start (naive UTC) of night ``YYYY-MM-DD`` at ``site``: local mean noon of that date."""
    day = night if isinstance(night, dt.date) else dt.date.fromisoformat(str(night))
    return dt.datetime(day.year, day.month, day.day) + _offset(site_of(site))


def night_end(night: str | dt.date, site: SiteLike | None = None) -> dt.datetime:
    """End (naive UTC, exclusive) of night ``YYYY-MM-DD`` at ``site``: the next local mean noon."""
    return night_start(night, site) + dt.timedelta(days=1)
