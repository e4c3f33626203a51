"""Depth and completeness of a coadd by injecting sources and finding them again with the catalogs' own detection
(pure algorithm: arrays and a PSF model in, figures out).

:func:`completeness` adds artificial sources of known magnitude to copies of the coadd — point sources (the coadd's
PSF model) and extended ones (exponential discs of ``hlr_arcsec`` convolved with it) — on a grid of positions away
from the coadd's own detections and from each other, in several passes so they never crowd the image; each pass is
detected as the catalogs detect (:func:`upad.catalog.measure.detect_catalog_sources`, the same configuration). An
injected source is recovered when a new detection lies within ``match_radius`` FWHM of it. The fraction recovered
per magnitude bin is fitted with a logistic curve; the 50 % and 90 % completeness magnitudes are read from it.

:func:`aperture_depth` is the 5σ depth in a circular aperture from the scatter of blank apertures (robust), which
includes the noise correlation that the weight map alone does not state.

The injected sources carry no Poisson noise of their own (a coadd has no gain); near the detection limit the
background noise dominates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CompletenessCurve", "completeness", "aperture_depth", "logistic_fit", "extended_stamp"]


@dataclass
class CompletenessCurve:
    """Completeness of one kind of source (``point`` or ``extended``)."""

    kind: str
    mags: np.ndarray        # bin centres (AB)
    injected: np.ndarray    # sources injected per bin
    recovered: np.ndarray   # of which recovered
    m50: float              # 50 % completeness magnitude (logistic fit), nan when not bracketed
    m90: float              # 90 % completeness magnitude
    width: float            # logistic width (mag)
    plateau: float          # completeness of bright sources (the fit's maximum)
    meta: dict = field(default_factory=dict)

    @property
    def fraction(self) -> np.ndarray:
        return np.where(self.injected > 0, self.recovered / np.maximum(self.injected, 1), np.nan)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "m50": _round(self.m50), "m90": _round(self.m90), "width": _round(self.width),
                "plateau": _round(self.plateau), "mags": [round(float(m), 3) for m in self.mags],
                "injected": [int(v) for v in self.injected], "recovered": [int(v) for v in self.recovered],
                **self.meta}


def _round(v: float, nd: int = 4) -> float | None:
    return round(float(v), nd) if np.isfinite(v) else None


def logistic_fit(mags: np.ndarray, injected: np.ndarray, recovered: np.ndarray) -> tuple[float, float, float]:
    """Maximum-likelihood (binomial) fit of ``f(m) = p / (1 + exp((m − m50) / w))``; returns ``(m50, w, p)``."""
    from scipy.optimize import minimize

    m = np.asarray(mags, float)
    n = np.asarray(injected, float)
    k = np.asarray(recovered, float)
    use = n > 0
    m, n, k = m[use], n[use], k[use]
    if len(m) < 3:
        return math.nan, math.nan, math.nan
    frac = k / n
    m0 = float(np.interp(0.5, frac[::-1], m[::-1])) if frac.max() >= 0.5 >= frac.min() else float(np.median(m))

    def nll(p):
        m50, lw, lp = p
        w = math.exp(lw)
        pmax = 1.0 / (1.0 + math.exp(-lp))
        f = np.clip(pmax / (1.0 + np.exp(np.clip((m - m50) / w, -50, 50))), 1e-9, 1 - 1e-9)
        return -float(np.sum(k * np.log(f) + (n - k) * np.log(1 - f)))

    res = minimize(nll, x0=[m0, math.log(0.2), 4.0], method="Nelder-Mead",
                   options={"xatol": 1e-4, "fatol": 1e-6, "maxiter": 4000})
    m50, lw, lp = res.x
    return float(m50), float(math.exp(lw)), float(1.0 / (1.0 + math.exp(-lp)))


def _level(m50: float, w: float, p: float, level: float) -> float:
    """Magnitude where the fitted completeness is ``level`` (nan when the plateau is below it)."""
    if not (np.isfinite(m50) and np.isfinite(w)) or p <= level:
        return math.nan
    return m50 + w * math.log(p / level - 1.0)


def extended_stamp(psf_stamp: np.ndarray, hlr_px: float, *, q: float = 1.0, pa_deg: float = 0.0,
                   oversampling: int = 5) -> np.ndarray:
    """Unit-flux exponential disc of half-light radius ``hlr_px`` (axis ratio ``q``, position angle ``pa_deg``)
    convolved with ``psf_stamp`` (odd, centred), on the stamp's grid."""
    from scipy.signal import fftconvolve

    n = psf_stamp.shape[0]
    o = int(oversampling)
    c = (n * o - 1) / 2.0
    yy, xx = np.mgrid[: n * o, : n * o]
    dx, dy = (xx - c) / o, (yy - c) / o
    t = math.radians(pa_deg)
    u = dx * math.cos(t) + dy * math.sin(t)
    v = -dx * math.sin(t) + dy * math.cos(t)
    r = np.hypot(u * math.sqrt(q), v / math.sqrt(q))
    scale = hlr_px / 1.6783  # exponential: half-light radius = 1.6783 scale lengths
    disc = np.exp(-r / scale).reshape(n, o, n, o).sum(axis=(1, 3))
    disc /= disc.sum()
    out = fftconvolve(disc, psf_stamp, mode="same")
    out = np.clip(out, 0.0, None)
    return out / out.sum()


def _positions(shape: tuple[int, int], occupied: np.ndarray, valid: np.ndarray, *, spacing: int, margin: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Free grid positions (jittered) with data, away from the coadd's own sources."""
    ny, nx = shape
    ys = np.arange(margin, ny - margin, spacing)
    xs = np.arange(margin, nx - margin, spacing)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    gx = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    gy = gy.ravel() + rng.uniform(-0.5, 0.5, gy.size)
    ix, iy = np.round(gx).astype(int), np.round(gy).astype(int)
    ok = valid[iy, ix] & ~occupied[iy, ix]
    return gx[ok], gy[ok]


def _add_stamp(image: np.ndarray, stamp: np.ndarray, x: float, y: float, flux: float) -> None:
    """Add ``flux`` × ``stamp`` centred at ``(x, y)``, shifted to the sub-pixel position by Fourier shift."""
    from scipy.ndimage import shift as nd_shift

    n = stamp.shape[0]
    h = n // 2
    ix, iy = int(round(x)), int(round(y))
    s = nd_shift(stamp, (y - iy, x - ix), order=3, mode="constant")
    y0, x0 = iy - h, ix - h
    ny, nx = image.shape
    ya, xa = max(0, y0), max(0, x0)
    yb, xb = min(ny, y0 + n), min(nx, x0 + n)
    if ya >= yb or xa >= xb:
        return
    image[ya:yb, xa:xb] += (flux * s[ya - y0:yb - y0, xa - x0:xb - x0]).astype(image.dtype)


def completeness(image: np.ndarray, weight: np.ndarray, mask: np.ndarray | None, psf: Any, *, magzp: float,
                 pixel_scale: float, mags: np.ndarray, per_bin: int = 40, kinds: tuple[str, ...] = ("point",
                 "extended"), hlr_arcsec: float = 1.0, config: Any = None, match_radius: float = 1.0,
                 seed: int = 0, max_passes: int = 40) -> dict[str, CompletenessCurve]:
    """Completeness of the catalogs' detection on a coadd, by injection and recovery.

    Parameters
    ----------
    image, weight : ndarray
        The coadd (counts at ``magzp``) and its inverse variance.
    mask : ndarray, optional
        Its bit mask (``NODATA`` pixels get no source).
    psf : PsfModel
        The coadd's PSF model.
    magzp : float
        AB magnitude of one count.
    pixel_scale : float
        arcsec per pixel.
    mags : ndarray
        Magnitude bin centres to inject (AB).
    per_bin : int
        Sources per magnitude bin and kind.
    kinds : tuple of str
        ``point`` and/or ``extended``.
    hlr_arcsec : float
        Half-light radius of the extended sources (exponential discs, axis ratio and angle drawn).
    config : CatalogConfig, optional
        The catalogs' configuration (its detection and background).
    match_radius : float
        A detection within this many FWHM of an injected source recovers it.
    seed : int
        Seed of the positions and shapes.
    max_passes : int
        Largest number of injection passes (each a full detection of the coadd).

    Returns
    -------
    dict of str to CompletenessCurve
    """
    from upad.catalog.homogenise import psf_stamp, stamp_size
    from upad.catalog.measure import CatalogConfig, _prepare, detect_catalog_sources
    from upad.reduce.errors import ReductionError

    cfg = config if config is not None else CatalogConfig()
    rng = np.random.default_rng(seed)
    img0 = np.ascontiguousarray(image, np.float32)
    from upad.catalog.measure import BandImage

    band = BandImage("inject", img0, weight, magzp, psf, mask=mask)
    sub, var, valid, _, m = _prepare(band, cfg, pixel_scale)
    det_var = np.where(valid, var, np.float32(1e30)).astype(np.float32)
    base = detect_catalog_sources(sub, det_var, m, pixel_scale=pixel_scale, config=cfg)
    fwhm = float(psf.fwhm_at((psf.shape[1] - 1) / 2.0, (psf.shape[0] - 1) / 2.0)[0])
    size = stamp_size(max(fwhm, 2.0 * hlr_arcsec / pixel_scale), factor=6.0)
    pstamp = psf_stamp(psf, size)
    occupied = base.seg > 0
    # grow the footprints by a PSF so injected sources do not blend with the coadd's own
    from scipy.ndimage import binary_dilation

    occupied = binary_dilation(occupied, iterations=max(2, int(math.ceil(2 * fwhm))))
    spacing = int(max(size, math.ceil(8 * fwhm)))
    margin = size
    mags = np.asarray(mags, float)
    out: dict[str, CompletenessCurve] = {}
    r_match = match_radius * fwhm
    for kind in kinds:
        todo = [(j, mags[j]) for j in range(len(mags)) for _ in range(per_bin)]
        rng.shuffle(todo)
        injected = np.zeros(len(mags), int)
        recovered = np.zeros(len(mags), int)
        passes = 0
        while todo and passes < max_passes:
            gx, gy = _positions(sub.shape, occupied, valid, spacing=spacing, margin=margin, rng=rng)
            if len(gx) == 0:
                break
            take = min(len(gx), len(todo))
            pick = rng.choice(len(gx), take, replace=False)
            batch, todo = todo[:take], todo[take:]
            work = img0.copy()
            for (j, mag), k in zip(batch, pick):
                stamp = pstamp if kind == "point" else extended_stamp(
                    pstamp, hlr_arcsec / pixel_scale, q=float(rng.uniform(0.4, 1.0)),
                    pa_deg=float(rng.uniform(0, 180)))
                _add_stamp(work, stamp, gx[k], gy[k], 10.0 ** (-0.4 * (mag - magzp)))
            band = BandImage("inject", work, weight, magzp, psf, mask=mask)
            s2, v2, ok2, _, m2 = _prepare(band, cfg, pixel_scale)
            dv2 = np.where(ok2, v2, np.float32(1e30)).astype(np.float32)
            try:
                found = detect_catalog_sources(s2, dv2, m2, pixel_scale=pixel_scale, config=cfg)
                fx, fy = found.x, found.y
            except ReductionError as exc:  # nothing detected at all: nothing recovered
                if exc.reason != "no_sources":
                    raise
                fx = fy = np.empty(0)
            if len(fx):
                from scipy.spatial import cKDTree

                tree = cKDTree(np.column_stack([fx, fy]))
                d, _ = tree.query(np.column_stack([gx[pick], gy[pick]]))
                hit = d < r_match
            else:
                hit = np.zeros(len(pick), bool)
            for (j, _), h in zip(batch, hit):
                injected[j] += 1
                recovered[j] += int(h)
            passes += 1
        m50, w, p = logistic_fit(mags, injected, recovered)
        out[kind] = CompletenessCurve(kind, mags.copy(), injected, recovered, m50, _level(m50, w, p, 0.9), w, p,
                                      meta={"passes": passes, "hlr_arcsec": hlr_arcsec if kind == "extended" else 0.0,
                                            "left": len(todo)})
    return out


def aperture_depth(image: np.ndarray, weight: np.ndarray, mask: np.ndarray | None, *, magzp: float,
                   pixel_scale: float, diameter_arcsec: float = 3.0, nsigma: float = 5.0, n_apertures: int = 4000,
                   seed: int = 0, config: Any = None, exclude: np.ndarray | None = None,
                   exclude_snr: float = 5.0) -> dict[str, float]:
    """``nsigma`` depth (AB) in a circular aperture from blank apertures: the robust scatter of aperture sums placed
    where the coadd has data and away from the sources (``exclude``: more pixels to avoid).

    The sources avoided are the catalogs' detections with S/N > ``exclude_snr`` in AUTO (footprints grown by 3
    pixels): avoiding every detection would avoid the noise's own positive peaks (a 1.5σ threshold finds many) and
    understate the noise by ~5 %. Sources below that stay in, as on the sky."""
    import sep

    from upad.catalog.measure import BandImage, CatalogConfig, _prepare, detect_catalog_sources
    from upad.reduce.errors import ReductionError

    cfg = config if config is not None else CatalogConfig()
    band = BandImage("depth", image, weight, magzp, None, mask=mask)
    sub, var, valid, _, m = _prepare(band, cfg, pixel_scale)
    r = diameter_arcsec / pixel_scale / 2.0
    rng = np.random.default_rng(seed)
    ny, nx = sub.shape
    bad = ~valid if exclude is None else (~valid | exclude)
    try:
        src = detect_catalog_sources(sub, np.where(valid, var, np.float32(1e30)).astype(np.float32), m,
                                     pixel_scale=pixel_scale, config=cfg)
        from scipy.ndimage import binary_dilation as _grow

        t = src.table
        snr = np.asarray(t["FLUX_AUTO"], float) / np.maximum(np.asarray(t["FLUXERR_AUTO"], float), 1e-30)
        real = np.concatenate([[False], snr > exclude_snr])
        bad = bad | _grow(real[src.seg], iterations=3)
    except ReductionError as exc:
        if exc.reason != "no_sources":
            raise
    x = rng.uniform(r + 2, nx - r - 2, n_apertures * 4)
    y = rng.uniform(r + 2, ny - r - 2, n_apertures * 4)
    from scipy.ndimage import binary_dilation

    avoid = binary_dilation(bad, iterations=int(math.ceil(r)) + 1)
    keep = ~avoid[np.round(y).astype(int), np.round(x).astype(int)]
    x, y = x[keep][:n_apertures], y[keep][:n_apertures]
    if len(x) < 50:
        return {"depth": math.nan, "sigma": math.nan, "n": int(len(x))}
    f, _, _ = sep.sum_circle(sub, x, y, r, subpix=5)
    sig = 1.4826 * float(np.median(np.abs(f - np.median(f))))
    return {"depth": float(magzp - 2.5 * math.log10(nsigma * sig)) if sig > 0 else math.nan, "sigma": sig,
            "n": int(len(x))}
