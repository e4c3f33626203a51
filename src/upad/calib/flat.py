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

Flat-field stability (:func:`residual_qc`): every flat is compared with the master, ``flat / master - 1``; its rms
(robust, pixel scale), its large-scale gradient (peak to peak of a plane fitted to the binned residual map) and the
histogram of the residuals are recorded. Flats out of tolerance are excluded and the master is combined again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from upad.calib.qc import bin_image, plane_gradient, residual_histogram, robust_std

__all__ = [
    "FlatResidual",
    "amp_means",
    "central_region",
    "flat_level",
    "flat_noise_model",
    "normalise",
    "residual_qc",
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
