"""Sigma-clipped combination of image stacks, block-wise over row strips.

:func:`combine_stack` combines ``N`` frames of the same shape pixel by pixel: it reads the frames one row strip at a
time (any sliceable 2-D array works: an ``ndarray``, an ``np.memmap`` of an uncompressed intermediate, the memory
map of an uncompressed FITS image), rejects outliers iteratively around the median, and returns the mean (or median)
of the survivors, its 1-sigma uncertainty and the number of frames used. Memory is bounded by the strip size
(``memory_mb``), not by ``N`` x frame size: 20 full T80Cam frames (9216 x 9232 float32) combine in ~1-2 GB.

Rejection, per pixel (``center`` / ``dev`` options):

1. ``c`` = median (or mean) of the values still kept; ``s`` = their standard deviation about their mean
   (``dev='std'``, as ``astropy.stats.sigma_clip`` and ``ccdproc``), ``1.4826 x`` their median absolute deviation
   from ``c`` (``dev='mad'``), or the frames' noise model ``s_i = sqrt(read_var_i + poisson_i * max(c, 0))``
   (``dev='model'``: robust for small ``N``, where a sample standard deviation is inflated by the outlier itself);
2. values outside ``[c - sigma_low s, c + sigma_high s]`` are rejected;
3. repeat until nothing changes or ``max_iters`` passes; rejection never leaves fewer than ``min_keep`` values.

NaN input values are masked (never used). The kernel is compiled with numba (parallel over rows, the GIL released
so that reading the next strip overlaps the computation); a vectorised numpy implementation with identical results
is used when numba is unavailable and serves as the reference in the tests.

Uncertainty: with a noise model ``sqrt(sum_i s_i^2) / n`` (``s_i`` at the combined value); otherwise the standard
error of the survivors ``std(ddof=1) / sqrt(n)``; ``x 1.2533`` for the median; NaN where ``n < 2`` without a model.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CENTERS", "DEVS", "HAVE_NUMBA", "METHODS", "CombineResult", "combine_block", "combine_stack"]

CENTERS = ("median", "mean")
DEVS = ("std", "mad", "model")
METHODS = ("mean", "median")

try:  # pragma: no cover - exercised where numba is installed
    import numba
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False


@dataclass
class CombineResult:
    """A combined image.

    Attributes
    ----------
    image : ndarray
        float32 combined values (NaN where no input value was usable).
    error : ndarray
        float32 1-sigma uncertainty of ``image``.
    n_used : ndarray
        int16 number of values combined per pixel.
    stats : dict
        ``n_frames``, ``rejected_fraction`` (of the finite input values), ``masked_fraction`` (NaN inputs),
        ``blocks``, ``block_rows``, ``seconds``, ``engine``.
    """

    image: np.ndarray
    error: np.ndarray
    n_used: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- numba kernel
if HAVE_NUMBA:

    @njit(cache=True, inline="always")
    def _median_sorted(a: np.ndarray, n: int) -> float:  # pragma: no cover - compiled
        if n % 2 == 1:
            return a[n // 2]
        return 0.5 * (a[n // 2 - 1] + a[n // 2])

    @njit(cache=True, inline="always")
    def _isort(a: np.ndarray, n: int) -> None:  # pragma: no cover - compiled
        for i in range(1, n):
            v = a[i]
            j = i - 1
            while j >= 0 and a[j] > v:
                a[j + 1] = a[j]
                j -= 1
            a[j + 1] = v

    @njit(parallel=True, nogil=True, cache=True)
    def _clip_kernel(block, row0, zone_ny, zone_nx, n_zone_x, read_var, poisson, center_kind, dev_kind,
                     method_median, lo, hi, max_iters, min_keep, out, err, nused):  # pragma: no cover - compiled
        nf, nr, nc = block.shape
        n_rejected = 0
        n_masked = 0
        for r in prange(nr):
            vals = np.empty(nf, np.float64)
            frm = np.empty(nf, np.int64)
            keep = np.empty(nf, np.bool_)
            tmp = np.empty(nf, np.float64)
            sig = np.empty(nf, np.float64)
            zrow = ((row0 + r) // zone_ny) * n_zone_x
            rej_row = 0
            mask_row = 0
            for c in range(nc):
                z = zrow + c // zone_nx
                m = 0
                for i in range(nf):
                    v = block[i, r, c]
                    if v == v:  # not NaN
                        vals[m] = v
                        frm[m] = i
                        keep[m] = True
                        m += 1
                mask_row += nf - m
                if m == 0:
                    out[r, c] = np.nan
                    err[r, c] = np.nan
                    nused[r, c] = 0
                    continue
                nk = m
                cen = 0.0
                for _ in range(max_iters):
                    # center of the kept values
                    k = 0
                    s1 = 0.0
                    for j in range(m):
                        if keep[j]:
                            tmp[k] = vals[j]
                            s1 += vals[j]
                            k += 1
                    mean = s1 / k
                    if center_kind == 0:
                        _isort(tmp, k)
                        cen = _median_sorted(tmp, k)
                    else:
                        cen = mean
                    # scale
                    if dev_kind == 0:
                        s2 = 0.0
                        for j in range(m):
                            if keep[j]:
                                d = vals[j] - mean
                                s2 += d * d
                        s = math.sqrt(s2 / k)
                        for j in range(m):
                            sig[j] = s
                    elif dev_kind == 1:
                        k2 = 0
                        for j in range(m):
                            if keep[j]:
                                tmp[k2] = abs(vals[j] - cen)
                                k2 += 1
                        _isort(tmp, k2)
                        s = 1.482602218505602 * _median_sorted(tmp, k2)
                        for j in range(m):
                            sig[j] = s
                    else:
                        pc = max(0.0, cen)
                        for j in range(m):
                            sig[j] = math.sqrt(read_var[frm[j], z] + poisson[frm[j], z] * pc)
                    # reject
                    n_new = 0
                    for j in range(m):
                        if keep[j]:
                            d = vals[j] - cen
                            if d < -lo * sig[j] or d > hi * sig[j]:
                                n_new += 1
                    if n_new == 0 or nk - n_new < min_keep:
                        break
                    for j in range(m):
                        if keep[j]:
                            d = vals[j] - cen
                            if d < -lo * sig[j] or d > hi * sig[j]:
                                keep[j] = False
                    nk -= n_new
                rej_row += m - nk
                # combine the survivors
                k = 0
                s1 = 0.0
                for j in range(m):
                    if keep[j]:
                        tmp[k] = vals[j]
                        s1 += vals[j]
                        k += 1
                mean = s1 / k
                if method_median:
                    _isort(tmp, k)
                    value = _median_sorted(tmp, k)
                else:
                    value = mean
                if dev_kind == 2:
                    pc = max(0.0, value)
                    v2 = 0.0
                    for j in range(m):
                        if keep[j]:
                            v2 += read_var[frm[j], z] + poisson[frm[j], z] * pc
                    e = math.sqrt(v2) / k
                elif k > 1:
                    s2 = 0.0
                    for j in range(m):
                        if keep[j]:
                            d = vals[j] - mean
                            s2 += d * d
                    e = math.sqrt(s2 / (k - 1) / k)
                else:
                    e = np.nan
                if method_median:
                    e *= 1.2533141373155
                out[r, c] = value
                err[r, c] = e
                nused[r, c] = k
            n_rejected += rej_row
            n_masked += mask_row
        return n_rejected, n_masked


# ---------------------------------------------------------------------------------------------------- numpy kernel
def _numpy_kernel(block: np.ndarray, row0: int, zone: tuple[int, int, int], read_var: np.ndarray,
                  poisson: np.ndarray, center: str, dev: str, method: str, lo: float, hi: float, max_iters: int,
                  min_keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Vectorised reference implementation of the numba kernel (same algorithm, float64)."""
    _, nr, nc = block.shape
    data = block.astype(np.float64)
    finite = np.isfinite(data)
    keep = finite.copy()
    zone_ny, zone_nx, n_zone_x = zone
    rows = (row0 + np.arange(nr)) // zone_ny
    cols = np.arange(nc) // zone_nx
    zidx = rows[:, None] * n_zone_x + cols[None, :]  # (nr, nc)
    rv = read_var[:, zidx]  # (nf, nr, nc)
    po = poisson[:, zidx]
    nk = keep.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(max_iters):
            masked = np.where(keep, data, np.nan)
            mean = np.nanmean(masked, axis=0)
            cen = np.nanmedian(masked, axis=0) if center == "median" else mean
            if dev == "std":
                sig = np.sqrt(np.nanmean((masked - mean) ** 2, axis=0))[None]
            elif dev == "mad":
                sig = 1.482602218505602 * np.nanmedian(np.abs(masked - cen), axis=0)[None]
            else:
                sig = np.sqrt(rv + po * np.maximum(cen, 0.0)[None])
            d = data - cen[None]
            bad = keep & ((d < -lo * sig) | (d > hi * sig))
            n_new = bad.sum(axis=0)
            apply = (n_new > 0) & (nk - n_new >= min_keep)
            if not apply.any():
                break
            keep &= ~(bad & apply[None])
            nk = keep.sum(axis=0)
        masked = np.where(keep, data, np.nan)
        mean = np.nanmean(masked, axis=0)
        value = np.nanmedian(masked, axis=0) if method == "median" else mean
        if dev == "model":
            v2 = np.where(keep, rv + po * np.maximum(value, 0.0)[None], 0.0).sum(axis=0)
            e = np.sqrt(v2) / nk
        else:
            ss = np.where(keep, (data - mean[None]) ** 2, 0.0).sum(axis=0)
            e = np.where(nk > 1, np.sqrt(ss / np.maximum(nk - 1, 1) / np.maximum(nk, 1)), np.nan)
        if method == "median":
            e = e * 1.2533141373155
    empty = nk == 0
    value[empty] = np.nan
    e[empty] = np.nan
    n_rejected = int(finite.sum() - keep.sum())
    n_masked = int((~finite).sum())
    return value.astype(np.float32), e.astype(np.float32), nk.astype(np.int16), n_rejected, n_masked


# ---------------------------------------------------------------------------------------------------- drivers
def _as_model(values: Any, n: int, n_zones: int, name: str) -> np.ndarray:
    if values is None:
        return np.zeros((n, n_zones), np.float64)
    arr = np.asarray(values, np.float64)
    if arr.ndim == 0:
        arr = np.full((n, n_zones), float(arr))
    elif arr.ndim == 1:
        if arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} values for {n} frames")
        arr = np.repeat(arr[:, None], n_zones, axis=1)
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < n_zones:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, {n_zones}), got {arr.shape}")
    return np.ascontiguousarray(arr)


def combine_block(block: np.ndarray, *, row0: int = 0, zones: tuple[int, int, int] | None = None,
                  read_var: Any = None, poisson: Any = None, center: str = "median", dev: str = "std",
                  method: str = "mean", sigma_low: float = 3.0, sigma_high: float = 3.0, max_iters: int = 5,
                  min_keep: int = 1, engine: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Combine one in-memory stack ``block`` of shape ``(N, rows, columns)`` (float32, native byte order).

    See :func:`combine_stack` for the parameters; ``row0`` is the first row of the block in the full image (for
    ``zones``). Returns ``(image, error, n_used, n_rejected, n_masked)``.
    """
    if center not in CENTERS or dev not in DEVS or method not in METHODS:
        raise ValueError(f"center must be one of {CENTERS}, dev one of {DEVS}, method one of {METHODS}")
    if block.ndim != 3:
        raise ValueError(f"block must have 3 dimensions (frames, rows, columns), got {block.shape}")
    nf, nr, nc = block.shape
    if zones is None:
        zones = (max(nr + row0, 1), max(nc, 1), 1)
    zone_ny, zone_nx, n_zone_x = zones
    n_zones = n_zone_x * (1 + (row0 + max(nr, 1) - 1) // zone_ny)
    if dev == "model" and read_var is None and poisson is None:
        raise ValueError("dev='model' needs read_var and/or poisson (the frames' noise model)")
    rv = _as_model(read_var, nf, n_zones, "read_var")
    po = _as_model(poisson, nf, n_zones, "poisson")
    min_keep = max(1, int(min_keep))
    use_numba = HAVE_NUMBA and engine in ("auto", "numba")
    if engine == "numba" and not HAVE_NUMBA:
        raise ValueError("engine='numba' requested but numba is not installed")
    if not use_numba:
        return _numpy_kernel(block, row0, zones, rv, po, center, dev, method, sigma_low, sigma_high, max_iters,
                             min_keep)
    if block.dtype != np.float32 or not block.dtype.isnative:
        block = block.astype(np.float32)
    out = np.empty((nr, nc), np.float32)
    err = np.empty((nr, nc), np.float32)
    nused = np.empty((nr, nc), np.int16)
    rej, msk = _clip_kernel(block, row0, zone_ny, zone_nx, n_zone_x, rv, po, CENTERS.index(center),
                            DEVS.index(dev), method == "median", float(sigma_low), float(sigma_high),
                            int(max_iters), min_keep, out, err, nused)
    return out, err, nused, int(rej), int(msk)


def combine_stack(sources: Sequence[Any], *, scales: Sequence[float] | None = None, method: str = "mean",
                  center: str = "median", dev: str = "std", sigma_low: float = 3.0, sigma_high: float = 3.0,
                  max_iters: int = 5, min_keep: int = 1, read_var: Any = None, poisson: Any = None,
                  zones: tuple[int, int, int] | None = None, memory_mb: float = 512.0,
                  block_rows: int | None = None, threads: int | None = None, engine: str = "auto",
                  prefetch: bool = True) -> CombineResult:
    """Sigma-clipped combination of ``sources``, block-wise over row strips.

    Parameters
    ----------
    sources : sequence of 2-D array-likes
        The frames, all of the same shape; anything supporting ``src[r0:r1]`` (arrays, memory maps, FITS
        ``section`` objects). NaN values are masked.
    scales : sequence of float, optional
        Each frame is divided by its scale before combining (e.g. the level of a flat); the noise model must then
        be given in the scaled units.
    method : {'mean', 'median'}
        Statistic of the surviving values.
    center : {'median', 'mean'}
        Center of the rejection.
    dev : {'std', 'mad', 'model'}
        Scale of the rejection (see the module documentation).
    sigma_low, sigma_high : float
        Rejection thresholds below and above the center, in units of the scale.
    max_iters : int
        Maximum rejection passes (1 = a single pass, as ``ccdproc.combine``).
    min_keep : int
        Rejection never leaves fewer values than this.
    read_var, poisson : array-like, optional
        Noise model of the frames for ``dev='model'``: variance ``read_var + poisson * max(value, 0)`` per frame
        (shape ``(N,)``) or per frame and zone (``(N, n_zones)``, zones given by ``zones``). Units: those of the
        scaled values.
    zones : (zone_ny, zone_nx, n_zone_x), optional
        A regular grid of zones (e.g. the amplifiers) for a per-zone noise model: pixel ``(y, x)`` is in zone
        ``(y // zone_ny) * n_zone_x + x // zone_nx``.
    memory_mb : float
        Memory budget of the stack buffers (two strips in flight); sets the strip height.
    block_rows : int, optional
        Strip height in rows (overrides ``memory_mb``).
    threads : int, optional
        Threads of the numba kernel (default: all cores numba sees).
    engine : {'auto', 'numba', 'numpy'}
        Kernel implementation.
    prefetch : bool
        Read the next strip in a background thread while combining the current one.

    Returns
    -------
    CombineResult
    """
    import time

    t0 = time.perf_counter()
    n = len(sources)
    if n == 0:
        raise ValueError("nothing to combine: no input frames")
    shape = tuple(sources[0].shape)
    if len(shape) != 2:
        raise ValueError(f"frames must be 2-D, got shape {shape}")
    for i, s in enumerate(sources):
        if tuple(s.shape) != shape:
            raise ValueError(f"frame {i} has shape {tuple(s.shape)}, expected {shape} (all frames must match)")
    ny, nx = shape
    inv = None
    if scales is not None:
        sc = np.asarray(scales, np.float64)
        if sc.shape != (n,) or not np.all(np.isfinite(sc)) or np.any(sc == 0):
            raise ValueError(f"scales must be {n} finite non-zero numbers, got {scales!r}")
        inv = (1.0 / sc).astype(np.float32)
    if block_rows is None:
        per_row = n * nx * 4 * 2 + nx * 10  # two stack buffers + outputs of the row
        block_rows = int(max(1, min(ny, memory_mb * 1e6 // per_row)))
    block_rows = max(1, min(int(block_rows), ny))
    if zones is None:
        zones = (ny, nx, 1)
    n_zones = ((ny - 1) // zones[0] + 1) * zones[2]
    rv = _as_model(read_var, n, n_zones, "read_var") if read_var is not None else None
    po = _as_model(poisson, n, n_zones, "poisson") if poisson is not None else None
    if dev == "model" and rv is None and po is None:
        raise ValueError("dev='model' needs read_var and/or poisson (the frames' noise model)")
    use_numba = HAVE_NUMBA and engine in ("auto", "numba")
    if use_numba and threads:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))

    image = np.empty(shape, np.float32)
    error = np.empty(shape, np.float32)
    n_used = np.empty(shape, np.int16)
    buffers = [np.empty((n, block_rows, nx), np.float32) for _ in range(2 if prefetch else 1)]

    def read(k: int, r0: int) -> tuple[np.ndarray, int, int]:
        r1 = min(ny, r0 + block_rows)
        buf = buffers[k % len(buffers)][:, : r1 - r0]
        for i, src in enumerate(sources):
            buf[i] = src[r0:r1]
            if inv is not None:
                buf[i] *= inv[i]
        return buf, r0, r1

    starts = list(range(0, ny, block_rows))
    n_rej = n_mask = 0
    pool = ThreadPoolExecutor(1) if prefetch and len(starts) > 1 else None
    try:
        pending = pool.submit(read, 0, starts[0]) if pool else None
        for k, r0 in enumerate(starts):
            buf, r0, r1 = pending.result() if pool else read(k, r0)
            if pool and k + 1 < len(starts):
                pending = pool.submit(read, k + 1, starts[k + 1])
            img, err, nu, rj, mk = combine_block(buf, row0=r0, zones=zones, read_var=rv, poisson=po, center=center,
                                                 dev=dev, method=method, sigma_low=sigma_low, sigma_high=sigma_high,
                                                 max_iters=max_iters, min_keep=min_keep, engine=engine)
            image[r0:r1], error[r0:r1], n_used[r0:r1] = img, err, nu
            n_rej += rj
            n_mask += mk
    finally:
        if pool:
            pool.shutdown(wait=True)
    total = n * ny * nx
    finite = total - n_mask
    stats = {"n_frames": n, "rejected_fraction": n_rej / finite if finite else 0.0,
             "masked_fraction": n_mask / total, "blocks": len(starts), "block_rows": block_rows,
             "seconds": round(time.perf_counter() - t0, 3), "engine": "numba" if use_numba else "numpy",
             "method": method, "center": center, "dev": dev, "sigma_low": sigma_low, "sigma_high": sigma_high,
             "max_iters": max_iters}
    return CombineResult(image=image, error=error, n_used=n_used, stats=stats)


def default_threads() -> int:
    """Threads for the combination kernel: the CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1
