"""Header translation: one place that turns every raw-header convention into :class:`FrameMetadata`.

Like Rubin's ``astro_metadata_translator``, the rest of upad never reads observatory-specific header cards: it reads
the fields of :class:`FrameMetadata`. Two conventions are understood (see ``docs/raw-format.md``):

``OAJ``
    ESO data-dictionary style cards under ``HIERARCH OAJ``; the observation type in ``DPR TYPE`` (and ``DET EXP
    TYPE``), J-PLUS filter names, decimal RA/Dec.
``T80S``
    The same cards under ``HIERARCH T80S``, plus ``IMAGETYP``; S-PLUS filter names (``U F378 … Z``), sexagesimal
    RA/Dec strings.

Everything here is pure: an astropy :class:`~astropy.io.fits.Header` (and the file name) in, a frozen dataclass out,
or :class:`~upad.ingest.errors.IngestRejected` with category ``missing_keys``, ``bad_value``,
``unknown_instrument`` or (a date without an observing night) ``implausible``. Whether the values suit the
instrument is checked after translation (:func:`upad.ingest.limits.check_plausibility`).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from upad.config import StepConfig, param
from upad.ingest.errors import IngestRejected
from upad import nights
from upad.instruments import Instrument, Site, available_instruments, get_filter_system, get_instrument

__all__ = [
    "AmpInfo",
    "CONVENTIONS",
    "FrameMetadata",
    "TranslationConfig",
    "header_to_json",
    "night_of",
    "normalize_obs_type",
    "parse_date_obs",
    "parse_dec",
    "parse_ra",
    "resolve_instrument",
    "translate_header",
]

#: Header conventions and their HIERARCH prefixes.
CONVENTIONS: dict[str, str] = {"OAJ": "OAJ", "T80S": "T80S"}

_MJD_EPOCH = dt.datetime(1858, 11, 17)

# Observation-type words (upper case, letters and digits only) → upad vocabulary.
_OBS_TYPE_WORDS: dict[str, str] = {
    "OBJECT": "science", "SCIENCE": "science", "LIGHT": "science", "SCI": "science",
    "BIAS": "bias", "ZERO": "bias",
    "DARK": "dark",
    "FLAT": "flat-dome", "FLATDOME": "flat-dome", "DOMEFLAT": "flat-dome", "DOME": "flat-dome",
    "LAMPFLAT": "flat-dome", "FLATLAMP": "flat-dome",
    "FLATSKY": "flat-sky", "SKYFLAT": "flat-sky", "SKY": "flat-sky", "TWILIGHT": "flat-sky",
    "TWILIGHTFLAT": "flat-sky", "FLATTWILIGHT": "flat-sky", "TWFLAT": "flat-sky",
    "FOCUS": "focus",
    "TEST": "test", "TECHNICAL": "test", "ENGINEERING": "test",
}

_FILENAME_RE = re.compile(r"^(?P<prefix>[A-Za-z0-9]+)-(?P<stamp>\d{8}T\d{6})-(?P<seq>\d{2,})\.fits?(\.fz)?$")


@dataclass(frozen=True)
class TranslationConfig(StepConfig):
    """Survey conventions used by :func:`translate_header`.

    Set in ``<root>/upad.toml`` under ``[ingest.translation]`` (``upad config show`` lists them as
    ``ingest.translation.<name>``). The observing night is not configured here: it follows from the instrument's
    site (:mod:`upad.nights`, the ``[site]`` table of the instrument file).
    """

    tile_regex: str = param(r"(\d+)\s*$", doc="Regular expression searched in OBJECT of science frames; its first "
                                               "group is the tile id (an integer). Default: the trailing integer "
                                               "('TILE-00012' -> 12)")
    filename_tolerance_s: float = param(600.0, doc="The time stamp in a contract file name may differ from DATE-OBS "
                                                   "by up to EXPTIME plus this (the name is written at readout) "
                                                   "before a header warning is raised", bounds=(0.0, None),
                                        unit="s")

    def validate(self) -> None:
        super().validate()
        try:
            groups = re.compile(self.tile_regex).groups
        except re.error as exc:
            groups = -1
            self.require(False, "tile_regex", f"= {self.tile_regex!r} is not a regular expression ({exc})",
                         hint="e.g. tile_regex = '(\\d+)\\s*$' (Python `re` syntax)")
        self.require(groups >= 1, "tile_regex", f"= {self.tile_regex!r} has no group for the tile id",
                     hint="put the digits of the tile id in parentheses, e.g. 'field (\\d+)'")


DEFAULT_CONFIG = TranslationConfig()


@dataclass(frozen=True)
class AmpInfo:
    """Per-amplifier values from ``<P> DET OUTn …`` cards (``None`` when a card is absent).

    Attributes
    ----------
    id : int
        1-based amplifier number.
    gain : float or None
        e-/ADU.
    ron : float or None
        Read noise in electrons.
    satur : float or None
        Saturation in electrons.
    datasec, prescan, overscan_x, overscan_y : str or None
        FITS sections (1-based) in the raw frame (readout layout only).
    """

    id: int
    gain: float | None = None
    ron: float | None = None
    satur: float | None = None
    datasec: str | None = None
    prescan: str | None = None
    overscan_x: str | None = None
    overscan_y: str | None = None


@dataclass(frozen=True)
class FrameMetadata:
    """What a raw frame is, in upad's vocabulary, whatever the header convention.

    Attributes
    ----------
    instrument : str
        Instrument key (``t80cam``, ``jpcam``, ``mini``).
    telescope : str
        ``TELESCOP`` as written (``'OAJ-T80'``), or the instrument's default.
    detector : str or None
        Detector name (``<P> DET NAME``).
    convention : str
        ``'OAJ'`` or ``'T80S'``.
    obs_type : str
        ``bias``, ``dark``, ``flat-dome``, ``flat-sky``, ``science``, ``focus``, ``test`` or ``unknown``.
    obs_type_raw : str
        The header value it was derived from (e.g. ``'FLAT,SKY'``).
    filter : str or None
        Filter name in the instrument's filter system (J-PLUS names for T80Cam), ``None`` for dark/bias frames without
        a known filter.
    filter_raw : str or None
        ``FILTER`` as written (``'R'`` for S-PLUS).
    read_mode : str or None
        ``<P> DET READ MODE``.
    exptime : float
        Exposure time in seconds.
    date_obs : datetime.datetime
        Start of the exposure, naive UTC.
    mjd : float
        Modified Julian date (UTC) of ``date_obs``, days.
    night : str
        Observing night ``YYYY-MM-DD`` (local date at the start of the night) at the instrument's site
        (:mod:`upad.nights`).
    object : str or None
        ``OBJECT``.
    ra, dec : float or None
        Pointing in decimal degrees (J2000).
    airmass : float or None
        Airmass at the start of the exposure.
    tile_id : int or None
        Survey tile id of a science frame (trailing integer of ``OBJECT``).
    tile_name : str or None
        ``OBJECT`` of a science frame with a tile id.
    amplifiers : tuple of AmpInfo
        Per-amplifier header values (empty when the header has none).
    warnings : tuple of str
        Anomalies that do not prevent ingest (shown as QC reasons).
    """

    instrument: str
    telescope: str
    detector: str | None
    convention: str
    obs_type: str
    obs_type_raw: str
    filter: str | None
    filter_raw: str | None
    read_mode: str | None
    exptime: float
    date_obs: dt.datetime
    mjd: float
    night: str
    object: str | None
    ra: float | None
    dec: float | None
    airmass: float | None
    tile_id: int | None
    tile_name: str | None
    amplifiers: tuple[AmpInfo, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (datetimes as ISO strings)."""
        d = dataclasses.asdict(self)
        d["date_obs"] = self.date_obs.isoformat()
        d["amplifiers"] = [dataclasses.asdict(a) for a in self.amplifiers]
        d["warnings"] = list(self.warnings)
        return d


# -- small parsers (pure) -----------------------------------------------------------------------------------------
def normalize_obs_type(value: str, *, category: str | None = None) -> str:
    """Map a header observation type (``'FLAT,SKY'``, ``'sky-flat'``, ``'ZERO'`` …) to the upad vocabulary.

    Parameters
    ----------
    value : str
        ``DPR TYPE``, ``IMAGETYP`` or ``DET EXP TYPE`` value.
    category : str, optional
        ``DPR CATG``; ``'TECHNICAL'`` turns an object frame into ``'test'``.

    Returns
    -------
    str
        One of ``bias dark flat-dome flat-sky science focus test unknown``.
    """
    word = re.sub(r"[^A-Z0-9]", "", str(value).upper())
    if "FOCUS" in word:
        return "focus"
    kind = _OBS_TYPE_WORDS.get(word)
    if kind is None:
        if "FLAT" in word and ("SKY" in word or "TWI" in word):
            kind = "flat-sky"
        elif "FLAT" in word:
            kind = "flat-dome"
        else:
            return "unknown"
    if kind == "science" and category and re.sub(r"[^A-Z]", "", str(category).upper()) == "TECHNICAL":
        return "test"
    return kind


def _parse_sexagesimal(text: str) -> tuple[float, float]:
    """``'[+-]dd:mm:ss.s'`` (``:``, blanks or ``h/d m s`` separators) → (sign, absolute value in units of dd)."""
    t = text.strip()
    sign = -1.0 if t.startswith("-") else 1.0
    parts = [p for p in re.split(r"[:\shdms°'\"]+", t.lstrip("+-")) if p]
    if not 1 <= len(parts) <= 3:
        raise ValueError(text)
    nums = [float(p) for p in parts]
    if any(n < 0 for n in nums) or any(n >= 60 for n in nums[1:]):
        raise ValueError(text)
    value = nums[0] + (nums[1] / 60 if len(nums) > 1 else 0) + (nums[2] / 3600 if len(nums) > 2 else 0)
    return sign, value


def _is_sexagesimal(text: str) -> bool:
    return bool(re.search(r"[:\shdm]", text.strip()))


def parse_ra(value: Any) -> float:
    """Right ascension in decimal degrees from a number (degrees) or a sexagesimal string (hours).

    Raises
    ------
    ValueError
        If the value cannot be read or is outside [0, 360) degrees.
    """
    if isinstance(value, str) and _is_sexagesimal(value):
        sign, hours = _parse_sexagesimal(value)
        if sign < 0:
            raise ValueError(f"negative sexagesimal right ascension {value!r}")
        deg = hours * 15.0
    else:
        deg = float(value)
    if not math.isfinite(deg) or not 0.0 <= deg <= 360.0:
        raise ValueError(f"right ascension {value!r} is outside 0–360 degrees")
    return deg % 360.0


def parse_dec(value: Any) -> float:
    """Declination in decimal degrees from a number or a sexagesimal ``'±dd:mm:ss'`` string.

    Raises
    ------
    ValueError
        If the value cannot be read or is outside [−90, 90] degrees.
    """
    if isinstance(value, str) and _is_sexagesimal(value):
        sign, deg = _parse_sexagesimal(value)
        deg *= sign
    else:
        deg = float(value)
    if not math.isfinite(deg) or not -90.0 <= deg <= 90.0:
        raise ValueError(f"declination {value!r} is outside −90…+90 degrees")
    return deg


def parse_date_obs(value: Any, time_value: Any = None) -> dt.datetime:
    """``DATE-OBS`` (ISO 8601, UTC) → naive UTC datetime.

    A date without time is combined with ``time_value`` (``TIME-OBS``/``UT``) when given. More than six digits of
    fractional seconds are truncated; a timezone suffix is converted to UTC.
    """
    text = str(value).strip()
    if "T" not in text and " " not in text and time_value is not None:
        text = f"{text}T{str(time_value).strip()}"
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    text = re.sub(r"Z$", "+00:00", text)
    stamp = dt.datetime.fromisoformat(text)
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return stamp


def mjd_of(stamp: dt.datetime) -> float:
    """Modified Julian date of a naive UTC datetime (days)."""
    return (stamp - _MJD_EPOCH).total_seconds() / 86400.0


def night_of(stamp: dt.datetime, site: Site | Instrument | str | None = None, *,
             longitude: float | None = None) -> str:
    """Observing night (``YYYY-MM-DD``) of a naive UTC datetime at ``site`` (or at a bare ``longitude`` in degrees,
    east positive): :func:`upad.nights.night_of`, the one definition, ``date(stamp − 12 h + longitude/15 h)``."""
    if longitude is not None:
        site = Site(name=f"longitude {longitude:+.4f}", longitude=float(longitude), latitude=0.0, height=0.0,
                    timezone="UTC")
    return nights.night_of(stamp, site)


def _longitude_note(cards: _Cards, inst: Instrument) -> str | None:
    """A warning when the header's ``TEL GEOLON`` is not the longitude of the instrument's site (the night follows
    the site of the instrument file; the header value is informational)."""
    lon = _float(cards.hier("TEL GEOLON"))
    if lon is None or not -360.0 <= lon <= 360.0:
        return None
    site = inst.site
    diff = abs((lon - site.longitude + 180.0) % 360.0 - 180.0)
    if diff <= 0.1:
        return None
    return (f"{cards.hier_name('TEL GEOLON')}={lon:g} is not the longitude of {inst.name}'s site {site.name} "
            f"({site.longitude:g}): the night follows the instrument's site (a camera elsewhere needs its own "
            "instrument file with its [site])")


def resolve_instrument(instrume: str) -> Instrument:
    """Instrument whose name or key matches ``INSTRUME`` (case-insensitive, blanks and dashes ignored).

    Raises
    ------
    IngestRejected
        Category ``unknown_instrument``.
    """
    def norm(s: str) -> str:
        return re.sub(r"[\s_\-]", "", s).lower()

    wanted = norm(str(instrume))
    names = []
    for key in available_instruments():
        try:
            inst = get_instrument(key)
        except (KeyError, ValueError):  # a broken description file must not hide the others
            continue
        names.append(inst.name)
        if wanted in (norm(inst.key), norm(inst.name)):
            return inst
    raise IngestRejected(
        "unknown_instrument", f"INSTRUME={instrume!r} is not a known instrument (known: {', '.join(names)})",
        hint="check the header; a new camera needs a description file in UPAD_INSTRUMENT_PATH")


# -- header access -------------------------------------------------------------------------------------------------
class _Cards:
    """Read cards under the convention's HIERARCH prefix, falling back to the other known prefixes."""

    def __init__(self, header: Mapping[str, Any], convention: str) -> None:
        self.header = header
        self.prefixes = [CONVENTIONS[convention]] + [p for c, p in CONVENTIONS.items() if c != convention]

    def _get(self, key: str) -> Any:
        try:
            return self.header.get(key)
        except Exception:  # an unparsable card (astropy VerifyError): its raw text, refused by the parsers
            return _raw_card_text(self.header, key)

    def plain(self, key: str) -> Any:
        value = self._get(key)
        if isinstance(value, str):
            value = value.strip()
            return value or None
        return value

    def hier(self, key: str) -> Any:
        for prefix in self.prefixes:
            name = f"{prefix} {key}"
            if name in self.header:
                value = self._get(name)
                if isinstance(value, str):
                    value = value.strip() or None
                if value is not None:
                    return value
        return None

    def hier_name(self, key: str) -> str:
        return f"HIERARCH {self.prefixes[0]} {key}"


def _raw_card_text(header: Any, key: str) -> str:
    try:
        image = header.cards[key].image
    except Exception:
        return "<unparsable>"
    body = image.split("=", 1)[1] if "=" in image else image[8:]
    return body.split(" /", 1)[0].strip() or "<unparsable>"


def detect_convention(header: Mapping[str, Any]) -> str:
    """``'T80S'`` when the header has ``HIERARCH T80S`` cards, else ``'OAJ'``."""
    counts = {c: 0 for c in CONVENTIONS}
    for key in header.keys():
        head = str(key).split(" ", 1)[0].upper()
        if " " in str(key) and head in counts:
            counts[head] += 1
    if counts["T80S"] > counts["OAJ"]:
        return "T80S"
    if counts["OAJ"] == 0 and str(header.get("ORIGIN", "")).strip().upper().startswith("T80S"):
        return "T80S"
    return "OAJ"


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _amplifiers(cards: _Cards, n_default: int) -> tuple[AmpInfo, ...]:
    n = cards.hier("DET OUTPUTS")
    try:
        n = int(n) if n is not None else n_default
    except (TypeError, ValueError):
        n = n_default
    amps = []
    for i in range(1, max(n, 0) + 1):
        values = {
            "gain": _float(cards.hier(f"DET OUT{i} GAIN")), "ron": _float(cards.hier(f"DET OUT{i} RON")),
            "satur": _float(cards.hier(f"DET OUT{i} SATUR")),
            "datasec": cards.hier(f"DET OUT{i} DATASEC"), "prescan": cards.hier(f"DET OUT{i} PRSCSEC"),
            "overscan_x": cards.hier(f"DET OUT{i} OVSCSEC"), "overscan_y": cards.hier(f"DET OUT{i} OVSYSEC"),
        }
        if all(v is None for v in values.values()):
            continue
        amps.append(AmpInfo(id=i, **{k: (str(v) if k in ("datasec", "prescan", "overscan_x", "overscan_y")
                                         and v is not None else v) for k, v in values.items()}))
    return tuple(amps)


# -- the translator --------------------------------------------------------------------------------------------------
def translate_header(header: Mapping[str, Any], filename: str | None = None, *,
                     config: TranslationConfig = DEFAULT_CONFIG) -> FrameMetadata:
    """Translate a raw-frame header (either convention) into :class:`FrameMetadata`.

    Parameters
    ----------
    header : Mapping
        The exposure header: for fpack files the primary header merged with the image extension header (see
        :func:`upad.ingest.verify.merged_header`). An :class:`astropy.io.fits.Header` or any mapping whose keys
        are the card names (HIERARCH cards without the ``HIERARCH`` word, e.g. ``'OAJ DPR TYPE'``).
    filename : str, optional
        File name, checked against the contract pattern (mismatches are warnings only).
    config : TranslationConfig
        Site and survey conventions.

    Returns
    -------
    FrameMetadata

    Raises
    ------
    IngestRejected
        ``missing_keys`` (all missing keys are listed at once), ``bad_value`` or ``unknown_instrument``.
    """
    convention = detect_convention(header)
    cards = _Cards(header, convention)
    warnings: list[str] = []
    missing: list[str] = []
    bad: list[str] = []

    instrume = cards.plain("INSTRUME")
    inst: Instrument | None = None
    if instrume is None:
        missing.append("INSTRUME")
    else:
        inst = resolve_instrument(str(instrume))

    # observation type: DPR TYPE, then IMAGETYP, then DET EXP TYPE
    raw_type = None
    for getter, name in ((cards.hier, "DPR TYPE"), (cards.plain, "IMAGETYP"), (cards.hier, "DET EXP TYPE"),
                         (cards.plain, "OBSTYPE")):
        raw_type = getter(name)
        if raw_type is not None:
            break
    if raw_type is None:
        missing.append(f"{cards.hier_name('DPR TYPE')} (or IMAGETYP)")
        obs_type = "unknown"
    else:
        obs_type = normalize_obs_type(str(raw_type), category=cards.hier("DPR CATG"))
        if obs_type == "unknown":
            warnings.append(f"unrecognised observation type {raw_type!r}: registered as 'unknown'")

    date_raw = cards.plain("DATE-OBS")
    date_obs = None
    if date_raw is None:
        missing.append("DATE-OBS")
    else:
        try:
            date_obs = parse_date_obs(date_raw, cards.plain("TIME-OBS") or cards.plain("UT"))
        except (TypeError, ValueError):
            bad.append(f"DATE-OBS={date_raw!r} is not an ISO 8601 date-time (expected e.g. '2015-08-11T01:30:19.811')")
        timesys = cards.plain("TIMESYS")
        if timesys is not None and str(timesys).upper() not in ("UTC", "UT"):
            warnings.append(f"TIMESYS={timesys!r}: DATE-OBS was read as UTC")

    exptime_raw = cards.plain("EXPTIME")
    if exptime_raw is None:
        exptime_raw = cards.plain("EXPOSURE")
    exptime = None
    if exptime_raw is None:
        missing.append("EXPTIME")
    else:
        exptime = _float(exptime_raw)
        if exptime is None or exptime < 0:
            bad.append(f"EXPTIME={exptime_raw!r} is not a non-negative number of seconds")
            exptime = None

    needs_filter = obs_type in ("science", "flat-dome", "flat-sky")
    filter_raw = cards.plain("FILTER")
    filter_name = None
    if filter_raw is None:
        if needs_filter:
            missing.append("FILTER")
    elif inst is not None:
        system = get_filter_system(inst.filter_system)
        found = system.lookup(str(filter_raw))
        if found is not None:
            filter_name = found.name
        elif needs_filter:
            known = ", ".join(f"{f.name}" + (f" ({'/'.join(f.alias)})" if f.alias else "") for f in system.filters)
            bad.append(f"FILTER={filter_raw!r} is not in the {system.system} filter system (known: {known})")

    ra = dec = None
    ra_raw, dec_raw = cards.plain("RA"), cards.plain("DEC")
    if obs_type == "science":
        missing += [k for k, v in (("RA", ra_raw), ("DEC", dec_raw)) if v is None]
    if ra_raw is not None:
        try:
            ra = parse_ra(ra_raw)
        except (TypeError, ValueError):
            bad.append(f"RA={ra_raw!r} is neither decimal degrees nor sexagesimal hours 'hh:mm:ss.s' in 0–24 h")
    if dec_raw is not None:
        try:
            dec = parse_dec(dec_raw)
        except (TypeError, ValueError):
            bad.append(f"DEC={dec_raw!r} is neither decimal degrees nor sexagesimal '±dd:mm:ss' in −90…+90")

    obj = cards.plain("OBJECT")
    tile_id = tile_name = None
    if obs_type == "science":
        if obj is None:
            missing.append("OBJECT")
        else:
            match = re.search(config.tile_regex, str(obj))
            digits = (match.group(1) or "").strip() if match else ""
            if digits.isdigit():
                tile_id, tile_name = int(digits), str(obj)
            elif match:
                warnings.append(f"OBJECT={obj!r}: the tile id {digits!r} matched by pattern {config.tile_regex!r} "
                                "is not an integer: no tile assigned")
            else:
                warnings.append(f"OBJECT={obj!r} holds no tile id (pattern {config.tile_regex!r}): no tile assigned")

    if missing or bad:
        if missing:
            msg = f"missing header keys: {', '.join(missing)}"
            if bad:
                msg += "; also " + "; ".join(bad)
            raise IngestRejected("missing_keys", msg,
                                 hint="ingest needs these keys (docs/raw-format.md); fix the header and ingest again")
        raise IngestRejected("bad_value", "; ".join(bad),
                             hint="fix the header value (docs/raw-format.md) and ingest again")
    assert inst is not None and date_obs is not None and exptime is not None and raw_type is not None

    note = _longitude_note(cards, inst)
    if note:
        warnings.append(note)

    airmass = _float(cards.plain("AIRMASS"))
    if airmass is None:
        airmass = _float(cards.hier("TEL AIRM START"))

    if filename is not None:
        warnings += _check_filename(filename, inst, date_obs, exptime, config)

    amps = _amplifiers(cards, inst.n_amplifiers)
    outputs = cards.hier("DET OUTPUTS")
    if outputs is not None and _float(outputs) not in (None, float(inst.n_amplifiers)):
        warnings.append(f"{cards.hier_name('DET OUTPUTS')}={outputs!r} but {inst.name} has {inst.n_amplifiers} "
                        "amplifiers: the instrument description is used")

    try:
        night = nights.night_of(date_obs, inst.site)
    except (OverflowError, ValueError):  # within hours of year 1 or 9999: no night, no real exposure
        raise IngestRejected("implausible", f"DATE-OBS={date_raw!r} is at the edge of the calendar: no observing "
                             "night can be computed", hint="fix the header (or the camera computer's clock) and "
                             "ingest again") from None

    return FrameMetadata(
        instrument=inst.key,
        telescope=str(cards.plain("TELESCOP") or inst.telescope_header),
        detector=(str(cards.hier("DET NAME")) if cards.hier("DET NAME") is not None else inst.detector_name),
        convention=convention,
        obs_type=obs_type,
        obs_type_raw=str(raw_type),
        filter=filter_name,
        filter_raw=None if filter_raw is None else str(filter_raw),
        read_mode=None if cards.hier("DET READ MODE") is None else str(cards.hier("DET READ MODE")),
        exptime=exptime,
        date_obs=date_obs,
        mjd=mjd_of(date_obs),
        night=night,
        object=None if obj is None else str(obj),
        ra=ra,
        dec=dec,
        airmass=airmass,
        tile_id=tile_id,
        tile_name=tile_name,
        amplifiers=amps,
        warnings=tuple(warnings),
    )


def _check_filename(filename: str, inst: Instrument, date_obs: dt.datetime, exptime: float,
                    config: TranslationConfig) -> list[str]:
    match = _FILENAME_RE.match(filename)
    if not match:
        return [f"file name {filename!r} does not follow '<prefix>-<YYYYMMDDTHHMMSS>-<NN>.fits.fz'"]
    out = []
    if match["prefix"] != inst.file_prefix:
        out.append(f"file name prefix {match['prefix']!r} is not {inst.name}'s {inst.file_prefix!r}")
    stamp = dt.datetime.strptime(match["stamp"], "%Y%m%dT%H%M%S")
    delta = (stamp - date_obs.replace(microsecond=0)).total_seconds()
    if not -1.0 <= delta <= exptime + config.filename_tolerance_s:
        out.append(f"file name time {match['stamp']} is {delta:+.0f} s from DATE-OBS {date_obs.isoformat()}")
    return out


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int)) and not isinstance(value, np.generic):
        return value
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, (bool, int)):
            return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value.replace("\x00", "")
    if type(value).__name__ == "Undefined":  # astropy's value of a card without value
        return None
    return str(value)


def header_to_json(header: Any) -> dict[str, Any]:
    """A FITS header as a JSON-safe dict (for the ``frames.header`` column).

    Keys are the card names (HIERARCH cards without the word ``HIERARCH``, e.g. ``'OAJ DPR TYPE'``); values are
    ``bool``, ``int``, finite ``float``, ``str`` or ``None`` (non-finite floats become strings such as ``'nan'``,
    NUL characters are dropped); ``COMMENT`` and ``HISTORY`` cards become lists of strings; of repeated keys the
    first value is kept, as astropy does.
    """
    out: dict[str, Any] = {}
    for card in header.cards:
        key = card.keyword
        if not key:
            continue
        if key in ("COMMENT", "HISTORY"):
            out.setdefault(key, []).append(_json_value(str(card.image[8:]).rstrip()))
        elif key not in out:
            try:
                value = card.value
            except Exception:  # unparsable card: keep its text
                value = _raw_card_text(header, key)
            out[key] = _json_value(value)
    return out
