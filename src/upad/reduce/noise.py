"""The noise model of a calibrated frame: variance and weight maps.

A calibrated pixel (electrons, divided by the normalised flat ``F``) holds ``I = (S F + D + n) / F`` where ``S`` is
the sky plus source signal at flat 1, ``D`` the subtracted dark charge and ``n`` the read noise. Its variance is::

    var = (B F + D + RN^2) / F^2            (background only: the weight map)
    var_total = var + max(I - B, 0) / F      (with the Poisson noise of the sources)

with ``B`` the sky background model (e-), ``RN`` the read noise of the pixel's amplifier (e-) and ``D`` the dark
charge (e-) that was subtracted. The weight map is ``1 / var`` and zero for masked pixels (:data:`upad.maskbits.
ZERO_WEIGHT`), as SWarp and SExtractor expect (``WEIGHT_TYPE MAP_WEIGHT``). The sources are left out of the weight
map on purpose: weighting a coadd by a variance that includes a star's own Poisson noise biases its photometry.

:func:`measured_noise` compares the model with the scatter of the sky pixels (the ratio should be 1).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from upad import maskbits as mb
from upad.reduce._jit import njit, prange
from upad.reduce.background import BackgroundResult, _eval_row, _row_coeffs, _second_general

__all__ = ["NoiseResult", "measured_noise", "variance_map", "weight_map"]

Region = tuple[slice, slice]


@dataclass
class NoiseResult:
    """Variance map and its summary.

    Attributes
    ----------
    variance : ndarray
        Background-only variance per pixel (float32, e-^2).
    read_noise : tuple of float
        Read noise per amplifier used (e-).
    median_sigma : float
        Median predicted noise of a sky pixel (e-).
    """

    variance: np.ndarray
    read_noise: tuple[float, ...]
    median_sigma: float


@njit(parallel=True, nogil=True, cache=True)
def _var_kernel(bkg, flat, dark, rn2, out):  # pragma: no cover - compiled
    ny, nx = bkg.shape
    for j in prange(ny):
        for i in range(nx):
            f = flat[j, i]
            b = bkg[j, i]
            if b < 0:
                b = 0.0
            if f > 0:
                out[j, i] = (b * f + dark[j, i] + rn2[j, i]) / (f * f)
            else:
                out[j, i] = np.inf


def variance_map(background: np.ndarray, *, read_noise: float | Sequence[float],
                 amp_regions: Sequence[Region] | None = None, flat: np.ndarray | None = None,
                 dark_e: np.ndarray | float | None = None, out: np.ndarray | None = None) -> NoiseResult:
    """Background-only variance of every pixel of a calibrated frame (see the module documentation).

    Parameters
    ----------
    background : ndarray
        Full-size sky background model (e-, at flat 1), float32.
    read_noise : float or sequence of float
        Read noise (e-): one value, or one per amplifier (with ``amp_regions``).
    amp_regions : sequence of (slice, slice), optional
        Region of the assembled image read by each amplifier (``AmpSection.active``), same order as
        ``read_noise``.
    flat : ndarray, optional
        The normalised flat the frame was divided by (1 when omitted).
    dark_e : ndarray or float, optional
        Dark charge subtracted from the frame (e-, i.e. dark rate times exposure time).
    out : ndarray, optional
        float32 array to fill (may be ``background`` itself, to save memory).

    Returns
    -------
    NoiseResult
    """
    bkg = np.asarray(background, np.float32)
    shape = bkg.shape
    rn = np.atleast_1d(np.asarray(read_noise, np.float64))
    rn2 = np.empty(shape, np.float32) if len(rn) > 1 else None
    if rn2 is not None:
        if amp_regions is None or len(amp_regions) != len(rn):
            raise ValueError(f"{len(rn)} read-noise values need as many amplifier regions")
        for r, reg in zip(rn, amp_regions):
            rn2[reg] = np.float32(r * r)
    else:
        rn2 = np.broadcast_to(np.float32(rn[0] ** 2), shape)
    fl = np.broadcast_to(np.float32(1.0), shape) if flat is None else np.asarray(flat, np.float32)
    if dark_e is None:
        dk = np.broadcast_to(np.float32(0.0), shape)
    else:
        dk = np.broadcast_to(np.asarray(dark_e, np.float32), shape)
    if out is None:
        out = np.empty(shape, np.float32)
    _var_kernel(bkg, fl, dk, rn2, out)
    sample = out[:: max(1, shape[0] // 256), :: max(1, shape[1] // 256)]
    sample = sample[np.isfinite(sample)]
    med = float(np.sqrt(np.median(sample))) if sample.size else float("nan")
    return NoiseResult(variance=out, read_noise=tuple(float(r) for r in rn), median_sigma=med)


@njit(parallel=True, nogil=True, cache=True)
def _sub_var_kernel(img, var, cols, xc, flat, dark, rn2, has_flat, has_dark, y0, y1, x0, x1):  # pragma: no cover
    mx = cols.shape[1]
    for y in prange(y0, y1):
        row = cols[y].copy()
        y2 = np.empty(mx)
        _second_general(xc, row, y2)
        coef = np.empty((max(mx - 1, 1), 4))
        _row_coeffs(xc, row, y2, coef)
        b = np.empty(img.shape[1], np.float64)
        _eval_row(xc, row, y2, coef, b, x0, x1, 1.0, 0)
        for x in range(x0, x1):
            bb = b[x]
            img[y, x] -= bb
            if bb < 0:
                bb = 0.0
            f = flat[y, x] if has_flat else 1.0
            d = dark[y, x] if has_dark else 0.0
            if f > 0:
                var[y, x] = (bb * f + d + rn2) / (f * f)
            else:
                var[y, x] = np.inf


def subtract_and_variance(image: np.ndarray, background: BackgroundResult, *, read_noise: float | Sequence[float],
                          amp_regions: Sequence[Region] | None = None, flat: np.ndarray | None = None,
                          dark_e: np.ndarray | float | None = None, out: np.ndarray | None = None) -> NoiseResult:
    """Subtract the background model from ``image`` (in place) and build the variance map in the same pass.

    Same model as :func:`variance_map`, without ever storing the full-size background.
    """
    ny, nx = image.shape
    rn = np.atleast_1d(np.asarray(read_noise, np.float64))
    if len(rn) > 1:
        if amp_regions is None or len(amp_regions) != len(rn):
            raise ValueError(f"{len(rn)} read-noise values need as many amplifier regions")
        regions = [(r, reg) for r, reg in zip(rn, amp_regions)]
    else:
        regions = [(rn[0], (slice(0, ny), slice(0, nx)))]
    if out is None:
        out = np.empty((ny, nx), np.float32)
    fl = np.ones((1, 1), np.float32) if flat is None else np.asarray(flat, np.float32)
    if dark_e is None or np.ndim(dark_e) == 0:
        dk = np.ones((1, 1), np.float32)
        dconst = 0.0 if dark_e is None else float(dark_e)
    else:
        dk = np.asarray(dark_e, np.float32)
        dconst = None
    cols, xc = background.column_splines()
    for r, (sy, sx) in regions:
        y0, y1, _ = sy.indices(ny)
        x0, x1, _ = sx.indices(nx)
        _sub_var_kernel(image, out, cols, xc, fl, dk, float(r * r + (dconst or 0.0)), flat is not None,
                        dconst is None, y0, y1, x0, x1)
    sample = out[:: max(1, ny // 256), :: max(1, nx // 256)]
    sample = sample[np.isfinite(sample)]
    med = float(np.sqrt(np.median(sample))) if sample.size else float("nan")
    return NoiseResult(variance=out, read_noise=tuple(float(v) for v in rn), median_sigma=med)


@njit(parallel=True, nogil=True, cache=True)
def _weight_kernel(var, mask, bits, out):  # pragma: no cover - compiled
    ny, nx = var.shape
    for j in prange(ny):
        for i in range(nx):
            v = var[j, i]
            if (mask[j, i] & bits) != 0 or not (v > 0) or not np.isfinite(v):
                out[j, i] = 0.0
            else:
                out[j, i] = 1.0 / v


def weight_map(variance: np.ndarray, mask: np.ndarray | None = None, *, zero_bits: int = mb.ZERO_WEIGHT,
               out: np.ndarray | None = None) -> np.ndarray:
    """Inverse-variance weight map (float32, e-^-2), zero where ``mask`` has any of ``zero_bits``.

    ``out`` may be ``variance`` itself to convert in place.
    """
    var = np.asarray(variance, np.float32)
    if out is None:
        out = np.empty(var.shape, np.float32)
    m = mask if mask is not None else np.zeros((1, 1), mb.MASK_DTYPE)
    if mask is None:
        m = np.broadcast_to(np.zeros((), mb.MASK_DTYPE), var.shape)
    _weight_kernel(var, m, np.int16(zero_bits) if m.dtype == np.int16 else zero_bits, out)
    return out


def measured_noise(image: np.ndarray, variance: np.ndarray, mask: np.ndarray | None = None, *,
                   bits: int = mb.UNUSABLE, step: int = 7) -> tuple[float, float]:
    """Robust scatter of background-subtracted sky pixels and its ratio to the model.

    Uses every ``step``-th pixel in both axes; pixels more than 5 sigma away (sources) are ignored through the
    robust estimator (1.4826 x the median absolute deviation of ``image / sqrt(variance)``).

    Returns
    -------
    sigma : float
        Measured median noise (e-).
    ratio : float
        Measured over predicted noise (1 for a correct model).
    """
    img = np.asarray(image)[::step, ::step]
    var = np.asarray(variance)[::step, ::step]
    ok = np.isfinite(img) & np.isfinite(var) & (var > 0)
    if mask is not None:
        ok &= (np.asarray(mask)[::step, ::step] & bits) == 0
    if ok.sum() < 100:
        return float("nan"), float("nan")
    z = img[ok] / np.sqrt(var[ok])
    ratio = float(1.4826 * np.median(np.abs(z - np.median(z))))
    sigma = float(1.4826 * np.median(np.abs(img[ok] - np.median(img[ok]))))
    return sigma, ratio
