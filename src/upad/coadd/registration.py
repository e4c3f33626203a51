"""The registration check across filters: the same star at the same pixel in every filter's coadd of a pointing.

Every filter of a pointing is coadded on one pixel grid (:mod:`upad.coadd.tiling`), so a star's centroid must be
the same pixel in each filter's coadd. :func:`star_centroids` finds the compact, unsaturated, well-measured sources
of one coadd (``sep`` detection, windowed centroids); :func:`registration_offsets` matches the stars of each filter to
those of the reference filter and measures the median pixel offset, its uncertainty and the scatter. Pure functions:
arrays in, tables out (the step :mod:`upad.coadd.registration_step` reads the coadds and writes the result).

A colour-dependent centroid shift (differential refraction) differs from star to star; the median over many stars of
all colours is the grid's registration, the scatter includes the colour term and the centroid noise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["StarCentroids", "star_centroids", "FilterOffset", "registration_offsets"]


@dataclass(frozen=True)
class StarCentroids:
    """Windowed centroids (0-based pixels) of the compact, well-measured sources of one coadd."""

    x: np.ndarray
    y: np.ndarray
    snr: np.ndarray

    def __len__(self) -> int:
        return int(self.x.size)


def star_centroids(image: np.ndarray, weight: np.ndarray, *, min_snr: float = 30.0, max_snr: float = 3000.0,
                   detect_sigma: float = 5.0, block_rows: int = 2048) -> StarCentroids:
    """Compact sources of a coadd with ``min_snr <= S/N <= max_snr`` (isolated, unflagged, covered), with windowed
    centroids.

    Parameters
    ----------
    image : 2-D float array
        The coadd, background-subtracted (counts).
    weight : 2-D float array
        Its inverse variance (0: no data).
    min_snr, max_snr : float
        The S/N range of the stars kept (the bright end avoids saturated cores smoothed by resampling).
    detect_sigma : float
        Detection threshold in units of the per-pixel noise.
    block_rows : int, keyword-only
        Rows detected at a time (bounded memory on full-size coadds; sources at block edges are dropped).
    """
    import sep

    ny, nx = image.shape
    xs, ys, snrs = [], [], []
    overlap = 64
    for y0 in range(0, ny, block_rows):
        a0, a1 = max(0, y0 - overlap), min(ny, y0 + block_rows + overlap)
        img = np.ascontiguousarray(image[a0:a1], dtype=np.float32)
        w = np.asarray(weight[a0:a1], dtype=np.float32)
        covered = w > 0
        if covered.sum() < 1000:
            continue
        err = np.where(covered, 1.0 / np.sqrt(np.where(covered, w, 1.0)), 0.0).astype(np.float32)
        mask = ~covered
        img = np.where(covered, img, 0.0).astype(np.float32)
        bkg = sep.Background(img, mask=mask, bw=128, bh=128)
        img = img - bkg.back()
        try:
            cat = sep.extract(img, detect_sigma, err=err, mask=mask, minarea=5, deblend_cont=0.005)
        except Exception:  # sep's pixel-stack limit on a crowded block: raise the threshold once
            sep.set_extract_pixstack(5_000_000)
            cat = sep.extract(img, detect_sigma, err=err, mask=mask, minarea=5, deblend_cont=0.005)
        if len(cat) == 0:
            continue
        flux, ferr, _ = sep.sum_circle(img, cat["x"], cat["y"], 5.0, err=err, mask=mask)
        snr = np.where(ferr > 0, flux / np.where(ferr > 0, ferr, 1.0), 0.0)
        ratio = cat["b"] / np.maximum(cat["a"], 1e-6)
        keep = ((cat["flag"] == 0) & (snr >= min_snr) & (snr <= max_snr) & (ratio > 0.6)
                & (cat["y"] + a0 >= y0) & (cat["y"] + a0 < min(ny, y0 + block_rows))
                & (cat["x"] > 10) & (cat["x"] < nx - 11))
        if not keep.any():
            continue
        sig = np.clip(2.0 / 2.355 * np.sqrt(cat["a"][keep] * cat["b"][keep]) * 2.0, 0.8, 10.0)
        wx, wy, wflag = sep.winpos(img, cat["x"][keep], cat["y"][keep], sig, mask=mask)
        good = (wflag == 0) & np.isfinite(wx) & np.isfinite(wy)
        xs.append(wx[good])
        ys.append(wy[good] + a0)
        snrs.append(snr[keep][good])
    if not xs:
        return StarCentroids(np.zeros(0), np.zeros(0), np.zeros(0))
    x, y, s = np.concatenate(xs), np.concatenate(ys), np.concatenate(snrs)
    # isolated: no other kept source within 8 px
    if x.size > 1:
        from scipy.spatial import cKDTree

        pairs = cKDTree(np.column_stack([x, y])).query_pairs(8.0, output_type="ndarray")
        crowded = np.zeros(x.size, bool)
        crowded[pairs.ravel()] = True
        x, y, s = x[~crowded], y[~crowded], s[~crowded]
    return StarCentroids(x, y, s)


@dataclass(frozen=True)
class FilterOffset:
    """The registration of one filter's coadd against the reference filter's, in grid pixels."""

    filter: str
    n_stars: int
    dx_px: float
    dy_px: float
    dx_err_px: float
    dy_err_px: float
    rms_px: float

    @property
    def offset_px(self) -> float:
        return math.hypot(self.dx_px, self.dy_px)


def registration_offsets(stars: dict[str, StarCentroids], *, reference: str, match_radius_px: float = 1.5,
                         min_stars: int = 5) -> list[FilterOffset]:
    """Median centroid offset of every filter's stars from the same stars in the ``reference`` filter.

    Parameters
    ----------
    stars : dict
        Filter name → :class:`StarCentroids` of its coadd (the same pixel grid for all).
    reference : str
        The filter the others are compared with (a key of ``stars``).
    match_radius_px : float
        Largest distance of a match (pixels).
    min_stars : int
        Fewer matched stars: the offsets are NaN (not measured).

    Returns
    -------
    list of FilterOffset
        One per filter other than the reference, in the order of ``stars``. ``dx`` = x(filter) − x(reference).
    """
    from scipy.spatial import cKDTree

    ref = stars[reference]
    out: list[FilterOffset] = []
    tree = cKDTree(np.column_stack([ref.x, ref.y])) if len(ref) else None
    for name, st in stars.items():
        if name == reference:
            continue
        if tree is None or len(st) == 0:
            out.append(FilterOffset(name, 0, math.nan, math.nan, math.nan, math.nan, math.nan))
            continue
        d, j = tree.query(np.column_stack([st.x, st.y]), distance_upper_bound=match_radius_px)
        ok = np.isfinite(d)
        dx = st.x[ok] - ref.x[j[ok]]
        dy = st.y[ok] - ref.y[j[ok]]
        # one clip at 4 robust sigma (blends, mismatches)
        for _ in range(2):
            if dx.size < min_stars:
                break
            mx, my = np.median(dx), np.median(dy)
            r = np.hypot(dx - mx, dy - my)
            s = float(np.median(r)) / 1.1774  # per-axis σ: the median radius of a 2-D Gaussian is σ √(2 ln 2)
            keep = r <= max(4.0 * s, 1e-3)
            dx, dy = dx[keep], dy[keep]
        n = int(dx.size)
        if n < min_stars:
            out.append(FilterOffset(name, n, math.nan, math.nan, math.nan, math.nan, math.nan))
            continue
        sx = 1.4826 * float(np.median(np.abs(dx - np.median(dx))))
        sy = 1.4826 * float(np.median(np.abs(dy - np.median(dy))))
        out.append(FilterOffset(name, n, float(np.median(dx)), float(np.median(dy)),
                                1.2533 * sx / math.sqrt(n), 1.2533 * sy / math.sqrt(n), math.hypot(sx, sy)))
    return out
