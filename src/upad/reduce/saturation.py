"""Saturated pixels and bleed trails.

Saturated pixels come from the raw frame (at the ADC maximum, :func:`upad.isr.saturation_mask`) and/or from
a level in electrons (full well). They are grouped into connected regions (8-connectivity). In each region the
*core* is the round part around the star: its width ``W`` is the widest row and its centre the flux-weighted row of
the widest rows; saturated pixels farther than ``W / 2`` (+ half a pixel) from the centre along the column are the
*bleed trail*. The trail is extended along its columns by ``bleed_extend_px`` and while the pixels stay above
``bleed_extend_level_e`` (the last, partly filled pixel of a trail is not saturated), then grown sideways by
``bleed_grow_px``. Every saturated pixel and its ``grow_px`` neighbours get ``SATURATED``; trail pixels also get
``BLEED``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from upad import maskbits as mb
from upad.config import StepConfig, param

__all__ = ["SaturatedRegion", "SaturationConfig", "SaturationResult", "mask_saturation"]


@dataclass(frozen=True)
class SaturationConfig(StepConfig):
    """Parameters of the saturation and bleed-trail masks."""

    level_e: float = param(0.0, doc="saturation level in the calibrated image; 0: use only the raw-frame mask "
                                    "from the ISR", bounds=(0.0, None), unit="e-")
    grow_px: int = param(1, doc="growth of the SATURATED mask around saturated pixels", bounds=(0, 10),
                         unit="pixel")
    bleed_extend_px: int = param(2, doc="extension of a bleed trail beyond its last saturated pixel, along the "
                                        "column", bounds=(0, 50), unit="pixel")
    bleed_extend_level_e: float = param(2000.0, doc="a bleed trail is extended further along its column while the "
                                                    "pixels stay above this level", bounds=(0.0, None), unit="e-")
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
    """

    n_saturated: int
    n_bleed: int
    regions: list[SaturatedRegion] = field(default_factory=list)


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
                    config: SaturationConfig = SaturationConfig()) -> SaturationResult:
    """Flag saturated pixels and bleed trails in ``mask`` (modified in place).

    Parameters
    ----------
    image : ndarray
        Calibrated image (e-), used for the saturation level and to extend trails.
    mask : ndarray
        Bit-coded mask (:data:`upad.maskbits.MASK_DTYPE`), updated in place with ``SATURATED`` and ``BLEED``.
    saturated : ndarray, optional
        Boolean mask of pixels saturated in the raw frame (from the ISR).
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
    if config.level_e > 0:
        y2, x2 = np.nonzero(image >= np.float32(config.level_e))
        if len(y2):
            lin = np.unique(np.concatenate([ys * nx + xs, y2 * nx + x2]))
            ys, xs = lin // nx, lin % nx
    if len(ys) == 0:
        return SaturationResult(0, 0, [])
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
        half = width / 2.0 + 0.5
        isb = np.abs(cy - yc) > half
        blen = 0
        if isb.any():
            by, bx = cy[isb], cx[isb]
            blen = int(np.ptp(by)) + 1 if by.size else 0
            ext_y, ext_x = [by], [bx]
            for col in np.unique(bx):
                colrows = cy[cx == col]
                top, bot = int(colrows.max()), int(colrows.min())
                for start, step in ((top + 1, 1), (bot - 1, -1)):
                    j = start
                    n = 0
                    while 0 <= j < ny and (n < config.bleed_extend_px or image[j, col] > config.bleed_extend_level_e):
                        ext_y.append(np.array([j]))
                        ext_x.append(np.array([col]))
                        j += step
                        n += 1
                        if n > ny:
                            break
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
    flat = mask.reshape(-1)
    flat[lin] |= sat_v
    n_bleed = 0
    if bleed_y:
        blin = np.unique(np.concatenate(bleed_y) * nx + np.concatenate(bleed_x))
        flat[blin] |= bleed_v
        n_bleed = len(blin)
    return SaturationResult(n_saturated=len(lin), n_bleed=n_bleed, regions=regions)
