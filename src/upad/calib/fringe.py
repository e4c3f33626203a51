"""Fringe maps for red filters: the fixed interference pattern of the night-sky lines, as a fraction of the sky.

From dithered science frames of one filter, reduced and flat-fielded: per frame the large-scale sky background is
estimated with sources masked (:func:`sky_background`, :func:`source_mask`), the frame is normalised to it
(``frame / background - 1``, sources set to NaN, :func:`normalised_frame`); the normalised frames are combined with
a sigma-clipped mean (sources move between dithers, the fringes stay on the detector), and the result is smoothed
with a Gaussian much smaller than the fringe period (:func:`smooth_nan`) to beat down the pixel noise. The map is
zero-mean; a science frame is corrected by subtracting ``scale x sky x fringe`` with the scale fitted per frame
(:func:`upad.isr.fit_fringe_scale`, the ISR's; re-exported here).
"""
from __future__ import annotations

import numpy as np

from upad.isr.fringe import fit_fringe_scale

__all__ = ["fit_fringe_scale", "halo_mask", "normalised_frame", "sky_background", "smooth_nan", "source_mask"]


def sky_background(image: np.ndarray, mask: np.ndarray | None = None, *, box: int = 128,
                   filter_size: int = 3) -> tuple[np.ndarray, float]:
    """Smooth sky background (sep, mesh of ``box`` pixels, median filter of ``filter_size`` meshes) and the global
    background rms. NaN pixels and ``mask`` are ignored."""
    import sep

    data = np.ascontiguousarray(image, dtype=np.float32)
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= mask
    if bad.any():
        data = np.where(bad, np.float32(0.0), data)
    bkg = sep.Background(data, mask=bad if bad.any() else None, bw=int(box), bh=int(box), fw=int(filter_size),
                         fh=int(filter_size))
    return bkg.back(dtype=np.float32), float(bkg.globalrms)


def source_mask(image: np.ndarray, background: np.ndarray, *, nsigma: float = 3.0, grow_px: int = 3,
                saturated: np.ndarray | None = None) -> np.ndarray:
    """Pixels of sources: the background-subtracted image smoothed by 1 pixel above ``nsigma`` robust standard
    deviations, or binned 4 x 4 above 2.5 (faint wings), grown by ``grow_px``; plus saturated and non-finite
    pixels."""
    from upad.calib.qc import detect_positive, grow_mask

    resid = np.asarray(image, np.float32) - background
    bad = ~np.isfinite(resid)
    resid[bad] = 0.0
    mask = bad | detect_positive(resid, nsigma=nsigma, smooth_px=1.0, coarse=4, coarse_nsigma=2.5)
    if saturated is not None:
        mask |= saturated
    return grow_mask(mask, grow_px)


def halo_mask(saturated: np.ndarray, *, radius_px: int) -> np.ndarray:
    """Discs of ``radius_px`` around every saturated star (connected saturated pixels, its bleed included).

    A saturated star's wings (a Kolmogorov or low-beta Moffat profile falls as r^-3 to r^-4) stay above a
    fraction of a per cent of a dark sky out to ~100" from a 9-10 mag star, far below any pixel's detection
    threshold: a source mask does not find them and a sky mesh takes them for sky. ``radius_px <= 0``: nothing.
    """
    out = np.zeros(saturated.shape, bool)
    if radius_px <= 0 or not saturated.any():
        return out
    from scipy import ndimage

    lab, n = ndimage.label(saturated)
    ny, nx = saturated.shape
    r = int(radius_px)
    for sl in ndimage.find_objects(lab):
        yc, xc = (sl[0].start + sl[0].stop - 1) / 2, (sl[1].start + sl[1].stop - 1) / 2
        y0, y1 = max(0, int(yc) - r), min(ny, int(yc) + r + 2)
        x0, x1 = max(0, int(xc) - r), min(nx, int(xc) + r + 2)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        out[y0:y1, x0:x1] |= (yy - yc) ** 2 + (xx - xc) ** 2 <= r * r
    return out


def normalised_frame(image: np.ndarray, background: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image / background - 1`` (float32) with masked pixels and a non-positive background set to NaN."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.asarray(image, np.float32) / background - np.float32(1.0)
    out[mask | ~(background > 0)] = np.nan
    return out.astype(np.float32, copy=False)


def smooth_nan(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing that ignores NaN pixels (normalised convolution); pixels with no valid neighbour stay
    NaN."""
    from scipy import ndimage

    if sigma <= 0:
        return np.asarray(image, np.float32).copy()
    good = np.isfinite(image)
    num = ndimage.gaussian_filter(np.where(good, image, 0).astype(np.float32), sigma)
    den = ndimage.gaussian_filter(good.astype(np.float32), sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[den < 1e-3] = np.nan
    return out.astype(np.float32)
