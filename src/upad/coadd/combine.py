"""Combination of exposures resampled onto a common tile grid: SWarp's ``CLIPPED`` rule (Gruen et al. 2014).

Inputs
    The exposures are on the same pixel grid (:mod:`upad.coadd.resample`), **sky-subtracted and in the same flux
    scale** (the caller multiplies each by its photometric scaling factor, and its weight by the factor's inverse
    square, beforehand), with their inverse-variance weights (image unit⁻²) and bit-coded masks. The weight should
    describe the background noise (sky, read-out); the Poisson noise of the sources is added from the median below,
    as SWarp does.

The rule, per output pixel
    The valid inputs are those with weight > 0, a finite value and none of ``bad_bits`` in their mask. With
    ``μ`` the median of the valid values (the mean of the middle two for an even number), input ``i`` is rejected
    when ``|p_i − μ| > clip_sigma · σ_i + clip_ampfrac · |μ|``, with ``σ_i² = 1/weight_i + |μ| / gain_i``
    (``gain_i`` in e- per image unit; ``inf`` drops the Poisson term). The ``clip_ampfrac`` term tolerates the
    differences of bright stars between exposures of different seeing. With exactly two valid inputs, the median
    is their mean and both are rejected as soon as either is, since nothing says which one is right. With one
    valid input, nothing can be rejected and it is used as it is. The survivors are averaged with their weights:
    ``coadd = Σ w_i p_i / Σ w_i``, the coadd weight is ``Σ w_i`` over the survivors, the exposure time the sum of
    their exposure times, and the number of inputs their count. A pixel without any valid input or whose inputs
    were all rejected has value **0** and weight 0 (as SWarp writes it; 0 keeps sums and FITS integer conversions
    well defined, the weight says the pixel has no data).

Memory
    :func:`clipped_combine` works on one block of rows of a stack; :func:`iter_combined_blocks` builds such blocks
    from per-exposure arrays that cover parts of the grid (bounding boxes, possibly memory-mapped), so that the
    full stack never exists in memory; :func:`combine_exposures` assembles the blocks into full-size arrays.
    :func:`iter_resampled_combined_blocks` goes one step further: it resamples each exposure block by block
    (:func:`upad.coadd.resample.resample_rows`) straight into the stack, so that no resampled frame is ever held.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from upad import maskbits as mb
from upad.config import StepConfig, param
from upad.errors import UpadError
from upad.coadd.resample import ResampleConfig, ResamplePlan, Workspace, plan_resample, resample_rows
from upad.reduce._jit import njit, prange, sorted_median

__all__ = ["CombineConfig", "CombineError", "CombineResult", "GridExposure", "InputExposure", "clipped_combine",
           "combine_exposures", "iter_combined_blocks", "iter_resampled_combined_blocks", "psf_tolerance"]


class CombineError(UpadError):
    """Inputs that cannot be combined (shapes, numbers of gains or exposure times)."""


@dataclass(frozen=True)
class CombineConfig(StepConfig):
    """Parameters of the clipped combination of resampled exposures."""

    clip_sigma: float = param(4.0, doc="rejection threshold in units of the input's noise (SWarp CLIP_SIGMA)",
                              bounds=(0.5, 100.0))
    clip_ampfrac: float = param(0.3, doc="tolerated fraction of the median's amplitude (SWarp CLIP_AMPFRAC); "
                                         "protects bright stars against PSF differences", bounds=(0.0, 10.0))
    bad_bits: int = param(mb.ZERO_WEIGHT, doc="input pixels with any of these mask bits set are not used",
                          bounds=(0, 32767))
    block_rows: int = param(128, doc="rows combined per block (bounds the memory of the stack)", bounds=(1, 1 << 20),
                            unit="pixel", critical=False)


@dataclass
class CombineResult:
    """A combined block (or tile).

    Attributes
    ----------
    image : ndarray of float32
        Inverse-variance weighted mean of the surviving inputs (their flux unit); 0 where there is no data.
    weight : ndarray of float32
        Sum of the surviving inputs' weights (image unit⁻²); 0 where there is no data.
    exptime : ndarray of float32
        Sum of the surviving inputs' exposure times (the unit of ``exptimes``, e.g. s).
    ninputs : ndarray of int16
        Number of surviving inputs.
    rejected : ndarray of uint8
        1 where at least one valid input was rejected, else 0.
    n_rejected : ndarray of int64
        Pixels rejected per input (in the order of the inputs).
    """

    image: np.ndarray
    weight: np.ndarray
    exptime: np.ndarray
    ninputs: np.ndarray
    rejected: np.ndarray
    n_rejected: np.ndarray


class GridExposure(Protocol):
    """An exposure on the tile grid: arrays over ``tile[y0:y1, x0:x1]`` (e.g. a
    :class:`~upad.coadd.resample.ResampledExposure`)."""

    image: np.ndarray
    weight: np.ndarray
    mask: np.ndarray | None
    bbox: tuple[int, int, int, int]


@dataclass
class InputExposure:
    """A reduced exposure before resampling.

    Attributes
    ----------
    image : ndarray
        Sky-subtracted image in the common flux scale (may be memory-mapped).
    noise : ndarray
        Its inverse variance (or variance, see ``noise`` of :func:`iter_resampled_combined_blocks`).
    mask : ndarray or None
        Bit-coded mask (:mod:`upad.maskbits`).
    wcs : astropy.wcs.WCS
        Its astrometric solution, distortion included.
    """

    image: np.ndarray
    noise: np.ndarray
    mask: np.ndarray | None
    wcs: object


# ------------------------------------------------------------------------------------------------ compiled
@njit(cache=True, nogil=True, parallel=True)
def _clipped(images, weights, masks, bad_bits, inv_gain, exptimes, clip_sigma, clip_ampfrac,
             out_img, out_wt, out_exp, out_n, out_rej, rej_rows):  # pragma: no cover - compiled
    n, ny, nx = images.shape
    cs2 = clip_sigma * clip_sigma
    for r in prange(ny):
        vals = np.empty(n)
        wts = np.empty(n)
        idx = np.empty(n, np.int64)
        tmp = np.empty(n)
        keep = np.empty(n, np.bool_)
        for c in range(nx):
            k = 0
            for i in range(n):
                w = weights[i, r, c]
                p = images[i, r, c]
                if w > 0.0 and math.isfinite(w) and math.isfinite(p) and (masks[i, r, c] & bad_bits) == 0:
                    vals[k] = p
                    wts[k] = w
                    idx[k] = i
                    k += 1
            nrej = 0
            if k == 0:
                out_img[r, c] = 0.0
                out_wt[r, c] = 0.0
                out_exp[r, c] = 0.0
                out_n[r, c] = 0
                out_rej[r, c] = 0
                continue
            for q in range(k):
                keep[q] = True
            if k >= 2:
                for q in range(k):
                    tmp[q] = vals[q]
                mu = sorted_median(tmp, k)
                amu = abs(mu)
                for q in range(k):
                    # |p - mu| > clip_sigma sqrt(1/w + |mu|/gain) + clip_ampfrac |mu|, without a square root or a
                    # division: with e = |p - mu| - clip_ampfrac |mu| >= 0, e² w > clip_sigma² (1 + |mu| w / gain)
                    e = abs(vals[q] - mu) - clip_ampfrac[idx[q]] * amu
                    if e > 0.0 and e * e * wts[q] > cs2 * (1.0 + amu * inv_gain[idx[q]] * wts[q]):
                        keep[q] = False
                        nrej += 1
                if k == 2 and nrej > 0:
                    keep[0] = False
                    keep[1] = False
                    nrej = 2
            s = 0.0
            sw = 0.0
            st = 0.0
            m = 0
            for q in range(k):
                if keep[q]:
                    s += wts[q] * vals[q]
                    sw += wts[q]
                    st += exptimes[idx[q]]
                    m += 1
                else:
                    rej_rows[r, idx[q]] += 1
            if m > 0:
                out_img[r, c] = s / sw
                out_wt[r, c] = sw
            else:
                out_img[r, c] = 0.0
                out_wt[r, c] = 0.0
            out_exp[r, c] = st
            out_n[r, c] = m
            out_rej[r, c] = 1 if nrej > 0 else 0


# ------------------------------------------------------------------------------------------------ public
def psf_tolerance(fwhm: Sequence[float | None], *, factor: float = 1.0) -> np.ndarray:
    """Per input, the fraction of the median's amplitude by which its pixels may differ from the median's for its
    PSF alone: ``factor · |(FWHM_med / FWHM_i)² − 1|``.

    A star's peak scales as 1/FWHM², so a sharper exposure's core stands above the median (of exposures of the
    median seeing) by ``(FWHM_med / FWHM_i)² − 1`` of it and a blurrier one's below it by ``1 − (FWHM_med /
    FWHM_i)²``: SWarp's single ``CLIP_AMPFRAC`` rejects the cores of the sharpest and blurriest exposures of bright
    stars when the seeing differs by more than it allows, which widens the coadd's PSF on bright stars only and
    takes flux from their cores. Added to ``clip_ampfrac`` per input, it keeps them; an artefact stands out from
    the median by far more than a PSF difference (a cosmic ray or a trail on the sky, where the median is ≈ 0, is
    judged by ``clip_sigma`` alone).

    Parameters
    ----------
    fwhm : sequence of float or None
        Per input, its PSF FWHM (any unit; ``None`` or not finite: unknown, tolerance 0).
    factor : float
        Scales the tolerance (0: SWarp's rule as is).
    """
    f = np.array([np.nan if v is None else float(v) for v in fwhm], np.float64)
    good = np.isfinite(f) & (f > 0)
    out = np.zeros(f.size)
    if good.sum() >= 2 and factor > 0:
        med = float(np.median(f[good]))
        out[good] = factor * np.abs((med / f[good]) ** 2 - 1.0)
    return out


def _with_overrides(config: CombineConfig, **kw: object) -> CombineConfig:
    changes = {k: v for k, v in kw.items() if v is not None}
    return dataclasses.replace(config, **changes) if changes else config


def _per_input(values, n: int, what: str, hint: str) -> np.ndarray:
    arr = np.asarray(values, np.float64).ravel()
    if arr.size == 1 and n != 1:
        arr = np.full(n, arr[0])
    if arr.size != n:
        raise CombineError(f"{what}: {arr.size} values for {n} inputs", hint=hint)
    return arr


def clipped_combine(images: np.ndarray | Sequence[np.ndarray], weights: np.ndarray | Sequence[np.ndarray],
                    masks: np.ndarray | Sequence[np.ndarray] | None, *, gains, exptimes=1.0,
                    clip_sigma: float | None = None, clip_ampfrac: float | None = None, psf_ampfrac=None,
                    config: CombineConfig = CombineConfig()) -> CombineResult:
    """Combine a stack of exposures on the same grid with SWarp's CLIPPED rule (see the module documentation).

    Parameters
    ----------
    images : ndarray or sequence of ndarray
        ``(n, ny, nx)`` stack (or ``n`` arrays of ``(ny, nx)``), sky-subtracted, in the same flux scale.
    weights : ndarray or sequence of ndarray
        Inverse variances of the same shape (image unit⁻²); 0 where an input has no data.
    masks : ndarray or sequence of ndarray or None
        Bit-coded masks (:mod:`upad.maskbits`); pixels with ``config.bad_bits`` are not used.
    gains : float or sequence of float
        Per input: electrons per image unit, for the Poisson term ``|μ|/gain`` (``inf``: no such term).
    exptimes : float or sequence of float
        Per input: exposure time (s) summed into the exposure-time map.
    clip_sigma, clip_ampfrac : float, optional
        Override ``config.clip_sigma`` (4.0) and ``config.clip_ampfrac`` (0.3).
    psf_ampfrac : float or sequence of float, optional
        Per input: a fraction of the median's amplitude tolerated on top of ``clip_ampfrac``, for the input's PSF
        differing from the median's (:func:`psf_tolerance`); ``None``: 0.
    config : CombineConfig

    Returns
    -------
    CombineResult
    """
    config = _with_overrides(config, clip_sigma=clip_sigma, clip_ampfrac=clip_ampfrac)
    imgs = np.asarray(images, dtype=np.float32) if not isinstance(images, np.ndarray) else images
    wts = np.asarray(weights, dtype=np.float32) if not isinstance(weights, np.ndarray) else weights
    if imgs.ndim != 3 or wts.shape != imgs.shape:
        raise CombineError(f"images {imgs.shape} and weights {wts.shape} must be stacks of the same shape (n, ny, nx)")
    n = imgs.shape[0]
    if masks is None:
        msk = np.zeros(imgs.shape, mb.MASK_DTYPE)
    else:
        msk = np.asarray(masks)
        if msk.shape != imgs.shape:
            raise CombineError(f"masks {msk.shape} must have the shape of the images {imgs.shape}")
    if msk.dtype != mb.MASK_DTYPE:
        if msk.dtype.kind not in "iu":
            raise CombineError(f"masks must be integer bit masks, got dtype {msk.dtype}")
        msk = msk.astype(mb.MASK_DTYPE)
    imgs = imgs.astype(np.float32, copy=False) if imgs.dtype != np.float32 else imgs
    wts = wts.astype(np.float32, copy=False) if wts.dtype != np.float32 else wts
    g = _per_input(gains, n, "gains", "give one gain (e- per image unit) per input, or one for all")
    if np.any(~(g > 0)):
        raise CombineError(f"gains must be > 0 (inf for no Poisson term), got {g.tolist()}")
    t = _per_input(exptimes, n, "exptimes", "give one exposure time per input, or one for all")
    amp = float(config.clip_ampfrac) + (0.0 if psf_ampfrac is None else _per_input(
        psf_ampfrac, n, "psf_ampfrac", "give one PSF tolerance per input, or one for all"))
    amp = np.broadcast_to(np.asarray(amp, np.float64), (n,)).copy()
    if np.any(~(amp >= 0)):
        raise CombineError(f"the tolerated amplitude fractions must be >= 0, got {amp.tolist()}")
    ny, nx = imgs.shape[1:]
    out_img = np.empty((ny, nx), np.float32)
    out_wt = np.empty((ny, nx), np.float32)
    out_exp = np.empty((ny, nx), np.float32)
    out_n = np.empty((ny, nx), np.int16)
    out_rej = np.empty((ny, nx), np.uint8)
    rej_rows = np.zeros((ny, n), np.int64)
    _clipped(imgs, wts, msk, msk.dtype.type(config.bad_bits), 1.0 / g, t, float(config.clip_sigma),
             amp, out_img, out_wt, out_exp, out_n, out_rej, rej_rows)
    return CombineResult(out_img, out_wt, out_exp, out_n, out_rej, rej_rows.sum(axis=0))


def iter_combined_blocks(exposures: Sequence[GridExposure], dst_shape: tuple[int, int], *, gains, exptimes=1.0,
                         psf_ampfrac=None, block_rows: int | None = None, config: CombineConfig = CombineConfig()
                         ) -> Iterator[tuple[int, int, CombineResult]]:
    """Combine exposures that cover parts of a tile grid, block of rows by block of rows.

    Parameters
    ----------
    exposures : sequence of GridExposure
        Per exposure: ``image``, ``weight``, ``mask`` (or ``None``) over ``tile[y0:y1, x0:x1]`` with
        ``bbox = (y0, y1, x0, x1)``; empty exposures are skipped. The arrays may be memory-mapped: only the rows of
        one block are read at a time.
    dst_shape : tuple of int
        Shape of the tile grid.
    gains, exptimes, psf_ampfrac
        Per exposure, as in :func:`clipped_combine`.
    block_rows : int, optional
        Overrides ``config.block_rows``.
    config : CombineConfig

    Yields
    ------
    y0, y1 : int
        Tile rows of the block.
    CombineResult
        The block over the full width of the tile; ``n_rejected`` per exposure (in the order given).
    """
    config = _with_overrides(config, block_rows=block_rows)
    n = len(exposures)
    g = _per_input(gains, n, "gains", "give one gain per exposure")
    t = _per_input(exptimes, n, "exptimes", "give one exposure time per exposure")
    pa = _per_input(0.0 if psf_ampfrac is None else psf_ampfrac, n, "psf_ampfrac", "give one per exposure")
    ny, nx = int(dst_shape[0]), int(dst_shape[1])
    for e in exposures:
        y0, y1, x0, x1 = e.bbox
        if e.image.size and not (0 <= y0 <= y1 <= ny and 0 <= x0 <= x1 <= nx
                                 and e.image.shape == (y1 - y0, x1 - x0) and e.weight.shape == e.image.shape):
            raise CombineError(f"an exposure's arrays {e.image.shape} do not match its bounding box {e.bbox} "
                               f"inside the grid {dst_shape}")
    step = int(config.block_rows)
    for r0 in range(0, ny, step):
        r1 = min(ny, r0 + step)
        sel = [i for i, e in enumerate(exposures) if e.image.size and e.bbox[0] < r1 and e.bbox[1] > r0]
        k = len(sel)
        imgs = np.zeros((k, r1 - r0, nx), np.float32)
        wts = np.zeros((k, r1 - r0, nx), np.float32)
        msk = np.zeros((k, r1 - r0, nx), mb.MASK_DTYPE)
        for j, i in enumerate(sel):
            e = exposures[i]
            y0, y1, x0, x1 = e.bbox
            a0, a1 = max(r0, y0), min(r1, y1)
            imgs[j, a0 - r0:a1 - r0, x0:x1] = e.image[a0 - y0:a1 - y0]
            wts[j, a0 - r0:a1 - r0, x0:x1] = e.weight[a0 - y0:a1 - y0]
            if e.mask is not None:
                msk[j, a0 - r0:a1 - r0, x0:x1] = e.mask[a0 - y0:a1 - y0]
        res = clipped_combine(imgs, wts, msk, gains=g[sel], exptimes=t[sel], psf_ampfrac=pa[sel],
                              config=config) if k else None
        if res is None:
            z = np.zeros((r1 - r0, nx), np.float32)
            res = CombineResult(z, z.copy(), z.copy(), np.zeros(z.shape, np.int16), np.zeros(z.shape, np.uint8),
                                np.zeros(0, np.int64))
        counts = np.zeros(n, np.int64)
        counts[sel] = res.n_rejected
        res.n_rejected = counts
        yield r0, r1, res


def combine_exposures(exposures: Sequence[GridExposure], dst_shape: tuple[int, int], *, gains, exptimes=1.0,
                      psf_ampfrac=None, block_rows: int | None = None,
                      config: CombineConfig = CombineConfig()) -> CombineResult:
    """Combine exposures on a tile grid into full-size arrays (block by block, see :func:`iter_combined_blocks`).

    Returns
    -------
    CombineResult
        Over the whole grid ``dst_shape``.
    """
    ny, nx = int(dst_shape[0]), int(dst_shape[1])
    out = CombineResult(np.zeros((ny, nx), np.float32), np.zeros((ny, nx), np.float32),
                        np.zeros((ny, nx), np.float32), np.zeros((ny, nx), np.int16), np.zeros((ny, nx), np.uint8),
                        np.zeros(len(exposures), np.int64))
    for r0, r1, res in iter_combined_blocks(exposures, dst_shape, gains=gains, exptimes=exptimes,
                                            psf_ampfrac=psf_ampfrac, block_rows=block_rows, config=config):
        out.image[r0:r1] = res.image
        out.weight[r0:r1] = res.weight
        out.exptime[r0:r1] = res.exptime
        out.ninputs[r0:r1] = res.ninputs
        out.rejected[r0:r1] = res.rejected
        out.n_rejected += res.n_rejected
    return out


def iter_resampled_combined_blocks(exposures: Sequence[InputExposure], *, dst_wcs, dst_shape: tuple[int, int],
                                   gains, exptimes=1.0, psf_ampfrac=None, noise: str = "weight",
                                   resample_config: ResampleConfig = ResampleConfig(),
                                   block_rows: int | None = None, config: CombineConfig = CombineConfig()
                                   ) -> Iterator[tuple[int, int, CombineResult, list[tuple[float, int]]]]:
    """Resample exposures onto a tile grid and combine them, block of rows by block of rows, without ever holding
    a resampled frame (see :mod:`upad.coadd.resample` and the module documentation).

    Parameters
    ----------
    exposures : sequence of InputExposure
        The exposures (sky-subtracted, in the common flux scale); those that do not overlap the grid are skipped.
    dst_wcs : astropy.wcs.WCS
        The tile's WCS.
    dst_shape : tuple of int
        Shape of the tile grid.
    gains, exptimes, psf_ampfrac
        Per exposure, as in :func:`clipped_combine`.
    noise : {"weight", "variance"}
        What the exposures' ``noise`` arrays hold.
    resample_config : ResampleConfig
    block_rows : int, optional
        Overrides ``config.block_rows``.
    config : CombineConfig

    Yields
    ------
    y0, y1 : int
        Tile rows of the block.
    CombineResult
        The block over the full width of the tile.
    noise_sums : list of (float, int)
        Per exposure, the block's sum of ``(per-pixel variance) / (naive variance)`` and its number of covered
        pixels: summed over the blocks, ``sqrt(sum / n)`` is the exposure's
        :attr:`~upad.coadd.resample.ResampledExposure.noise_ratio`.
    """
    config = _with_overrides(config, block_rows=block_rows)
    n = len(exposures)
    g = _per_input(gains, n, "gains", "give one gain per exposure")
    t = _per_input(exptimes, n, "exptimes", "give one exposure time per exposure")
    pa = _per_input(0.0 if psf_ampfrac is None else psf_ampfrac, n, "psf_ampfrac", "give one per exposure")
    ny, nx = int(dst_shape[0]), int(dst_shape[1])
    plans: list[ResamplePlan] = [plan_resample(np.shape(e.image), src_wcs=e.wcs, dst_wcs=dst_wcs,
                                               dst_shape=(ny, nx), config=resample_config) for e in exposures]
    step = int(config.block_rows)
    # scratch memory reused from block to block (the stack, the resampling's windows): allocated once
    ws = Workspace()
    for r0 in range(0, ny, step):
        r1 = min(ny, r0 + step)
        sel = [i for i, p in enumerate(plans) if not p.empty and p.bbox[0] < r1 and p.bbox[1] > r0]
        k = len(sel)
        imgs = ws.get("stack_image", (k, r1 - r0, nx), np.float32)
        wts = ws.get("stack_weight", (k, r1 - r0, nx), np.float32)
        msk = ws.get("stack_mask", (k, r1 - r0, nx), mb.MASK_DTYPE)
        for arr in (imgs, wts, msk):
            arr.fill(0)
        sums = [(0.0, 0)] * n
        for j, i in enumerate(sel):
            p, e = plans[i], exposures[i]
            y0, y1, x0, x1 = p.bbox
            a0, a1 = max(r0, y0), min(r1, y1)
            out = (imgs[j, a0 - r0:a1 - r0, x0:x1], wts[j, a0 - r0:a1 - r0, x0:x1], msk[j, a0 - r0:a1 - r0, x0:x1])
            *_, rs, rn = resample_rows(p, e.image, e.noise, e.mask, a0, a1, noise=noise, config=resample_config,
                                       out=out, workspace=ws)
            sums[i] = (rs, rn)
        if k:
            res = clipped_combine(imgs, wts, msk, gains=g[sel], exptimes=t[sel], psf_ampfrac=pa[sel], config=config)
        else:
            z = np.zeros((r1 - r0, nx), np.float32)
            res = CombineResult(z, z.copy(), z.copy(), np.zeros(z.shape, np.int16), np.zeros(z.shape, np.uint8),
                                np.zeros(0, np.int64))
        counts = np.zeros(n, np.int64)
        counts[sel] = res.n_rejected
        res.n_rejected = counts
        yield r0, r1, res, sums
