"""When and where the telescope looks: site, Sun, sidereal time, airmass and the plan of a night.

Everything here is closed-form (low-precision solar position, GMST from ERFA with UT1 = UTC),
so nothing is ever downloaded. Times are Julian dates (UTC) as floats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

import erfa
import numpy as np

from upad.errors import UpadError

#: Observatorio Astrofisico de Javalambre
SITE_LAT = 40.0425
SITE_LON = -1.0164
SITE_ELEV = 1957.0

_JD_UNIX = 2440587.5


def jd_from_datetime(dt: datetime) -> float:
    """UTC datetime (naive) -> Julian date."""
    return _JD_UNIX + (dt - datetime(1970, 1, 1)).total_seconds() / 86400.0


def datetime_from_jd(jd: float) -> datetime:
    """Julian date -> naive UTC datetime, rounded to the millisecond."""
    ms = round((jd - _JD_UNIX) * 86400000.0)
    return datetime(1970, 1, 1) + timedelta(milliseconds=ms)


def isot(jd: float) -> str:
    """ISO time with milliseconds, as in DATE-OBS (``2015-08-11T01:30:19.811``)."""
    return datetime_from_jd(jd).isoformat(timespec="milliseconds")


def lst_deg(jd: np.ndarray | float, lon: float = SITE_LON) -> np.ndarray | float:
    """Local mean sidereal time (deg) at longitude ``lon`` (deg, east positive)."""
    jd = np.asarray(jd, dtype=float)
    gmst = erfa.gmst82(np.full_like(jd, 2400000.5), jd - 2400000.5)
    out = np.mod(np.degrees(gmst) + lon, 360.0)
    return out if out.ndim else float(out)


def sun_radec(jd: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Apparent RA, Dec of the Sun (deg), low-precision almanac formula (~0.01 deg)."""
    n = np.asarray(jd, dtype=float) - 2451545.0
    L = np.radians(280.460 + 0.9856474 * n)
    g = np.radians(357.528 + 0.9856003 * n)
    lam = L + np.radians(1.915) * np.sin(g) + np.radians(0.020) * np.sin(2 * g)
    eps = np.radians(23.439 - 4e-7 * n)
    ra = np.degrees(np.arctan2(np.cos(eps) * np.sin(lam), np.cos(lam))) % 360.0
    dec = np.degrees(np.arcsin(np.sin(eps) * np.sin(lam)))
    return ra, dec


def altaz(ra: float | np.ndarray, dec: float | np.ndarray, jd: float | np.ndarray,
          *, lat: float = SITE_LAT, lon: float = SITE_LON) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Altitude, azimuth (N through E) and parallactic angle (deg) of (ra, dec) at ``jd``."""
    ha = np.radians(np.asarray(lst_deg(jd, lon)) - np.asarray(ra))
    d, phi = np.radians(dec), math.radians(lat)
    sin_alt = np.sin(phi) * np.sin(d) + np.cos(phi) * np.cos(d) * np.cos(ha)
    alt = np.degrees(np.arcsin(np.clip(sin_alt, -1, 1)))
    az = np.degrees(np.arctan2(-np.cos(d) * np.sin(ha), np.sin(d) * np.cos(phi) - np.cos(d) * np.sin(phi) * np.cos(ha)))
    par = np.degrees(np.arctan2(np.sin(ha), np.tan(phi) * np.cos(d) - np.sin(d) * np.cos(ha)))
    return alt, np.mod(az, 360.0), par


def radec_from_altaz(alt: float, az: float, jd: float, *, lat: float = SITE_LAT,
                     lon: float = SITE_LON) -> tuple[float, float]:
    """Inverse of :func:`altaz` (deg)."""
    a, A, phi = math.radians(alt), math.radians(az), math.radians(lat)
    sin_d = math.sin(a) * math.sin(phi) + math.cos(a) * math.cos(phi) * math.cos(A)
    dec = math.asin(max(-1.0, min(1.0, sin_d)))
    ha = math.atan2(-math.sin(A) * math.cos(a), math.sin(a) * math.cos(phi) - math.cos(a) * math.sin(phi) * math.cos(A))
    ra = (float(lst_deg(jd, lon)) - math.degrees(ha)) % 360.0
    return ra, math.degrees(dec)


def airmass(alt_deg: float | np.ndarray) -> np.ndarray | float:
    """Kasten & Young (1989) airmass for an altitude in degrees."""
    h = np.maximum(np.asarray(alt_deg, dtype=float), 0.5)
    out = 1.0 / (np.sin(np.radians(h)) + 0.50572 * (h + 6.07995) ** -1.6364)
    return out if out.ndim else float(out)


def sun_alt(jd: float | np.ndarray) -> np.ndarray:
    ra, dec = sun_radec(jd)
    return altaz(ra, dec, jd)[0]


def twilight_brightening(sun_alt_deg: float) -> float:
    """Zenith twilight sky brightening over the dark sky (mag), ~1.1 mag per degree of solar depression."""
    return max(0.0, 9.0 + 1.1 * (sun_alt_deg + 4.0))


@dataclass(frozen=True)
class NightTimes:
    """Sun events of one night (Julian dates, UTC)."""

    night: str
    sunset: float
    dusk_18: float
    dawn_18: float
    sunrise: float


def night_times(night: date) -> NightTimes:
    """Sunset, end of evening astronomical twilight, start of morning twilight and sunrise for ``night``."""
    jd0 = jd_from_datetime(datetime(night.year, night.month, night.day, 12, 0, 0))
    grid = jd0 + np.arange(0, 24 * 60 + 1) / 1440.0
    h = sun_alt(grid)

    def crossing(level: float, falling: bool) -> float:
        s = h - level
        idx = np.flatnonzero((s[:-1] > 0) & (s[1:] <= 0)) if falling else np.flatnonzero((s[:-1] < 0) & (s[1:] >= 0))
        if idx.size == 0:
            raise UpadError(f"the Sun does not cross {level} deg on night {night}", hint="choose another date")
        i = idx[0]
        return float(grid[i] + (grid[i + 1] - grid[i]) * s[i] / (s[i] - s[i + 1]))

    return NightTimes(str(night), crossing(-0.833, True), crossing(-18.0, True), crossing(-18.0, False),
                      crossing(-0.833, False))


@dataclass(frozen=True)
class ExposureSpec:
    """What the telescope and camera did for one exposure (the observing log entry)."""

    night: str
    night_index: int
    seq: int
    kind: str  # bias | dark | flat-dome | flat-sky | science
    filter: str
    exptime: float
    jd: float
    ra: float  # commanded pointing (deg)
    dec: float
    alt: float
    az: float
    parang: float
    airmass: float
    airmass_end: float
    sun_alt: float
    tile_id: int | None = None
    tile_index: int | None = None
    dither: int | None = None
    level_adu: float | None = None  # flats: intended level above bias
    obs_id: str = ""
    exp_id: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def date_obs(self) -> str:
        return isot(self.jd)

    @property
    def date_end(self) -> str:
        return isot(self.jd + self.exptime / 86400.0)

    @property
    def mid_jd(self) -> float:
        return self.jd + 0.5 * self.exptime / 86400.0


def dither_offsets(n: int, step_arcsec: float) -> list[tuple[float, float]]:
    """Dither pattern (arcsec): centre, then the corners of growing squares."""
    pattern = [(0, 0), (1, 1), (-1, 1), (1, -1), (-1, -1), (2, 0), (0, 2), (-2, 0), (0, -2)]
    out = []
    for i in range(n):
        k, j = divmod(i, len(pattern))
        dx, dy = pattern[j]
        out.append(((dx + 0.5 * k) * step_arcsec, (dy + 0.5 * k) * step_arcsec))
    return out


def tile_centres(n_tiles: int, field_ra: float, field_dec: float, field_w_deg: float, field_h_deg: float,
                 overlap: float) -> list[tuple[float, float]]:
    """Centres (deg) of ``n_tiles`` pointings on a grid around (field_ra, field_dec) overlapping by ``overlap``."""
    ncols = max(1, math.ceil(math.sqrt(n_tiles)))
    nrows = math.ceil(n_tiles / ncols)
    sx, sy = field_w_deg * (1 - overlap), field_h_deg * (1 - overlap)
    out = []
    for i in range(n_tiles):
        r, c = divmod(i, ncols)
        xi = (c - (ncols - 1) / 2) * sx
        eta = (r - (nrows - 1) / 2) * sy
        out.append(tangent_to_radec(field_ra, field_dec, xi, eta))
    return out


def tangent_to_radec(ra0: float, dec0: float, xi_deg: float | np.ndarray,
                     eta_deg: float | np.ndarray) -> tuple:
    """Gnomonic deprojection: standard coordinates (deg) about (ra0, dec0) -> (ra, dec) in deg."""
    xi, eta = np.radians(xi_deg), np.radians(eta_deg)
    d0 = math.radians(dec0)
    den = math.cos(d0) - eta * math.sin(d0)
    ra = np.degrees(np.arctan2(xi, den)) + ra0
    dec = np.degrees(np.arctan2(math.sin(d0) + eta * math.cos(d0), np.hypot(xi, den)))
    ra = np.mod(ra, 360.0)
    if np.ndim(ra) == 0:
        return float(ra), float(dec)
    return ra, dec


def radec_to_tangent(ra0: float, dec0: float, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection (deg) of (ra, dec) about (ra0, dec0)."""
    a, d = np.radians(np.asarray(ra) - ra0), np.radians(dec)
    d0 = math.radians(dec0)
    cosc = math.sin(d0) * np.sin(d) + math.cos(d0) * np.cos(d) * np.cos(a)
    xi = np.cos(d) * np.sin(a) / cosc
    eta = (math.cos(d0) * np.sin(d) - math.sin(d0) * np.cos(d) * np.cos(a)) / cosc
    return np.degrees(xi), np.degrees(eta)


def offset_radec(ra: float, dec: float, dx_arcsec: float, dy_arcsec: float) -> tuple[float, float]:
    """Move (ra, dec) by (dx east, dy north) arcsec in the tangent plane."""
    return tangent_to_radec(ra, dec, dx_arcsec / 3600.0, dy_arcsec / 3600.0)


def with_pointing(spec: ExposureSpec, jd: float, exptime: float) -> ExposureSpec:
    """Return ``spec`` at time ``jd`` with alt/az/airmass recomputed for its pointing."""
    alt, az, par = altaz(spec.ra, spec.dec, jd)
    alt_end = altaz(spec.ra, spec.dec, jd + exptime / 86400.0)[0]
    return replace(spec, jd=jd, exptime=exptime, alt=float(alt), az=float(az), parang=float(par),
                   airmass=float(airmass(alt)), airmass_end=float(airmass(alt_end)), sun_alt=float(sun_alt(jd)))


def signature_sequence(*, n_ptc_pairs: int, ptc_level_range_adu: tuple[float, float], n_linearity_flats: int,
                       linearity_max_adu: float, lamp_adu_s: float) -> list[tuple[str, float, float]]:
    """The instrument-signature calibration sequence of a night: ``(tag, exposure time s, level ADU)`` per frame.

    ``tag`` is ``'PTC'`` for the photon-transfer-curve flat pairs (two equal exposures per level, levels
    log-spaced over ``ptc_level_range_adu``) and ``'LIN'`` for the linearity series (exposure time rising
    linearly up to ``linearity_max_adu``). Exposure times are rounded to 1 ms and the level is the lamp rate
    (ADU/s at the nominal gain) times the rounded exposure time, so the signal is strictly proportional to it.
    """
    out: list[tuple[str, float, float]] = []
    if n_ptc_pairs > 0:
        lo, hi = ptc_level_range_adu
        for lv in np.geomspace(lo, hi, n_ptc_pairs):
            t = round(float(lv) / lamp_adu_s, 3)
            out += [("PTC", t, t * lamp_adu_s)] * 2
    if n_linearity_flats > 0:
        for lv in np.linspace(linearity_max_adu / n_linearity_flats, linearity_max_adu, n_linearity_flats):
            t = round(float(lv) / lamp_adu_s, 3)
            out.append(("LIN", t, t * lamp_adu_s))
    return out
