"""Cosmic rays: the L.A.Cosmic criteria (van Dokkum 2001) evaluated only where they can be met.

L.A.Cosmic flags a pixel when three quantities, all local, pass thresholds:

* ``L+`` — the Laplacian of the 2x-subsampled image, negative values clipped, block-averaged back. On the
  replicated grid it reduces to ``L+ = 1/4 sum over the 4 corners (dy, dx) of max(2p - p[y+dy, x] - p[y, x+dx], 0)``;
* ``S = L+ / (2 N)`` with ``N`` the noise of the pixel, ``sqrt(var_sky + max(med5(I), 0))`` (a 5x5 median of the
  background-subtracted image gives the source's own Poisson noise), and ``S' = S - med5(S)`` (removes the
  Laplacian of smooth structures); a cosmic ray needs ``S' > sigclip``;
* the fine-structure contrast ``S' / F > objlim`` with ``F = (med3(I) - med7(med3(I))) / N`` (>= 0.01): star cores
  have fine structure, cosmic rays are sharper.

Neighbours of the detections are added when ``S' > sigclip`` and then, once more, when ``S' > sigfrac sigclip`` (this
second ``S'`` on the image with the pixels flagged so far cleaned: a faint pixel beside a bright one of the same
track has a Laplacian the bright one makes negative),
provided they stand above the light around them (``grow_excess_nsigma``: a PSF fitted to the unflagged
neighbourhood, the cosmic ray, the pixels that touch it and the pixel itself left out, must not explain them — the
core of a star that a cosmic ray hits beside it has a Laplacian as large as a cosmic ray's, but the rest of the star
predicts it); the flagged pixels are replaced by the mean of their unflagged 5x5 neighbours and the search is
repeated near them (``niter`` times), as astroscrappy does.

**Where the speed comes from.** ``S' <= S <= L+ / (2 sqrt(var_sky))`` because both medians are of non-negative
numbers, so a pixel whose ``L+`` is below ``2 sigclip sqrt(var_sky)`` can never be a cosmic ray. One pass over the
image computes that bound (a handful of operations per pixel); the medians — the whole cost of L.A.Cosmic — are only
evaluated on the few pixels that pass it (stars and cosmic rays, about 1 % of the pixels), in compiled code (numba)
running in parallel. Later iterations only revisit the pixels within 4 pixels of the previous detections, the only
ones whose criteria changed. The result is the same set of flags as a full-image L.A.Cosmic with these medians
(exact 5x5/3x3/7x7 medians, i.e. astroscrappy with ``sepmed=False``).

**Stars are never interpolated, at any seeing.** Below ~0.8" (FWHM < 1.5 pixels) a star's core is as sharp as a
cosmic ray for the L.A.Cosmic criteria, so every seed also passes a star test: a Gaussian PSF (+ constant), over 25
sub-pixel phases, fitted to the 5x5 box around the local maximum the seed belongs to (its pixels inside the image:
a star cut by the edge is fitted on what is left of it); the seed stays a cosmic ray
only if that fit is bad (``chi2/dof > star_chi2``; model error ``star_model_error`` of the template plus
``star_model_floor`` of the peak in every pixel; outer pixels 5 sigma above the fit — a cosmic ray beside a star —
left out). The PSF width comes from the frame's stars, measured in the same full-image pass before any seed is kept
(:func:`_peak_size`: local maxima above ``psf_peak_snr`` sigma that are not lone spikes, round, and with wings beyond
the 3x3 box, which cosmic rays lack; the width is their most common size), so it is known at every seeing; with
fewer than ``psf_min_stars`` such peaks the test accepts any width of :data:`FALLBACK_SIGMAS`. The stars found
(those peaks and the seeds the test rejected) are protected: the later iterations never enter a box of 2 PSF sigmas
around them, and spare the star-like local maxima that do not touch a flagged pixel. The growth is not refused by those
boxes (a compact track or a track on a faint galaxy can pass for a star's peak there): it is decided by
``grow_excess_nsigma``, whose PSF fit leaves out the flagged pixels and the pixels that touch them (the fainter edge of
the same track, which a PSF would otherwise take for a faint star).

Pixels flagged ``BAD``, ``NODATA``, ``SATURATED``, ``BLEED`` or ``SATELLITE`` (and pixels within 2 pixels of
saturated ones) are never flagged nor used to clean: run the satellite-trail detection first (a trail is as sharp as
the PSF and L.A.Cosmic would eat it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from upad import maskbits as mb
from upad.config import StepConfig, param
from upad.reduce._jit import njit, prange
from upad.reduce._jit import sorted_median as _median

__all__ = ["CosmicConfig", "CosmicResult", "detect_cosmics"]

_EXCL = mb.BAD | mb.NODATA | mb.SATURATED | mb.BLEED | mb.SATELLITE
_SATB = mb.SATURATED | mb.BLEED


@dataclass(frozen=True)
class CosmicConfig(StepConfig):
    """Parameters of the cosmic-ray detection (L.A.Cosmic; names as in astroscrappy)."""

    sigclip: float = param(4.5, doc="Laplacian-to-noise limit S' for a cosmic-ray pixel", bounds=(1.0, 100.0))
    sigfrac: float = param(0.3, doc="fraction of sigclip for the neighbours of a cosmic-ray pixel",
                           bounds=(0.01, 1.0))
    objlim: float = param(5.0, doc="minimum contrast between the Laplacian and the fine structure (raise it if "
                                   "star cores are flagged)", bounds=(0.1, 100.0))
    niter: int = param(4, doc="maximum number of detect-and-clean iterations", bounds=(1, 10))
    fine_structure: str = param("separable", doc="median filters of the fine-structure image: 'separable' (5 then "
                                                 "9 pixels, astroscrappy's default sepmed=True) or 'full' (3x3 "
                                                 "then 7x7, the original L.A.Cosmic)", choices=("separable", "full"))
    min_seed_snr: float = param(4.5, doc="a seed pixel must itself be this many sigma above the background (a "
                                         "Laplacian spike of pure noise is not a cosmic ray)", bounds=(0.0, 100.0))
    star_chi2: float = param(5.0, doc="a seed is kept only if a PSF-shaped star fits its 5x5 neighbourhood worse "
                                      "than this chi2 per degree of freedom (0: no PSF test)", bounds=(0.0, None))
    star_test_all_iterations: bool = param(False, doc="apply the star test in every iteration (default: the "
                                                     "first, full-image pass only)")
    star_model_error: float = param(0.1, doc="fractional PSF model error allowed in the star test",
                                    bounds=(0.0, 1.0))
    star_model_floor: float = param(0.01, doc="PSF model error allowed in every pixel of the star test, as a "
                                              "fraction of the fitted peak (the wings of a non-Gaussian PSF)",
                                    bounds=(0.0, 1.0))
    psf_peak_snr: float = param(30.0, doc="first pass: local maxima this many sigma above the background are "
                                          "measured for the PSF width of the star test", bounds=(3.0, None))
    protect_stars: bool = param(True, doc="the stars found by the first pass and the star test (a box of "
                                          "2 PSF sigmas, at least 2 pixels, around each peak) are not "
                                          "searched again after cleaning (the growth is decided by "
                                          "grow_excess_nsigma)")
    psf_min_stars: int = param(5, doc="fewest star-like peaks for a measured PSF width; with fewer, the star "
                                      "test accepts any Gaussian width from 0.5 to 3 pixels", bounds=(1, None))
    psf_sigma_px: float = param(0.0, doc="Gaussian sigma of the sampled PSF for the star test; 0: measured from "
                                         "the bright stars of the frame", bounds=(0.0, 20.0), unit="pixel")
    grow_excess_nsigma: float = param(3.0, doc="a neighbour of a cosmic ray is grown into only if it exceeds by "
                                               "this many sigma what a PSF fitted to its unflagged neighbourhood "
                                               "(the cosmic ray and the pixel itself left out) predicts there: the "
                                               "core of a star beside a cosmic ray is not (0: L.A.Cosmic's growth)",
                                      bounds=(0.0, 100.0), unit="sigma")
    replace: bool = param(True, doc="replace cosmic-ray pixels by the mean of their unflagged 5x5 neighbours "
                                    "and flag them INTERPOLATED")


@dataclass
class CosmicResult:
    """Cosmic-ray pixels found by :func:`detect_cosmics`.

    Attributes
    ----------
    x, y : ndarray
        0-based pixel coordinates of the flagged pixels (int32).
    original : ndarray
        Their values before cleaning (float32).
    n_candidates : int
        Pixels that passed the Laplacian bound and had the full criteria evaluated.
    iterations : int
        Iterations run.
    psf_sigma_px : float
        Gaussian sigma of the sampled PSF used by the star test (0 when none was measured: then the test accepted
        every width of :data:`FALLBACK_SIGMAS`, or there was no star test).
    n_psf_stars : int
        Star-like peaks of the first pass (the PSF width is their most common size).
    """

    x: np.ndarray
    y: np.ndarray
    original: np.ndarray
    n_candidates: int
    iterations: int
    psf_sigma_px: float = 0.0
    n_psf_stars: int = 0

    @property
    def n_pixels(self) -> int:
        return len(self.x)


# ------------------------------------------------------------------------------------------------ compiled kernels
@njit(cache=True, nogil=True, inline="always")
def _cl(i, n):  # pragma: no cover - compiled
    if i < 0:
        return 0
    if i >= n:
        return n - 1
    return i


@njit(cache=True, nogil=True, inline="always")
def _lplus(img, y, x, ny, nx):  # pragma: no cover - compiled
    p = img[y, x]
    up = img[_cl(y + 1, ny), x]
    dn = img[_cl(y - 1, ny), x]
    rt = img[y, _cl(x + 1, nx)]
    lf = img[y, _cl(x - 1, nx)]
    s = 0.0
    t = 2.0 * p - up - rt
    if t > 0:
        s += t
    t = 2.0 * p - up - lf
    if t > 0:
        s += t
    t = 2.0 * p - dn - rt
    if t > 0:
        s += t
    t = 2.0 * p - dn - lf
    if t > 0:
        s += t
    return 0.25 * s


@njit(cache=True, nogil=True)
def _med_box(img, y, x, r, ny, nx, buf):  # pragma: no cover - compiled
    n = 0
    for dy in range(-r, r + 1):
        yy = _cl(y + dy, ny)
        for dx in range(-r, r + 1):
            buf[n] = img[yy, _cl(x + dx, nx)]
            n += 1
    return _median(buf, n)


@njit(cache=True, nogil=True)
def _noise(img, var, y, x, ny, nx, buf):  # pragma: no cover - compiled
    m = _med_box(img, y, x, 2, ny, nx, buf)
    if m < 0:
        m = 0.0
    v = var[y, x] + m
    v = max(v, 1e-5)
    return np.sqrt(v)


@njit(cache=True, nogil=True)
def _s(img, var, y, x, ny, nx, buf):  # pragma: no cover - compiled
    return _lplus(img, y, x, ny, nx) / (2.0 * _noise(img, var, y, x, ny, nx, buf))


@njit(cache=True, nogil=True)
def _sprime(img, var, y, x, ny, nx, s0, buf, buf2):  # pragma: no cover - compiled
    # S'(y, x) = S(y, x) - median of S over the 5x5 box (edge-replicated)
    n = 0
    for dy in range(-2, 3):
        yy = _cl(y + dy, ny)
        for dx in range(-2, 3):
            xx = _cl(x + dx, nx)
            if yy == y and xx == x:
                buf2[n] = s0
            else:
                buf2[n] = _s(img, var, yy, xx, ny, nx, buf)
            n += 1
    return s0 - _median(buf2, n)


@njit(cache=True, nogil=True)
def _fine(img, y, x, ny, nx, noise, buf, buf49):  # pragma: no cover - compiled
    # F = (med3(I) - med7(med3(I))) / N, clipped at 0.01
    n = 0
    m3c = 0.0
    for dy in range(-3, 4):
        yy = _cl(y + dy, ny)
        for dx in range(-3, 4):
            xx = _cl(x + dx, nx)
            v = _med_box(img, yy, xx, 1, ny, nx, buf)
            if dy == 0 and dx == 0:
                m3c = v
            buf49[n] = v
            n += 1
    f = (m3c - _median(buf49, n)) / noise
    f = max(f, 0.01)
    return f


@njit(cache=True, nogil=True)
def _sepmed(img, y, x, r, ny, nx, buf, buf2):  # pragma: no cover - compiled
    # separable median: median along each row of the (2r+1) box, then the median of those
    k = 2 * r + 1
    for dy in range(-r, r + 1):
        yy = _cl(y + dy, ny)
        for dx in range(-r, r + 1):
            buf[dx + r] = img[yy, _cl(x + dx, nx)]
        buf2[dy + r] = _median(buf, k)
    return _median(buf2, k)


@njit(cache=True, nogil=True)
def _fine_sep(img, y, x, ny, nx, noise, buf, buf2, tmp):  # pragma: no cover - compiled
    # F = (sepmed5(I) - sepmed9(sepmed5(I))) / N, as astroscrappy's default (sepmed=True)
    for dy in range(-4, 5):
        yy = _cl(y + dy, ny)
        for dx in range(-4, 5):
            tmp[dy + 4, dx + 4] = _sepmed(img, yy, _cl(x + dx, nx), 2, ny, nx, buf, buf2)
    m5c = tmp[4, 4]
    m9 = _sepmed(tmp, 4, 4, 4, 9, 9, buf, buf2)
    f = (m5c - m9) / noise
    f = max(f, 0.01)
    return f


@njit(cache=True, nogil=True)
def _excluded(mask, y, x, ny, nx, excl, satb):  # pragma: no cover - compiled
    if (mask[y, x] & excl) != 0:
        return True
    for dy in range(-2, 3):
        yy = y + dy
        if yy < 0 or yy >= ny:
            continue
        for dx in range(-2, 3):
            xx = x + dx
            if xx < 0 or xx >= nx:
                continue
            if (mask[yy, xx] & satb) != 0:
                return True
    return False


@njit(cache=True, nogil=True)
def _star_chi2(img, var, y, x, ny, nx, templates, eps, floor, stop):  # pragma: no cover - compiled
    """Smallest chi2 per degree of freedom of a PSF (+ constant) fitted to the 5x5 box, over the templates
    (sub-pixel phases, and widths when several are given).

    The model error allowed in a pixel is ``eps`` times the template there plus ``floor`` times the fitted peak (the
    wings of a PSF that is not exactly Gaussian). Pixels of the outer ring more than 5 sigma above the fit (a
    cosmic ray or a neighbour next to a star) are left out and the fit repeated (twice at most); the central 3x3
    pixels always count. The search stops at the first template whose chi2 is at most ``stop``."""
    best = np.inf
    d = np.empty(25, np.float64)
    v = np.empty(25, np.float64)
    inner = np.zeros(25, np.bool_)
    inside = np.zeros(25, np.bool_)
    use = np.empty(25, np.bool_)
    n = 0
    nin = 0
    for dy in range(-2, 3):
        yy = _cl(y + dy, ny)
        for dx in range(-2, 3):
            xx = _cl(x + dx, nx)
            d[n] = img[yy, xx]
            v[n] = var[yy, xx] + max(img[yy, xx], 0.0)
            v[n] = max(v[n], 1e-5)
            inner[n] = abs(dy) <= 1 and abs(dx) <= 1
            # a star cut by the image edge is fitted on its pixels inside the image (replicated edge pixels are
            # no PSF)
            inside[n] = yy == y + dy and xx == x + dx
            if inside[n]:
                nin += 1
            n += 1
    for p in range(templates.shape[0]):
        t = templates[p]
        tmax = 0.0
        for k in range(25):
            tmax = max(tmax, t[k])
            use[k] = inside[k]
        nuse = nin
        c = 0.0
        for _rej in range(3):
            a, b = _fit_template(t, tmax, d, v, use, eps, floor, False)
            c = 0.0
            nrej = 0
            for k in range(25):
                if not use[k]:
                    continue
                r = d[k] - a * t[k] - b
                e2 = v[k] + (eps * a * t[k]) ** 2 + (floor * a * tmax) ** 2
                if not inner[k] and r > 0 and r * r > 25.0 * e2 and nuse > 15:
                    use[k] = False
                    nuse -= 1
                    nrej += 1
                else:
                    c += r * r / e2
            if nrej == 0:
                break
        best = min(best, c / (nuse - 2))
        if best <= stop:
            break  # a star: the exact minimum does not matter
    return best


@njit(cache=True, nogil=True)
def _seed_test(img, var, mask, y, x, ny, nx, sigclip, objlim, sepf, templates, chi2min, eps, floor, minsnr, buf,
               buf2):  # pragma: no cover - compiled
    if img[y, x] <= minsnr * np.sqrt(max(var[y, x], 1e-5)):
        return False
    lp = _lplus(img, y, x, ny, nx)
    noise = _noise(img, var, y, x, ny, nx, buf)
    s0 = lp / (2.0 * noise)
    if s0 <= sigclip:
        return False
    sp = _sprime(img, var, y, x, ny, nx, s0, buf, buf2)
    if sp <= sigclip:
        return False
    if sepf:
        tmp = np.empty((9, 9), np.float64)
        f = _fine_sep(img, y, x, ny, nx, noise, buf, buf2, tmp)
    else:
        f = _fine(img, y, x, ny, nx, noise, buf, buf2)
    if sp / f <= objlim:
        return False
    if chi2min > 0 and templates.shape[0] > 0:
        return _star_chi2(img, var, y, x, ny, nx, templates, eps, floor, chi2min) > chi2min
    return True


@njit(parallel=True, nogil=True, cache=True)
def _scan(img, var, mask, sigclip, objlim, sepf, minsnr, excl, satb, crbit, ncand, psf_nsig, sizes,
          pos):  # pragma: no cover
    """Full-image pass: bound test everywhere, L.A.Cosmic criteria on the survivors; seeds get ``crbit``.

    The same pass measures the bright point sources for the PSF width (:func:`_peak_size` on the pixels above
    ``psf_nsig`` sigma; ``sizes[y, k]``, ``pos[y, k]``): it reads neither the seeds nor a cleaned image.
    """
    ny, nx = img.shape
    nseed = np.zeros(ny, np.int64)
    thr = 2.0 * sigclip
    kmax = sizes.shape[1]
    notemp = np.empty((0, 25), np.float64)
    for y in prange(ny):
        buf = np.empty(96, np.float64)
        buf2 = np.empty(96, np.float64)
        c = 0
        k = 0
        kp = 0
        for x in range(nx):
            v = var[y, x]
            v = max(v, 1e-5)
            sv = np.sqrt(v)
            if img[y, x] > psf_nsig * sv and kp < kmax:
                sz = _peak_size(img, var, mask, excl, satb, y, x, ny, nx, buf)
                if sz > 0:
                    sizes[y, kp] = sz
                    pos[y, kp] = x
                    kp += 1
            if _lplus(img, y, x, ny, nx) <= thr * sv:
                continue
            if _excluded(mask, y, x, ny, nx, excl, satb):
                continue
            c += 1
            if _seed_test(img, var, mask, y, x, ny, nx, sigclip, objlim, sepf, notemp, 0.0, 0.0, 0.0, minsnr, buf,
                          buf2):
                mask[y, x] |= crbit
                k += 1
        ncand[y] = c
        nseed[y] = k
    return nseed


_MAXPEAKS = 8  # star-like peaks kept per image row by the first pass


@njit(cache=True, nogil=True)
def _peak_size(img, var, mask, excl, satb, y, x, ny, nx, buf):  # pragma: no cover - compiled
    """Size of a bright point source at (y, x), or 0 when the pixel is not one.

    A local maximum at least 3 pixels from the edges and from excluded pixels counts when it is not a lone spike
    (the median of its 3x3 box is at least 8 % of the peak: a cosmic-ray hit covers fewer than half of the box),
    round (7x7 second moments of the positive pixels, ``e^2 < 0.04``: not a track, a trail or a blend) and has wings
    (flux in the 7x7 box outside the 3x3 box above 4 % of the 3x3 flux and above 3 times its noise: a cosmic ray
    has none). The size is ``sqrt(flux_7x7 / (2 pi peak))``, the Gaussian sigma of a sampled PSF with that
    peak-to-flux ratio.
    """
    if y < 3 or y >= ny - 3 or x < 3 or x >= nx - 3:
        return 0.0
    p = img[y, x]
    for dy in range(-1, 2):
        for dx in range(-1, 2):
            if (dy != 0 or dx != 0) and img[y + dy, x + dx] >= p:
                return 0.0
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            m = mask[y + dy, x + dx]
            if (m & excl) != 0 or (m & satb) != 0:
                return 0.0
    n = 0
    for dy in range(-1, 2):
        for dx in range(-1, 2):
            buf[n] = img[y + dy, x + dx]
            n += 1
    if _median(buf, 9) < 0.08 * p:
        return 0.0
    f7 = 0.0
    f3 = 0.0
    v7 = 0.0
    mxx = 0.0
    myy = 0.0
    mxy = 0.0
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            q = img[y + dy, x + dx]
            f7 += q
            if abs(dy) <= 1 and abs(dx) <= 1:
                f3 += q
            else:
                v7 += var[y + dy, x + dx] + max(q, 0.0)
            if q > 0:
                mxx += q * dx * dx
                myy += q * dy * dy
                mxy += q * dx * dy
    tr = mxx + myy
    if f3 <= 0 or tr <= 0:
        return 0.0
    e2 = ((mxx - myy) ** 2 + 4 * mxy * mxy) / (tr * tr)
    wing = f7 - f3
    if e2 >= 0.04 or wing < 0.04 * f3 or wing < 3.0 * np.sqrt(v7):
        return 0.0
    return np.sqrt(f7 / (2.0 * np.pi * p))


@njit(cache=True, nogil=True)
def _gather(mask, rows, crbit):  # pragma: no cover - compiled
    ny, nx = mask.shape
    n = 0
    for y in rows:
        for x in range(nx):
            if (mask[y, x] & crbit) != 0:
                n += 1
    ys = np.empty(n, np.int32)
    xs = np.empty(n, np.int32)
    n = 0
    for y in rows:
        for x in range(nx):
            if (mask[y, x] & crbit) != 0:
                ys[n] = y
                xs[n] = x
                n += 1
    return ys, xs


@njit(cache=True, nogil=True)
def _neighbours(ys, xs, r, ny, nx, mask, excl, satb, crbit, prot):  # pragma: no cover - compiled
    """Unflagged, usable, unprotected pixels within a (2r+1)^2 box of the given pixels (unique); ``prot`` is the
    sorted array of the linear indices of the protected (star) pixels."""
    side = 2 * r + 1
    out_y = np.empty(len(ys) * side * side, np.int32)
    out_x = np.empty(len(ys) * side * side, np.int32)
    n = 0
    for k in range(len(ys)):
        for dy in range(-r, r + 1):
            yy = ys[k] + dy
            if yy < 0 or yy >= ny:
                continue
            for dx in range(-r, r + 1):
                xx = xs[k] + dx
                if xx < 0 or xx >= nx:
                    continue
                if (mask[yy, xx] & crbit) != 0:
                    continue
                out_y[n] = yy
                out_x[n] = xx
                n += 1
    lin = np.unique(out_y[:n].astype(np.int64) * nx + out_x[:n])
    keep = np.zeros(len(lin), np.bool_)
    for k in range(len(lin)):
        y = lin[k] // nx
        x = lin[k] % nx
        keep[k] = not _excluded(mask, y, x, ny, nx, excl, satb)
    if len(prot):
        pos = np.searchsorted(prot, lin)
        for k in range(len(lin)):
            if pos[k] < len(prot) and prot[pos[k]] == lin[k]:
                keep[k] = False
    lin = lin[keep]
    return (lin // nx).astype(np.int32), (lin % nx).astype(np.int32)


@njit(parallel=True, nogil=True, cache=True)
def _test_list(img, var, mask, ys, xs, sigclip, objlim, sepf, templates, chi2min, eps, floor, minsnr,
               full):  # pragma: no cover - compiled
    """Evaluate pixels of a list: the full seed test (``full``) or only ``S' > sigclip``."""
    ny, nx = img.shape
    n = len(ys)
    out = np.zeros(n, np.bool_)
    nchunk = 64
    for c in prange(nchunk):
        buf = np.empty(96, np.float64)
        buf2 = np.empty(96, np.float64)
        for k in range(c, n, nchunk):
            y = ys[k]
            x = xs[k]
            if full:
                out[k] = _seed_test(img, var, mask, y, x, ny, nx, sigclip, objlim, sepf, templates, chi2min, eps,
                                    floor, minsnr, buf, buf2)
            else:
                s0 = _s(img, var, y, x, ny, nx, buf)
                if s0 > sigclip:
                    out[k] = _sprime(img, var, y, x, ny, nx, s0, buf, buf2) > sigclip
    return out


@njit(cache=True, nogil=True)
def _fit_template(t, tmax, d, v, use, eps, floor, refit_level):  # pragma: no cover - compiled
    """Amplitude ``a`` (>= 0) and level ``b`` of ``d ~ a t + b`` over the 25 pixels with ``use``, weighted by the
    variance ``v`` plus a model error ``eps * a * t`` and a floor ``floor * a * tmax`` (two passes: the weights need
    ``a``). A negative amplitude is set to 0 (and, with ``refit_level``, ``b`` becomes the weighted mean)."""
    a = 0.0
    b = 0.0
    for _it in range(2):
        stt = 0.0
        st = 0.0
        s1 = 0.0
        std = 0.0
        sd = 0.0
        for k in range(25):
            if not use[k]:
                continue
            w = 1.0 / (v[k] + (eps * a * t[k]) ** 2 + (floor * a * tmax) ** 2)
            stt += w * t[k] * t[k]
            st += w * t[k]
            s1 += w
            std += w * t[k] * d[k]
            sd += w * d[k]
        det = stt * s1 - st * st
        if det <= 0:
            break
        a = (std * s1 - st * sd) / det
        b = (stt * sd - st * std) / det
        if a < 0:
            a = 0.0
            if refit_level:
                b = sd / s1
    return a, b


@njit(cache=True, nogil=True)
def _climb(img, y, x, ny, nx, steps, mask, skip):  # pragma: no cover - compiled
    """The local maximum reached from (y, x) by moving to the brightest pixel of the 3x3 box, at most ``steps``
    times, over pixels without a bit of ``skip`` in ``mask`` (``skip = 0``: every pixel)."""
    for _s in range(steps):
        by, bx = y, x
        best = img[y, x]
        for dy in range(-1, 2):
            yy = y + dy
            if yy < 0 or yy >= ny:
                continue
            for dx in range(-1, 2):
                xx = x + dx
                if xx < 0 or xx >= nx or (mask[yy, xx] & skip) != 0:
                    continue
                if img[yy, xx] > best:
                    best = img[yy, xx]
                    by, bx = yy, xx
        if by == y and bx == x:
            break
        y, x = by, bx
    return y, x


@njit(parallel=True, nogil=True, cache=True)
def _star_filter(img, var, mask, ys, xs, templates, chi2min, eps, floor, crbit,
                 next_to_cr):  # pragma: no cover - compiled
    """Seeds that are cosmic rays (``True``): the star test is made at the local maximum the seed belongs to
    (a star's seed need not be its central pixel); ``py, px`` get that maximum. With ``next_to_cr`` (the searches
    after cleaning) a maximum next to a pixel already flagged ``crbit`` is the remains of a track, not a star."""
    ny, nx = img.shape
    out = np.ones(len(ys), np.bool_)
    py = np.empty(len(ys), np.int64)
    px = np.empty(len(ys), np.int64)
    for k in prange(len(ys)):
        y, x = _climb(img, ys[k], xs[k], ny, nx, 3, mask, 0)
        py[k] = y
        px[k] = x
        if next_to_cr:
            near = False
            for dy in range(-1, 2):
                yy = y + dy
                if yy < 0 or yy >= ny:
                    continue
                for dx in range(-1, 2):
                    xx = x + dx
                    if 0 <= xx < nx and (dy != 0 or dx != 0) and (mask[yy, xx] & crbit) != 0:
                        near = True
            if near:
                continue
        out[k] = _star_chi2(img, var, y, x, ny, nx, templates, eps, floor, chi2min) > chi2min
    return out, py, px


@njit(parallel=True, nogil=True, cache=True)
def _grow_excess(img, var, mask, ys, xs, templates, eps, floor, crbit, nsig):  # pragma: no cover - compiled
    """Growth candidates (``ys, xs``, next to flagged pixels) that exceed by more than ``nsig`` sigma what the light
    around them predicts (``True``), or are not explained by it.

    A PSF (+ constant) is fitted, over the templates' sub-pixel phases, to the 5x5 box centred on the local maximum
    of the unflagged pixels next to the candidate (the candidate itself included in the climb), leaving out the
    flagged pixels, the pixels that touch a flagged one (the fainter edge of the same track: a PSF fitted to it would
    take it for a faint star and predict the candidate) when at least 10 others remain, and the candidate; the best
    template predicts the candidate's value. A star's core beside a cosmic ray is predicted by the rest of the star
    and is not grown into; a cosmic ray's own fainter pixels stand above the sky (or a star) around them. With no
    positive PSF amplitude the prediction is the fitted constant alone; with fewer than 10 usable pixels the
    candidate is grown into."""
    ny, nx = img.shape
    n = len(ys)
    out = np.ones(n, np.bool_)
    nt = templates.shape[0]
    for k in prange(n):
        y0 = ys[k]
        x0 = xs[k]
        # climb over unflagged pixels to the local maximum the candidate belongs to (at most 2 steps: the box
        # around it must still hold the candidate)
        cy, cx = _climb(img, y0, x0, ny, nx, 2, mask, crbit)
        d = np.empty(25, np.float64)
        v = np.empty(25, np.float64)
        use = np.zeros(25, np.bool_)
        kc = (y0 - cy + 2) * 5 + (x0 - cx + 2)
        m = 0
        nuse = 0
        for dy in range(-2, 3):
            yy = _cl(cy + dy, ny)
            for dx in range(-2, 3):
                xx = _cl(cx + dx, nx)
                d[m] = img[yy, xx]
                v[m] = max(var[yy, xx] + max(img[yy, xx], 0.0), 1e-5)
                use[m] = (mask[yy, xx] & crbit) == 0 and m != kc and yy == cy + dy and xx == cx + dx
                if use[m]:
                    nuse += 1
                m += 1
        # the light around: leave out the pixels that touch a flagged one too (the fainter edge of the same track,
        # which a PSF would otherwise fit as a faint star), when enough pixels remain
        far = np.zeros(25, np.bool_)
        nfar = 0
        for q in range(25):
            if not use[q]:
                continue
            yy = cy + q // 5 - 2
            xx = cx + q % 5 - 2
            touch = False
            for ey in range(-1, 2):
                for ex in range(-1, 2):
                    y2 = yy + ey
                    x2 = xx + ex
                    if 0 <= y2 < ny and 0 <= x2 < nx and (mask[y2, x2] & crbit) != 0:
                        touch = True
            if not touch:
                far[q] = True
                nfar += 1
        if nfar >= 10:
            use = far
            nuse = nfar
        bestc = np.inf
        pred = 0.0
        perr = v[kc]
        for p in range(nt if nuse >= 10 else 0):
            t = templates[p]
            tmax = 0.0
            for q in range(25):
                tmax = max(tmax, t[q])
            a, b = _fit_template(t, tmax, d, v, use, eps, floor, True)
            c = 0.0
            for q in range(25):
                if use[q]:
                    r = d[q] - a * t[q] - b
                    c += r * r / (v[q] + (eps * a * t[q]) ** 2 + (floor * a * tmax) ** 2)
            if c < bestc:
                bestc = c
                pred = a * templates[p][kc] + b
                perr = v[kc] + (eps * a * templates[p][kc]) ** 2 + (floor * a * tmax) ** 2
        if bestc < np.inf:
            out[k] = d[kc] - pred > nsig * np.sqrt(perr)
    return out


def _protected(py: np.ndarray, px: np.ndarray, r: int, shape: tuple[int, int]) -> np.ndarray:
    """Sorted linear indices of the pixels within a (2r+1)^2 box of the given star peaks."""
    ny, nx = shape
    if len(py) == 0:
        return np.empty(0, np.int64)
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    yy = (np.asarray(py, np.int64)[:, None] + oy.ravel()[None, :]).ravel()
    xx = (np.asarray(px, np.int64)[:, None] + ox.ravel()[None, :]).ravel()
    ok = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    return np.unique(yy[ok] * nx + xx[ok])


def psf_templates(sigma: float, *, phases: int = 5) -> np.ndarray:
    """Gaussian PSF (sampled at pixel centres) on a 5x5 box for ``phases**2`` sub-pixel centres in [-0.5, 0.5]."""
    yy, xx = np.mgrid[-2:3, -2:3].astype(np.float64)
    out = []
    for oy in np.linspace(-0.5, 0.5, phases):
        for ox in np.linspace(-0.5, 0.5, phases):
            out.append(np.exp(-((xx - ox) ** 2 + (yy - oy) ** 2) / (2 * sigma * sigma)).ravel())
    return np.array(out)


#: Gaussian widths (pixels) the star test accepts when the frame has too few stars to measure the PSF
FALLBACK_SIGMAS = (0.5, 0.65, 0.85, 1.1, 1.45, 1.9, 2.5, 3.2)


def psf_templates_multi(sigmas, *, phases: int = 5) -> np.ndarray:
    """:func:`psf_templates` for several widths, stacked."""
    return np.concatenate([psf_templates(float(sg), phases=phases) for sg in sigmas])


def _psf_sigma(sizes: np.ndarray, min_n: int = 5) -> float:
    """Mode of the stars' sizes (the densest 0.1-pixel window), robust to galaxies, blends and trails."""
    s = np.sort(sizes[(sizes > 0.45) & (sizes < 10)])
    if len(s) < max(min_n, 1):
        return 0.0
    w = 0.1
    j = np.searchsorted(s, s + w)
    i = int(np.argmax(j - np.arange(len(s))))
    return float(np.median(s[i:j[i]]))


@njit(cache=True, nogil=True)
def _clean(img, mask, ys, xs, excl, crbit):  # pragma: no cover - compiled
    """Replace flagged pixels by the mean of their unflagged, usable 5x5 neighbours (0 = the background)."""
    ny, nx = img.shape
    vals = np.empty(len(ys), np.float32)
    for k in range(len(ys)):
        y = ys[k]
        x = xs[k]
        s = 0.0
        n = 0
        for dy in range(-2, 3):
            yy = y + dy
            if yy < 0 or yy >= ny:
                continue
            for dx in range(-2, 3):
                xx = x + dx
                if xx < 0 or xx >= nx:
                    continue
                m = mask[yy, xx]
                if (m & crbit) != 0 or (m & excl) != 0:
                    continue
                s += img[yy, xx]
                n += 1
        vals[k] = s / n if n > 0 else 0.0
    for k in range(len(ys)):
        img[ys[k], xs[k]] = vals[k]


# ------------------------------------------------------------------------------------------------ driver
def detect_cosmics(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, *,
                   config: CosmicConfig = CosmicConfig()) -> CosmicResult:
    """Find cosmic-ray pixels with the L.A.Cosmic criteria (see the module documentation).

    Parameters
    ----------
    image : ndarray
        **Background-subtracted** calibrated image (e-, float32, C-contiguous). With ``config.replace`` the
        flagged pixels are replaced in place by the mean of their neighbours (else restored at the end).
    variance : ndarray
        Background-only variance (e-^2, float32), see :func:`upad.reduce.noise.variance_map`.
    mask : ndarray
        Bit-coded mask (int16), updated in place: ``COSMIC`` (and ``INTERPOLATED`` when replaced).
    config : CosmicConfig

    Returns
    -------
    CosmicResult
    """
    if image.dtype != np.float32 or not image.flags.c_contiguous:
        raise ValueError("detect_cosmics needs a C-contiguous float32 image (it cleans it in place)")
    if image.shape != variance.shape or image.shape != mask.shape:
        raise ValueError(f"image {image.shape}, variance {variance.shape} and mask {mask.shape} differ in shape")
    ny, nx = image.shape
    var = np.asarray(variance, np.float32)
    crbit = np.int16(mb.COSMIC)
    excl = np.int16(_EXCL)
    satb = np.int16(_SATB)
    sepf = config.fine_structure == "separable"
    sigclip, objlim = float(config.sigclip), float(config.objlim)
    chi2min, eps = float(config.star_chi2), float(config.star_model_error)
    floor = float(config.star_model_floor)
    minsnr = float(config.min_seed_snr)
    # one full-image pass: L.A.Cosmic's seeds (tentative) and, on the same unflagged image, the PSF width from the
    # frame's bright point sources (round peaks with wings; cosmic rays have none), whatever the seeing
    sizes = np.zeros((ny, _MAXPEAKS), np.float64)
    spos = np.zeros((ny, _MAXPEAKS), np.int64)
    ncand_rows = np.zeros(ny, np.int64)
    psf_nsig = float(config.psf_peak_snr) if chi2min > 0 else np.inf
    nseed = _scan(image, var, mask, sigclip, objlim, sepf, minsnr, excl, satb, crbit, ncand_rows, psf_nsig, sizes,
                  spos)
    n_cand = int(ncand_rows.sum())
    sel = sizes > 0
    star_y, k_ = np.nonzero(sel)
    star_x = spos[star_y, k_]
    star_y = star_y.astype(np.int64)
    sz = sizes[sel]
    n_psf = len(sz)
    psf_sigma = float(config.psf_sigma_px) or _psf_sigma(sz, int(config.psf_min_stars))
    if chi2min <= 0:
        templates = np.empty((0, 25))
    elif psf_sigma > 0:
        templates = psf_templates(psf_sigma)
    else:
        # too few stars to measure the PSF: any Gaussian from 0.5 to 3 pixels is a star (only what is sharper
        # than every PSF is a cosmic ray)
        templates = psf_templates_multi(FALLBACK_SIGMAS)
    rows = np.flatnonzero(nseed).astype(np.int64)
    ys, xs = _gather(mask, rows, crbit)
    if len(ys) and len(templates):
        keep, py, px = _star_filter(image, var, mask, ys, xs, templates, chi2min, eps, floor, crbit, False)
        if not keep.all():
            mask[ys[~keep], xs[~keep]] &= np.int16(~mb.COSMIC)
            ys, xs = ys[keep], xs[keep]
            star_y = np.concatenate([star_y, py[~keep]])
            star_x = np.concatenate([star_x, px[~keep]])
    # the stars found before any pixel was flagged (bright point sources, and the seeds that passed the star test)
    # are protected: not searched again after cleaning
    r_prot = int(max(2, math.ceil(2.0 * (psf_sigma or 1.0))))
    prot = _protected(star_y, star_x, r_prot, image.shape) if config.protect_stars else np.empty(0, np.int64)
    # later iterations only look next to detected cosmic rays, where the remains of a track after cleaning can
    # look like a faint star: there the star test spares only the local maxima that do not touch a flagged pixel
    # (unless asked for everywhere)
    chi2min_next = chi2min if config.star_test_all_iterations else 0.0
    guard_next = chi2min > 0 and len(templates) > 0 and not config.star_test_all_iterations
    grow_star = config.grow_excess_nsigma > 0
    grow_templates = templates if len(templates) else psf_templates_multi(FALLBACK_SIGMAS)
    # the growth is not refused by the star boxes: the excess test decides there (a star's core beside a cosmic ray
    # is predicted by the rest of the star; a track that the first pass took for a star's peak is not)
    noprot = np.empty(0, np.int64)
    all_y: list[np.ndarray] = []
    all_x: list[np.ndarray] = []
    all_v: list[np.ndarray] = []
    it = 0
    new_y, new_x = ys, xs
    while len(new_y) and it < config.niter:
        it += 1
        # grow this iteration's detections: neighbours with S' > sigclip, then neighbours of those with
        # S' > sigfrac * sigclip (astroscrappy's two dilations)
        for level in (sigclip, config.sigfrac * sigclip):
            ny_, nx_ = _neighbours(new_y, new_x, 1, ny, nx, mask, excl, satb, crbit, noprot)
            if len(ny_):
                if level < sigclip:
                    # the second dilation sees the first-level pixels cleaned: beside a bright pixel of the track a
                    # faint one has a Laplacian that the bright one makes negative (as the later iterations see it)
                    saved = image[new_y, new_x].copy()
                    _clean(image, mask, new_y, new_x, excl, crbit)
                    ok = _test_list(image, var, mask, ny_, nx_, float(level), objlim, sepf, templates, chi2min, eps,
                                    floor, minsnr, False)
                    image[new_y, new_x] = saved
                else:
                    ok = _test_list(image, var, mask, ny_, nx_, float(level), objlim, sepf, templates, chi2min, eps,
                                    floor, minsnr, False)
                if ok.any() and grow_star:
                    # not into the core of a star beside the cosmic ray: only pixels above what the light around
                    # them predicts
                    sub = np.flatnonzero(ok)
                    ok[sub] = _grow_excess(image, var, mask, ny_[sub], nx_[sub], grow_templates, eps, floor, crbit,
                                           float(config.grow_excess_nsigma))
                if ok.any():
                    gy, gx = ny_[ok], nx_[ok]
                    mask[gy, gx] |= crbit
                    new_y = np.concatenate([new_y, gy])
                    new_x = np.concatenate([new_x, gx])
        all_v.append(image[new_y, new_x].copy())
        all_y.append(new_y)
        all_x.append(new_x)
        _clean(image, mask, new_y, new_x, excl, crbit)
        if it >= config.niter:
            break
        # next iteration: only pixels near the cleaned ones can change
        cy, cx = _neighbours(new_y, new_x, 4, ny, nx, mask, excl, satb, crbit, prot)
        n_cand += len(cy)
        ok = _test_list(image, var, mask, cy, cx, sigclip, objlim, sepf, templates, chi2min_next, eps, floor,
                        minsnr, True)
        new_y, new_x = cy[ok], cx[ok]
        if len(new_y) and guard_next:
            keep, _py, _px = _star_filter(image, var, mask, new_y, new_x, templates, chi2min, eps, floor, crbit,
                                          True)
            new_y, new_x = new_y[keep], new_x[keep]
        if len(new_y):
            mask[new_y, new_x] |= crbit
    if all_y:
        ys = np.concatenate(all_y)
        xs = np.concatenate(all_x)
        orig = np.concatenate(all_v)
    else:
        ys = xs = np.empty(0, np.int32)
        orig = np.empty(0, np.float32)
    if len(ys):
        if config.replace:
            mask[ys, xs] |= np.int16(mb.INTERPOLATED)
        else:
            image[ys, xs] = orig
    return CosmicResult(x=xs.astype(np.int32), y=ys.astype(np.int32), original=orig.astype(np.float32),
                        n_candidates=n_cand, iterations=it, psf_sigma_px=psf_sigma, n_psf_stars=n_psf)
