"""Source detection and photometry: the initial catalog, with SExtractor's column names.

Detection is SExtractor's (through ``sep``, its library): the background-subtracted image is filtered with a
kernel (default: SExtractor's ``default.conv`` 3x3 pyramid), pixels above ``thresh`` times the per-pixel noise are
grouped, deblended (``deblend_nthresh`` levels, ``deblend_cont`` contrast) and cleaned. The image is cut into
horizontal strips (overlapping by ``strip_overlap_px``), one per thread; ``sep`` 1.4 holds the GIL while it
extracts (sep-developers/sep#172), so the strips bound its memory and overlap only our per-strip work (footprint
flags) for now, and will run fully in parallel once sep releases the GIL. An object belongs to the strip that
contains its centroid, so the result does not depend on the number of strips except for objects larger than the
overlap.

Measurements (positions 1-based as in SExtractor; fluxes in the image unit, e-):

* isophotal: ``X_IMAGE, Y_IMAGE`` (barycentre), ``A_IMAGE, B_IMAGE, THETA_IMAGE`` (deg), ``ELONGATION``,
  ``ISOAREA_IMAGE``, ``FLUX_ISO``, ``FLUX_MAX``;
* ``FLUX_AUTO`` in the Kron ellipse: ``KRON_RADIUS`` = ``kron_factor`` x the first-moment radius, at least
  ``kron_min_radius``, in units of ``A_IMAGE`` and ``B_IMAGE`` (SExtractor's ``PHOT_AUTOPARAMS 2.5, 3.5``);
* ``FLUX_APER`` in circular apertures of ``aper_diameters_arcsec`` (vector column);
* ``FLUX_RADIUS`` (half-light radius), windowed positions ``XWIN_IMAGE, YWIN_IMAGE`` (Gaussian window of
  ``sigma = 2 FLUX_RADIUS / 2.35``, as SExtractor's, but at least ``win_sigma_min_px``: a window narrower than a
  pixel snaps an undersampled star to the pixel grid — at FWHM = 1.1 px SExtractor's window errs by 0.2 px rms
  with the star's sub-pixel phase, a 1.2 px one by 0.014 px; the iteration's step ``1 + sigma_psf^2 / sigma^2``
  times the windowed offset, SExtractor's 2 for a matched window, converges for wider ones too);
* adaptive (Gaussian-weighted) second moments: ``FWHM_IMAGE = 2.355 sqrt((Ixx + Iyy) / 2)`` and ``ELLIPTICITY =
  1 - B/A`` from them (robust for faint and undersampled sources, unlike isophotal moments);
* ``FLAGS`` as SExtractor's (1: neighbours or masked pixels in the Kron aperture, 2: deblended, 4: saturated, 8:
  truncated by the image border, 16: aperture data incomplete); ``IMAFLAGS_ISO`` the OR of the mask bits over the
  object's footprint and ``NIMAFLAGS_ISO`` the number of flagged footprint pixels.

Errors include the noise map (background-only variance) and the Poisson noise of the source (``gain = 1`` e-/e-).

**Neighbours masked** (``mask_neighbours``, default on; SExtractor's ``MASK_TYPE CORRECT``): in ``FLUX_AUTO``,
``FLUX_APER`` and the Kron radius, the pixels of the object's aperture that belong to another object's
segmentation footprint are replaced by the pixel symmetric about the object's centre (or left out when that one
belongs to another object too; the Kron radius simply leaves them out). This is done per strip, with the strip's own
segmentation map, so no full-frame segmentation map is ever held; an aperture that reaches beyond its strip's
overlap (an object larger than ``strip_overlap_px``) is measured on the full image without the correction.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from upad import maskbits as mb
from upad.config import StepConfig, param
from upad.reduce._jit import njit, prange
from upad.reduce._moments import moments
from upad.reduce.errors import ReductionError

__all__ = ["SEXTRACTOR_FLAGS", "DetectConfig", "Detections", "detect_sources", "measure"]

#: SExtractor FLAGS bits.
SEXTRACTOR_FLAGS = {1: "neighbours or bad pixels bias MAG_AUTO", 2: "deblended", 4: "saturated",
                    8: "truncated at the image border", 16: "aperture data incomplete or corrupted"}

#: SExtractor's default.conv kernel.
DEFAULT_KERNEL = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32)


@dataclass(frozen=True)
class DetectConfig(StepConfig):
    """Parameters of detection and photometry."""

    thresh: float = param(1.5, doc="detection threshold per pixel, in units of the noise (SExtractor "
                                   "DETECT_THRESH)", bounds=(0.1, 1000.0))
    minarea: int = param(5, doc="minimum number of pixels above the threshold (DETECT_MINAREA)", bounds=(1, 10000),
                         unit="pixel")
    filter: str = param("default", doc="detection filter: 'default' (SExtractor's 3x3 pyramid), 'gauss' (a "
                                       "Gaussian of filter_fwhm_px) or 'none'", choices=("default", "gauss", "none"))
    filter_fwhm_px: float = param(2.0, doc="FWHM of the Gaussian detection filter", bounds=(0.5, 20.0),
                                  unit="pixel")
    deblend_nthresh: int = param(32, doc="deblending sub-thresholds (DEBLEND_NTHRESH)", bounds=(1, 128))
    deblend_cont: float = param(0.005, doc="minimum contrast of a deblended component (DEBLEND_MINCONT)",
                                bounds=(0.0, 1.0))
    clean_param: float = param(1.0, doc="cleaning efficiency (CLEAN_PARAM); 0 disables cleaning",
                               bounds=(0.0, 10.0))
    mask_bits: int = param(mb.SATELLITE | mb.NODATA, doc="pixels with these mask bits are not detected",
                           bounds=(0, 32767))
    aper_diameters_arcsec: tuple[float, ...] = param((1.0, 2.0, 3.0, 4.0, 6.0, 8.0),
                                                     doc="diameters of the FLUX_APER apertures (the largest is the "
                                                         "aperture correction's reference)", unit="arcsec")
    kron_factor: float = param(2.5, doc="Kron factor of FLUX_AUTO (PHOT_AUTOPARAMS)", bounds=(0.5, 10.0))
    kron_min_radius: float = param(3.5, doc="minimum Kron radius of FLUX_AUTO (PHOT_AUTOPARAMS)",
                                   bounds=(0.0, 20.0), unit="pixel")
    strip_overlap_px: int = param(128, doc="overlap of the strips extracted in parallel", bounds=(16, 4096),
                                  unit="pixel", critical=False)
    threads: int = param(0, doc="threads for the extraction (0: one per CPU core)", bounds=(0, 256),
                         critical=False)
    max_sources: int = param(2_000_000, doc="refuse frames with more detections than this", bounds=(1, None))
    mask_neighbours: bool = param(True, doc="FLUX_AUTO, FLUX_APER and the Kron radius with the pixels of "
                                            "overlapping neighbours replaced by the pixel symmetric about the "
                                            "object's centre (SExtractor's MASK_TYPE CORRECT)")
    win_sigma_min_px: float = param(1.2, doc="smallest Gaussian window of XWIN_IMAGE/YWIN_IMAGE (SExtractor's is "
                                             "2 FLUX_RADIUS / 2.35, which for undersampled stars is narrower than "
                                             "a pixel and biases the centroid towards the pixel grid)",
                                    bounds=(0.0, 20.0), unit="pixel")

    def validate(self) -> None:
        super().validate()
        d = self.aper_diameters_arcsec
        self.require(len(d) > 0 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                        for v in d), "aper_diameters_arcsec",
                     f"= {list(d)} is not a non-empty list of positive diameters",
                     hint="e.g. aper_diameters_arcsec = [1.0, 2.0, 3.0, 4.0, 6.0, 8.0]")


@dataclass
class Detections:
    """The catalog of :func:`detect_sources` (astropy Table with SExtractor column names) and summary values."""

    catalog: object
    n_strips: int
    n_deblended: int
    #: the segmentation map (int32, 0: sky, k: the object of NUMBER k), when :func:`detect_sources` was asked for it
    segmentation: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.catalog)


def _kernel(cfg: DetectConfig) -> np.ndarray | None:
    if cfg.filter == "none":
        return None
    if cfg.filter == "default":
        return DEFAULT_KERNEL
    s = cfg.filter_fwhm_px / 2.3548
    r = max(1, int(math.ceil(2.5 * s)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return np.exp(-(xx * xx + yy * yy) / (2 * s * s)).astype(np.float32)


@njit(parallel=True, nogil=True, cache=True)
def _footprint_flags(seg, mask, y0, nobj):  # pragma: no cover - compiled
    """OR of mask bits and number of flagged pixels over each object's footprint (strip seg map)."""
    ny, nx = seg.shape
    nchunk = 16
    acc = np.zeros((nchunk, nobj + 1), np.int64)
    cnt = np.zeros((nchunk, nobj + 1), np.int64)
    rows_per = (ny + nchunk - 1) // nchunk
    for c in prange(nchunk):
        for j in range(c * rows_per, min(ny, (c + 1) * rows_per)):
            for i in range(nx):
                s = seg[j, i]
                if s > 0:
                    m = mask[y0 + j, i]
                    if m != 0:
                        acc[c, s] |= m
                        cnt[c, s] += 1
    flags = np.zeros(nobj + 1, np.int64)
    n = np.zeros(nobj + 1, np.int64)
    for c in range(nchunk):
        for k in range(nobj + 1):
            flags[k] |= acc[c, k]
            n[k] += cnt[c, k]
    return flags[1:], n[1:]


def _shape_params(objs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``a, b, theta`` of extracted objects, made safe for the apertures (as :func:`measure` uses them)."""
    a, b, theta = objs["a"].astype(np.float64), objs["b"].astype(np.float64), objs["theta"].astype(np.float64)
    a = np.maximum(np.nan_to_num(a, nan=0.3), 0.3)
    b = np.minimum(np.maximum(np.nan_to_num(b, nan=0.3), 0.3), a)
    theta = np.clip(np.nan_to_num(theta, nan=0.0), -np.pi / 2, np.pi / 2)
    return a, b, theta


@njit(parallel=True, nogil=True, cache=True)
def _phot_corrected(img, var, seg, xs, ys, ids, radii, cxx, cyy, cxy, kr, subpix, edge_lo, edge_hi,
                    trunc_flag):  # pragma: no cover - compiled
    """Circular apertures (``subpix`` x ``subpix`` sampling of the boundary pixels, as sep) and the Kron ellipse
    (pixel centres inside, as sep with ``subpix=1``) of every object ``k`` (segmentation id ``ids[k]``), with the
    pixels of other objects replaced by the pixel symmetric about the centre, or zero when that one belongs to
    another object too. Returns the aperture sums and variances, the AUTO sum and variance, their flags
    (``trunc_flag`` when cut by the image border) and whether the box leaves the array at an edge that is not the
    image's (``edge_lo``/``edge_hi``: the array's first/last row is the image's)."""
    ny, nx = img.shape
    n = len(xs)
    nap = len(radii)
    fa = np.zeros((n, nap))
    va = np.zeros((n, nap))
    fla = np.zeros(n, np.int64)
    fe = np.zeros(n)
    ve = np.zeros(n)
    fle = np.zeros(n, np.int64)
    cut = np.zeros(n, np.bool_)
    rmax = 0.0
    for a in range(nap):
        rmax = max(rmax, radii[a])
    sc = 1.0 / subpix
    for k in prange(n):
        xc = xs[k]
        yc = ys[k]
        own = ids[k]
        det = cxx[k] * cyy[k] - 0.25 * cxy[k] * cxy[k]
        ex = kr[k] * math.sqrt(cyy[k] / det) if det > 0 else 0.0
        ey = kr[k] * math.sqrt(cxx[k] / det) if det > 0 else 0.0
        hx = max(rmax, ex) + 1.0
        hy = max(rmax, ey) + 1.0
        i0 = int(math.floor(xc - hx))
        i1 = int(math.ceil(xc + hx))
        j0 = int(math.floor(yc - hy))
        j1 = int(math.ceil(yc + hy))
        if (j0 < 0 and not edge_lo) or (j1 > ny - 1 and not edge_hi):
            cut[k] = True
            continue
        for a in range(nap):
            r = radii[a]
            if xc - r < -0.5 or xc + r > nx - 0.5 or yc - r < -0.5 or yc + r > ny - 0.5:
                fla[k] |= trunc_flag
        if xc - ex < -0.5 or xc + ex > nx - 0.5 or yc - ey < -0.5 or yc + ey > ny - 0.5:
            fle[k] |= trunc_flag
        kr2 = kr[k] * kr[k]
        for j in range(max(0, j0), min(ny - 1, j1) + 1):
            dy = j - yc
            for i in range(max(0, i0), min(nx - 1, i1) + 1):
                dx = i - xc
                val = img[j, i]
                vv = var[j, i]
                s = seg[j, i]
                if s != 0 and s != own:
                    si = int(math.floor(2.0 * xc - i + 0.5))
                    sj = int(math.floor(2.0 * yc - j + 0.5))
                    if 0 <= si < nx and 0 <= sj < ny and (seg[sj, si] == 0 or seg[sj, si] == own):
                        val = img[sj, si]
                        vv = var[sj, si]
                    else:
                        val = 0.0
                        vv = 0.0
                if cxx[k] * dx * dx + cyy[k] * dy * dy + cxy[k] * dx * dy < kr2:
                    fe[k] += val
                    ve[k] += vv
                d2 = dx * dx + dy * dy
                for a in range(nap):
                    r = radii[a]
                    rout = r + 0.7072
                    if d2 >= rout * rout:
                        continue
                    rin = r - 0.7072
                    if rin > 0 and d2 < rin * rin:
                        w = 1.0
                    else:
                        cnt = 0
                        r2 = r * r
                        for sy in range(subpix):
                            ddy = dy - 0.5 + sc * (sy + 0.5)
                            for sx in range(subpix):
                                ddx = dx - 0.5 + sc * (sx + 0.5)
                                if ddx * ddx + ddy * ddy < r2:
                                    cnt += 1
                        w = cnt * sc * sc
                    fa[k, a] += w * val
                    va[k, a] += w * vv
    return fa, va, fla, fe, ve, fle, cut


def _corrected_photometry(sub, v, seg, objs, edge_lo, edge_hi, r_ap, cfg):
    """Neighbour-masked FLUX_AUTO and FLUX_APER of strip objects (``objs`` in the strip's coordinates; their
    segmentation ids are their positions in the strip's full extraction + 1, given as ``objs['_id']``)."""
    import sep

    x, y = objs["x"].astype(np.float64), objs["y"].astype(np.float64)
    a, b, theta = _shape_params(objs)
    ids = objs["_id"].astype(np.int32)
    kr, kflag = sep.kron_radius(sub, x, y, a, b, theta, 6.0, segmap=seg, seg_id=ids)
    kr = np.where(np.isfinite(kr) & (kr > 0), kr, 0.0)
    kfac = np.maximum(cfg.kron_factor * kr, cfg.kron_min_radius)
    cxx, cyy, cxy = sep.ellipse_coeffs(a, b, theta)
    fa, va, fla, fe, ve, fle, cut = _phot_corrected(
        np.ascontiguousarray(sub, np.float64) if sub.dtype != np.float32 else sub, v, seg, x, y, ids,
        np.asarray(r_ap, np.float64), np.asarray(cxx, np.float64), np.asarray(cyy, np.float64),
        np.asarray(cxy, np.float64), kfac, 5, bool(edge_lo), bool(edge_hi), int(sep.APER_TRUNC))
    # errors as sep's: background variance over the aperture plus the source's Poisson noise (gain 1)
    ea = np.sqrt(va + np.maximum(fa, 0.0))
    ee = np.sqrt(ve + np.maximum(fe, 0.0))
    return {"kron": kfac, "flux_auto": fe, "err_auto": ee, "flag_auto": fle | kflag, "flux_aper": fa,
            "err_aper": ea, "flag_aper": fla, "cut": cut}


def _extract_strip(image, var, detmask, mask, y0, y1, core0, core1, kernel, cfg, r_ap=None, keep_seg=False):
    import sep

    sub = image[y0:y1]
    v = var[y0:y1]
    dm = detmask[y0:y1] if detmask is not None else None
    # filter_type='conv' as SExtractor (sep's 'matched' filtering with a noise array is ~100x slower)
    objs, seg = sep.extract(sub, cfg.thresh, var=v, mask=dm, minarea=cfg.minarea, filter_kernel=kernel,
                            filter_type="conv", deblend_nthresh=cfg.deblend_nthresh, deblend_cont=cfg.deblend_cont,
                            clean=cfg.clean_param > 0, clean_param=cfg.clean_param, segmentation_map=True)
    if len(objs) == 0:
        return objs, np.empty(0, np.int64), np.empty(0, np.int64), y0, None, (seg if keep_seg else None)
    imaflags, nimaflags = _footprint_flags(seg, mask, y0, len(objs))
    yc = objs["y"] + y0
    own = (yc >= core0 - 0.5) & (yc < core1 - 0.5)
    phot = None
    if cfg.mask_neighbours and r_ap is not None and own.any():
        from numpy.lib import recfunctions as rfn

        mine = rfn.append_fields(objs[own], "_id", np.flatnonzero(own) + 1, usemask=False)
        phot = _corrected_photometry(sub, v, seg, mine, y0 == 0, y1 == image.shape[0], r_ap, cfg)
    if not keep_seg:
        del seg
        seg = None
    objs = objs[own]
    objs["y"] += y0
    for k in ("ymin", "ymax", "ycpeak", "ypeak"):
        objs[k] += y0
    return objs, imaflags[own], nimaflags[own], y0, phot, seg


@njit(parallel=True, nogil=True, cache=True)
def _winpos(img, xs, ys, sig, gain, maxit):  # pragma: no cover - compiled
    """SExtractor's windowed centroid: x += gain sum(w I (x_i - x)) / sum(w I), w = exp(-r^2 / (2 sig^2)), r < 4 sig
    (SExtractor's gain is 2: the exact step for a Gaussian star as wide as the window; ``1 + sig_psf^2 / sig^2`` in
    general)."""
    ny, nx = img.shape
    n = len(xs)
    ox = np.empty(n)
    oy = np.empty(n)
    for k in prange(n):
        cx = xs[k]
        cy = ys[k]
        s2 = sig[k] * sig[k]
        rmax2 = 16.0 * s2
        r = int(4.0 * sig[k]) + 2
        for _it in range(maxit):
            ic = int(cx + 0.5)
            jc = int(cy + 0.5)
            sw = 0.0
            sx = 0.0
            sy = 0.0
            for j in range(max(0, jc - r), min(ny, jc + r + 1)):
                dy = j - cy
                for i in range(max(0, ic - r), min(nx, ic + r + 1)):
                    dx = i - cx
                    d2 = dx * dx + dy * dy
                    if d2 > rmax2:
                        continue
                    w = math.exp(-0.5 * d2 / s2) * img[j, i]
                    sw += w
                    sx += w * dx
                    sy += w * dy
            if sw <= 0:
                break
            mx = gain[k] * sx / sw
            my = gain[k] * sy / sw
            if abs(mx) > 2 or abs(my) > 2:
                break
            cx += mx
            cy += my
            if mx * mx + my * my < 4e-8:
                break
        ox[k] = cx
        oy[k] = cy
    return ox, oy


@njit(parallel=True, nogil=True, cache=True)
def _flux_radius(img, xs, ys, rmax, norm):  # pragma: no cover - compiled
    """Half-light radius: where the curve of growth (0.1-pixel bins of pixel-centre distance, linearly
    interpolated) reaches half of ``norm``."""
    ny, nx = img.shape
    n = len(xs)
    out = np.full(n, np.nan)
    for k in prange(n):
        rm = rmax[k]
        nb = int(rm / 0.1) + 2
        prof = np.zeros(nb)
        r = int(rm) + 1
        ic = int(xs[k] + 0.5)
        jc = int(ys[k] + 0.5)
        for j in range(max(0, jc - r), min(ny, jc + r + 1)):
            dy = j - ys[k]
            for i in range(max(0, ic - r), min(nx, ic + r + 1)):
                dx = i - xs[k]
                d = math.sqrt(dx * dx + dy * dy)
                if d < rm:
                    prof[int(d / 0.1)] += img[j, i]
        half = 0.5 * norm[k]
        if half <= 0:
            continue
        c = 0.0
        for b in range(nb):
            c2 = c + prof[b]
            if c2 >= half:
                frac = (half - c) / prof[b] if prof[b] > 0 else 0.0
                out[k] = (b + frac) * 0.1
                break
            c = c2
    return out


def detect_sources(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, *, pixel_scale: float,
                   config: DetectConfig = DetectConfig(), segmentation: bool = False) -> Detections:
    """Detect and measure the sources of a background-subtracted image.

    Parameters
    ----------
    image : ndarray
        Background-subtracted calibrated image (e-, float32, native byte order, C-contiguous).
    variance : ndarray
        Background-only variance (e-^2, float32); its square root is the detection noise.
    mask : ndarray
        Bit-coded mask (int16): ``config.mask_bits`` pixels are not detected; all bits feed ``IMAFLAGS_ISO``
        and ``FLAGS``.
    pixel_scale : float
        arcsec per pixel (for the aperture diameters).
    config : DetectConfig
    segmentation : bool
        Also return the segmentation map (ids = ``NUMBER``), for measuring other images in the detection's
        footprints (dual mode); the image is then extracted in one piece (one thread) and the map takes 4 bytes
        per pixel.

    Returns
    -------
    Detections

    Raises
    ------
    ReductionError
        ``no_sources`` when nothing is detected, ``no_data`` for more than ``config.max_sources`` detections.
    """
    import sep

    if image.dtype != np.float32 or image.dtype.byteorder not in ("=", "|") or not image.flags.c_contiguous:
        raise ValueError("detect_sources needs a C-contiguous native float32 image (sep's requirement)")
    from upad.reduce._maskops import flag_bits

    ny, nx = image.shape
    var = np.asarray(variance, np.float32)
    detmask = flag_bits(mask, int(config.mask_bits)) if config.mask_bits else None
    threads = config.threads or (os.cpu_count() or 1)
    sep.set_extract_pixstack(max(300_000, int(ny * nx // 50)))
    sep.set_sub_object_limit(4096)
    kernel = _kernel(config)
    nstrip = 1 if segmentation else max(1, min(threads, ny // (4 * config.strip_overlap_px)))
    edges = np.linspace(0, ny, nstrip + 1).astype(int)
    ov = config.strip_overlap_px
    jobs = [(max(0, edges[i] - ov), min(ny, edges[i + 1] + ov), edges[i], edges[i + 1]) for i in range(nstrip)]
    r_ap = np.asarray(config.aper_diameters_arcsec, np.float64) / pixel_scale / 2.0
    if nstrip == 1:
        parts = [_extract_strip(image, var, detmask, mask, *jobs[0], kernel, config, r_ap, keep_seg=segmentation)]
    else:
        with ThreadPoolExecutor(nstrip) as ex:
            parts = list(ex.map(lambda j: _extract_strip(image, var, detmask, mask, *j, kernel, config, r_ap),
                                jobs))
    objs = np.concatenate([p[0] for p in parts])
    imaflags = np.concatenate([p[1] for p in parts]).astype(np.int32)
    nimaflags = np.concatenate([p[2] for p in parts]).astype(np.int32)
    phot = None
    if config.mask_neighbours and len(objs):
        keys = ("kron", "flux_auto", "err_auto", "flag_auto", "flux_aper", "err_aper", "flag_aper", "cut")
        phot = {k: np.concatenate([p[4][k] for p in parts if p[4] is not None]) for k in keys}
    if len(objs) == 0:
        raise ReductionError("no_sources", "no source above the detection threshold", stage="detect")
    if len(objs) > config.max_sources:
        raise ReductionError("no_data", f"{len(objs)} detections (more than {config.max_sources}): the frame is "
                                        f"probably not a sky image", stage="detect")
    order = np.lexsort((objs["x"], objs["y"]))
    objs, imaflags, nimaflags = objs[order], imaflags[order], nimaflags[order]
    if phot is not None:
        phot = {k: v[order] for k, v in phot.items()}
    cat = measure(image, var, mask, objs, imaflags, nimaflags, pixel_scale=pixel_scale, config=config,
                  threads=threads, photometry=phot)
    n_deb = int(np.count_nonzero(objs["flag"] & sep.OBJ_MERGED))
    seg = None
    if segmentation:
        # the strip's ids are the extraction order + 1; NUMBER is the sorted order + 1
        lut = np.zeros(len(order) + 1, np.int32)
        lut[order + 1] = np.arange(1, len(order) + 1, dtype=np.int32)
        seg = lut[parts[0][5]]
    return Detections(catalog=cat, n_strips=nstrip, n_deblended=n_deb, segmentation=seg)


def measure(image: np.ndarray, var: np.ndarray, mask: np.ndarray, objs: np.ndarray, imaflags: np.ndarray,
            nimaflags: np.ndarray, *, pixel_scale: float, config: DetectConfig = DetectConfig(),
            threads: int = 1, photometry: dict | None = None):
    """Photometry and shapes of extracted objects (``sep.extract`` records with full-image coordinates; ``var``:
    the per-pixel variance, e-^2).

    ``photometry``: neighbour-masked ``kron, flux_auto, err_auto, flag_auto, flux_aper, err_aper, flag_aper`` per
    object (from the strips), with ``cut`` marking the objects to measure here without the correction; ``None``:
    every object is measured here with sep, without masking neighbours.

    Returns an astropy Table with SExtractor column names (see the module documentation).
    """
    import sep
    from astropy.table import Table

    x, y = objs["x"].astype(np.float64), objs["y"].astype(np.float64)
    a, b, theta = _shape_params(objs)
    n = len(objs)
    kf, rmin = config.kron_factor, config.kron_min_radius

    def auto(idx):
        kr, kflag = sep.kron_radius(image, x[idx], y[idx], a[idx], b[idx], theta[idx], 6.0)
        kr = np.where(np.isfinite(kr) & (kr > 0), kr, 0.0)
        # SExtractor: the ellipse is kron_factor x the first-moment radius, at least kron_min_radius (both in units
        # of A and B)
        kfac = np.maximum(kf * kr, rmin)
        f, fe, fl = sep.sum_ellipse(image, x[idx], y[idx], a[idx], b[idx], theta[idx], kfac, var=var, gain=1.0,
                                    subpix=1)
        return kfac, f, fe, fl | kflag

    r_ap = np.asarray(config.aper_diameters_arcsec, np.float64) / pixel_scale / 2.0

    def aper(idx):
        fs, es, fl = [], [], np.zeros(len(idx), np.int64)
        for r in r_ap:
            f, e, g = sep.sum_circle(image, x[idx], y[idx], r, var=var, gain=1.0, subpix=5)
            fs.append(f)
            es.append(e)
            fl |= g
        return np.stack(fs, 1), np.stack(es, 1), fl

    if photometry is None:
        kron, flux_auto, err_auto, flag_auto = auto(np.arange(n))  # sep holds the GIL here: no threads
        flux_aper, err_aper, flag_aper = aper(np.arange(n))
    else:
        p = photometry
        kron, flux_auto, err_auto = p["kron"].copy(), p["flux_auto"].copy(), p["err_auto"].copy()
        flag_auto = p["flag_auto"].astype(np.int64)
        flux_aper, err_aper = p["flux_aper"].copy(), p["err_aper"].copy()
        flag_aper = p["flag_aper"].astype(np.int64)
        cut = np.flatnonzero(p["cut"])
        if len(cut):
            kron[cut], flux_auto[cut], err_auto[cut], flag_auto[cut] = auto(cut)
            flux_aper[cut], err_aper[cut], flag_aper[cut] = aper(cut)
    norm = np.where(flux_auto > 0, flux_auto, np.maximum(objs["flux"], 1.0))

    flux_radius = _flux_radius(image, x, y, np.clip(6.0 * a, 3.0, 60.0), norm)
    flux_radius = np.where(np.isfinite(flux_radius) & (flux_radius > 0), flux_radius, 1.0)
    sig_psf = np.clip(2.0 * flux_radius / 2.3548, 0.3, 20.0)
    sig = np.maximum(sig_psf, min(float(config.win_sigma_min_px), 20.0))
    xwin, ywin = _winpos(image, x, y, sig, 1.0 + (sig_psf / sig) ** 2, 16)
    bad = ~(np.isfinite(xwin) & np.isfinite(ywin)) | (np.hypot(xwin - x, ywin - y) > 2.0)
    xwin = np.where(bad, x, xwin)
    ywin = np.where(bad, y, ywin)
    mom = moments(image, xwin, ywin, sigma0=np.clip(sig_psf, 1.0, 10.0), maxit=20, concentration=False)
    ixx, iyy, ixy = mom[:, 0], mom[:, 1], mom[:, 2]
    tr = ixx + iyy
    with np.errstate(invalid="ignore", divide="ignore"):
        fwhm = 2.3548 * np.sqrt(tr / 2.0)
        disc = np.sqrt(np.maximum((ixx - iyy) ** 2 / 4 + ixy * ixy, 0))
        la = np.sqrt(np.maximum(tr / 2 + disc, 0))
        lb = np.sqrt(np.maximum(tr / 2 - disc, 0))
        ell = 1.0 - lb / la
    # SExtractor-like FLAGS
    import sep as _sep

    flags = np.zeros(n, np.int16)
    flags |= np.where(objs["flag"] & _sep.OBJ_MERGED, 2, 0).astype(np.int16)
    flags |= np.where((imaflags & (mb.SATURATED | mb.BLEED)) != 0, 4, 0).astype(np.int16)
    ny, nx = image.shape
    trunc = (objs["xmin"] <= 0) | (objs["ymin"] <= 0) | (objs["xmax"] >= nx - 1) | (objs["ymax"] >= ny - 1)
    flags |= np.where(trunc | (objs["flag"] & _sep.OBJ_TRUNC), 8, 0).astype(np.int16)
    flags |= np.where((flag_auto | flag_aper) & _sep.APER_TRUNC, 16, 0).astype(np.int16)
    flags |= np.where((nimaflags > 0.1 * objs["npix"]) | _close_neighbours(x, y, a, b, kron, norm), 1, 0).astype(
        np.int16)
    cat = Table()
    cat["NUMBER"] = np.arange(1, n + 1, dtype=np.int32)
    cat["X_IMAGE"] = x + 1.0
    cat["Y_IMAGE"] = y + 1.0
    cat["XWIN_IMAGE"] = xwin + 1.0
    cat["YWIN_IMAGE"] = ywin + 1.0
    cat["XPEAK_IMAGE"] = objs["xpeak"].astype(np.int32) + 1
    cat["YPEAK_IMAGE"] = objs["ypeak"].astype(np.int32) + 1
    cat["A_IMAGE"] = a.astype(np.float32)
    cat["B_IMAGE"] = b.astype(np.float32)
    cat["THETA_IMAGE"] = np.degrees(theta).astype(np.float32)
    cat["ELONGATION"] = (a / b).astype(np.float32)
    cat["ELLIPTICITY"] = ell.astype(np.float32)
    cat["FWHM_IMAGE"] = fwhm.astype(np.float32)
    cat["ISOAREA_IMAGE"] = objs["npix"].astype(np.int32)
    cat["FLUX_ISO"] = objs["flux"].astype(np.float64)
    cat["FLUX_MAX"] = objs["peak"].astype(np.float32)
    cat["KRON_RADIUS"] = kron.astype(np.float32)
    cat["FLUX_AUTO"] = flux_auto
    cat["FLUXERR_AUTO"] = err_auto
    cat["FLUX_APER"] = flux_aper
    cat["FLUXERR_APER"] = err_aper
    cat["FLUX_RADIUS"] = flux_radius.astype(np.float32)
    cat["FLAGS"] = flags
    cat["IMAFLAGS_ISO"] = imaflags.astype(np.int32)
    cat["NIMAFLAGS_ISO"] = nimaflags.astype(np.int32)
    cat.meta["APERDIAM"] = ",".join(f"{d:g}" for d in config.aper_diameters_arcsec)
    for name, unit in (("X_IMAGE", "pix"), ("Y_IMAGE", "pix"), ("XWIN_IMAGE", "pix"), ("YWIN_IMAGE", "pix"),
                       ("A_IMAGE", "pix"), ("B_IMAGE", "pix"), ("THETA_IMAGE", "deg"), ("FWHM_IMAGE", "pix"),
                       ("ISOAREA_IMAGE", "pix2"), ("FLUX_ISO", "electron"), ("FLUX_MAX", "electron"),
                       ("FLUX_AUTO", "electron"), ("FLUXERR_AUTO", "electron"), ("FLUX_APER", "electron"),
                       ("FLUXERR_APER", "electron"), ("FLUX_RADIUS", "pix"), ("KRON_RADIUS", "")):
        cat[name].unit = unit or None
    return cat


def _close_neighbours(x, y, a, b, kron, flux) -> np.ndarray:
    """SExtractor's FLAGS 1 (approximation): a detection brighter than a tenth of the object lies inside its Kron
    ellipse (circularised)."""
    from scipy.spatial import cKDTree

    n = len(x)
    out = np.zeros(n, bool)
    if n < 2:
        return out
    r = np.clip(kron * np.sqrt(a * b), 2.0, 50.0)
    tree = cKDTree(np.column_stack([x, y]))
    pairs = tree.query_pairs(float(r.max()), output_type="ndarray")
    if len(pairs) == 0:
        return out
    i, j = pairs[:, 0], pairs[:, 1]
    d = np.hypot(x[i] - x[j], y[i] - y[j])
    hit_i = (d < r[i]) & (flux[j] > 0.1 * flux[i])
    hit_j = (d < r[j]) & (flux[i] > 0.1 * flux[j])
    out[i[hit_i]] = True
    out[j[hit_j]] = True
    return out
