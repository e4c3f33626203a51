"""Cosmic rays: the L.A.Cosmic criteria (van Dokkum 2001) evaluated only where they can be met.

L.A.Cosmic flags a pixel when three quantities, all local, pass thresholds:

* ``L+`` — the Laplacian of the 2x-subsampled image, negative values clipped, block-averaged back. On the
  replicated grid it reduces to ``L+ = 1/4 sum over the 4 corners (dy, dx) of max(2p - p[y+dy, x] - p[y, x+dx], 0)``;
* ``S = L+ / (2 N)`` with ``N`` the noise of the pixel, ``sqrt(var_sky + max(med5(I), 0))`` (a 5x5 median of the
  background-subtracted image gives the source's own Poisson noise), and ``S' = S - med5(S)`` (removes the
  Laplacian of smooth structures); a cosmic ray needs ``S' > sigclip``;
* the fine-structure contrast ``S' / F > objlim`` with ``F = (med3(I) - med7(med3(I))) / N`` (>= 0.01): star cores
  have fine structure, cosmic rays are sharper.

Neighbours of the detections are added when ``S' > sigclip`` and then, once more, when ``S' > sigfrac sigclip``;
the flagged pixels are replaced by the mean of their unflagged 5x5 neighbours and the search is repeated near them
(``niter`` times), as astroscrappy does.

**Where the speed comes from.** ``S' <= S <= L+ / (2 sqrt(var_sky))`` because both medians are of non-negative
numbers, so a pixel whose ``L+`` is below ``2 sigclip sqrt(var_sky)`` can never be a cosmic ray. One pass over the
image computes that bound (a handful of operations per pixel); the medians — the whole cost of L.A.Cosmic — are only
evaluated on the few pixels that pass it (stars and cosmic rays, about 1 % of the pixels), in compiled code (numba)
running in parallel. Later iterations only revisit the pixels within 4 pixels of the previous detections, the only
ones whose criteria changed. The result is the same set of flags as a full-image L.A.Cosmic with these medians
(exact 5x5/3x3/7x7 medians, i.e. astroscrappy with ``sepmed=False``).

Pixels flagged ``BAD``, ``NODATA``, ``SATURATED``, ``BLEED`` or ``SATELLITE`` (and pixels within 2 pixels of
saturated ones) are never flagged nor used to clean: run the satellite-trail detection first (a trail is as sharp as
the PSF and L.A.Cosmic would eat it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from upad import maskbits as mb
from upad.config import StepConfig, param
from upad.reduce._jit import njit, prange

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
    psf_sigma_px: float = param(0.0, doc="Gaussian sigma of the sampled PSF for the star test; 0: measured from "
                                         "the bright stars of the frame", bounds=(0.0, 20.0), unit="pixel")
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
        Gaussian sigma of the sampled PSF used by the star test (0 when none was used).
    """

    x: np.ndarray
    y: np.ndarray
    original: np.ndarray
    n_candidates: int
    iterations: int
    psf_sigma_px: float = 0.0

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


@njit(cache=True, nogil=True)
def _median(buf, n):  # pragma: no cover - compiled
    # insertion sort of buf[:n]; returns the median (mean of the two middle values for even n)
    for i in range(1, n):
        v = buf[i]
        j = i - 1
        while j >= 0 and buf[j] > v:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = v
    h = n // 2
    if n % 2 == 1:
        return buf[h]
    return 0.5 * (buf[h - 1] + buf[h])


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
def _star_chi2(img, var, y, x, ny, nx, templates, eps):  # pragma: no cover - compiled
    """Smallest chi2 per degree of freedom of a PSF (+ constant) fitted to the 5x5 box, over sub-pixel phases."""
    best = np.inf
    d = np.empty(25, np.float64)
    v = np.empty(25, np.float64)
    n = 0
    for dy in range(-2, 3):
        yy = _cl(y + dy, ny)
        for dx in range(-2, 3):
            xx = _cl(x + dx, nx)
            d[n] = img[yy, xx]
            v[n] = var[yy, xx] + max(img[yy, xx], 0.0)
            v[n] = max(v[n], 1e-5)
            n += 1
    for p in range(templates.shape[0]):
        t = templates[p]
        a = 0.0
        b = 0.0
        for _it in range(2):
            stt = 0.0
            st = 0.0
            s1 = 0.0
            std = 0.0
            sd = 0.0
            for k in range(25):
                w = 1.0 / (v[k] + (eps * a * t[k]) ** 2)
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
        c = 0.0
        for k in range(25):
            r = d[k] - a * t[k] - b
            c += r * r / (v[k] + (eps * a * t[k]) ** 2)
        best = min(best, c)
    return best / 23.0


@njit(cache=True, nogil=True)
def _seed_test(img, var, mask, y, x, ny, nx, sigclip, objlim, sepf, templates, chi2min, eps, minsnr, buf,
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
        return _star_chi2(img, var, y, x, ny, nx, templates, eps) > chi2min
    return True


@njit(parallel=True, nogil=True, cache=True)
def _scan(img, var, mask, sigclip, objlim, sepf, minsnr, excl, satb, crbit, ncand, peak_size):  # pragma: no cover
    """Full-image pass: bound test everywhere, L.A.Cosmic criteria on the survivors; seeds get ``crbit``.

    Also records, per row, the size ``sqrt(flux_7x7 / (2 pi peak))`` of the brightest local maximum above 30 sigma
    that is not a seed (a star, mostly), for the PSF estimate of the star test.
    """
    ny, nx = img.shape
    nseed = np.zeros(ny, np.int64)
    thr = 2.0 * sigclip
    notemp = np.empty((0, 25), np.float64)
    for y in prange(ny):
        buf = np.empty(96, np.float64)
        buf2 = np.empty(96, np.float64)
        c = 0
        k = 0
        best = 0.0
        peak_size[y] = 0.0
        for x in range(nx):
            v = var[y, x]
            v = max(v, 1e-5)
            if _lplus(img, y, x, ny, nx) <= thr * np.sqrt(v):
                continue
            if _excluded(mask, y, x, ny, nx, excl, satb):
                continue
            c += 1
            if _seed_test(img, var, mask, y, x, ny, nx, sigclip, objlim, sepf, notemp, 0.0, 0.0, minsnr, buf,
                          buf2):
                mask[y, x] |= crbit
                k += 1
                continue
            p = img[y, x]
            if p > 30.0 * np.sqrt(v) and p > best and 3 <= y < ny - 3 and 3 <= x < nx - 3:
                ismax = True
                for dy in range(-1, 2):
                    for dx in range(-1, 2):
                        if img[y + dy, x + dx] > p:
                            ismax = False
                if ismax:
                    # flux and second moments over 7x7: round peaks only (not trails, not blends)
                    f = 0.0
                    mxx = 0.0
                    myy = 0.0
                    mxy = 0.0
                    for dy in range(-3, 4):
                        for dx in range(-3, 4):
                            q = img[y + dy, x + dx]
                            f += q
                            if q > 0:
                                mxx += q * dx * dx
                                myy += q * dy * dy
                                mxy += q * dx * dy
                    tr = mxx + myy
                    if f > 0 and tr > 0:
                        e2 = ((mxx - myy) ** 2 + 4 * mxy * mxy) / (tr * tr)
                        if e2 < 0.04:
                            best = p
                            peak_size[y] = np.sqrt(f / (2.0 * np.pi * p))
        ncand[y] = c
        nseed[y] = k
    return nseed


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
def _neighbours(ys, xs, r, ny, nx, mask, excl, satb, crbit):  # pragma: no cover - compiled
    """Unflagged, usable pixels within a (2r+1)^2 box of the given pixels (unique)."""
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
    lin = lin[keep]
    return (lin // nx).astype(np.int32), (lin % nx).astype(np.int32)


@njit(parallel=True, nogil=True, cache=True)
def _test_list(img, var, mask, ys, xs, sigclip, objlim, sepf, templates, chi2min, eps, minsnr,
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
                                    minsnr, buf, buf2)
            else:
                s0 = _s(img, var, y, x, ny, nx, buf)
                if s0 > sigclip:
                    out[k] = _sprime(img, var, y, x, ny, nx, s0, buf, buf2) > sigclip
    return out


@njit(parallel=True, nogil=True, cache=True)
def _star_filter(img, var, ys, xs, templates, chi2min, eps):  # pragma: no cover - compiled
    ny, nx = img.shape
    out = np.ones(len(ys), np.bool_)
    for k in prange(len(ys)):
        out[k] = _star_chi2(img, var, ys[k], xs[k], ny, nx, templates, eps) > chi2min
    return out


def psf_templates(sigma: float, *, phases: int = 5) -> np.ndarray:
    """Gaussian PSF (sampled at pixel centres) on a 5x5 box for ``phases**2`` sub-pixel centres in [-0.5, 0.5]."""
    yy, xx = np.mgrid[-2:3, -2:3].astype(np.float64)
    out = []
    for oy in np.linspace(-0.5, 0.5, phases):
        for ox in np.linspace(-0.5, 0.5, phases):
            out.append(np.exp(-((xx - ox) ** 2 + (yy - oy) ** 2) / (2 * sigma * sigma)).ravel())
    return np.array(out)


def _psf_sigma(sizes: np.ndarray) -> float:
    """Mode of the stars' sizes (the densest 0.1-pixel window), robust to galaxies, blends and trails."""
    s = np.sort(sizes[(sizes > 0.45) & (sizes < 10)])
    if len(s) < 5:
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
    ncand_rows = np.zeros(ny, np.int64)
    peak_size = np.zeros(ny, np.float64)
    minsnr = float(config.min_seed_snr)
    nseed = _scan(image, var, mask, sigclip, objlim, sepf, minsnr, excl, satb, crbit, ncand_rows, peak_size)
    n_cand = int(ncand_rows.sum())
    rows = np.flatnonzero(nseed).astype(np.int64)
    ys, xs = _gather(mask, rows, crbit)
    psf_sigma = float(config.psf_sigma_px) or _psf_sigma(peak_size[peak_size > 0])
    templates = psf_templates(psf_sigma) if (chi2min > 0 and psf_sigma > 0) else np.empty((0, 25))
    if len(ys) and len(templates):
        keep = _star_filter(image, var, ys, xs, templates, chi2min, eps)
        if not keep.all():
            mask[ys[~keep], xs[~keep]] &= np.int16(~mb.COSMIC)
            ys, xs = ys[keep], xs[keep]
    # later iterations only look next to detected cosmic rays, where the remains of a track after cleaning can
    # look like a faint star: the star test guards the first pass only (unless asked for everywhere)
    chi2min_next = chi2min if config.star_test_all_iterations else 0.0
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
            ny_, nx_ = _neighbours(new_y, new_x, 1, ny, nx, mask, excl, satb, crbit)
            if len(ny_):
                ok = _test_list(image, var, mask, ny_, nx_, float(level), objlim, sepf, templates, chi2min, eps,
                                minsnr, False)
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
        cy, cx = _neighbours(new_y, new_x, 4, ny, nx, mask, excl, satb, crbit)
        n_cand += len(cy)
        ok = _test_list(image, var, mask, cy, cx, sigclip, objlim, sepf, templates, chi2min_next, eps, minsnr,
                        True)
        new_y, new_x = cy[ok], cx[ok]
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
                        n_candidates=n_cand, iterations=it, psf_sigma_px=psf_sigma)
