"""The one table of bit-coded mask bits, used by every step and published with the data.

A reduced frame carries one integer mask plane (:data:`MASK_DTYPE`, FITS ``BITPIX = 16``) in which every pixel
holds the OR of the bits below. The table is the single source of truth: the FITS writer copies it into the header
of the mask HDU (``MP_<NAME> = bit number``, as Rubin's pipelines do), ``docs/mask-bits.md`` documents it for users
and the catalog column ``IMAFLAGS_ISO`` uses the same bits.

==  ======  ================  ======================================================================================
bit value   name              meaning
==  ======  ================  ======================================================================================
0   1       ``BAD``           defective pixel from the bad-pixel mask (hot, dead or low-response pixel, bad column)
1   2       ``SATURATED``     at or above the saturation level (raw ADC maximum or full well), grown by a pixel
2   4       ``BLEED``         bleed trail of a saturated star (charge spilled along the column)
3   8       ``COSMIC``        cosmic-ray hit
4   16      ``SATELLITE``     satellite or aircraft trail
5   32      ``INTERPOLATED``  value replaced by an interpolation of its neighbours (cosmetic correction)
6   64      ``EDGE``          within a few pixels of the detector edge
7   128     ``VIGNETTED``     strongly vignetted: the flat-field response is below a threshold
8   256     ``NODATA``        no valid data (not finite in the calibrated frame, no flat response)
9   512     ``SUSPECT``       low-response pixel or non-linear regime: usable but less reliable
10  1024    ``CROSSTALK``     electronic crosstalk ghost removed by the ISR
11  2048    ``BRIGHT_STAR``   halo or diffraction spike of a bright star (tile masks)
12  4096    ``DETECTED``      reserved: pixel of a detected source (segmentation)
13  8192    ``LOWEXP``        outside the tile area: exposure time below the tile mask's area fraction (tile masks)
==  ======  ================  ======================================================================================

Bit 14 is free; bit 15 is not used (signed 16-bit FITS integers).

Examples
--------
>>> from upad import maskbits as mb
>>> mb.value("COSMIC", "SATELLITE")
24
>>> mb.names(24)
['COSMIC', 'SATELLITE']
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MaskBit", "BITS", "MASK_DTYPE", "BAD", "SATURATED", "BLEED", "COSMIC", "SATELLITE", "INTERPOLATED", "EDGE",
    "VIGNETTED", "NODATA", "SUSPECT", "CROSSTALK", "BRIGHT_STAR", "DETECTED", "LOWEXP", "UNUSABLE", "ZERO_WEIGHT",
    "value", "names", "bit_of", "describe", "header_cards", "summary", "new_mask", "from_header",
]

#: dtype of the mask plane in memory and in FITS (``BITPIX = 16``).
MASK_DTYPE = np.int16


@dataclass(frozen=True)
class MaskBit:
    """One mask bit.

    Attributes
    ----------
    name : str
        Upper-case name (``MP_<name>`` in FITS headers).
    bit : int
        Bit number (value ``1 << bit``).
    description : str
        What a set bit means, for users.
    short : str
        A short form of the description (FITS header comment).
    """

    name: str
    bit: int
    description: str
    short: str = ""

    @property
    def value(self) -> int:
        """The integer value ``1 << bit``."""
        return 1 << self.bit


#: Every mask bit, in bit order.
BITS: tuple[MaskBit, ...] = (
    MaskBit("BAD", 0, "defective pixel from the bad-pixel mask (hot, dead or low-response pixel, bad column)",
            "bad pixel (bad-pixel mask)"),
    MaskBit("SATURATED", 1, "at or above the saturation level (raw ADC maximum or full well), grown by a pixel",
            "saturated"),
    MaskBit("BLEED", 2, "bleed trail of a saturated star (charge spilled along the column)",
            "bleed trail"),
    MaskBit("COSMIC", 3, "cosmic-ray hit",
            "cosmic ray"),
    MaskBit("SATELLITE", 4, "satellite or aircraft trail",
            "satellite trail"),
    MaskBit("INTERPOLATED", 5, "value replaced by an interpolation of its neighbours (cosmetic correction)",
            "interpolated value"),
    MaskBit("EDGE", 6, "within a few pixels of the detector edge",
            "detector edge"),
    MaskBit("VIGNETTED", 7, "strongly vignetted: the flat-field response is below a threshold",
            "vignetted"),
    MaskBit("NODATA", 8, "no valid data (not finite in the calibrated frame, no flat response)",
            "no valid data"),
    MaskBit("SUSPECT", 9, "low-response pixel or non-linear regime: usable but less reliable",
            "suspect (low response, non-linear)"),
    MaskBit("CROSSTALK", 10, "electronic crosstalk ghost removed by the ISR (measured crosstalk matrix)",
            "crosstalk corrected"),
    MaskBit("BRIGHT_STAR", 11, "halo or diffraction spike of a bright star (tile masks)",
            "bright-star halo"),
    MaskBit("DETECTED", 12, "reserved: pixel of a detected source (segmentation)",
            "detected source (reserved)"),
    MaskBit("LOWEXP", 13, "outside the tile area: exposure time below the tile mask's area fraction (tile masks)",
            "outside the tile area"),
)

_BY_NAME: dict[str, MaskBit] = {b.name: b for b in BITS}

BAD = _BY_NAME["BAD"].value
SATURATED = _BY_NAME["SATURATED"].value
BLEED = _BY_NAME["BLEED"].value
COSMIC = _BY_NAME["COSMIC"].value
SATELLITE = _BY_NAME["SATELLITE"].value
INTERPOLATED = _BY_NAME["INTERPOLATED"].value
EDGE = _BY_NAME["EDGE"].value
VIGNETTED = _BY_NAME["VIGNETTED"].value
NODATA = _BY_NAME["NODATA"].value
SUSPECT = _BY_NAME["SUSPECT"].value
CROSSTALK = _BY_NAME["CROSSTALK"].value
BRIGHT_STAR = _BY_NAME["BRIGHT_STAR"].value
DETECTED = _BY_NAME["DETECTED"].value
LOWEXP = _BY_NAME["LOWEXP"].value

#: Pixels whose value is not a measurement of the sky (excluded from statistics and fits).
UNUSABLE = BAD | SATURATED | BLEED | COSMIC | SATELLITE | NODATA
#: Pixels given zero weight in the weight map (and so ignored by coaddition).
ZERO_WEIGHT = UNUSABLE | EDGE


def bit_of(name: str) -> MaskBit:
    """The :class:`MaskBit` called ``name`` (case-insensitive); ``KeyError`` lists the known names."""
    try:
        return _BY_NAME[name.upper()]
    except KeyError:
        raise KeyError(f"unknown mask bit {name!r}; known: {', '.join(_BY_NAME)}") from None


def value(*names: str | Iterable[str]) -> int:
    """OR of the values of the named bits (names or iterables of names)."""
    out = 0
    for n in names:
        if isinstance(n, str):
            out |= bit_of(n).value
        else:
            for m in n:
                out |= bit_of(m).value
    return out


def names(mask_value: int) -> list[str]:
    """Names of the bits set in ``mask_value``, in bit order."""
    v = int(mask_value)
    return [b.name for b in BITS if v & b.value]


def describe() -> list[dict[str, object]]:
    """Documentation rows: ``name, bit, value, description``."""
    return [{"name": b.name, "bit": b.bit, "value": b.value, "description": b.description} for b in BITS]


def header_cards() -> dict[str, tuple[int, str]]:
    """FITS cards ``MP_<NAME> = (bit number, description)`` describing the mask plane (keywords longer than
    8 characters are written as ``HIERARCH`` cards)."""
    return {f"MP_{b.name}": (b.bit, b.short or b.name.lower()) for b in BITS}


def from_header(header: Mapping[str, object]) -> dict[str, int]:
    """Name → value of the bits described by ``MP_*`` cards of a FITS header (the inverse of
    :func:`header_cards`)."""
    out: dict[str, int] = {}
    for key in header:
        k = str(key)
        if k.startswith("HIERARCH "):
            k = k[9:]
        if k.startswith("MP_"):
            out[k[3:]] = 1 << int(header[key])  # type: ignore[arg-type]
    return out


def new_mask(shape: tuple[int, int]) -> np.ndarray:
    """An empty (all zero) mask plane of ``shape``."""
    return np.zeros(shape, MASK_DTYPE)


def summary(mask: np.ndarray) -> dict[str, int]:
    """Number of pixels with each bit set (only bits that occur), computed in one pass over the plane."""
    m = np.asarray(mask)
    if m.size == 0:
        return {}
    # counting bits through a histogram of the values present is much faster than one pass per bit
    flat = m.ravel().view(np.uint16) if m.dtype == np.int16 else m.ravel().astype(np.int64)
    counts = np.bincount(flat) if flat.dtype == np.uint16 else np.bincount(flat[flat >= 0])
    vals = np.flatnonzero(counts)
    out: dict[str, int] = {}
    for b in BITS:
        sel = (vals & b.value) != 0
        n = int(counts[vals[sel]].sum())
        if n:
            out[b.name] = n
    return out
