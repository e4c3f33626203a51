"""Illumination correction (ICOR): the large-scale difference between the flat-field illumination and the sky.

A dome flat (or, to a smaller extent, a twilight flat) is not lit like the night sky: after flat-fielding, the sky
background of science frames keeps a smooth large-scale pattern. From dithered science frames of one filter, reduced
and flat-fielded with the master flat, the per-frame sky background is measured with sources masked
(:func:`upad.calib.fringe.sky_background`) and binned into cells (:func:`background_grid`); each grid is divided by
its median, frames whose sky has a plane steeper than a limit (:func:`sky_gradient`: moonlight, twilight — a
sky that is not a reference of the response) are left out, the grids are median-combined across frames, and a low-order 2-D Legendre polynomial is fitted with
outlier rejection (:func:`fit_surface`). The map is normalised to a mean of 1.

Convention: the map is the sky as seen after flat-fielding; a flat-fielded science frame is corrected by *dividing*
it by the map (equivalently, the master flat is multiplied by it).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from upad.calib.qc import bin_image

__all__ = ["background_grid", "cell_size", "combine_grids", "evaluate_surface", "fit_surface", "sky_gradient"]


def cell_size(shape: tuple[int, int], cells: int) -> int:
    """Cell size (pixels) giving about ``cells`` cells along the longer axis."""
    return max(1, int(np.ceil(max(shape) / max(1, cells))))


def background_grid(background: np.ndarray, *, cell: int) -> np.ndarray:
    """A smooth background map binned into ``cell`` x ``cell`` cells and divided by its median."""
    grid = bin_image(background, cell, statistic="mean")
    med = float(np.nanmedian(grid))
    if not np.isfinite(med) or med <= 0:
        raise ValueError("the sky background is not positive: is this a science frame with sky?")
    return grid / med


def combine_grids(grids: Sequence[np.ndarray]) -> np.ndarray:
    """Median of per-frame normalised background grids (NaN-aware)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(np.stack(grids), axis=0)


def _basis(u: np.ndarray, v: np.ndarray, order: int) -> np.ndarray:
    from numpy.polynomial import legendre as L

    return np.stack([L.legval(u, ci) * L.legval(v, cj) for ci, cj in _terms(order)], axis=-1)


def _terms(order: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Legendre coefficient vectors ``(ci, cj)`` selecting ``P_i(u) P_j(v)`` for ``i + j <= order``, in the order
    of the fitted coefficients."""
    out = []
    for i in range(order + 1):
        for j in range(order + 1 - i):
            ci = np.zeros(i + 1)
            ci[i] = 1
            cj = np.zeros(j + 1)
            cj[j] = 1
            out.append((ci, cj))
    return out


def fit_surface(grid: np.ndarray, *, shape: tuple[int, int], cell: int, order: int = 3, clip_sigma: float = 3.0,
                iterations: int = 5) -> tuple[np.ndarray, dict[str, float]]:
    """Fit a 2-D Legendre polynomial of total degree ``order`` to a binned map.

    Parameters
    ----------
    grid : ndarray
        Binned map (cells of ``cell`` pixels of an image of ``shape``); NaN cells are ignored.
    shape : (ny, nx)
        Shape of the full-resolution image.
    cell : int
        Cell size in pixels.
    order : int
        Total degree of the polynomial.
    clip_sigma : float
        Cells deviating by more than this many robust standard deviations are rejected (iteratively).

    Returns
    -------
    coefficients : ndarray
        Coefficients in the order of the basis (``i`` in x, ``j`` in y, ``i + j <= order``).
    info : dict
        ``rms`` of the fit residuals over the kept cells, ``n_cells`` used, ``n_rejected``.
    """
    ny, nx = shape
    gy, gx = grid.shape
    yc = (np.arange(gy) * cell + (np.minimum((np.arange(gy) + 1) * cell, ny) - np.arange(gy) * cell) / 2 - 0.5)
    xc = (np.arange(gx) * cell + (np.minimum((np.arange(gx) + 1) * cell, nx) - np.arange(gx) * cell) / 2 - 0.5)
    V, U = np.meshgrid(2 * yc / (ny - 1) - 1, 2 * xc / (nx - 1) - 1, indexing="ij")
    A = _basis(U.ravel(), V.ravel(), order)
    z = grid.ravel().astype(np.float64)
    keep = np.isfinite(z)
    if keep.sum() < A.shape[1]:
        raise ValueError(f"only {int(keep.sum())} usable cells to fit a surface of order {order}; "
                         "use fewer cells per axis or a lower order")
    coef = np.zeros(A.shape[1])
    for _ in range(iterations):
        coef, *_ = np.linalg.lstsq(A[keep], z[keep], rcond=None)
        resid = z - A @ coef
        sig = 1.482602218505602 * np.median(np.abs(resid[keep]))
        new = np.isfinite(z) & (np.abs(resid) <= clip_sigma * sig) if sig > 0 else keep
        if new.sum() < A.shape[1] or np.array_equal(new, keep):
            break
        keep = new
    resid = z - A @ coef
    return coef, {"rms": float(np.sqrt(np.mean(resid[keep] ** 2))), "n_cells": int(keep.sum()),
                  "n_rejected": int(np.isfinite(z).sum() - keep.sum())}


def evaluate_surface(coef: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """Evaluate the polynomial of :func:`fit_surface` on every pixel (float32), normalised to a mean of 1."""
    from numpy.polynomial import legendre as L

    ny, nx = shape
    u = np.linspace(-1, 1, nx)
    v = np.linspace(-1, 1, ny)
    out = np.zeros(shape, np.float32)
    for k, (ci, cj) in enumerate(_terms(order)):
        out += (coef[k] * L.legval(v, cj)).astype(np.float32)[:, None] * L.legval(u, ci).astype(np.float32)[None, :]
    out /= np.float32(out.mean(dtype=np.float64))
    return out


def sky_gradient(grid: np.ndarray) -> tuple[float, float]:
    """Peak to peak (fraction, over the field) and direction (deg, pixel axes, counter-clockwise from +x) of the
    plane fitted to a normalised background grid (:func:`background_grid`)."""
    from upad.calib.qc import plane_gradient

    p2p, b, c = plane_gradient(grid)
    ny, nx = grid.shape
    return p2p, float(np.degrees(np.arctan2(c / max(ny - 1, 1), b / max(nx - 1, 1))))
