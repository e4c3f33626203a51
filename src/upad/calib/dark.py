"""Master dark: dark current in electrons per second, and its hot-pixel map.

Every dark frame is reduced to electrons (overscan, master bias, non-linearity, gain) and divided by its exposure
time; the rates are combined with a sigma-clipped mean whose rejection uses the frames' noise model
``var_i = (read noise / t_i)² + rate / t_i`` (cosmic rays are rejected even with three frames). The uncertainty of
the master includes the master bias's, which every dark shares (:func:`dark_error`).

A pixel is hot when its rate exceeds the median dark current by more than ``nsigma`` times its uncertainty and by at
least ``min_excess`` e-/s (:func:`hot_pixels`).
"""
from __future__ import annotations

import numpy as np

__all__ = ["dark_error", "dark_noise_model", "dark_stats", "hot_pixels"]


def dark_noise_model(read_noise_e: np.ndarray, exptimes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise model of dark-rate frames for :func:`upad.calib.combine.combine_stack` (``dev='model'``).

    Parameters
    ----------
    read_noise_e : ndarray
        Read noise per amplifier (e-), shape ``(n_amp,)``.
    exptimes : ndarray
        Exposure time of each frame (s), shape ``(n,)``.

    Returns
    -------
    read_var, poisson : ndarray
        Shape ``(n, n_amp)``: variance ``read_var + poisson * rate`` of a rate (e-/s) measured in each frame.
    """
    t = np.asarray(exptimes, np.float64)[:, None]
    rn = np.asarray(read_noise_e, np.float64)[None, :]
    return (rn / t) ** 2, np.broadcast_to(1.0 / t, (t.shape[0], rn.shape[1])).copy()


def dark_error(combined_error: np.ndarray, bias_error_e: np.ndarray | None, mean_exptime: float) -> np.ndarray:
    """Uncertainty (e-/s) of a master dark: the combination's, plus the master bias's (shared by every frame),
    in quadrature. ``bias_error_e`` is the master bias uncertainty already converted to electrons."""
    err = np.asarray(combined_error, np.float32)
    if bias_error_e is None:
        return err
    b = np.asarray(bias_error_e, np.float32) / np.float32(mean_exptime)
    return np.sqrt(err * err + b * b)


def hot_pixels(rate: np.ndarray, error: np.ndarray, *, nsigma: float = 5.0, min_excess: float = 0.0,
               baseline: float | None = None) -> np.ndarray:
    """Hot pixels of a dark-rate map: ``rate - baseline > max(nsigma * error, min_excess)``.

    Parameters
    ----------
    rate, error : ndarray
        Dark current and its uncertainty (e-/s).
    nsigma : float
        Significance threshold.
    min_excess : float
        Smallest excess over the baseline that counts (e-/s).
    baseline : float, optional
        The typical dark current (default: the median of ``rate``).
    """
    if baseline is None:
        baseline = float(np.nanmedian(rate))
    excess = np.asarray(rate, np.float32) - np.float32(baseline)
    thr = np.maximum(np.float32(nsigma) * np.asarray(error, np.float32), np.float32(min_excess))
    with np.errstate(invalid="ignore"):
        return np.isfinite(excess) & (excess > thr)


def dark_stats(rate: np.ndarray, hot: np.ndarray, error: np.ndarray) -> dict[str, float]:
    """Median dark current (e-/s), its robust scatter, the median uncertainty and the hot-pixel count."""
    from upad.calib.qc import robust_stats

    cold = rate[~hot]
    st = robust_stats(cold)
    return {"median_e_per_s": round(st["median"], 6), "robust_std_e_per_s": round(st["robust_std"], 6),
            "median_error_e_per_s": round(float(np.nanmedian(error[::3, ::3])), 6),
            "n_hot": int(hot.sum()), "hot_fraction": float(hot.mean())}
