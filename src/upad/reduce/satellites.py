"""Satellite and aircraft trails: straight lines found by a Hough transform of a binned image, then measured and
masked at full resolution.

1. The background-subtracted image is block-averaged over ``bin_px`` pixels (masked pixels left out): a trail
   keeps its signal-to-noise per binned pixel (its flux per unit length is spread over a wider, less noisy pixel),
   while the image gets ``bin_px**2`` times smaller.
2. Binned pixels above ``threshold`` sigma are grouped in connected regions; compact regions (stars, galaxies) are
   dropped, elongated or long ones (trail pieces) kept.
3. A Hough transform of the kept pixels finds the lines (``rho = x cos(theta) + y sin(theta)``); each peak is
   refined by an orthogonal least-squares fit of the pixels near it.
4. At full resolution the trail's cross profile is measured (the median over the whole trail length, per 0.25-pixel
   distance bin, robust to the stars it crosses) and fitted by a Gaussian: centre, width and amplitude. Only lines
   significant at ``min_snr`` in this profile and populated along ``min_coverage`` of their length are kept.
5. Pixels closer to the line than the distance where the Gaussian falls to ``mask_nsigma`` times the pixel noise
   (plus ``pad_px``), between the trail's ends, get ``SATELLITE``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from upad import maskbits as mb
from upad.config import StepConfig, param
from upad.reduce._jit import njit, prange

__all__ = ["SatelliteConfig", "SatelliteResult", "Trail", "detect_satellites"]


@dataclass(frozen=True)
class SatelliteConfig(StepConfig):
    """Parameters of the satellite-trail detection."""

    bin_px: int = param(4, doc="block size of the binned image searched for lines", bounds=(1, 64), unit="pixel")
    threshold: float = param(4.0, doc="binned pixels above this many sigma are line candidates", bounds=(1.0, 100.0))
    min_length_px: float = param(150.0, doc="shortest trail searched for", bounds=(10.0, None), unit="pixel")
    compact_elongation: float = param(3.0, doc="regions of the binned image less elongated than this (and shorter "
                                               "than min_length_px) are sources, not trails", bounds=(1.0, 100.0))
    min_snr: float = param(8.0, doc="required significance of the trail's mean cross profile", bounds=(1.0, None))
    min_coverage: float = param(0.6, doc="fraction of the trail's segments that must show it", bounds=(0.0, 1.0))
    mask_nsigma: float = param(1.0, doc="the mask extends to where the trail falls to this many pixel sigmas",
                               bounds=(0.1, 10.0))
    pad_px: float = param(1.0, doc="extra half-width of the mask", bounds=(0.0, 50.0), unit="pixel")
    max_trails: int = param(5, doc="most trails searched for in one frame", bounds=(1, 50))
    max_sigma_px: float = param(20.0, doc="widest trail searched for (Gaussian sigma of the cross profile: "
                                          "aircraft and defocused satellites reach ~15 pixels)", bounds=(1.0, 100.0),
                                unit="pixel")


@dataclass(frozen=True)
class Trail:
    """A straight trail (0-based full-resolution pixel coordinates).

    Attributes
    ----------
    theta_deg, rho : float
        The line ``x cos(theta) + y sin(theta) = rho``.
    x0, y0, x1, y1 : float
        End points of the masked segment.
    sigma_px : float
        Gaussian sigma of the cross profile.
    amplitude : float
        Peak of the cross profile (e- per pixel).
    flux_per_px : float
        Flux per pixel of length (e-), ``amplitude * sigma * sqrt(2 pi)``.
    snr : float
        Significance of the mean cross profile.
    half_width_px : float
        Half-width of the mask.
    """

    theta_deg: float
    rho: float
    x0: float
    y0: float
    x1: float
    y1: float
    sigma_px: float
    amplitude: float
    flux_per_px: float
    snr: float
    half_width_px: float


@dataclass
class SatelliteResult:
    """Trails found by :func:`detect_satellites` and the number of pixels flagged ``SATELLITE``."""

    trails: list[Trail] = field(default_factory=list)
    n_pixels: int = 0


@njit(parallel=True, nogil=True, cache=True)
def _bin(img, var, mask, bits, b):  # pragma: no cover - compiled
    ny, nx = img.shape
    my, mx = ny // b, nx // b
    out = np.zeros((my, mx), np.float32)
    sig = np.zeros((my, mx), np.float32)
    for j in prange(my):
        for i in range(mx):
            s = 0.0
            v = 0.0
            n = 0
            for y in range(j * b, j * b + b):
                for x in range(i * b, i * b + b):
                    if (mask[y, x] & bits) == 0:
                        s += img[y, x]
                        v += var[y, x]
                        n += 1
            if n > b * b // 2:
                out[j, i] = s / n
                sig[j, i] = np.sqrt(v) / n
            else:
                sig[j, i] = np.inf
    return out, sig


@njit(cache=True, nogil=True)
def _hough(ys, xs, weights, thetas, rho_max, rho_step):  # pragma: no cover - compiled
    nt = len(thetas)
    nr = int(2 * rho_max / rho_step) + 1
    acc = np.zeros((nt, nr), np.float64)
    c = np.cos(thetas)
    s = np.sin(thetas)
    for k in range(len(ys)):
        for t in range(nt):
            r = xs[k] * c[t] + ys[k] * s[t]
            ir = int((r + rho_max) / rho_step + 0.5)
            if 0 <= ir < nr:
                acc[t, ir] += weights[k]
    return acc


def _candidate_pixels(binned: np.ndarray, snr: np.ndarray, cfg: SatelliteConfig) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    hot = snr > cfg.threshold
    labels, n = ndimage.label(hot, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.empty(0, int), np.empty(0, int)
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    cnt = np.bincount(lab, minlength=n + 1).astype(float)
    sx = np.bincount(lab, xs, n + 1)
    sy = np.bincount(lab, ys, n + 1)
    sxx = np.bincount(lab, xs * xs, n + 1)
    syy = np.bincount(lab, ys * ys, n + 1)
    sxy = np.bincount(lab, xs * ys, n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = sx / cnt, sy / cnt
        cxx = sxx / cnt - mx * mx + 1 / 12
        cyy = syy / cnt - my * my + 1 / 12
        cxy = sxy / cnt - mx * my
        tr = cxx + cyy
        det = cxx * cyy - cxy * cxy
        disc = np.sqrt(np.maximum(tr * tr / 4 - det, 0))
        l1 = tr / 2 + disc
        l2 = np.maximum(tr / 2 - disc, 1e-3)
        elong = np.sqrt(l1 / l2)
        length = np.sqrt(12 * l1) * cfg.bin_px
    keep = (elong >= cfg.compact_elongation) | (length >= cfg.min_length_px)
    keep[0] = False
    # big blobs (saturated-star halos, large galaxies) are round: drop regions with elongation < 2 regardless
    keep &= elong >= 2.0
    sel = keep[lab]
    return ys[sel], xs[sel]


def _refine(ys: np.ndarray, xs: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Orthogonal (total least squares) line through weighted points → (theta, rho)."""
    ww = w / w.sum()
    mx, my = float((ww * xs).sum()), float((ww * ys).sum())
    dx, dy = xs - mx, ys - my
    cxx, cyy, cxy = (ww * dx * dx).sum(), (ww * dy * dy).sum(), (ww * dx * dy).sum()
    ang = 0.5 * math.atan2(2 * cxy, cxx - cyy)  # direction of the line
    theta = ang + math.pi / 2  # normal
    if theta >= math.pi:
        theta -= math.pi
    if theta < 0:
        theta += math.pi
    rho = mx * math.cos(theta) + my * math.sin(theta)
    return theta, rho


def _segment_in_image(theta: float, rho: float, nx: int, ny: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Entry and exit points of the line in the image box [-0.5, n - 0.5]."""
    c, s = math.cos(theta), math.sin(theta)
    pts = []
    lo_x, hi_x, lo_y, hi_y = -0.5, nx - 0.5, -0.5, ny - 0.5
    if abs(s) > 1e-9:
        for x in (lo_x, hi_x):
            y = (rho - x * c) / s
            if lo_y <= y <= hi_y:
                pts.append((x, y))
    if abs(c) > 1e-9:
        for y in (lo_y, hi_y):
            x = (rho - y * s) / c
            if lo_x <= x <= hi_x:
                pts.append((x, y))
    if len(pts) < 2:
        return None
    pts_a = np.array(pts)
    # the two most distant points
    d = np.hypot(pts_a[:, None, 0] - pts_a[None, :, 0], pts_a[:, None, 1] - pts_a[None, :, 1])
    i, j = np.unravel_index(np.argmax(d), d.shape)
    return pts_a[i], pts_a[j]


@njit(cache=True, nogil=True)
def _band_pixels(ny, nx, c, s, rho, hw, ux, uy, ta, tb, stride):  # pragma: no cover - compiled
    """Pixels whose centres lie within ``hw`` of the line ``x c + y s = rho`` and whose position along it,
    ``x ux + y uy``, is in ``[ta, tb]``; every ``stride``-th row (a line closer to the y axis) or column (closer to
    the x axis) only."""
    by_rows = abs(c) >= abs(s)
    n_outer = ny if by_rows else nx
    n_inner = nx if by_rows else ny
    # the band and the segment as intervals of the inner coordinate, for each outer coordinate
    a_b = c if by_rows else s  # coefficient of the inner coordinate in the distance
    b_b = s if by_rows else c
    a_t = ux if by_rows else uy
    b_t = uy if by_rows else ux
    cnt = 0
    for pas in range(2):
        if pas == 1:
            ys = np.empty(cnt, np.int64)
            xs = np.empty(cnt, np.int64)
            cnt = 0
        for o in range(0, n_outer, stride):
            lo = 0.0
            hi = n_inner - 1.0
            r1 = (rho - hw - o * b_b) / a_b
            r2 = (rho + hw - o * b_b) / a_b
            lo = max(lo, min(r1, r2))
            hi = min(hi, max(r1, r2))
            if abs(a_t) > 1e-12:
                q1 = (ta - o * b_t) / a_t
                q2 = (tb - o * b_t) / a_t
                lo = max(lo, min(q1, q2))
                hi = min(hi, max(q1, q2))
            elif not (ta <= o * b_t <= tb):
                continue
            i0 = int(math.ceil(lo))
            i1 = int(math.floor(hi))
            for i in range(i0, i1 + 1):
                if pas == 1:
                    if by_rows:
                        ys[cnt] = o
                        xs[cnt] = i
                    else:
                        ys[cnt] = i
                        xs[cnt] = o
                cnt += 1
    return ys, xs


def _binned_medians(keys: np.ndarray, values: np.ndarray, nkeys: int, min_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``values`` for each integer key in ``[0, nkeys)`` (``nan`` with fewer than ``min_n`` values) and
    the counts."""
    ok = (keys >= 0) & (keys < nkeys) & np.isfinite(values)
    k, v = keys[ok], values[ok].astype(np.float64)
    if len(v):
        # one sort on a combined key: the bin, then the value scaled into [0, 0.5)
        lo, span = float(v.min()), float(np.ptp(v)) or 1.0
        order = np.argsort(k + 0.5 * (v - lo) / span * (1 - 1e-9))
        k, v = k[order], v[order]
    cnt = np.bincount(k, minlength=nkeys)
    start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    med = np.full(nkeys, np.nan)
    has = cnt >= max(min_n, 1)
    lo = start[has] + (cnt[has] - 1) // 2
    hi = start[has] + cnt[has] // 2
    med[has] = 0.5 * (v[lo] + v[hi])
    return med, cnt


def _profile(image, var, mask, theta, rho, p0, p1, halfwidth, bits, step_along):
    """Samples of the band around the line: distance, position along the line, value, variance (every
    ``step_along``-th row or column)."""
    c, s = math.cos(theta), math.sin(theta)
    length = float(np.hypot(*(p1 - p0)))
    u = (p1 - p0) / max(length, 1e-9)  # along the line, from p0 to p1
    ny, nx = image.shape
    ta = float(p0 @ u)
    ys, xs = _band_pixels(ny, nx, c, s, rho, float(halfwidth), float(u[0]), float(u[1]), ta, ta + length,
                          max(1, int(round(step_along))))
    good = (mask[ys, xs] & bits) == 0
    ys, xs = ys[good], xs[good]
    d = xs * c + ys * s - rho
    along = xs * u[0] + ys * u[1] - ta
    return d, along, image[ys, xs].astype(np.float64), var[ys, xs].astype(np.float64), length


def _offsets_along(d: np.ndarray, along: np.ndarray, v: np.ndarray, mu: float, sg: float,
                   length: float) -> tuple[float, float] | None:
    """Offset of the trail's centre from the line as a function of the position along it, ``mu + a + b t``: the
    centre of the median cross profile in segments along the trail, fitted by a straight line (robust to a few bad
    segments) → ``(a + mu, b)``."""
    nseg = int(np.clip(length / 64.0, 4, 24))
    seg = length / nseg
    binw = max(0.25, sg / 4.0)
    half = 2.5 * sg
    sel_all = np.abs(d - mu) <= half
    dd, aa, vv = d[sel_all] - mu, along[sel_all], v[sel_all]
    k_seg = np.clip((aa / seg).astype(int), 0, nseg - 1)
    nb = int(math.ceil(2 * half / binw))
    k_bin = np.clip(((dd + half) / binw).astype(int), 0, nb - 1)
    centres = -half + (np.arange(nb) + 0.5) * binw
    med, _ = _binned_medians(k_seg * nb + k_bin, vv, nseg * nb, 3)
    prof_all = med.reshape(nseg, nb)
    # the centre: a Gaussian of the trail's width (+ a constant) slid across the profile, the best position refined
    # by a parabola (unbiased where the image edge cuts one side of the band); linear least squares in closed form
    trial = np.arange(-1.5 * sg, 1.5 * sg + 1e-9, max(0.1, sg / 10))
    step = float(trial[1] - trial[0])
    G = np.exp(-0.5 * ((centres[None, :] - trial[:, None]) / sg) ** 2)  # (trial, bin)
    t_c, off = [], []
    for k in range(nseg):
        prof = prof_all[k]
        ok = np.isfinite(prof)
        if ok.sum() < 0.7 * nb:
            continue
        g, y = G[:, ok], prof[ok]
        n = float(ok.sum())
        sg_, sgg, sy, sgy, syy = g.sum(1), (g * g).sum(1), y.sum(), g @ y, float(y @ y)
        det = n * sgg - sg_ * sg_
        amp_t = np.where(det > 0, (n * sgy - sg_ * sy) / np.where(det > 0, det, 1.0), 0.0)
        cst = (sy - amp_t * sg_) / n
        chi = syy - amp_t * sgy - cst * sy
        i = int(np.argmin(chi))
        if amp_t[i] <= 0 or i == 0 or i == len(trial) - 1:
            continue
        den = chi[i - 1] - 2 * chi[i] + chi[i + 1]
        shift = 0.5 * (chi[i - 1] - chi[i + 1]) / den * step if den > 0 else 0.0
        t_c.append((k + 0.5) * seg)
        off.append(float(trial[i] + np.clip(shift, -step, step)))
    if len(t_c) < 3:
        return None
    t_a, o_a = np.array(t_c), np.array(off)
    keep = np.ones(len(t_a), bool)
    for _ in range(3):
        A = np.column_stack([np.ones(keep.sum()), t_a[keep]])
        coef, *_ = np.linalg.lstsq(A, o_a[keep], rcond=None)
        res = o_a - (coef[0] + coef[1] * t_a)
        scale = max(1.4826 * float(np.median(np.abs(res[keep]))), 0.05 * sg)
        new = np.abs(res) < 4 * scale
        if new.sum() < 3 or (new == keep).all():
            break
        keep = new
    return float(coef[0] + mu), float(coef[1])


def _tilt(theta: float, rho: float, p0: np.ndarray, p1: np.ndarray, a: float, b: float) -> tuple[float, float]:
    """The line whose distance from ``(theta, rho)`` is ``a + b t`` at ``t`` pixels from ``p0`` towards ``p1``."""
    n = np.array([math.cos(theta), math.sin(theta)])
    length = float(np.hypot(*(p1 - p0)))
    u = (p1 - p0) / max(length, 1e-9)
    q = p0 + (float(np.dot(p0, n)) - rho) * (-n) + a * n  # a point of the new line (at t = 0)
    n2 = n - b * u
    n2 /= np.hypot(*n2)
    th = math.atan2(n2[1], n2[0])
    if th < 0:
        th += math.pi
        n2 = -n2
    if th >= math.pi:
        th -= math.pi
        n2 = -n2
    return th, float(np.dot(q, n2))


def _fit_profile(d: np.ndarray, v: np.ndarray, sig_pix: float, *, half: float = 8.0, binw: float = 0.25,
                 smax: float = 6.0) -> tuple[float, float, float, float, float] | None:
    """Gaussian (+ constant) fit of the median cross profile within ``half`` pixels of the line, in distance bins
    of ``binw`` pixels → (centre, sigma, amplitude, snr, constant)."""
    from scipy.optimize import curve_fit

    edges = np.arange(-half, half + 1e-9, binw)
    idx = np.digitize(d, edges) - 1
    centres = 0.5 * (edges[1:] + edges[:-1])
    nb = len(centres)
    med, cnt = _binned_medians(idx, v, nb, 5)
    err = 1.2533 * sig_pix / np.sqrt(np.maximum(cnt, 1))
    ok = np.isfinite(med)
    if ok.sum() < 10:
        return None
    x, y, e = centres[ok], med[ok], err[ok]
    k0 = int(np.argmax(y))
    base = float(np.median(y))
    peak = float(y[k0]) - base
    above = x[y - base > 0.5 * peak]
    s0 = float(np.clip((above.max() - above.min() + binw) / 2.3548, 2 * binw, 0.8 * smax)) if len(above) else 1.0
    p0 = [max(peak, 1e-3), float(x[k0]), s0, base]

    def g(xx, a, mu, sg, c):
        return a * np.exp(-0.5 * ((xx - mu) / sg) ** 2) + c

    lim = max(4.0, half / 2)
    try:
        p, cov = curve_fit(g, x, y, p0=p0, sigma=e, absolute_sigma=True,
                           bounds=([0, -lim, min(0.3, binw), -np.inf], [np.inf, lim, smax, np.inf]), maxfev=4000)
    except (RuntimeError, ValueError):
        return None
    a, mu, sg, cst = p
    ea = math.sqrt(max(cov[0, 0], 1e-30))
    return float(mu), float(sg), float(a), float(a / ea), float(cst)


def detect_satellites(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, *,
                      config: SatelliteConfig = SatelliteConfig()) -> SatelliteResult:
    """Find straight trails and flag them ``SATELLITE`` in ``mask`` (in place).

    Parameters
    ----------
    image : ndarray
        Background-subtracted calibrated image (e-, float32).
    variance : ndarray
        Background-only variance (e-^2).
    mask : ndarray
        Bit-coded mask (int16), updated in place.
    config : SatelliteConfig

    Returns
    -------
    SatelliteResult
    """
    ny, nx = image.shape
    b = int(config.bin_px)
    bits = np.int16(mb.BAD | mb.NODATA | mb.SATURATED | mb.BLEED)
    binned, bsig = _bin(image, variance, mask, bits, b)
    snr = binned / bsig
    ys, xs = _candidate_pixels(binned, snr, config)
    result = SatelliteResult()
    if len(ys) < max(5, config.min_length_px / b / 2):
        return result
    # Hough transform of the candidate pixels (binned coordinates, centres of the blocks)
    yb = (ys + 0.5).astype(np.float64)
    xb = (xs + 0.5).astype(np.float64)
    w = np.minimum(snr[ys, xs], 50.0).astype(np.float64)
    my, mx = binned.shape
    rho_max = math.hypot(mx, my)
    thetas = np.deg2rad(np.arange(0.0, 180.0, 0.25))
    acc = _hough(yb, xb, w, thetas, rho_max, 1.0)
    sig_pix = float(np.sqrt(np.median(variance[:: max(1, ny // 64), :: max(1, nx // 64)])))
    used = np.zeros(len(ys), bool)
    full_bits = np.int16(mb.BAD | mb.NODATA | mb.SATURATED | mb.BLEED)
    for _ in range(config.max_trails):
        t_i, r_i = np.unravel_index(int(np.argmax(acc)), acc.shape)
        if acc[t_i, r_i] <= 0:
            break
        theta0 = thetas[t_i]
        rho0 = r_i * 1.0 - rho_max
        dist = np.abs(xb * math.cos(theta0) + yb * math.sin(theta0) - rho0)
        near = (dist < 2.0) & ~used
        # clear this peak from the accumulator (a band of +-2 deg and +-3 binned pixels)
        t_lo, t_hi = max(0, t_i - 8), min(len(thetas), t_i + 9)
        acc[t_lo:t_hi, max(0, r_i - 3):r_i + 4] = 0
        if near.sum() < config.min_length_px / b / 2:
            continue
        theta, rho_b = _refine(yb[near], xb[near], w[near])
        used |= np.abs(xb * math.cos(theta) + yb * math.sin(theta) - rho_b) < 2.0
        # to full resolution: binned (x + 0.5) * b - 0.5
        rho = rho_b * b - 0.5 * (math.cos(theta) + math.sin(theta))
        seg = _segment_in_image(theta, rho, nx, ny)
        if seg is None:
            continue
        p0, p1 = seg
        d, along, vals, _v, length = _profile(image, variance, mask, theta, rho, p0, p1, 8, full_bits, 1.0)
        if len(d) < 50 or length < config.min_length_px:
            continue
        fit = _fit_profile(d, vals, sig_pix)
        # a wide profile, or a narrow bump on a raised floor (the top of a wide trail), or none
        if fit is None or fit[1] > 2.5 or fit[4] > 0.2 * fit[2]:
            # a wide trail (aircraft, defocused satellite): the profile over +-4 max_sigma_px, sampled every 2
            # pixels along the line, in 1-pixel distance bins (the narrow fit above cannot see its wings)
            hw_c = int(math.ceil(4.0 * config.max_sigma_px))
            dc, alc, vc, _v, length = _profile(image, variance, mask, theta, rho, p0, p1, hw_c, full_bits, 2.0)
            fit_c = _fit_profile(dc, vc, sig_pix, half=float(hw_c), binw=1.0, smax=float(config.max_sigma_px))
            if fit_c is not None and (fit is None or fit_c[1] > 2.5 or fit_c[2] > 2.0 * fit[2]):
                fit = fit_c
                d, along, vals = dc, alc, vc
        if fit is None:
            continue
        mu, sg, amp, snr_fit, _c = fit
        if snr_fit < config.min_snr or sg > config.max_sigma_px * 0.999:
            continue
        if sg > 2.5:
            # a wide trail's line from the binned image is only good to a fraction of its width: measure the
            # centre along the trail and tilt the line onto it, then measure the profile again
            ab = _offsets_along(d, along, vals, mu, sg, length)
            if ab is not None:
                theta_n, rho_n = _tilt(theta, rho, p0, p1, *ab)
                seg_n = _segment_in_image(theta_n, rho_n, nx, ny)
                if seg_n is not None:
                    hw_c = int(math.ceil(max(8.0, 4.0 * sg + 4.0)))
                    dn, aln, vn, _v, ln = _profile(image, variance, mask, theta_n, rho_n, seg_n[0], seg_n[1], hw_c,
                                                   full_bits, 2.0)
                    fit_n = _fit_profile(dn, vn, sig_pix, half=float(hw_c), binw=max(0.25, min(1.0, sg / 8)),
                                         smax=float(config.max_sigma_px))
                    if fit_n is not None and fit_n[3] >= config.min_snr:
                        theta, rho, (p0, p1) = theta_n, rho_n, seg_n
                        d, along, vals, length = dn, aln, vn, ln
                        mu, sg, amp, snr_fit, _c = fit_n
        if _flagged_fraction(mask, theta, rho + mu, p0, p1) > 0.5:
            continue  # a trail already masked (a second Hough peak of a wide trail)
        rho += mu
        # extent along the line: 8-pixel bins whose on-line median is significant; the longest run of such bins
        # (gaps of up to 4 bins allowed: stars, masked pixels) is the trail
        core = np.abs(d - mu) < max(1.0, sg)
        seg_len = 8.0
        nseg = max(1, int(math.ceil(length / seg_len)))
        sidx = np.minimum((along[core] / seg_len).astype(int), nseg - 1)
        med_s, cnt_s = _binned_medians(sidx, vals[core], nseg, 4)
        present = np.isfinite(med_s) & (med_s > 3.0 * 1.2533 * sig_pix / np.sqrt(np.maximum(cnt_s, 1)))
        run = _longest_run(present, max_gap=4)
        if run is None:
            continue
        first, last = run
        span = present[first:last + 1]
        if span.mean() < config.min_coverage or (last - first + 1) * seg_len < config.min_length_px:
            continue
        c, s = math.cos(theta), math.sin(theta)
        u = (p1 - p0) / max(length, 1e-9)
        ratio = amp / (config.mask_nsigma * sig_pix)
        hw = sg * math.sqrt(2 * math.log(ratio)) if ratio > 1 else sg
        hw = hw + config.pad_px
        # a trail that leaves the image: its wings stay inside beyond the point where its centre leaves (far
        # beyond when it leaves at a grazing angle); the band is clipped to the image
        ext = min(hw / max(min(abs(u[0]), abs(u[1])), 0.02), math.hypot(nx, ny)) + 8.0
        t0 = first * seg_len - 4.0 if first > 0 else -ext
        t1 = (last + 1) * seg_len + 4.0 if last < nseg - 1 else length + ext
        a0 = p0 + (t0 * u) + mu * np.array([c, s])
        a1 = p0 + (t1 * u) + mu * np.array([c, s])
        n_new = _mask_band(mask, theta, rho, a0, a1, hw)
        # the whole band of this trail is used up (a wide trail must not come back as parallel lines)
        used |= np.abs(xb * math.cos(theta) + yb * math.sin(theta) - (rho + 0.5 * (c + s)) / b) < max(2.0, hw / b + 1)
        result.trails.append(Trail(theta_deg=math.degrees(theta), rho=rho, x0=float(a0[0]), y0=float(a0[1]),
                                   x1=float(a1[0]), y1=float(a1[1]), sigma_px=sg, amplitude=amp,
                                   flux_per_px=amp * sg * math.sqrt(2 * math.pi), snr=snr_fit, half_width_px=hw))
        result.n_pixels += n_new
    return result


def _flagged_fraction(mask: np.ndarray, theta: float, rho: float, p0: np.ndarray, p1: np.ndarray) -> float:
    """Fraction of the points of the line (every 4 pixels between ``p0`` and ``p1``) already flagged
    ``SATELLITE``."""
    ny, nx = mask.shape
    length = float(np.hypot(*(p1 - p0)))
    u = (p1 - p0) / max(length, 1e-9)
    n = np.array([math.cos(theta), math.sin(theta)])
    t = np.arange(0.0, length, 4.0)
    q = p0[None, :] + t[:, None] * u[None, :]
    q += (rho - q @ n)[:, None] * n[None, :]
    xs, ys = np.rint(q[:, 0]).astype(int), np.rint(q[:, 1]).astype(int)
    ok = (xs >= 0) & (xs < nx) & (ys >= 0) & (ys < ny)
    if not ok.any():
        return 0.0
    return float(((mask[ys[ok], xs[ok]] & np.int16(mb.SATELLITE)) != 0).mean())


def _longest_run(present: np.ndarray, *, max_gap: int) -> tuple[int, int] | None:
    """First and last index of the longest run of True allowing gaps of up to ``max_gap`` False values."""
    idx = np.flatnonzero(present)
    if len(idx) == 0:
        return None
    breaks = np.flatnonzero(np.diff(idx) > max_gap + 1)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(idx) - 1]])
    k = int(np.argmax(idx[ends] - idx[starts]))
    return int(idx[starts[k]]), int(idx[ends[k]])


def _mask_band(mask: np.ndarray, theta: float, rho: float, a0: np.ndarray, a1: np.ndarray, hw: float) -> int:
    """Flag pixels within ``hw`` of the line between ``a0`` and ``a1``; returns the number of pixels flagged."""
    ny, nx = mask.shape
    c, s = math.cos(theta), math.sin(theta)
    length = float(np.hypot(*(a1 - a0)))
    u = (a1 - a0) / max(length, 1e-9)
    ta = float(a0 @ u)
    ys, xs = _band_pixels(ny, nx, c, s, rho, float(hw), float(u[0]), float(u[1]), ta, ta + length, 1)
    mask[ys, xs] |= np.int16(mb.SATELLITE)
    return int(len(ys))
