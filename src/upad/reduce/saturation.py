"""Saturated pixels and bleed trails.

A pixel is saturated when its charge reached what its amplifier can record — the full well, or the charge whose
reading reaches the ADC maximum, whichever comes first. Three sources, combined:

* the raw-frame mask of the ISR (pixels at the ADC maximum, :func:`upad.isr.saturation_mask`);
* a level per amplifier in electrons of detected charge (``levels_e``: the saturation level measured by the
  calibration, or the instrument file's full well as a first guess), compared with ``image * flat`` (the charge
  before flat-fielding);
* the level measured in the frame itself (``measure_level``): saturated pixels of an amplifier pile up on a plateau
  (their charge is the same to a fraction of a per cent, whatever the star), so the brightest usable pixels of an
  amplifier, when at least ``plateau_min_px`` of them lie within ``plateau_tolerance`` of the maximum, set its level.

The lowest of the amplifier's levels applies (minus ``level_margin``). Saturated pixels are grouped into connected
regions (8-connectivity). In each region the *core* is the round part around the star: its width ``W`` is the widest
row and its centre the mean of the widest rows; saturated pixels farther than ``W / 2`` (+ half a pixel) from the
centre along the column are the *bleed trail*. The trail is extended along its columns by ``bleed_extend_px`` and
then while the pixels stay ``bleed_nsigma`` above the *local* sky — the median of the star's annulus through the
pixel, away from the trail's columns: the star's halo at that distance, or the sky level far from it, whatever it is
(the last, partly filled pixel of a trail is not saturated) —, then grown sideways by ``bleed_grow_px``. Every
saturated pixel and its ``grow_px`` neighbours get ``SATURATED``; trail pixels also get ``BLEED``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from upad import maskbits as mb
from upad.config import StepConfig, param
from upad.reduce._jit import njit, prange

__all__ = ["SaturatedRegion", "SaturationConfig", "SaturationResult", "instrument_levels", "mask_saturation",
           "measure_plateau"]

Region = tuple[slice, slice]


@dataclass(frozen=True)
class SaturationConfig(StepConfig):
    """Parameters of the saturation and bleed-trail masks."""

    level_e: float = param(0.0, doc="saturation level in the calibrated (flat-fielded) image; 0: none (the levels "
                                    "per amplifier, the measured plateau and the raw-frame mask of the ISR apply)",
                           bounds=(0.0, None), unit="e-")
    measure_level: bool = param(True, doc="measure each amplifier's saturation level in the frame (the plateau of "
                                          "its brightest pixels)")
    plateau_tolerance: float = param(0.002, doc="relative spread of the pixels of a saturation plateau",
                                     bounds=(1e-5, 0.05))
    plateau_min_px: int = param(4, doc="fewest pixels on a plateau for a measured saturation level",
                                bounds=(2, None))
    level_margin: float = param(0.002, doc="pixels within this fraction below the saturation level are saturated",
                                bounds=(0.0, 0.2))
    grow_px: int = param(1, doc="growth of the SATURATED mask around saturated pixels", bounds=(0, 10),
                         unit="pixel")
    bleed_extend_px: int = param(1, doc="extension of a bleed trail beyond its last saturated pixel, along the "
                                        "column", bounds=(0, 50), unit="pixel")
    bleed_nsigma: float = param(5.0, doc="a bleed trail is extended further along its column while the pixels "
                                         "stay this many sigma above the local sky (neighbouring columns)",
                                bounds=(1.0, 1000.0))
    bleed_grow_px: int = param(1, doc="sideways growth of bleed trails", bounds=(0, 10), unit="pixel")


@dataclass(frozen=True)
class SaturatedRegion:
    """One connected region of saturated pixels (0-based pixel coordinates)."""

    x: float
    y: float
    npix: int
    core_width: int
    bleed_length: int


@dataclass
class SaturationResult:
    """Summary of :func:`mask_saturation`.

    Attributes
    ----------
    n_saturated : int
        Pixels flagged ``SATURATED`` (after growth).
    n_bleed : int
        Pixels flagged ``BLEED``.
    regions : list of SaturatedRegion
        The saturated regions (saturated stars).
    levels_e : list of float
        Saturation level applied per amplifier (e- of detected charge; ``inf``: none).
    measured_e : list of float
        Plateau measured per amplifier (e-; ``nan`` where none was found).
    """

    n_saturated: int
    n_bleed: int
    regions: list[SaturatedRegion] = field(default_factory=list)
    levels_e: list[float] = field(default_factory=list)
    measured_e: list[float] = field(default_factory=list)


def instrument_levels(instrument, sections) -> list[float]:
    """First guess of the saturation level (e-) of each amplifier of ``sections`` from the instrument file: its
    full well (the ADC limit is seen directly in the raw frame)."""
    amps = instrument.detector(1).amplifiers
    return [float(amps[sec.index].full_well) for sec in sections]


@njit(parallel=True, nogil=True, cache=True)
def _row_max(image, flat, mask, bits, y0, y1, x0, x1, use_flat):  # pragma: no cover - compiled
    """Largest charge (``image * flat``) of each row of the rectangle, over the pixels without ``bits``."""
    out = np.full(y1 - y0, -np.inf)
    for j in prange(y1 - y0):
        y = y0 + j
        m = -np.inf
        for x in range(x0, x1):
            if (mask[y, x] & bits) != 0:
                continue
            v = image[y, x] * flat[y, x] if use_flat else image[y, x]
            if v > m:
                m = v
        out[j] = m
    return out


@njit(cache=True, nogil=True)
def _gather_above(image, flat, mask, bits, rows, x0, x1, use_flat, level):  # pragma: no cover - compiled
    """Pixels of the given rows (between columns x0 and x1, without ``bits``) whose charge is at least ``level``."""
    n = 0
    for y in rows:
        for x in range(x0, x1):
            if (mask[y, x] & bits) == 0 and (image[y, x] * flat[y, x] if use_flat else image[y, x]) >= level:
                n += 1
    ys = np.empty(n, np.int64)
    xs = np.empty(n, np.int64)
    k = 0
    for y in rows:
        for x in range(x0, x1):
            if (mask[y, x] & bits) == 0 and (image[y, x] * flat[y, x] if use_flat else image[y, x]) >= level:
                ys[k] = y
                xs[k] = x
                k += 1
    return ys, xs


def _amp_levels(image: np.ndarray, fl: np.ndarray, mask: np.ndarray, use_flat: bool, region: Region,
                given: float, cfg: SaturationConfig) -> tuple[float, float, np.ndarray, np.ndarray]:
    """One amplifier: the plateau measured (``nan``: none), the level applied, and the pixels at or above it (one
    pass over the amplifier for the row maxima; the rest looks only at the rows that reach the levels)."""
    ny, nx = image.shape
    y0, y1, _ = region[0].indices(ny)
    x0, x1, _ = region[1].indices(nx)
    bits = np.int16(mb.BAD | mb.NODATA)
    rmax = _row_max(image, fl, mask, bits, y0, y1, x0, x1, use_flat)
    vmax = float(rmax.max()) if len(rmax) else -np.inf
    meas = float("nan")
    if cfg.measure_level and np.isfinite(vmax) and vmax > 0:
        top = vmax * (1.0 - cfg.plateau_tolerance)
        rows = (np.flatnonzero(rmax >= top) + y0).astype(np.int64)
        ys, _ = _gather_above(image, fl, mask, bits, rows, x0, x1, use_flat, top)
        if len(ys) >= cfg.plateau_min_px:
            meas = vmax
    level = min(given, meas) if np.isfinite(meas) else given
    e = np.empty(0, np.int64)
    if not (np.isfinite(level) and level > 0):
        return meas, level, e, e
    thr = level * (1.0 - cfg.level_margin)
    rows = (np.flatnonzero(rmax >= thr) + y0).astype(np.int64)
    if len(rows) == 0:
        return meas, level, e, e
    ys, xs = _gather_above(image, fl, mask, bits, rows, x0, x1, use_flat, thr)
    return meas, level, ys, xs


def measure_plateau(image: np.ndarray, *, flat: np.ndarray | None = None, mask: np.ndarray | None = None,
                    region: Region | None = None, tolerance: float = 0.002, min_px: int = 4) -> float:
    """The saturation plateau of one amplifier: the highest charge (``image * flat``, e-) when at least ``min_px``
    usable pixels of ``region`` lie within ``tolerance`` (relative) of it, else ``nan``."""
    ny, nx = image.shape
    reg = region if region is not None else (slice(0, ny), slice(0, nx))
    use_flat = flat is not None
    fl = np.asarray(flat, np.float32) if use_flat else image
    m = mask if mask is not None else np.zeros(image.shape, mb.MASK_DTYPE)
    cfg = SaturationConfig(plateau_tolerance=tolerance, plateau_min_px=min_px)
    return _amp_levels(image, fl, m, use_flat, reg, np.inf, cfg)[0]


def _components(ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (8-connectivity) of a sparse pixel list."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(ys)
    if n == 1:
        return np.zeros(1, int), 1
    tree = cKDTree(np.column_stack([xs, ys]).astype(float))
    pairs = tree.query_pairs(1.5, output_type="ndarray")
    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    ncomp, labels = connected_components(g, directed=False)
    return labels, ncomp


def mask_saturation(image: np.ndarray, mask: np.ndarray, *, saturated: np.ndarray | None = None,
                    levels_e: float | Sequence[float] | None = None, amp_regions: Sequence[Region] | None = None,
                    flat: np.ndarray | None = None,
                    config: SaturationConfig = SaturationConfig()) -> SaturationResult:
    """Flag saturated pixels and bleed trails in ``mask`` (modified in place).

    Parameters
    ----------
    image : ndarray
        Calibrated image (e-, sky included), used for the saturation levels and to extend trails.
    mask : ndarray
        Bit-coded mask (:data:`upad.maskbits.MASK_DTYPE`), updated in place with ``SATURATED`` and ``BLEED``.
    saturated : ndarray, optional
        Boolean mask of pixels saturated in the raw frame (from the ISR).
    levels_e : float or sequence of float, optional
        Saturation level (e- of detected charge, i.e. before flat-fielding) of each amplifier of ``amp_regions``
        (or of the whole image): the calibration's measured level, or :func:`instrument_levels` as a first guess.
    amp_regions : sequence of (slice, slice), optional
        Region of each amplifier in the image (``AmpSection.active``); default: the image is one amplifier.
    flat : ndarray, optional
        The flat the image was divided by (``image * flat`` is the detected charge).
    config : SaturationConfig

    Returns
    -------
    SaturationResult
    """
    ny, nx = image.shape
    if saturated is not None:
        if saturated.shape != image.shape:
            raise ValueError(f"saturation mask {saturated.shape} does not match the image {image.shape}")
        ys, xs = np.nonzero(saturated)
    else:
        ys = xs = np.empty(0, np.intp)
    if flat is not None and flat.shape != image.shape:
        raise ValueError(f"flat {flat.shape} does not match the image {image.shape}")
    regions_amp = list(amp_regions) if amp_regions is not None else [(slice(0, ny), slice(0, nx))]
    if levels_e is None:
        given = [np.inf] * len(regions_amp)
    elif np.ndim(levels_e) == 0:
        given = [float(levels_e)] * len(regions_amp)
    else:
        given = [float(v) for v in levels_e]
        if len(given) != len(regions_amp):
            raise ValueError(f"{len(given)} saturation levels for {len(regions_amp)} amplifier regions")
    use_flat = flat is not None
    fl = np.asarray(flat, np.float32) if use_flat else image
    levels: list[float] = []
    measured: list[float] = []
    extra_y: list[np.ndarray] = []
    extra_x: list[np.ndarray] = []
    for reg, lev in zip(regions_amp, given):
        meas, level, gy, gx = _amp_levels(image, fl, mask, use_flat, reg, lev, config)
        measured.append(meas)
        levels.append(level)
        if len(gy):
            extra_y.append(gy)
            extra_x.append(gx)
    if config.level_e > 0:
        y2, x2 = np.nonzero(image >= np.float32(config.level_e))
        extra_y.append(y2)
        extra_x.append(x2)
    if extra_y:
        lin = np.unique(np.concatenate([ys * nx + xs] + [a * nx + b for a, b in zip(extra_y, extra_x)]))
        ys, xs = lin // nx, lin % nx
    if len(ys) == 0:
        return SaturationResult(0, 0, [], levels, measured)
    labels, ncomp = _components(ys, xs)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(ncomp + 1))
    sat_v = np.int16(mb.SATURATED)
    bleed_v = np.int16(mb.BLEED)
    bleed_y: list[np.ndarray] = []
    bleed_x: list[np.ndarray] = []
    regions: list[SaturatedRegion] = []
    for c in range(ncomp):
        idx = order[bounds[c]:bounds[c + 1]]
        cy, cx = ys[idx], xs[idx]
        rows, counts = np.unique(cy, return_counts=True)
        width = int(counts.max())
        wide = rows[counts >= max(1, int(np.ceil(0.7 * width)))]
        yc = float(np.mean(wide))
        xc = float(np.mean(cx[np.isin(cy, wide)]))
        half = width / 2.0 + 0.5
        isb = np.abs(cy - yc) > half
        blen = 0
        if isb.any():
            by, bx = cy[isb], cx[isb]
            blen = int(np.ptp(by)) + 1 if by.size else 0
            ext_y, ext_x = [by], [bx]
            c_lo, c_hi = int(bx.min()), int(bx.max())
            for col in np.unique(bx):
                colrows = cy[cx == col]
                top, bot = int(colrows.max()), int(colrows.min())
                for start, step in ((top + 1, 1), (bot - 1, -1)):
                    n = _extend(image, col, start, step, c_lo, c_hi, config.bleed_extend_px, config.bleed_nsigma,
                                yc, xc)
                    if n:
                        rows_e = start + step * np.arange(n)
                        ext_y.append(rows_e)
                        ext_x.append(np.full(n, col))
            by = np.concatenate(ext_y)
            bx = np.concatenate(ext_x)
            g = config.bleed_grow_px
            if g > 0:
                offs = np.arange(-g, g + 1)
                by = np.repeat(by, len(offs))
                bx = (bx[:, None] + offs[None, :]).ravel()
            ok = (bx >= 0) & (bx < nx)
            bleed_y.append(by[ok])
            bleed_x.append(bx[ok])
        regions.append(SaturatedRegion(x=float(cx.mean()), y=float(cy.mean()), npix=len(idx), core_width=width,
                                       bleed_length=blen))
    g = config.grow_px
    if g > 0:
        oy, ox = np.mgrid[-g:g + 1, -g:g + 1]
        gy = (ys[:, None] + oy.ravel()[None, :]).ravel()
        gx = (xs[:, None] + ox.ravel()[None, :]).ravel()
        ok = (gy >= 0) & (gy < ny) & (gx >= 0) & (gx < nx)
        gy, gx = gy[ok], gx[ok]
    else:
        gy, gx = ys, xs
    lin = np.unique(gy * nx + gx)
    mflat = mask.reshape(-1)
    mflat[lin] |= sat_v
    n_bleed = 0
    if bleed_y:
        blin = np.unique(np.concatenate(bleed_y) * nx + np.concatenate(bleed_x))
        mflat[blin] |= bleed_v
        n_bleed = len(blin)
    return SaturationResult(n_saturated=len(lin), n_bleed=n_bleed, regions=regions, levels_e=levels,
                            measured_e=measured)


def _extend(image: np.ndarray, col: int, start: int, step: int, c_lo: int, c_hi: int, min_px: int,
            nsigma: float, yc: float, xc: float) -> int:
    """Number of pixels of column ``col`` from row ``start`` (moving by ``step``) that continue a bleed trail: at
    least ``min_px``, then while the pixel stays ``nsigma`` above the local sky. The local sky of a pixel at radius
    ``R`` from the star's centre ``(yc, xc)`` is the median of the star's annulus at that radius away from the trail's
    columns ``c_lo..c_hi`` (the star's halo at that distance, or the sky far from it); the noise is its scatter
    (1.4826 MAD) and the Poisson noise."""
    ny, nx = image.shape
    n = 0
    j = start
    while 0 <= j < ny:
        v = float(image[j, col])
        if n >= min_px:
            r = float(np.hypot(j - yc, col - xc))
            m = max(16, int(2 * np.pi * r))
            ang = np.arange(m) * (2 * np.pi / m)
            ax = np.rint(xc + r * np.cos(ang)).astype(np.int64)
            ay = np.rint(yc + r * np.sin(ang)).astype(np.int64)
            ok = (ax >= 0) & (ax < nx) & (ay >= 0) & (ay < ny) & ((ax < c_lo - 3) | (ax > c_hi + 3))
            if ok.sum() < 8:
                break
            a = image[ay[ok], ax[ok]].astype(np.float64)
            local = float(np.median(a))
            scatter = 1.4826 * float(np.median(np.abs(a - local)))
            noise = max(float(np.sqrt(scatter ** 2 + max(local, 0.0))), 1e-3)
            if v - local <= nsigma * noise:
                break
        n += 1
        j += step
    return n
