"""Cosmetic correction: bad pixels replaced by an interpolation of their good neighbours.

Every pixel with one of ``bits`` set (default ``BAD`` and ``NODATA``) is replaced by a linear interpolation between
the nearest good pixels on its row or its column — whichever has good pixels on both sides — and, when both do with
gaps of similar length (an isolated hot pixel), by the mean of the two weighted by the inverse gap lengths. Bad
columns are therefore bridged along rows, which is what their geometry calls for. Pixels with no good neighbour
within ``max_gap_px`` get the median of the good pixels of their 7x7 box, or 0 (the background, for a
background-subtracted image) when there is none. Replaced pixels get ``INTERPOLATED``; their other bits stay (the
weight map keeps them at zero weight).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from upad import maskbits as mb
from upad.config import StepConfig, param
from upad.reduce._jit import njit

__all__ = ["CosmeticsConfig", "CosmeticsResult", "bad_pixel_bits", "interpolate_bad_pixels"]


@dataclass(frozen=True)
class CosmeticsConfig(StepConfig):
    """Parameters of the cosmetic correction."""

    bits: int = param(mb.BAD | mb.NODATA, doc="mask bits of the pixels to interpolate", bounds=(0, 32767))
    max_gap_px: int = param(16, doc="longest run of bad pixels bridged by a linear interpolation", bounds=(1, 1024),
                            unit="pixel")


@dataclass
class CosmeticsResult:
    """Summary of :func:`interpolate_bad_pixels`.

    Attributes
    ----------
    n_interpolated : int
        Pixels replaced.
    n_unfixed : int
        Pixels with no good neighbour (set to 0).
    """

    n_interpolated: int
    n_unfixed: int


def bad_pixel_bits(bpm: np.ndarray, *, suspect_bits: int = 4) -> np.ndarray:
    """Translate a calibration bad-pixel mask (:mod:`upad.calib.bpm` bits: 1 hot, 2 dead, 4 low response,
    8 bad column) into frame mask bits: low response alone → ``SUSPECT``, anything else → ``BAD``."""
    b = np.asarray(bpm)
    out = np.zeros(b.shape, mb.MASK_DTYPE)
    bad = (b & ~np.asarray(suspect_bits, b.dtype)) != 0
    out[bad] = mb.BAD
    out[((b & np.asarray(suspect_bits, b.dtype)) != 0) & ~bad] = mb.SUSPECT
    return out


@njit(cache=True, nogil=True)
def _interp(img, mask, ys, xs, bits, max_gap):  # pragma: no cover - compiled
    ny, nx = img.shape
    vals = np.empty(len(ys), np.float32)
    unfixed = 0
    buf = np.empty(49, np.float64)
    for k in range(len(ys)):
        y = ys[k]
        x = xs[k]
        # along the row
        lft = x - 1
        while lft >= 0 and (mask[y, lft] & bits) != 0 and x - lft <= max_gap:
            lft -= 1
        r = x + 1
        while r < nx and (mask[y, r] & bits) != 0 and r - x <= max_gap:
            r += 1
        okl = lft >= 0 and (mask[y, lft] & bits) == 0 and x - lft <= max_gap
        okr = r < nx and (mask[y, r] & bits) == 0 and r - x <= max_gap
        hv = 0.0
        hgap = 0
        if okl and okr:
            hv = img[y, lft] + (img[y, r] - img[y, lft]) * (x - lft) / (r - lft)
            hgap = r - lft
        elif okl:
            hv = img[y, lft]
            hgap = 2 * (x - lft)
        elif okr:
            hv = img[y, r]
            hgap = 2 * (r - x)
        # along the column
        d = y - 1
        while d >= 0 and (mask[d, x] & bits) != 0 and y - d <= max_gap:
            d -= 1
        u = y + 1
        while u < ny and (mask[u, x] & bits) != 0 and u - y <= max_gap:
            u += 1
        okd = d >= 0 and (mask[d, x] & bits) == 0 and y - d <= max_gap
        oku = u < ny and (mask[u, x] & bits) == 0 and u - y <= max_gap
        vv = 0.0
        vgap = 0
        if okd and oku:
            vv = img[d, x] + (img[u, x] - img[d, x]) * (y - d) / (u - d)
            vgap = u - d
        elif okd:
            vv = img[d, x]
            vgap = 2 * (y - d)
        elif oku:
            vv = img[u, x]
            vgap = 2 * (u - y)
        both_h = okl and okr
        both_v = okd and oku
        if both_h and not both_v:
            vgap = 0
        elif both_v and not both_h:
            hgap = 0
        if hgap > 0 and vgap > 0:
            if hgap <= 2 * vgap and vgap <= 2 * hgap:
                wh = 1.0 / hgap
                wv = 1.0 / vgap
                vals[k] = (hv * wh + vv * wv) / (wh + wv)
            elif hgap < vgap:
                vals[k] = hv
            else:
                vals[k] = vv
        elif hgap > 0:
            vals[k] = hv
        elif vgap > 0:
            vals[k] = vv
        else:
            n = 0
            for dy in range(-3, 4):
                yy = y + dy
                if yy < 0 or yy >= ny:
                    continue
                for dx in range(-3, 4):
                    xx = x + dx
                    if xx < 0 or xx >= nx or (mask[yy, xx] & bits) != 0:
                        continue
                    buf[n] = img[yy, xx]
                    n += 1
            if n > 0:
                vals[k] = np.median(buf[:n])
            else:
                vals[k] = 0.0
                unfixed += 1
    for k in range(len(ys)):
        img[ys[k], xs[k]] = vals[k]
    return unfixed


def interpolate_bad_pixels(image: np.ndarray, mask: np.ndarray, *,
                           config: CosmeticsConfig = CosmeticsConfig()) -> CosmeticsResult:
    """Replace the pixels of ``mask`` with ``config.bits`` by interpolation (see the module documentation).

    Parameters
    ----------
    image : ndarray
        Calibrated image (float32), modified in place.
    mask : ndarray
        Bit-coded mask (int16), updated in place with ``INTERPOLATED``.
    config : CosmeticsConfig

    Returns
    -------
    CosmeticsResult
    """
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ in shape")
    from upad.reduce._maskops import find_bits

    bits = np.asarray(config.bits, mask.dtype)
    ys, xs = find_bits(mask, int(config.bits))
    if len(ys) == 0:
        return CosmeticsResult(0, 0)
    unfixed = _interp(image, mask, ys, xs, bits, int(config.max_gap_px))
    mask[ys, xs] |= np.asarray(mb.INTERPOLATED, mask.dtype)
    return CosmeticsResult(n_interpolated=len(ys), n_unfixed=int(unfixed))
