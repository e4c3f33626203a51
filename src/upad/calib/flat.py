"""Master flat: levels, screening, star masking in twilight flats, normalisation and flat-field stability QC.

Every flat is reduced to electrons with the nominal gain of its amplifier (overscan, master bias, non-linearity,
gain, master dark) and divided by its level (:func:`flat_level`, the median of the central region). The master is
the sigma-clipped mean of the normalised flats, with the rejection driven by the frames' noise model
(:func:`flat_noise_model`), and is normalised to a median of 1 over the whole image (:func:`normalise`). Because the
normalisation is global, not per amplifier, the master keeps the ratio nominal/true gain of every amplifier:
flat-fielding a science frame converted with the nominal gains corrects the gain errors too.

Twilight (sky) flats contain stars at different places in every (offset) flat. :func:`sky_source_mask` finds them
in each normalised flat relative to a first, median combination and masks them (grown by a few pixels) before the
final combination.

Twilight gradients (:func:`fit_gradient`, :func:`divide_surface`): the twilight sky is not uniform — it brightens
towards the Sun by 1-6 % over a wide field, differently in every flat. Before the stars are masked and the flats are
combined, the large-scale gradient of every normalised flat of the types named in ``gradient_flat_types`` (twilight
flats by default) is fitted — a low-order 2-D Legendre polynomial (a plane by default) over the median-binned flat,
with outlier cells rejected — and divided out. A plane is blind to the symmetric part of the response (vignetting),
so the master keeps it; the response's own plane (a fraction of a per cent) goes with the twilight's and is restored
by the illumination correction (night sky or star flat). The removed gradient (peak to peak, direction) is recorded
per flat; one larger than ``gradient_max`` means a sky that is not smooth (clouds, the Moon) and excludes the flat.

Flat-field stability (:func:`residual_qc`): every flat is compared with the master, ``flat / master - 1``; its rms
(robust, pixel scale), its large-scale gradient (peak to peak of a plane fitted to the binned residual map) and the
histogram of the residuals are recorded. Flats out of tolerance are excluded and the master is combined again.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from upad.calib.qc import bin_image, plane_gradient, residual_histogram, robust_std

__all__ = [
    "FlatResidual",
    "GradientFit",
    "amp_means",
    "central_region",
    "divide_surface",
    "fit_gradient",
    "flat_level",
    "flat_noise_model",
    "normalise",
    "residual_qc",
    "saturation_problem",
    "sky_source_mask",
]


def central_region(shape: tuple[int, int], *, border: float = 0.1) -> tuple[slice, slice]:
    """The image without a border of ``border`` x its size on each side."""
    ny, nx = shape
    by, bx = int(ny * border), int(nx * border)
    return slice(by, ny - by), slice(bx, nx - bx)


def flat_level(image: np.ndarray, *, saturated: np.ndarray | None = None, border: float = 0.1,
               step: int = 2) -> float:
    """Median of the central region of a flat (finite, unsaturated pixels; every ``step``-th row and column)."""
    sl = central_region(image.shape, border=border)
    a = image[sl][::step, ::step]
    if saturated is not None:
        a = np.where(saturated[sl][::step, ::step], np.nan, a)
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else float("nan")


def saturation_problem(saturated_fraction: float, *, max_saturated: float) -> str | None:
    """Why a flat with this fraction of saturated pixels is unusable, or ``None`` when it is usable.

    The one saturation screen of the flats: the master flat and the instrument signature's photon-transfer pairs
    and linearity series (a saturated flat's clipped pixels bias its level, its pair variance and its linearity
    point) both exclude a flat with more than ``max_saturated`` of its pixels at the saturation level.
    """
    if saturated_fraction > max_saturated:
        return (f"saturated: {saturated_fraction:.2%} of the pixels at the ADC maximum "
                f"(limit {max_saturated:.2%})")
    return None


def flat_noise_model(read_noise_e: np.ndarray, levels_e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise model of normalised flats (value ~ 1) for :func:`upad.calib.combine.combine_stack`.

    A normalised value ``v`` of a flat of level ``L`` (e-) has variance ``(read noise / L)² + v / L``.
    Returns ``read_var`` and ``poisson`` of shape ``(n_frames, n_amp)``.
    """
    L = np.asarray(levels_e, np.float64)[:, None]
    rn = np.asarray(read_noise_e, np.float64)[None, :]
    return (rn / L) ** 2, np.broadcast_to(1.0 / L, (L.shape[0], rn.shape[1])).copy()


def sky_source_mask(norm: np.ndarray, reference: np.ndarray, *, nsigma: float = 4.0, smooth_px: float = 1.5,
                    grow_px: int = 4) -> np.ndarray:
    """Stars (and other positive sources) of a normalised twilight flat.

    ``norm / reference - 1`` is smoothed with a Gaussian of ``smooth_px`` (matched to a star), thresholded at
    ``nsigma`` robust standard deviations, and the detections are grown by ``grow_px`` pixels. A second, coarser
    pass (4 x 4 binning, 3 sigma) catches the faint wings of brighter stars.
    """
    from upad.calib.qc import detect_positive, grow_mask

    with np.errstate(invalid="ignore", divide="ignore"):
        r = norm / reference - np.float32(1.0)
    bad = ~np.isfinite(r)
    r = np.where(bad, np.float32(0.0), r).astype(np.float32)
    mask = detect_positive(r, nsigma=nsigma, smooth_px=smooth_px, coarse=4, coarse_nsigma=3.0)
    return grow_mask(mask, grow_px)


def normalise(master: np.ndarray, *, step: int = 2) -> float:
    """Divide ``master`` by the median of its finite pixels, in place; return that median."""
    a = master[::step, ::step]
    med = float(np.nanmedian(a))
    if not np.isfinite(med) or med == 0:
        raise ValueError("the combined flat has no finite positive pixels; check the input flats")
    master /= np.float32(med)
    return med


def amp_means(master: np.ndarray, amps: list[tuple[slice, slice]]) -> list[float]:
    """Median of the normalised master per amplifier: the ratio nominal/true gain (times the mean response)."""
    return [round(float(np.nanmedian(master[sl][::2, ::2])), 6) for sl in amps]


@dataclass
class FlatResidual:
    """Flat-field stability of one flat against the master.

    Attributes
    ----------
    rms : float
        Robust standard deviation of ``flat / master - 1`` (pixel scale, fraction).
    gradient : float
        Peak to peak of a plane fitted to the binned residual map (fraction over the field).
    mean_offset : float
        Median of ``flat / master - 1`` before the residual is re-centred (the normalisation difference).
    p01, p99 : float
        1st and 99th percentile of the residuals.
    residual_map : ndarray
        Binned residual map (fraction).
    hist_counts, hist_edges : ndarray
        Histogram of the pixel residuals.
    """

    rms: float
    gradient: float
    mean_offset: float
    p01: float
    p99: float
    residual_map: np.ndarray
    hist_counts: np.ndarray
    hist_edges: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"rms": round(self.rms, 6), "gradient": round(self.gradient, 6),
                "mean_offset": round(self.mean_offset, 6), "p01": round(self.p01, 6), "p99": round(self.p99, 6)}


def residual_qc(norm: np.ndarray, master: np.ndarray, *, mask: np.ndarray | None = None, cells: int = 32,
                hist_range: float = 0.05) -> FlatResidual:
    """Residual of one normalised flat against the master (see :class:`FlatResidual`).

    ``mask`` (e.g. stars of a sky flat, bad pixels) is excluded from the binned map and the gradient; ``cells`` is
    the number of bins along the longer axis of the binned map.
    """
    r = np.empty(master.shape, np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(norm, master, out=r)
    sample = r[::3, ::3]
    sample = sample[np.isfinite(sample)]
    scale = float(np.median(sample)) if sample.size else float("nan")
    med = scale - 1.0
    if np.isfinite(scale) and scale > 0:
        r /= np.float32(scale)
        sample /= np.float32(scale)
    r -= np.float32(1.0)
    sample -= np.float32(1.0)
    rms = robust_std(sample)
    p01, p99 = (np.percentile(sample, [1, 99]) if sample.size else (np.nan, np.nan))
    del sample
    counts, edges = residual_histogram(r, half_range=hist_range)
    if np.isfinite(rms):  # outliers (stars, cosmic rays, defects) do not enter the binned map: in place
        with np.errstate(invalid="ignore"):
            r[~(np.abs(r) < 5 * rms)] = np.nan
    if mask is not None:
        r[mask] = np.nan
    factor = max(1, int(np.ceil(max(r.shape) / cells)))
    grid = bin_image(r, factor, statistic="mean", overwrite=True)
    del r
    p2p, _, _ = plane_gradient(grid)
    return FlatResidual(rms=rms, gradient=p2p, mean_offset=med, p01=float(p01), p99=float(p99), residual_map=grid,
                        hist_counts=counts, hist_edges=edges)


@dataclass
class GradientFit:
    """The large-scale gradient of one normalised flat (:func:`fit_gradient`).

    Attributes
    ----------
    coefficients : ndarray
        Legendre coefficients (``i`` in x, ``j`` in y, ``i + j <= order``) of the logarithm of the removed
        gradient (the constant term is 0).
    order : int
        Total degree of the surface.
    peak_to_peak : float
        Peak to peak of the fitted surface over the image (fraction).
    angle_deg : float
        Direction (pixel axes, counter-clockwise from +x) in which the plane part rises.
    rms : float
        rms of the binned flat about the smooth model (fraction): large-scale structure left.
    n_cells, n_rejected : int
        Cells used and rejected (stars, defects).
    """

    coefficients: np.ndarray
    order: int
    peak_to_peak: float
    angle_deg: float
    rms: float
    n_cells: int
    n_rejected: int

    def to_dict(self) -> dict[str, Any]:
        return {"peak_to_peak": round(self.peak_to_peak, 6), "angle_deg": round(self.angle_deg, 3),
                "rms": round(self.rms, 6), "order": self.order, "n_cells": self.n_cells,
                "n_rejected": self.n_rejected, "coefficients": [round(float(c), 7) for c in self.coefficients]}


def fit_gradient(norm: np.ndarray, *, cells: int = 32, order: int = 1, model_order: int = 4,
                 amps: Sequence[tuple[slice, slice]] = (), clip_sigma: float = 3.0,
                 iterations: int = 5) -> GradientFit:
    """Fit the large-scale gradient of a normalised flat (value ~1).

    The flat is median-binned into about ``cells`` cells along its longer axis (stars, cosmic rays and NaN pixels do
    not bias a cell's median). The logarithm of the cells is fitted, with iterative ``clip_sigma`` rejection, by a
    constant per amplifier (a flat reduced with nominal gains steps from amplifier to amplifier by the gain errors:
    a plane must not take them for a gradient) plus the 2-D Legendre terms of total degree 1 to ``model_order``
    (the smooth response — vignetting — is modelled so that only real outliers are rejected). Only the terms of
    degree 1 to ``order`` are the gradient that :func:`divide_surface` removes.

    Parameters
    ----------
    norm : ndarray
        Normalised flat (NaN where unusable).
    cells : int
        Cells along the longer axis.
    order : int
        Total degree of the removed gradient (1: a plane; 0: nothing). Degrees above 1 also take the symmetric
        large-scale response (vignetting) out of the flats: the illumination correction must then restore it.
    model_order : int
        Total degree of the smooth model fitted (at least ``order``).
    amps : sequence of (slice, slice)
        The amplifiers' regions in the image (cells across a boundary are not used); empty: one region.
    clip_sigma : float
        Rejection threshold of the cells (robust sigma).

    Returns
    -------
    GradientFit
    """
    from upad.calib.illumination import _basis, cell_size

    shape = norm.shape
    ny, nx = shape
    model_order = max(order, model_order)
    cell = cell_size(shape, cells)
    step = 2 if cell >= 16 else 1  # a cell's median from every other row and column: as good, 4 x faster
    grid = bin_image(norm[::step, ::step], cell // step, statistic="median")
    gy, gx = grid.shape
    y0 = np.arange(gy) * cell
    x0 = np.arange(gx) * cell
    y1 = np.minimum(y0 + cell, ny)
    x1 = np.minimum(x0 + cell, nx)
    label = np.zeros((gy, gx), int)
    regions = list(amps) or [(slice(0, ny), slice(0, nx))]
    for k, (sy, sx) in enumerate(regions):
        ys = (y0 >= (sy.start or 0)) & (y1 <= (sy.stop if sy.stop is not None else ny))
        xs = (x0 >= (sx.start or 0)) & (x1 <= (sx.stop if sx.stop is not None else nx))
        label[np.ix_(ys, xs)] = k + 1
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.log(grid).ravel().astype(np.float64)
    V, U = np.meshgrid(2 * ((y0 + y1) / 2 - 0.5) / (ny - 1) - 1, 2 * ((x0 + x1) / 2 - 0.5) / (nx - 1) - 1,
                       indexing="ij")
    terms = _basis(U.ravel(), V.ravel(), model_order)[:, 1:]  # without the constant: one per amplifier instead
    lab = label.ravel()
    used = sorted(set(lab[(lab > 0) & np.isfinite(z)].tolist()))
    A = np.concatenate([(lab[:, None] == np.array(used)[None, :]).astype(float), terms], axis=1)
    keep = np.isfinite(z) & (lab > 0)
    if keep.sum() < 2 * A.shape[1]:
        raise ValueError(f"only {int(keep.sum())} usable cells to fit a gradient of {A.shape[1]} terms")
    coef = np.zeros(A.shape[1])
    for _ in range(iterations):
        coef, *_ = np.linalg.lstsq(A[keep], z[keep], rcond=None)
        resid = z - A @ coef
        sig = 1.482602218505602 * np.median(np.abs(resid[keep]))
        new = np.isfinite(z) & (lab > 0) & (np.abs(resid) <= clip_sigma * sig) if sig > 0 else keep
        if new.sum() < A.shape[1] or np.array_equal(new, keep):
            break
        keep = new
    resid = z - A @ coef
    smooth = coef[len(used):]  # Legendre terms of degree >= 1 (basis order of fit_surface, constant dropped)
    n_removed = (order + 1) * (order + 2) // 2 - 1
    removed = np.concatenate([[0.0], _removed_terms(smooth, model_order, order)])
    assert len(removed) == n_removed + 1
    surf = _surface_rows(removed, shape, order, slice(0, ny), step=max(1, cell // 2), log=True)
    p2p = float(np.nanmax(surf) - np.nanmin(surf))
    b, c = _plane_terms(removed, order)
    angle = float(np.degrees(np.arctan2(c / max(ny - 1, 1), b / max(nx - 1, 1)))) if (b or c) else 0.0
    return GradientFit(coefficients=removed, order=order, peak_to_peak=p2p, angle_deg=angle,
                       rms=float(np.sqrt(np.mean(resid[keep] ** 2))), n_cells=int(keep.sum()),
                       n_rejected=int((np.isfinite(z) & (lab > 0)).sum() - keep.sum()))


def _removed_terms(smooth: np.ndarray, model_order: int, order: int) -> np.ndarray:
    """The coefficients of the terms of degree 1 to ``order`` (basis of ``order``, constant dropped) among those of
    degree 1 to ``model_order``."""
    from upad.calib.illumination import _terms

    full = [(len(ci) - 1, len(cj) - 1) for ci, cj in _terms(model_order)][1:]
    want = [(len(ci) - 1, len(cj) - 1) for ci, cj in _terms(order)][1:]
    return np.array([smooth[full.index(t)] for t in want], float)


def _plane_terms(coef: np.ndarray, order: int) -> tuple[float, float]:
    """The coefficients of ``P1(u)`` and ``P1(v)`` in the basis of :func:`upad.calib.illumination.fit_surface`."""
    from upad.calib.illumination import _terms

    b = c = 0.0
    for k, (ci, cj) in enumerate(_terms(order)):
        if len(ci) == 2 and len(cj) == 1:
            b = float(coef[k])
        elif len(ci) == 1 and len(cj) == 2:
            c = float(coef[k])
    return b, c


def _surface_rows(coef: np.ndarray, shape: tuple[int, int], order: int, rows: slice, *, step: int = 1,
                  log: bool = False) -> np.ndarray:
    """The surface on rows ``rows`` (every ``step``-th row and column), float32; ``log``: ``coef`` describe its
    logarithm."""
    from numpy.polynomial import legendre as L

    from upad.calib.illumination import _terms

    ny, nx = shape
    u = np.linspace(-1, 1, nx)[::step]
    v = np.linspace(-1, 1, ny)[rows][::step]
    out = np.zeros((len(v), len(u)), np.float32)
    for k, (ci, cj) in enumerate(_terms(order)):
        out += (coef[k] * L.legval(v, cj)).astype(np.float32)[:, None] * L.legval(u, ci).astype(np.float32)[None, :]
    return np.exp(out) if log else out


def divide_surface(image: np.ndarray, fit: GradientFit, *, block: int = 512) -> None:
    """Divide ``image`` in place by the gradient of ``fit`` (mean ~1), ``block`` rows at a time (no full-size
    temporary)."""
    ny = image.shape[0]
    for y0 in range(0, ny, block):
        sl = slice(y0, min(ny, y0 + block))
        image[sl] /= _surface_rows(fit.coefficients, image.shape, fit.order, sl, log=True)
