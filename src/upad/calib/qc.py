"""Statistics shared by the calibration algorithms, and the QC plots (PNG).

Statistics are pure numpy. Plots use matplotlib's non-interactive Agg backend (imported on first use) and write a
PNG file: they are the only functions of the algorithm modules that produce a file, and only where a path is given.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "bin_image",
    "clipped_std",
    "detect_positive",
    "grow_mask",
    "plane_gradient",
    "plot_epochs",
    "plot_flat_residual",
    "plot_map",
    "residual_histogram",
    "robust_stats",
    "robust_std",
]


def robust_std(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation of the finite values (NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    return float(1.482602218505602 * np.median(np.abs(v - np.median(v))))


def clipped_std(values: np.ndarray, *, nsigma: float = 4.0, iterations: int = 3) -> float:
    """Standard deviation of the finite values after iterative ``nsigma`` clipping about the median.

    Unlike the median absolute deviation it is not quantised on integer data (e.g. differences of raw ADU),
    and the clipping makes it robust to a few outliers (cosmic rays, hot pixels)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan")
    med = float(np.median(v))
    s = 1.482602218505602 * float(np.median(np.abs(v - med))) or float(v.std())
    for _ in range(iterations):
        if s <= 0:
            break
        kept = v[np.abs(v - med) < nsigma * s]
        if kept.size < 2:
            break
        med, new = float(kept.mean()), float(kept.std())
        if abs(new - s) < 1e-6 * s:
            s = new
            break
        s = new
    return s


def robust_stats(values: np.ndarray, *, max_samples: int = 2_000_000) -> dict[str, float]:
    """Median, robust standard deviation, mean and standard deviation of the finite values (subsampled)."""
    v = np.asarray(values).ravel()
    if v.size > max_samples:
        v = v[:: v.size // max_samples + 1]
    v = v[np.isfinite(v)].astype(np.float64)
    if v.size == 0:
        return {"median": float("nan"), "robust_std": float("nan"), "mean": float("nan"), "std": float("nan")}
    med = float(np.median(v))
    return {"median": med, "robust_std": float(1.482602218505602 * np.median(np.abs(v - med))),
            "mean": float(v.mean()), "std": float(v.std())}


def bin_image(image: np.ndarray, factor: int, *, statistic: str = "mean", overwrite: bool = False) -> np.ndarray:
    """Bin ``image`` by ``factor`` in both axes with a NaN-aware mean or median (partial cells at the upper edges).

    The mean needs no padded copy of the image (sums and counts by ``np.add.reduceat``): binning a full T80Cam
    frame costs little memory beyond the image itself; with ``overwrite`` the NaNs of a float32 ``image`` are
    zeroed in place instead of in a copy.
    """
    factor = max(1, int(factor))
    ny, nx = image.shape
    if statistic == "mean":
        iy, ix = np.arange(0, ny, factor), np.arange(0, nx, factor)
        gy, gx = len(iy), len(ix)
        img = np.asarray(image, np.float32)
        bad_y, bad_x = np.nonzero(~np.isfinite(img))  # usually few: counted by cell, no full-size mask kept
        if bad_y.size:
            if not (overwrite and img is image):
                img = img.copy()
            img[bad_y, bad_x] = 0
        # float32 along the rows (at most `factor` values per sum), float64 across: no full-size cast copy
        sums = np.add.reduceat(np.add.reduceat(img, iy, axis=0).astype(np.float64), ix, axis=1)
        counts = np.outer(np.diff(np.append(iy, ny)), np.diff(np.append(ix, nx))).ravel()
        counts = counts - np.bincount((bad_y // factor) * gx + bad_x // factor, minlength=gy * gx)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (sums / counts.reshape(gy, gx)).astype(np.float32)
    py, px = (-ny) % factor, (-nx) % factor
    img = np.asarray(image, np.float32)
    if py or px:
        img = np.pad(img, ((0, py), (0, px)), constant_values=np.nan)
    view = img.reshape(img.shape[0] // factor, factor, img.shape[1] // factor, factor)
    with np.errstate(invalid="ignore"), _quiet():
        return np.nanmedian(view.transpose(0, 2, 1, 3).reshape(view.shape[0], view.shape[2], -1), axis=2)


class _quiet:
    """Silence numpy's 'mean of empty slice' warnings (all-NaN cells give NaN, which is what we want)."""

    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._w.__exit__(*exc)


def grow_mask(mask: np.ndarray, px: int) -> np.ndarray:
    """Grow a boolean mask by ``px`` pixels in every direction (square footprint, separable: fast)."""
    if px <= 0 or not mask.any():
        return mask
    from scipy import ndimage

    return ndimage.maximum_filter(mask, size=2 * int(px) + 1)


def detect_positive(resid: np.ndarray, *, nsigma: float, smooth_px: float = 1.0, coarse: int = 4,
                    coarse_nsigma: float = 2.5) -> np.ndarray:
    """Pixels of positive sources in a background-free image (NaN-free float32).

    Two scales: the image smoothed with a Gaussian of ``smooth_px`` above ``nsigma`` robust standard deviations
    (compact sources), and the image binned ``coarse`` x ``coarse`` above ``coarse_nsigma`` (faint extended wings).
    """
    from scipy import ndimage

    mask = np.zeros(resid.shape, bool)
    sm = ndimage.gaussian_filter(resid, smooth_px) if smooth_px > 0 else resid
    sig = robust_std(sm[::3, ::3])
    if np.isfinite(sig) and sig > 0:
        mask |= sm > nsigma * sig
    if coarse > 1:
        b = bin_image(resid, coarse)
        sig = robust_std(b)
        if np.isfinite(sig) and sig > 0:
            hit = np.repeat(np.repeat(b > coarse_nsigma * sig, coarse, axis=0), coarse, axis=1)
            mask |= hit[: resid.shape[0], : resid.shape[1]]
    return mask


def plane_gradient(grid: np.ndarray) -> tuple[float, float, float]:
    """Fit ``a + b u + c v`` (``u, v`` in [-1, 1] across the grid) to the finite cells of ``grid``.

    Returns ``(peak_to_peak, b, c)`` where ``peak_to_peak = 2 (|b| + |c|)`` is the range of the fitted plane over the
    field, in the units of ``grid``.
    """
    ny, nx = grid.shape
    v, u = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    ok = np.isfinite(grid)
    if ok.sum() < 3:
        return float("nan"), float("nan"), float("nan")
    A = np.stack([np.ones(ok.sum()), u[ok], v[ok]], axis=1)
    coef, *_ = np.linalg.lstsq(A, grid[ok].astype(np.float64), rcond=None)
    b, c = float(coef[1]), float(coef[2])
    return 2.0 * (abs(b) + abs(c)), b, c


def residual_histogram(residual: np.ndarray, *, half_range: float = 0.05, bins: int = 100,
                       max_samples: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of the finite residuals in ``[-half_range, half_range]`` (counts, edges)."""
    r = np.asarray(residual).ravel()
    if r.size > max_samples:
        r = r[:: r.size // max_samples + 1]
    r = r[np.isfinite(r)]
    return np.histogram(r, bins=bins, range=(-half_range, half_range))


# ------------------------------------------------------------------------------------------------------ plots
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _plain_log_axis(axis: Any) -> None:
    """Decades as plain numbers and no minor ticks (mathtext tick labels are slow to render)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    axis.set_major_locator(LogLocator(base=10, numticks=8))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


def plot_flat_residual(path: str | Path, residual_map: np.ndarray, counts: np.ndarray, edges: np.ndarray, *,
                       title: str, rms: float, gradient: float, status: str, limit: float | None = None) -> Path:
    """The flat-field stability plot of one flat: its binned residual map against the master and the histogram
    of its pixel residuals (``flat / master - 1``).

    Parameters
    ----------
    path : path of the PNG to write.
    residual_map : binned residual map (fraction).
    counts, edges : histogram of the pixel residuals.
    title : first line of the title (e.g. the file name).
    rms, gradient : statistics shown in the title (fractions).
    status : ``'used'`` or ``'excluded: <reason>'``.
    limit : colour-scale limit (fraction); default ``max(0.1 %, 99th percentile of |map|)``.
    """
    if limit is None:
        finite = np.abs(residual_map[np.isfinite(residual_map)])
        limit = max(0.001, float(np.percentile(finite, 99)) if finite.size else 0.0)
    plt = _pyplot()
    fig = plt.figure(figsize=(9.0, 3.8), dpi=72)
    ax1 = fig.add_axes((0.03, 0.1, 0.36, 0.68))
    cax = fig.add_axes((0.40, 0.1, 0.015, 0.68))
    ax2 = fig.add_axes((0.60, 0.14, 0.37, 0.64))
    im = ax1.imshow(residual_map * 100, origin="lower", cmap="RdBu_r", vmin=-limit * 100, vmax=limit * 100,
                    interpolation="nearest")
    fig.colorbar(im, cax=cax, label="flat / master - 1 (%)")
    ax1.set_title(f"residual map (binned), ±{limit * 100:.2f} %", fontsize=9)
    ax1.set_xticks([])
    ax1.set_yticks([])
    ax2.stairs(np.maximum(counts, 0.5), edges * 100, color="0.2", fill=True)
    ax2.set_yscale("log")
    ax2.set_ylim(bottom=0.8)
    _plain_log_axis(ax2.yaxis)
    ax2.set_xlabel("pixel residual (%)")
    ax2.set_ylabel("pixels")
    ax2.set_title("histogram of residuals", fontsize=9)
    colour = "black" if status == "used" else "red"
    fig.suptitle(f"{title}\nrms {rms * 100:.3f} %   gradient {gradient * 100:.3f} % p-p   {status}", fontsize=9,
                 color=colour)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_map(path: str | Path, image: np.ndarray, *, title: str, unit: str = "", percent: bool = False) -> Path:
    """A single map with a colour bar (e.g. a binned master flat or illumination map)."""
    plt = _pyplot()
    data = image * (100 if percent else 1)
    finite = data[np.isfinite(data)]
    lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0, 1))
    fig, ax = plt.subplots(figsize=(5.0, 4.2), dpi=80)
    im = ax.imshow(data, origin="lower", cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
    fig.colorbar(im, ax=ax, label=unit)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_epochs(path: str | Path, series: Sequence[dict[str, Any]], *, title: str,
                breakpoints: Sequence[Any] = ()) -> Path:
    """How master flats or illumination maps change with time.

    ``series`` holds, per configuration, ``label``, ``times`` (datetimes of the masters), ``metric`` (difference to
    the previous master, fraction; the first is NaN), ``threshold`` and ``maps``: ``[(label, ratio map)]`` shown as
    thumbnails (the change at each proposed or declared breakpoint). ``breakpoints`` are datetimes drawn as lines.
    """
    plt = _pyplot()
    n_thumbs = max([len(s.get("maps", [])) for s in series] + [0])
    n_thumbs = min(n_thumbs, 6)
    nrows = 1 + (1 if n_thumbs else 0) * len(series)
    fig = plt.figure(figsize=(max(8.0, 2.0 * n_thumbs), 3.0 + 2.2 * (nrows - 1)), dpi=80)
    ax = fig.add_subplot(nrows, 1, 1)
    for s in series:
        m = np.asarray(s["metric"], float) * 100
        ax.plot(s["times"], m, marker="o", label=s["label"])
        if s.get("threshold"):
            ax.axhline(s["threshold"] * 100, color="0.6", ls=":", lw=1)
    for bp in breakpoints:
        ax.axvline(bp, color="red", lw=1, ls="--")
    ax.set_ylabel("rms change vs previous (%)")
    ax.set_title(title, fontsize=10)
    if series:
        ax.legend(fontsize=7)
    fig.autofmt_xdate()
    for row, s in enumerate(series if n_thumbs else []):
        for k, (label, ratio) in enumerate(s.get("maps", [])[:n_thumbs]):
            axt = fig.add_subplot(nrows, n_thumbs, (row + 1) * n_thumbs + k + 1)
            lim = max(float(np.nanpercentile(np.abs(ratio - 1), 99)) if np.isfinite(ratio).any() else 0.01, 1e-4)
            axt.imshow((ratio - 1) * 100, origin="lower", cmap="RdBu_r", vmin=-lim * 100, vmax=lim * 100)
            axt.set_title(label, fontsize=7)
            axt.set_xticks([])
            axt.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
