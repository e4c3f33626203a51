"""Fringe correction of a flat-fielded science frame: the amplitude of a fringe map (a fraction of the sky, made by
the ``master_fringe`` step) in the frame, fitted by least squares.

The frame is corrected by subtracting ``a x background x fringe`` (:func:`fit_fringe` gives ``a`` and the
background). Pure array functions, as the rest of :mod:`upad.isr`.
"""
from __future__ import annotations

import numpy as np

__all__ = ["fit_fringe", "fit_fringe_scale"]


def fit_fringe_scale(normalised: np.ndarray, fringe: np.ndarray, *, step: int = 2) -> float:
    """Least-squares amplitude ``a`` of ``fringe`` in a normalised science frame (``frame/background - 1``):
    the frame is corrected by subtracting ``a x background x fringe``."""
    x = fringe[::step, ::step].astype(np.float64)
    y = normalised[::step, ::step].astype(np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    den = float((x[ok] * x[ok]).sum())
    return float((x[ok] * y[ok]).sum() / den) if den > 0 else 0.0


def fit_fringe(image: np.ndarray, fringe: np.ndarray, *, exclude: np.ndarray | None = None,
               clip: float = 4.0) -> tuple[float, float] | None:
    """Robust amplitude of the fringe map in a flat-fielded frame: ``(a, background)`` such that
    ``image - a * background * fringe`` is fringe-free, or ``None`` when the frame has no usable sky.

    Sources, saturated pixels and pixels without data are left out of the least-squares fit (pixels further than
    ``clip`` robust sigmas from the sky), otherwise stars and trails drag the amplitude away.
    """
    finite = np.isfinite(image) & np.isfinite(fringe)
    if exclude is not None:
        finite &= ~exclude
    sample = image[finite][::7]
    if sample.size < 100:
        return None
    background = float(np.median(sample))
    if background <= 0:
        return None
    x = image / background - 1.0
    sigma = 1.4826 * float(np.median(np.abs(x[finite][::7] - np.median(x[finite][::7]))))
    use = finite & (np.abs(x) < clip * max(sigma, 1e-6))
    x = np.where(use, x, np.nan).astype(np.float32)
    return fit_fringe_scale(x, np.where(use, fringe, np.nan).astype(np.float32)), background
