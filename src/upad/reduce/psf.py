"""PSF analysis: FWHM and ellipticity across the field, and a PSF model for photometry and PSF homogenisation.

**Stars.** Bright (``min_snr``), unflagged, unmasked, isolated detections on the stellar locus (adaptive-moment
size within ``locus_width`` of the mode of the bright sources).

**Shape of each star.** Adaptive (Gaussian-weighted) second moments of the pixelated star give its size
``T = Ixx + Iyy`` and distortion ``(Ixx - Iyy, 2 Ixy) / T``. They are turned into the parameters of an elliptical
Moffat profile *before* the pixel response — the FWHM, the reduced shear ``(g1, g2)`` — by a calibration made with
the same measurement applied to pixel-integrated Moffat stars rendered on a grid of FWHM and ``beta``
(:func:`calibration_table`). The Moffat ``beta`` of the frame comes from the stars' concentration (the ratio of
their fluxes under round Gaussian weights of one and three moment radii) compared with the same calibration.

**Field variation.** FWHM, ``g1`` and ``g2`` are fitted by polynomials of order ``variation_order`` over the field
(sigma-clipped): :class:`PsfModel` evaluates them anywhere and renders the analytic PSF (pixel-integrated, any
sub-pixel position). It also carries, for each of ``zones x zones`` zones, an *empirical* PSF (ePSF): the stars'
pixels, normalised by their flux and binned on a grid ``oversampling`` times finer than the pixels around their
centres (the PSF convolved with the pixel, as Anderson & King's ePSF); empty bins are filled by the analytic model.
These grids are what PSF homogenisation needs (matching kernels, per zone).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from upad.config import StepConfig, param
from upad.reduce._moments import moments
from upad.reduce.errors import ReductionError

__all__ = ["PsfConfig", "PsfModel", "PsfResult", "measure_psf", "moffat_stamp", "calibration_table",
           "adaptive_moments"]

_GL2 = (np.array([-0.577350269189626, 0.577350269189626]) * 0.5, np.array([0.5, 0.5]))
_GL4 = (np.array([-0.861136311594053, -0.339981043584856, 0.339981043584856, 0.861136311594053]) * 0.5,
        np.array([0.347854845137454, 0.652145154862546, 0.652145154862546, 0.347854845137454]) * 0.5)


@dataclass(frozen=True)
class PsfConfig(StepConfig):
    """Parameters of the PSF analysis."""

    min_snr: float = param(50.0, doc="S/N (FLUX_AUTO) of the PSF stars", bounds=(5.0, None))
    max_stars: int = param(3000, doc="brightest PSF stars used", bounds=(5, None))
    min_stars: int = param(5, doc="fewest PSF stars for a model", bounds=(3, None))
    locus_width: float = param(0.15, doc="relative width of the stellar locus in moment size", bounds=(0.01, 1.0))
    max_ellipticity: float = param(0.3, doc="most elongated candidate star (1 - b/a)", bounds=(0.0, 1.0))
    isolation_fwhm: float = param(3.0, doc="no other detection within this many FWHM", bounds=(0.0, 50.0))
    max_peak_e: float = param(50000.0, doc="brightest peak of a PSF star (non-linearity)", bounds=(0.0, None),
                              unit="e-")
    beta: float = param(0.0, doc="Moffat beta; 0: measured from the stars' concentration", bounds=(0.0, 20.0))
    beta_bootstrap: int = param(50, doc="resamples of the stars for the uncertainty of the measured beta (0: none)",
                                bounds=(0, None))
    variation_order: int = param(2, doc="order of the polynomials of FWHM and shear over the field",
                                 bounds=(0, 4))
    zones: int = param(0, doc="empirical PSF zones per axis (0: from the number of stars, at most 8)",
                       bounds=(0, 32))
    oversampling: int = param(2, doc="oversampling of the empirical PSF grids", bounds=(1, 8))
    stamp_radius_fwhm: float = param(4.0, doc="half-size of the empirical PSF grids, in FWHM", bounds=(1.0, 20.0))
    profile_stars: int = param(80, doc="brightest PSF stars to which the frame's radial profile is fitted (0: a "
                                        "Moffat profile of the measured beta instead)", bounds=(0, None))
    profile_smoothness: float = param(0.1, doc="weight of the smoothness prior of the frame's radial profile fitted "
                                               "beside the free one (second differences of its amplitudes over a "
                                               "dense grid of log-spaced Gaussian widths, relative to the data's "
                                               "mean curvature); the free profile is kept only when its free widths "
                                               "improve chi^2 by more than 2 each (Akaike); 0: the free one always",
                                      bounds=(0.0, 10.0))
    profile_widths: int = param(24, doc="Gaussian widths (0.25 to 2 FWHM) of the smooth profile's grid",
                                bounds=(6, 64))
    shear_fit_fwhm: float = param(2.0, doc="below this FWHM each profile star's shear is fitted (with its flux, "
                                           "centre and size) and the profile to the sheared stars: a round profile "
                                           "fitted to elliptical, undersampled stars takes their ellipticity into "
                                           "its shape and its FWHM is off by several per cent (0: never)",
                                  bounds=(0.0, None), unit="px")

    def validate(self) -> None:
        super().validate()
        self.require(self.min_stars <= self.max_stars, "min_stars",
                     f"= {self.min_stars} is above max_stars = {self.max_stars}",
                     hint="min_stars is the fewest PSF stars for a model, max_stars the most used: raise max_stars "
                          "or lower min_stars")


# ------------------------------------------------------------------------------------------------ rendering
def _sheared_r2(dx: np.ndarray, dy: np.ndarray, g1: float, g2: float) -> np.ndarray:
    """Squared radius in the unsheared frame (GalSim's area-preserving reduced shear)."""
    gg = g1 * g1 + g2 * g2
    f = 1.0 / math.sqrt(max(1.0 - gg, 1e-6))
    u = f * ((1 - g1) * dx - g2 * dy)
    v = f * (-g2 * dx + (1 + g1) * dy)
    return u * u + v * v


def moffat_stamp(size: int, x0: float, y0: float, fwhm: float, beta: float, *, g1: float = 0.0, g2: float = 0.0,
                 flux: float = 1.0, oversampling: int = 1) -> np.ndarray:
    """Pixel-integrated elliptical Moffat on a ``size x size`` grid.

    Pixel ``[j, i]`` is centred on ``(i, j)`` (0-based) of the stamp; the profile is centred at ``(x0, y0)`` in
    the same coordinates. With ``oversampling = k`` the grid has ``k`` samples per pixel and each sample is the
    *pixel*-integrated profile at that position (an ePSF grid), the stamp then covering ``size / k`` pixels.
    """
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    norm = (beta - 1.0) / (math.pi * alpha * alpha)
    # 4 x 4 Gauss-Legendre points integrate the pixel; 2 x 2 suffice for a PSF wider than 4 pixels
    pts, wts = _GL4 if fwhm * oversampling < 4.0 * oversampling or oversampling > 1 else _GL2
    c = np.arange(size) / oversampling
    out = np.zeros((size, size))
    for py, wy in zip(pts, wts):
        dy = c[:, None] + py - y0
        for px, wx in zip(pts, wts):
            dx = c[None, :] + px - x0
            r2 = _sheared_r2(dx, dy, g1, g2)
            out += wy * wx * norm * (1.0 + r2 / (alpha * alpha)) ** (-beta)
    return out * flux


def moffat_enclosed(r: float | np.ndarray, fwhm: float, beta: float) -> np.ndarray:
    """Fraction of a round Moffat's flux within radius ``r`` (same unit as ``fwhm``; no pixel response)."""
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    return 1.0 - (1.0 + (np.asarray(r, float) / alpha) ** 2) ** (1.0 - beta)


# ------------------------------------------------------------------------------------------------ moments
def adaptive_moments(image: np.ndarray, x: np.ndarray, y: np.ndarray, *, sigma0: float | np.ndarray = 1.5,
                     maxit: int = 50) -> np.ndarray:
    """Adaptive moments (:func:`upad.reduce._moments.moments`): columns ``Sxx, Syy, Sxy, x, y, F1, F3`` with
    ``F1, F3`` the fluxes under round Gaussian weights of sigma ``r`` and ``3 r``, ``r = sqrt((Sxx + Syy) / 2)``."""
    return moments(image, x, y, sigma0=sigma0, maxit=maxit)


# ------------------------------------------------------------------------------------------------ calibration
_BETAS = (1.8, 2.2, 2.6, 3.0, 3.5, 4.2, 5.0, 7.0)
_FWHMS = tuple(float(v) for v in np.geomspace(0.9, 16.0, 20))


_TABLE_VERSION = 3  # bump when the moments, the rendering or the grids change


def _cache_file(shear: float) -> Path | None:
    base = os.environ.get("UPAD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "upad")
    return Path(base) / f"psf-calibration-v{_TABLE_VERSION}-{shear:g}.npz"


@lru_cache(maxsize=4)
def calibration_table(shear: float = 0.05) -> dict[str, np.ndarray]:
    """The calibration of :func:`_calibration_table`, cached in memory and on disk (``$UPAD_CACHE`` or
    ``~/.cache/upad``; recomputed, ~0.3 s, when the cache is missing or unwritable)."""
    path = _cache_file(shear)
    if path is not None and path.exists():
        try:
            with np.load(path) as z:
                tab = {k: z[k] for k in ("beta", "fwhm", "T", "C", "R")}
            if tuple(tab["beta"]) == _BETAS and len(tab["fwhm"]) == len(_FWHMS):
                return tab
        except (OSError, ValueError, KeyError):
            pass
    tab = _calibration_table(shear)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **tab)
            os.replace(tmp, path)
        except OSError:
            pass
    return tab


def _calibration_table(shear: float = 0.05) -> dict[str, np.ndarray]:
    """Measurement-in-the-loop calibration: adaptive-moment size ``T``, concentration ``c = F1 / F3`` and
    the distortion response ``R = delta_measured / delta_true`` of pixel-integrated Moffat stars, for
    :data:`_BETAS` x :data:`_FWHMS` (pixels), averaged over two sub-pixel phases."""
    nb, nf = len(_BETAS), len(_FWHMS)
    T = np.zeros((nb, nf))
    C = np.zeros((nb, nf))
    R = np.zeros((nb, nf))
    for i, beta in enumerate(_BETAS):
        for j, fw in enumerate(_FWHMS):
            size = int(2 * math.ceil(4.5 * fw + 8) + 1)
            c0 = (size - 1) / 2
            stamps, xs, ys = [], [], []
            for ph in (0.0, 0.5):
                stamps.append(moffat_stamp(size, c0 + ph, c0 + ph / 2, fw, beta))
                stamps.append(moffat_stamp(size, c0 + ph, c0 + ph / 2, fw, beta, g1=shear))
            big = np.concatenate(stamps, axis=1).astype(np.float32)
            xs = np.array([c0 + k * size + (0.0 if k < 2 else 0.5) for k in range(4)])
            ys = np.array([c0, c0, c0 + 0.25, c0 + 0.25])
            m = adaptive_moments(big, xs, ys, sigma0=max(fw / 2.355, 1.0))
            tr = m[:, 0] + m[:, 1]
            T[i, j] = 0.5 * (tr[0] + tr[2])
            C[i, j] = 0.5 * (m[0, 5] / m[0, 6] + m[2, 5] / m[2, 6])
            d_true = 2 * shear / (1 + shear * shear)
            d_meas = 0.5 * ((m[1, 0] - m[1, 1]) / tr[1] + (m[3, 0] - m[3, 1]) / tr[3])
            R[i, j] = d_meas / d_true
    return {"beta": np.array(_BETAS), "fwhm": np.array(_FWHMS), "T": T, "C": C, "R": R}


def _interp_beta(table: dict, beta: float, key: str) -> np.ndarray:
    b = table["beta"]
    i = int(np.clip(np.searchsorted(b, beta) - 1, 0, len(b) - 2))
    t = float(np.clip((beta - b[i]) / (b[i + 1] - b[i]), 0.0, 1.0))
    return (1 - t) * table[key][i] + t * table[key][i + 1]


def _fwhm_from_T(table: dict, beta: float, T: np.ndarray) -> np.ndarray:
    tt = _interp_beta(table, beta, "T")
    return np.exp(np.interp(np.log(np.maximum(T, 1e-6)), np.log(tt), np.log(table["fwhm"]), left=np.nan,
                            right=np.nan))


def _beta_error(table: dict, T: np.ndarray, C: np.ndarray, n_boot: int, seed: int = 0) -> float:
    """Uncertainty of :func:`_fit_beta`: the standard deviation of the betas fitted to ``n_boot`` resamples of the
    stars (with replacement), combined in quadrature with the fit's grid step over sqrt(12). It is the statistical
    uncertainty of the Moffat-equivalent beta, not whether the PSF is a Moffat (a double Gaussian's or an
    undersampled core has a well-defined equivalent beta that says nothing of its wing)."""
    grid_step = (table["beta"][-1] - table["beta"][0]) / 52.0
    if n_boot <= 0 or T.size < 3:
        return float(grid_step / math.sqrt(12.0))
    rng = np.random.default_rng(seed)
    bs = [_fit_beta(table, T[k], C[k]) for k in (rng.integers(0, T.size, T.size) for _ in range(n_boot))]
    return float(math.hypot(np.std(bs), grid_step / math.sqrt(12.0)))


def _fit_beta(table: dict, T: np.ndarray, C: np.ndarray) -> float:
    """The beta whose calibration best predicts the stars' concentration at their size."""
    grid = np.linspace(table["beta"][0], table["beta"][-1], 53)
    cost = []
    for b in grid:
        tt = _interp_beta(table, b, "T")
        cc = _interp_beta(table, b, "C")
        pred = np.interp(np.log(T), np.log(tt), cc, left=np.nan, right=np.nan)
        r = C - pred
        r = r[np.isfinite(r)]
        cost.append(np.median(np.abs(r)) if len(r) else np.inf)
    return float(grid[int(np.argmin(cost))])


# ------------------------------------------------------------------------------------------------ profile
def _pix_gauss_1d(d: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """Integral over a pixel of a unit 1-D Gaussian of sigma ``sig`` centred ``d`` from the pixel's centre
    (``d``: (..., 1), ``sig``: (K,))."""
    from scipy.special import erf

    a = 1.0 / (math.sqrt(2.0) * sig)
    return 0.5 * (erf((d + 0.5) * a) - erf((d - 0.5) * a))


def _dpix_gauss_1d(d: np.ndarray, sig: np.ndarray) -> np.ndarray:
    """Derivative of :func:`_pix_gauss_1d` with respect to ``d``."""
    c = 1.0 / (math.sqrt(2.0 * math.pi) * sig)
    return c * (np.exp(-0.5 * ((d + 0.5) / sig) ** 2) - np.exp(-0.5 * ((d - 0.5) / sig) ** 2))


def _pix_gauss_2d(dx: np.ndarray, dy: np.ndarray, sig: np.ndarray, g1: np.ndarray | None = None,
                  g2: np.ndarray | None = None, *, deriv: bool = False):
    """Integrals over the pixels of unit round Gaussians of sigma ``sig`` sheared by the reduced shear ``(g1, g2)``
    (GalSim's, area-preserving), for ``n`` stars.

    ``dx``: ``(n, W, K)``, the x offsets of the pixel columns' centres from each component's centre; ``dy``:
    ``(n, W, K)`` the same along y; ``sig``: ``(n, 1, K)`` or ``(n, K)``; ``g1, g2``: ``(n,)`` or None (round).
    Returns ``(n, W_y, W_x, K)``, with ``deriv`` also its derivatives with respect to ``dx`` and ``dy``. A round or
    axis-aligned (``g2 = 0``) Gaussian is separable and integrated exactly (erf); otherwise the x integral is exact
    (the x profile at a given y is a Gaussian of mean ``y Cxy / Cyy`` and variance ``Cxx - Cxy^2 / Cyy``) and the y
    integral is Gauss-Legendre (6, 4 or 3 points per pixel for a y sigma below 0.35, 0.7 or above: better than
    3e-4 of the pixel value)."""
    from scipy.special import erf

    sig = np.asarray(sig, float)
    if sig.ndim == 2:
        sig = sig[:, None, :]
    if g1 is None or g2 is None or not (np.any(g1) or np.any(g2)):
        sx = sy = sig
    else:
        g1 = np.asarray(g1, float)[:, None, None]
        g2 = np.asarray(g2, float)[:, None, None]
        f2 = 1.0 / np.maximum(1.0 - g1 * g1 - g2 * g2, 1e-6)
        s2 = sig * sig * f2
        cxx, cyy, cxy = s2 * ((1 + g1) ** 2 + g2 * g2), s2 * ((1 - g1) ** 2 + g2 * g2), s2 * 2 * g2
        sx, sy = np.sqrt(cxx), np.sqrt(cyy)
    if g2 is None or not np.any(g2):
        ex, ey = _pix_gauss_1d(dx, sx), _pix_gauss_1d(dy, sy)
        out = ey[:, :, None, :] * ex[:, None, :, :]
        if not deriv:
            return out
        return (out, ey[:, :, None, :] * _dpix_gauss_1d(dx, sx)[:, None, :, :],
                _dpix_gauss_1d(dy, sy)[:, :, None, :] * ex[:, None, :, :])
    slope = cxy / cyy  # (n, 1, K)
    sxc = np.sqrt(np.maximum(cxx - cxy * slope, 1e-12))
    smin = float(sy.min())
    t, w = np.polynomial.legendre.leggauss(6 if smin < 0.35 else 4 if smin < 0.7 else 3)
    t, w = 0.5 * t, 0.5 * w
    yq = dy[:, :, None, :] + t[None, None, :, None]  # (n, Wy, Q, K)
    syq = sy[:, :, None, :]
    gy = w[None, None, :, None] * np.exp(-0.5 * (yq / syq) ** 2) / (math.sqrt(2 * math.pi) * syq)
    sl = slope[:, :, None, :]
    arg = dx[:, None, None, :, :] - (sl * yq)[:, :, :, None, :]  # (n, Wy, Q, Wx, K)
    a = 1.0 / (math.sqrt(2.0) * sxc[:, :, None, :])[:, :, :, None, :]
    px = 0.5 * (erf((arg + 0.5) * a) - erf((arg - 0.5) * a))
    out = np.einsum("nyqk,nyqxk->nyxk", gy, px)
    if not deriv:
        return out
    dpx = (a / math.sqrt(math.pi)) * (np.exp(-((arg + 0.5) * a) ** 2) - np.exp(-((arg - 0.5) * a) ** 2))
    d_dx = np.einsum("nyqk,nyqxk->nyxk", gy, dpx)
    d_dy = (np.einsum("nyqk,nyqxk->nyxk", -yq / (syq * syq) * gy, px)
            - np.einsum("nyqk,nyqxk->nyxk", gy * sl, dpx))
    return out, d_dx, d_dy


def mixture_fwhm(sig: np.ndarray, amp: np.ndarray, dx: np.ndarray | None = None,
                 dy: np.ndarray | None = None) -> float:
    """Effective FWHM ``2 sqrt(A / pi)`` (``A``: area where the profile is at least half its peak) of a mixture of
    round Gaussians (offset by ``dx, dy`` from each other when given; concentric: ``2 r`` with ``r`` where the
    profile is half its peak)."""
    from scipy.optimize import brentq

    sig, amp = np.asarray(sig, float), np.asarray(amp, float)
    if dx is not None and (np.any(np.asarray(dx) != 0) or np.any(np.asarray(dy) != 0)):
        f0 = mixture_fwhm(sig, amp)
        h = f0 / 32.0
        g = (np.arange(-192, 193) * h)
        xx, yy = g[None, :], g[:, None]
        img = np.zeros((len(g), len(g)))
        for a, s_, ox, oy in zip(amp, sig, dx, dy):
            img += a / (2 * math.pi * s_ * s_) * np.exp(-0.5 * ((xx - ox) ** 2 + (yy - oy) ** 2) / (s_ * s_))
        half = 0.5 * img.max()
        gy, gx = np.gradient(img, h)
        grad = np.hypot(gx, gy) * h
        frac = np.clip(0.5 + (img - half) / np.maximum(grad, 1e-300), 0.0, 1.0)
        return float(2 * math.sqrt(frac.sum() * h * h / math.pi))
    peak = float(np.sum(amp / (2 * math.pi * sig ** 2)))

    def f(r: float) -> float:
        return float(np.sum(amp / (2 * math.pi * sig ** 2) * np.exp(-0.5 * (r / sig) ** 2))) - 0.5 * peak

    return 2.0 * brentq(f, 0.0, 10.0 * float(sig.max()))


def mixture_stamp(size: int, x0: float, y0: float, sig: np.ndarray, amp: np.ndarray, *, g1: float = 0.0,
                  g2: float = 0.0, oversampling: int = 1, dx: np.ndarray | None = None,
                  dy: np.ndarray | None = None) -> np.ndarray:
    """Pixel-integrated, sheared Gaussian mixture (unit total flux when ``sum(amp) = 1``) on a ``size x size``
    grid (conventions of :func:`moffat_stamp`).

    Every component is integrated over the pixel by :func:`_pix_gauss_2d`, the integral the profile is *fitted*
    with (exact erf along x, and along y too when ``g2 = 0``): the model drawn is the model fitted. (A ``3 x 3``
    midpoint sum per pixel, used before for components wider than 0.6 pixel, convolves with three points instead of
    the pixel: variance ``(1 - 1/9) / 12`` per axis instead of ``1 / 12``, the drawn star's ``T`` 0.0185 pixel^2
    smaller than the fitted one's, -1 to -2 % at FWHM 1.5-2 pixels.)"""
    sig = np.asarray(sig, float)
    amp = np.asarray(amp, float)
    ox = np.zeros_like(sig) if dx is None else np.asarray(dx, float)
    oy = np.zeros_like(sig) if dy is None else np.asarray(dy, float)
    c = np.arange(size) / oversampling
    live = amp > 1e-6 * amp.sum()
    if not live.any():
        return np.zeros((size, size))
    ddx = (c[:, None] - x0 - ox[None, live])[None]  # (1, size, K)
    ddy = (c[:, None] - y0 - oy[None, live])[None]
    sheared = bool(g1 or g2)
    b = _pix_gauss_2d(ddx, ddy, sig[None, live], np.array([g1]) if sheared else None,
                      np.array([g2]) if sheared else None)[0]
    return b @ amp[live]


def _nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares of a tall system through its normal equations: with ``A^T A = L L^T``,
    ``|A a - b|^2 = |L^T a - L^-1 A^T b|^2 + const``, a K x K problem."""
    from scipy.linalg import solve_triangular
    from scipy.optimize import nnls

    ata = A.T @ A
    atb = A.T @ b
    k = len(atb)
    ata += np.eye(k) * (1e-12 * np.trace(ata) / max(k, 1))
    try:
        L = np.linalg.cholesky(ata)
    except np.linalg.LinAlgError:
        return nnls(A, b, maxiter=50 * k)[0]
    return nnls(L.T, solve_triangular(L, atb, lower=True), maxiter=50 * k)[0]


def _nnls_smooth(A: np.ndarray, b: np.ndarray, smoothness: float) -> np.ndarray:
    """:func:`_nnls` with a smoothness prior on the amplitudes (columns ordered by width): their second differences,
    weighted by ``smoothness`` times the root-mean-square column norm of ``A`` (the prior's weight relative to the
    data's)."""
    k = A.shape[1]
    if smoothness <= 0 or k < 3:
        return _nnls(A, b)
    D = np.diff(np.eye(k), 2, axis=0) * (smoothness * math.sqrt(float(np.einsum("ij,ij->", A, A)) / k))
    return _nnls(np.vstack([A, D]), np.concatenate([b, np.zeros(len(D))]))


def _pixel_var(data: np.ndarray, noise_var: float, core_weight: bool) -> np.ndarray:
    """Variance of each star pixel for the fit: Poisson + sky, or (``core_weight``) that of the star's peak for every
    pixel of the star (all pixels weighted alike: the core, which sets the FWHM, dominates)."""
    if core_weight:
        pk = np.maximum(data.reshape(len(data), -1).max(axis=1), 0.0)
        return np.broadcast_to((noise_var + pk)[:, None, None], data.shape)
    return noise_var + np.maximum(data, 0.0)


def fit_profile(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, scale: np.ndarray, *, fwhm_guess: float,
                noise_var: float, n_basis: int = 14, radius: int | None = None, iterations: int = 4,
                clip: float = 5.0, fit_scale: bool = True, sig: np.ndarray | None = None,
                refine: bool = True, max_components: int = 5, offx: np.ndarray | None = None,
                offy: np.ndarray | None = None, offsets: bool = False, refine_stars: int = 40,
                core_weight: bool = False, g1: np.ndarray | None = None, g2: np.ndarray | None = None,
                fit_shear: bool = False, use: np.ndarray | None = None, smoothness: float = 0.0) -> dict:
    """Fit one round profile, a non-negative combination of ``n_basis`` Gaussians of fixed, log-spaced widths (a
    radial basis), to the pixels of the stars, each star with its own flux and sub-pixel centre (recentred by
    Gauss-Newton steps) and its size scaled by ``scale`` (star size over the frame's). The pixel response is
    integrated exactly. Pixels beyond ``clip`` sigma of the model (cosmic rays, neighbours) and stars whose
    residuals are more than 3 times the median's are rejected.

    With ``fit_scale`` each star's ``scale`` is fitted too (Gauss-Newton, with its flux and centre), the profile's
    scale being fixed by the median star. With ``refine`` the widths of the (at most ``max_components``) strongest
    Gaussians are then fitted freely (variable projection: amplitudes by non-negative least squares for each set
    of widths) and the stars refitted with them: a fixed basis alone biases the FWHM by a few per cent.

    ``use`` (per star, default all) leaves the others out from the start (stars an earlier fit rejected).

    ``smoothness > 0`` puts a smoothness prior on the amplitudes over the basis of widths (:func:`_nnls_smooth`; give
    a dense basis) and keeps the widths on it (no ``refine``): a profile of the seeing is a continuous mixture of
    Gaussian widths (a Moffat's is a gamma distribution of ``1 / sigma^2``), and with a few stars of moderate S/N the
    sparse fit with free widths trades its core width against its wing and takes the noise into a narrower or wider
    core (:func:`select_profile`).

    ``g1, g2`` (per star, or None: round) shear each star's profile (GalSim reduced shear, the PSF's at the star):
    the profile is then the round profile *before* shearing, whose FWHM is the PSF's (area-preserving shear). A round
    fit to elliptical stars lets the profile's shape absorb the ellipticity's residuals; with undersampled stars
    (FWHM ~ 1 pixel) that biases its FWHM by several per cent.

    Returns ``sig``, ``amp`` (widths in pixels at scale 1, amplitudes summing to 1), ``fwhm`` (effective FWHM at
    scale 1, before the pixel), refined ``x, y``, ``flux``, ``scale``, ``chi2`` (per pixel) and ``used`` per
    star.
    """

    ny, nx = image.shape
    n = len(xs)
    R = int(radius or max(3, math.ceil(2.5 * fwhm_guess)))
    sig0 = fwhm_guess * np.geomspace(0.25, 2.0, n_basis) if sig is None else np.asarray(sig, float)
    n_basis = len(sig0)
    ox = np.zeros(n_basis) if offx is None else np.asarray(offx, float)
    oy = np.zeros(n_basis) if offy is None else np.asarray(offy, float)
    off = np.arange(-R, R + 1)
    xs, ys = np.asarray(xs, float).copy(), np.asarray(ys, float).copy()
    # stamps (stars too close to the edge are dropped)
    ic, jc = np.rint(xs).astype(int), np.rint(ys).astype(int)
    inside = (ic - R >= 0) & (ic + R < nx) & (jc - R >= 0) & (jc + R < ny)
    data = np.zeros((n, 2 * R + 1, 2 * R + 1))
    for k in np.flatnonzero(inside):
        data[k] = image[jc[k] - R:jc[k] + R + 1, ic[k] - R:ic[k] + R + 1]
    flux = np.where(inside, data.sum(axis=(1, 2)), 0.0)
    used = inside & (flux > 0)
    if use is not None:
        used &= np.asarray(use, bool)
    wpix = np.ones_like(data)
    amp = np.zeros(n_basis)
    scale = np.asarray(scale, float).copy()
    sheared = fit_shear or (g1 is not None and g2 is not None and bool(np.any(g1) or np.any(g2)))
    if sheared:
        g1 = np.zeros(n) if g1 is None else np.asarray(g1, float).copy()
        g2 = np.zeros(n) if g2 is None else np.asarray(g2, float).copy()
    else:
        g1 = g2 = None
    for it in range(iterations + 1):
        dx = (ic[:, None] + off[None, :]) - xs[:, None]  # (n, 2R+1)
        dy = (jc[:, None] + off[None, :]) - ys[:, None]
        sk = sig0[None, :] * scale[:, None]  # (n, K)
        dxk = dx[:, :, None] - ox[None, None, :] * scale[:, None, None]  # (n, 2R+1, K)
        dyk = dy[:, :, None] - oy[None, None, :] * scale[:, None, None]
        if sheared:
            basis = _pix_gauss_2d(dxk, dyk, sk, g1, g2)  # (n, 2R+1, 2R+1, K)
        else:
            ex = _pix_gauss_1d(dxk, sk[:, None, :])
            ey = _pix_gauss_1d(dyk, sk[:, None, :])
            basis = ey[:, :, None, :] * ex[:, None, :, :]  # (n, 2R+1, 2R+1, K)
        var = _pixel_var(data, noise_var, core_weight)
        w = wpix / var
        sel = np.flatnonzero(used)
        # amplitudes (fluxes fixed)
        A = (basis[sel] * (flux[sel, None, None, None] * np.sqrt(w[sel])[..., None])).reshape(-1, n_basis)
        b = (data[sel] * np.sqrt(w[sel])).ravel()
        amp = _nnls_smooth(A, b, smoothness)
        if amp.sum() <= 0:
            break
        amp /= amp.sum()
        model = np.tensordot(basis, amp, axes=(-1, 0))  # unit-flux model per star
        if it == iterations:
            break
        # per star: flux and sub-pixel shift (Gauss-Newton on f * model(x - dx, y - dy))
        eps = 0.01
        live = amp > 0
        if sheared:
            al, skl = amp[live], sk[:, live]
            _, bx, by = _pix_gauss_2d(dxk[..., live], dyk[..., live], skl, g1, g2, deriv=True)
            mx, my = np.tensordot(bx, al, axes=(-1, 0)), np.tensordot(by, al, axes=(-1, 0))
            b2 = _pix_gauss_2d(dx[:, :, None] - ox[None, None, live] * scale[:, None, None] * (1 + eps),
                               dy[:, :, None] - oy[None, None, live] * scale[:, None, None] * (1 + eps),
                               skl * (1 + eps), g1, g2)
            ms = (np.tensordot(b2, al, axes=(-1, 0)) - model) / eps
            if fit_shear:
                hg = 0.005
                mg1 = (np.tensordot(_pix_gauss_2d(dxk[..., live], dyk[..., live], skl, g1 + hg, g2), al,
                                    axes=(-1, 0)) - model) / hg
                mg2 = (np.tensordot(_pix_gauss_2d(dxk[..., live], dyk[..., live], skl, g1, g2 + hg), al,
                                    axes=(-1, 0)) - model) / hg
        else:
            dex = _dpix_gauss_1d(dxk, sk[:, None, :])
            dey = _dpix_gauss_1d(dyk, sk[:, None, :])
            mx = np.tensordot(ey[:, :, None, :] * dex[:, None, :, :], amp, axes=(-1, 0))
            my = np.tensordot(dey[:, :, None, :] * ex[:, None, :, :], amp, axes=(-1, 0))
            ex2 = _pix_gauss_1d(dx[:, :, None] - ox[None, None, :] * scale[:, None, None] * (1 + eps),
                                sk[:, None, :] * (1 + eps))
            ey2 = _pix_gauss_1d(dy[:, :, None] - oy[None, None, :] * scale[:, None, None] * (1 + eps),
                                sk[:, None, :] * (1 + eps))
            ms = (np.tensordot(ey2[:, :, None, :] * ex2[:, None, :, :], amp, axes=(-1, 0)) - model) / eps
        for k in sel:
            J = np.stack([model[k].ravel(), -flux[k] * mx[k].ravel(), -flux[k] * my[k].ravel()]
                         + ([flux[k] * ms[k].ravel()] if fit_scale else [])
                         + ([flux[k] * mg1[k].ravel(), flux[k] * mg2[k].ravel()] if fit_shear else []), axis=1)
            ww = w[k].ravel()
            r = data[k].ravel() - flux[k] * model[k].ravel()
            JW = J * ww[:, None]
            try:
                step = np.linalg.solve(J.T @ JW, JW.T @ r)
            except np.linalg.LinAlgError:
                used[k] = False
                continue
            flux[k] += step[0]
            xs[k] += float(np.clip(step[1], -0.5, 0.5))
            ys[k] += float(np.clip(step[2], -0.5, 0.5))
            if fit_scale:
                scale[k] *= math.exp(float(np.clip(step[3], -0.2, 0.2)))
            if fit_shear:
                g1[k] = float(np.clip(g1[k] + np.clip(step[-2], -0.05, 0.05), -0.5, 0.5))
                g2[k] = float(np.clip(g2[k] + np.clip(step[-1], -0.05, 0.05), -0.5, 0.5))
        if fit_scale and used.any():
            scale /= float(np.median(scale[used]))
        # outliers: pixels, then stars
        resid = (data - flux[:, None, None] * model) * np.sqrt(1.0 / (noise_var + np.maximum(data, 0.0)))
        wpix = (np.abs(resid) < clip).astype(float)
        chi2 = (resid ** 2 * wpix).sum(axis=(1, 2)) / np.maximum(wpix.sum(axis=(1, 2)), 1)
        if used.sum() > 5:
            used &= chi2 < 3.0 * np.median(chi2[used]) + 1.0
        used &= flux > 0
    if refine and smoothness <= 0 and amp.sum() > 0 and used.sum() >= 2:
        from scipy.optimize import least_squares

        live = np.argsort(-amp)[:max_components]
        live = np.sort(live[amp[live] > 1e-3])
        sel = np.flatnonzero(used)
        sel = sel[np.argsort(-flux[sel])][:refine_stars]
        dx = (ic[sel, None] + off[None, :]) - xs[sel, None]
        dy = (jc[sel, None] + off[None, :]) - ys[sel, None]
        sw = np.sqrt(wpix[sel] / _pixel_var(data[sel], noise_var, core_weight))
        b = (data[sel] * sw).ravel()

        nl = len(live)
        sc = scale[sel, None, None]
        gs1, gs2 = (g1[sel], g2[sel]) if sheared else (None, None)

        def design(p: np.ndarray) -> np.ndarray:
            sgm = np.exp(p[:nl])
            px = np.concatenate([[0.0], p[nl:2 * nl - 1]]) if offsets else np.zeros(nl)
            py = np.concatenate([[0.0], p[2 * nl - 1:]]) if offsets else np.zeros(nl)
            sk = sgm[None, None, :] * sc
            bs = _pix_gauss_2d(dx[:, :, None] - px[None, None, :] * sc, dy[:, :, None] - py[None, None, :] * sc,
                               sk, gs1, gs2)
            return (bs * (flux[sel, None, None, None] * sw[..., None])).reshape(-1, nl)

        def fun(p: np.ndarray) -> np.ndarray:
            A = design(p)
            return A @ _nnls(A, b) - b

        # the strongest component first: its offset is the star's centre
        live = live[np.argsort(-amp[live])]
        ls0 = np.log(sig0[live])
        lim = 0.5 * fwhm_guess
        x0 = np.concatenate([ls0, np.zeros(2 * (nl - 1))]) if offsets else ls0
        smin = math.log(0.25 * fwhm_guess)  # no component much narrower than a seeing core
        ls0 = np.maximum(ls0, smin + 1e-3)
        x0 = np.concatenate([ls0, np.zeros(2 * (nl - 1))]) if offsets else ls0
        lo = np.concatenate([np.full(nl, smin), np.full(2 * (nl - 1), -lim)]) if offsets else np.full(nl, smin)
        hi = np.concatenate([ls0 + 1.5, np.full(2 * (nl - 1), lim)]) if offsets else ls0 + 1.5
        sol = least_squares(fun, x0, diff_step=1e-3, max_nfev=8 * len(x0), bounds=(lo, hi), ftol=1e-5, xtol=1e-5)
        p = sol.x
        return fit_profile(image, xs, ys, scale, fwhm_guess=fwhm_guess, noise_var=noise_var, radius=R,
                           iterations=2, clip=clip, fit_scale=fit_scale, sig=np.exp(p[:nl]), refine=False,
                           offx=np.concatenate([[0.0], p[nl:2 * nl - 1]]) if offsets else None,
                           offy=np.concatenate([[0.0], p[2 * nl - 1:]]) if offsets else None, g1=g1, g2=g2,
                           core_weight=core_weight, fit_shear=fit_shear, use=used)
    resid = (data - flux[:, None, None] * model) * np.sqrt(1.0 / (noise_var + np.maximum(data, 0.0)))
    chi2 = (resid ** 2).mean(axis=(1, 2))
    return {"sig": sig0, "amp": amp, "dx": ox, "dy": oy,
            "fwhm": mixture_fwhm(sig0, amp, ox, oy) if amp.sum() > 0 else float("nan"),
            "x": xs, "y": ys, "flux": flux, "chi2": chi2, "used": used, "radius": R, "scale": scale,
            "g1": g1 if sheared else np.zeros(n), "g2": g2 if sheared else np.zeros(n)}


def profile_chi2(image: np.ndarray, prof: dict, noise_var: float, use: np.ndarray, *, clip: float = 5.0) -> float:
    """chi^2 of a :func:`fit_profile` result over the stamps of the stars ``use`` (each star's flux, centre, size
    and shear as fitted; Poisson + sky weights as the fit's; pixels beyond ``clip`` sigma count ``clip^2``)."""
    R = int(prof["radius"])
    ny, nx = image.shape
    tot = 0.0
    for j in np.flatnonzero(use):
        ic, jc = int(round(prof["x"][j])), int(round(prof["y"][j]))
        if ic - R < 0 or jc - R < 0 or ic + R >= nx or jc + R >= ny:
            continue
        st = image[jc - R:jc + R + 1, ic - R:ic + R + 1].astype(float)
        sc = float(prof["scale"][j])
        m = prof["flux"][j] * mixture_stamp(2 * R + 1, R + prof["x"][j] - ic, R + prof["y"][j] - jc,
                                            np.asarray(prof["sig"]) * sc, prof["amp"], g1=float(prof["g1"][j]),
                                            g2=float(prof["g2"][j]), dx=np.asarray(prof["dx"]) * sc,
                                            dy=np.asarray(prof["dy"]) * sc)
        tot += float(np.minimum((st - m) ** 2 / (noise_var + np.maximum(st, 0.0)), clip * clip).sum())
    return tot


def select_profile(image: np.ndarray, free: dict, smooth: dict | None, noise_var: float) -> tuple[dict, dict]:
    """The frame's profile: the smooth one (:func:`fit_profile` with ``smoothness``) unless the free one's fitted
    widths improve chi^2 over the same stars by more than 2 per width (Akaike's criterion). On the grid of
    conditions the smooth profile costs chi^2 +0 to +4 on Moffat frames (the free one's FWHM scatters by 2-3 % rms for
    beta 2 with 6-17 stars) and +44 to +104 on double-Gaussian frames (two distinct widths that it blurs: its FWHM
    2-3 % low). Returns the profile chosen and the figures of the choice."""
    if smooth is None or not np.isfinite(smooth["fwhm"]):
        return free, {"profile": "free"}
    if not np.isfinite(free["fwhm"]):
        return smooth, {"profile": "smooth"}
    use = free["used"] & smooth["used"]
    c_free, c_smooth = (profile_chi2(image, p, noise_var, use) for p in (free, smooth))
    k = int(np.count_nonzero(free["amp"] > 0))
    chosen = "free" if c_smooth - c_free > 2.0 * k else "smooth"
    return (free if chosen == "free" else smooth), {"profile": chosen, "dchi2": round(c_smooth - c_free, 2),
                                                   "free_widths": k}


#: sub-pixel phases (per axis) over which the moment calibration of the profile is averaged: midpoints of four
#: quarters of [0, 1/2] (a pixel-integrated, mirror-symmetric profile's moments repeat with period 1 and are even
#: about 0 and 1/2)
_PHASES = (np.arange(4) + 0.5) / 8.0


def _phase_stamps(size: int, c0: float, sig: np.ndarray, amp: np.ndarray, g1: float) -> tuple[np.ndarray, ...]:
    """The mixture (axis-aligned shear ``g1``: separable, integrated exactly over the pixel as in
    :func:`mixture_stamp`) centred at ``c0 + (px, py)`` for every pair of :data:`_PHASES`, side by side in one
    image; returns the image and the centres."""
    f = 1.0 / math.sqrt(1.0 - g1 * g1)
    c = np.arange(size, dtype=float)
    d = c[None, :, None] - c0 - _PHASES[:, None, None]  # (P, size, 1)
    ex = _pix_gauss_1d(d, sig * (1 + g1) * f)  # (P, size, K)
    ey = _pix_gauss_1d(d, sig * (1 - g1) * f)
    st = np.einsum("qjk,pik,k->qpji", ey, ex, amp)  # (Py, Px, size, size)
    n = len(_PHASES)
    big = st.reshape(n * n, size, size).transpose(1, 0, 2).reshape(size, n * n * size)
    py, px = np.meshgrid(_PHASES, _PHASES, indexing="ij")
    xs = c0 + px.ravel() + np.arange(n * n) * size
    ys = c0 + py.ravel()
    return big.astype(np.float32), xs, ys


def _profile_calibration(sig: np.ndarray, amp: np.ndarray, fwhm: float, *, shear: float = 0.05) -> dict:
    """Adaptive-moment size ``T``, concentration ``C`` and distortion response ``R`` of the frame's own profile
    (pixel-integrated) scaled to a grid of FWHMs around ``fwhm``, each the mean over a 4 x 4 grid of sub-pixel
    phases (:data:`_PHASES`): the stars come at any phase, and an undersampled star's ``T`` varies by +-15 % with
    it (FWHM 1.1 pixels). Two phases, (0, 0) and (1/2, 1/4), as before, gave a ``T`` 3-4 % below the mean at FWHM
    1.1 pixels (:meth:`PsfModel.moment_size_at`, the stellarity's reference)."""
    fws = fwhm * np.geomspace(0.55, 1.8, 13)
    T, C, Rr = np.zeros(len(fws)), np.zeros(len(fws)), np.zeros(len(fws))
    live = amp > 1e-6 * amp.sum()
    sig, amp = np.asarray(sig, float)[live], np.asarray(amp, float)[live]
    d_true = 2 * shear / (1 + shear * shear)
    for j, fw in enumerate(fws):
        s = sig * fw / fwhm
        size = int(2 * math.ceil(3.5 * max(fw, float(s[amp > 1e-3].max()) if np.any(amp > 1e-3) else fw) + 6) + 1)
        c0 = (size - 1) / 2
        big, xs, ys = _phase_stamps(size, c0, s, amp, 0.0)
        m = adaptive_moments(big, xs, ys, sigma0=max(fw / 2.355, 1.0))
        T[j] = float(np.mean(m[:, 0] + m[:, 1]))
        C[j] = float(np.mean(m[:, 5] / m[:, 6]))
        big, xs, ys = _phase_stamps(size, c0, s, amp, shear)
        m = adaptive_moments(big, xs, ys, sigma0=max(fw / 2.355, 1.0))
        Rr[j] = float(np.mean((m[:, 0] - m[:, 1]) / (m[:, 0] + m[:, 1]))) / d_true
    return {"fwhm": fws, "T": T, "C": C, "R": Rr}


# ------------------------------------------------------------------------------------------------ model
def _poly_terms(order: int) -> list[tuple[int, int]]:
    return [(p, q) for n in range(order + 1) for p in range(n + 1) for q in [n - p]]


def _poly_design(u: np.ndarray, v: np.ndarray, order: int) -> np.ndarray:
    return np.stack([u ** p * v ** q for p, q in _poly_terms(order)], axis=1)


def _clipped_polyfit(u, v, z, order, nsig=3.0, iters=5):
    keep = np.isfinite(z)
    order = int(order)
    while order > 0 and keep.sum() < 3 * len(_poly_terms(order)):
        order -= 1
    if keep.sum() >= 3:
        # start from the median, not from a least-squares fit that one wild value can drag (an aperture ratio of a
        # star with a trail or a bright halo in its large aperture): values beyond 5 robust sigma are out from the
        # start (the field variation a polynomial follows is well within that); the order is chosen before, from
        # the finite values, so that fits of several quantities over the same stars share it
        med = np.median(z[keep])
        mad = 1.4826 * np.median(np.abs(z[keep] - med))
        start = keep & (np.abs(z - med) <= 5.0 * max(mad, 1e-6 * max(abs(med), 1e-30)))
        if start.sum() > len(_poly_terms(order)):
            keep = start
    coef = np.zeros(len(_poly_terms(order)))
    for _ in range(iters):
        A = _poly_design(u[keep], v[keep], order)
        coef = np.linalg.lstsq(A, z[keep], rcond=None)[0]
        r = z - _poly_design(u, v, order) @ coef
        s = 1.4826 * np.median(np.abs(r[keep]))
        new = np.isfinite(r) & (np.abs(r) <= nsig * max(s, 1e-9))
        if np.array_equal(new, keep) or new.sum() < len(coef) + 1:
            break
        keep = new
    return order, coef, keep


@dataclass
class PsfModel:
    """A PSF model of one frame (pixel units; 0-based image coordinates).

    Attributes
    ----------
    beta : float
        Moffat beta.
    shape : (ny, nx)
        Image shape.
    order : int
        Order of the field polynomials.
    fwhm_coef, g1_coef, g2_coef : ndarray
        Polynomial coefficients in the normalised coordinates ``u = (x - cx) / cx``, ``v = (y - cy) / cy``.
    epsf : ndarray
        Empirical PSF grids ``(zones_y, zones_x, n, n)``, each summing to ``oversampling**2`` times the flux
        fraction it covers (i.e. values are per-pixel fractions of the total flux, sampled every
        ``1/oversampling`` pixel, centred on the star at index ``(n - 1) / 2``).
    oversampling : int
    zones : int
    epsf_nstars : ndarray
        Stars used in each zone.
    """

    beta: float
    shape: tuple[int, int]
    order: int
    fwhm_coef: np.ndarray
    g1_coef: np.ndarray
    g2_coef: np.ndarray
    epsf: np.ndarray
    oversampling: int
    zones: int
    epsf_nstars: np.ndarray
    #: the frame's radial profile (Gaussian mixture): widths in units of the FWHM, amplitudes (sum 1); None: Moffat
    profile_sig: np.ndarray | None = None
    profile_amp: np.ndarray | None = None
    #: adaptive-moment size ``T`` (pixels^2) of the pixelated profile vs its FWHM (pixels), around the frame's FWHM
    calib_fwhm: np.ndarray | None = None
    calib_T: np.ndarray | None = None

    def _uv(self, x, y):
        ny, nx = self.shape
        cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
        return (np.asarray(x, float) - cx) / cx, (np.asarray(y, float) - cy) / cy

    def fwhm_at(self, x, y) -> np.ndarray:
        """FWHM (pixels, before the pixel response) at 0-based positions."""
        u, v = self._uv(x, y)
        return _poly_design(np.atleast_1d(u), np.atleast_1d(v), self.order) @ self.fwhm_coef

    def shear_at(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Reduced shear ``(g1, g2)`` at 0-based positions."""
        u, v = self._uv(x, y)
        A = _poly_design(np.atleast_1d(u), np.atleast_1d(v), self.order)
        return A @ self.g1_coef, A @ self.g2_coef

    def ellipticity_at(self, x, y) -> np.ndarray:
        """``1 - b/a`` of the PSF (before the pixel response) at 0-based positions."""
        g1, g2 = self.shear_at(x, y)
        g = np.hypot(g1, g2)
        return 2 * g / (1 + g)

    def render(self, x: float, y: float, size: int, *, oversampling: int = 1) -> np.ndarray:
        """The analytic PSF (unit flux, pixel-integrated) at image position ``(x, y)`` on a ``size x size`` stamp
        centred on the nearest pixel (the sub-pixel phase is kept)."""
        fw = float(self.fwhm_at(x, y)[0])
        g1, g2 = (float(v[0]) for v in self.shear_at(x, y))
        c = (size - 1) / 2.0 / oversampling
        fx, fy = x - round(x), y - round(y)
        if self.profile_sig is not None:
            return mixture_stamp(size, c + fx, c + fy, np.asarray(self.profile_sig) * fw, self.profile_amp, g1=g1,
                                 g2=g2, oversampling=oversampling)
        return moffat_stamp(size, c + fx, c + fy, fw, self.beta, g1=g1, g2=g2, oversampling=oversampling)

    def moment_size_at(self, x, y) -> np.ndarray:
        """Adaptive-moment size ``T = Sxx + Syy`` (pixels^2) of a pixelated star at 0-based positions (for
        stellarity: the same measure as the detections')."""
        fw = np.maximum(self.fwhm_at(x, y), 1e-3)
        if self.calib_T is not None and self.profile_sig is not None:
            return np.exp(np.interp(np.log(fw), np.log(self.calib_fwhm), np.log(self.calib_T)))
        table = calibration_table()
        return np.exp(np.interp(np.log(fw), np.log(table["fwhm"]), np.log(_interp_beta(table, self.beta, "T"))))

    def enclosed_fraction(self, radius: float, x: float | None = None, y: float | None = None) -> float:
        """Fraction of the PSF's flux (before the pixel) within ``radius`` pixels, at ``(x, y)`` (default: centre)."""
        ny, nx = self.shape
        x = (nx - 1) / 2.0 if x is None else x
        y = (ny - 1) / 2.0 if y is None else y
        fw = float(self.fwhm_at(x, y)[0])
        if self.profile_sig is not None:
            sg = np.asarray(self.profile_sig) * fw
            return float(np.sum(np.asarray(self.profile_amp) * (1.0 - np.exp(-0.5 * (radius / sg) ** 2))))
        return float(moffat_enclosed(radius, fw, self.beta))

    def epsf_at(self, x: float, y: float) -> np.ndarray:
        """Empirical PSF grid of the zone containing ``(x, y)``."""
        ny, nx = self.shape
        zy = min(self.zones - 1, max(0, int(y * self.zones / ny)))
        zx = min(self.zones - 1, max(0, int(x * self.zones / nx)))
        return self.epsf[zy, zx]


@dataclass
class PsfResult:
    """The PSF analysis of a frame.

    Attributes
    ----------
    model : PsfModel
    n_stars : int
        Stars used.
    fwhm_px, fwhm_arcsec : float
        Median FWHM over the field (before the pixel response).
    fwhm_min_px, fwhm_max_px : float
        Extremes of the FWHM over the field (model on a grid).
    ellipticity : float
        Median ``1 - b/a`` over the field; ``ellipticity_max`` its largest value.
    beta : float
    stars : dict of ndarray
        Per star: ``index`` (into the input arrays), ``x, y, fwhm, g1, g2, used``.
    beta_error : float
        Statistical uncertainty of ``beta`` (bootstrap over the stars; 0 for a configured beta).
    profile_choice : dict
        Which radial profile was kept (:func:`select_profile`).
    """

    model: PsfModel
    n_stars: int
    fwhm_px: float
    fwhm_arcsec: float
    fwhm_min_px: float
    fwhm_max_px: float
    ellipticity: float
    ellipticity_max: float
    beta: float
    stars: dict = field(default_factory=dict, repr=False)
    beta_error: float = 0.0
    #: which radial profile was kept (:func:`select_profile`: ``profile`` "free" or "smooth", ``dchi2``,
    #: ``free_widths``); empty when no profile was fitted
    profile_choice: dict = field(default_factory=dict)


def select_psf_stars(x, y, snr, flags, imaflags, size, ellipticity, peak, *, config: PsfConfig = PsfConfig(),
                     fwhm_guess: float = 2.5) -> np.ndarray:
    """Indices of PSF-star candidates (see the module documentation)."""
    from scipy.spatial import cKDTree

    x, y = np.asarray(x, float), np.asarray(y, float)
    cand = (np.asarray(snr) > config.min_snr) & ((np.asarray(flags) & (1 | 4 | 8 | 16)) == 0)
    cand &= np.asarray(imaflags) == 0
    cand &= np.isfinite(size) & (np.asarray(size) > 0) & (np.asarray(ellipticity) < config.max_ellipticity)
    if config.max_peak_e > 0:
        cand &= np.asarray(peak) < config.max_peak_e
    idx = np.flatnonzero(cand)
    if len(idx) < config.min_stars:
        return idx
    s = np.log(np.asarray(size, float)[idx])
    ss = np.sort(s)
    w = math.log(1 + config.locus_width)
    j = np.searchsorted(ss, ss + w)
    i0 = int(np.argmax(j - np.arange(len(ss))))
    mode = float(np.median(ss[i0:j[i0]]))
    idx = idx[np.abs(s - mode) < w]
    if config.isolation_fwhm > 0 and len(idx):
        tree = cKDTree(np.column_stack([x, y]))
        cnt = tree.query_ball_point(np.column_stack([x[idx], y[idx]]), config.isolation_fwhm * fwhm_guess,
                                    return_length=True)
        idx = idx[cnt == 1]
    order = np.argsort(-np.asarray(snr)[idx])
    return idx[order[: config.max_stars]]


def _epsf_grids(image, xs, ys, fluxes, zone_of, zones, half, os_, model_stamp):
    """Binned empirical PSF per zone (see :class:`PsfModel`); ``fluxes``: per star, the fraction of the total flux
    inside ``half`` pixels (each star is scaled so that its flux there equals it)."""
    ny, nx = image.shape
    n = 2 * half * os_ + 1
    out = np.zeros((zones, zones, n, n))
    nst = np.zeros((zones, zones), int)
    r = half + 1
    for z in range(zones * zones):
        zy, zx = divmod(z, zones)
        sel = np.flatnonzero(zone_of == z)
        nst[zy, zx] = len(sel)
        acc = np.zeros(n * n)
        cnt = np.zeros(n * n)
        for k in sel:
            ic, jc = int(round(xs[k])), int(round(ys[k]))
            j0, j1, i0, i1 = max(0, jc - r), min(ny, jc + r + 1), max(0, ic - r), min(nx, ic + r + 1)
            yy, xx = np.mgrid[j0:j1, i0:i1]
            stamp = image[j0:j1, i0:i1].astype(np.float64)
            # normalise by the flux within the grid's radius, corrected to the total with the model
            inner = (xx - xs[k]) ** 2 + (yy - ys[k]) ** 2 <= half * half
            f_half = float(stamp[inner].sum())
            if not f_half > 0:
                continue
            stamp /= f_half / fluxes[k]
            bx = np.rint((xx - xs[k]) * os_).astype(int) + half * os_
            by = np.rint((yy - ys[k]) * os_).astype(int) + half * os_
            ok = (bx >= 0) & (bx < n) & (by >= 0) & (by < n)
            lin = by[ok] * n + bx[ok]
            acc += np.bincount(lin, stamp[ok], n * n)
            cnt += np.bincount(lin, None, n * n)
        grid = np.where(cnt > 0, acc / np.maximum(cnt, 1), model_stamp.ravel())
        out[zy, zx] = grid.reshape(n, n)
    return out.astype(np.float32), nst


def measure_psf(image: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray, snr: np.ndarray,
                flags: np.ndarray, imaflags: np.ndarray, size: np.ndarray, ellipticity: np.ndarray,
                peak: np.ndarray, *, pixel_scale: float, config: PsfConfig = PsfConfig()) -> PsfResult:
    """Measure the PSF of a background-subtracted image from its detections.

    Parameters
    ----------
    image : ndarray
        Background-subtracted image (e-).
    x, y : ndarray
        0-based positions of the detections (windowed centroids).
    flux, snr : ndarray
        FLUX_AUTO and its S/N.
    flags, imaflags : ndarray
        SExtractor FLAGS and mask flags over the footprint.
    size : ndarray
        A size measure for the stellar locus (e.g. ``FWHM_IMAGE``).
    ellipticity : ndarray
        ``1 - b/a`` of the detections.
    peak : ndarray
        Peak pixel values (e-), to avoid the non-linear regime.
    pixel_scale : float
        arcsec per pixel.
    config : PsfConfig

    Returns
    -------
    PsfResult

    Raises
    ------
    ReductionError
        ``too_few_stars`` when fewer than ``config.min_stars`` stars qualify; ``psf_failed`` when their sizes are
        outside the calibrated range.
    """
    ny, nx = image.shape
    snr = np.asarray(snr, float)
    fw_guess = float(np.nanmedian(np.asarray(size, float)[snr > config.min_snr])) if np.any(
        snr > config.min_snr) else 2.5
    if not np.isfinite(fw_guess):
        fw_guess = 2.5
    idx = select_psf_stars(x, y, snr, flags, imaflags, size, ellipticity, peak, config=config,
                           fwhm_guess=max(fw_guess, 1.0))
    if len(idx) < config.min_stars:
        raise ReductionError("too_few_stars", f"{len(idx)} PSF stars (at least {config.min_stars} needed)",
                             stage="psf")
    xs, ys = np.asarray(x, float)[idx], np.asarray(y, float)[idx]
    m = adaptive_moments(image, xs, ys, sigma0=max(fw_guess / 2.355, 1.0))
    T = m[:, 0] + m[:, 1]
    ok = np.isfinite(T) & (T > 0) & (m[:, 6] > 0)
    if ok.sum() < config.min_stars:
        raise ReductionError("too_few_stars", f"moments failed for {int((~ok).sum())} of {len(idx)} PSF stars",
                             stage="psf")
    table = calibration_table()
    C = np.where(ok, m[:, 5] / np.where(m[:, 6] > 0, m[:, 6], 1.0), np.nan)
    # the Moffat beta that best matches the stars' concentration (an equivalent beta for any PSF shape)
    beta = float(config.beta) if config.beta > 0 else _fit_beta(table, T[ok], C[ok])
    beta_err = 0.0 if config.beta > 0 else _beta_error(table, T[ok], C[ok], config.beta_bootstrap)
    fw_moffat = _fwhm_from_T(table, beta, T)
    t_pix = 1.0 / 6.0  # a pixel's contribution to T (two axes)
    fw0 = float(np.nanmedian(fw_moffat[ok])) if np.any(np.isfinite(fw_moffat[ok])) else \
        2.3548 * math.sqrt(max(float(np.median(T[ok])) / 2.0 - 1.0 / 12.0, 0.05))
    delta1 = (m[:, 0] - m[:, 1]) / T
    delta2 = 2 * m[:, 2] / T
    prof = None
    cal = None
    choice: dict = {}
    if config.profile_stars > 0:
        # the frame's own radial profile (Gaussian-mixture basis, pixel integrated), fitted to the brightest stars
        sub = np.flatnonzero(ok)[: config.profile_stars]
        sample = image[:: max(1, ny // 256), :: max(1, nx // 256)]
        sample = sample[np.isfinite(sample)]
        noise_var = float((1.4826 * np.median(np.abs(sample - np.median(sample)))) ** 2) if sample.size else 1.0
        scale = np.sqrt(np.maximum(T[sub] - t_pix, 1e-3) / max(float(np.median(T[sub])) - t_pix, 1e-3))
        nv = max(noise_var, 1e-6)
        prof = fit_profile(image, m[sub, 3], m[sub, 4], scale, fwhm_guess=fw0, noise_var=nv,
                           fit_shear=fw0 < config.shear_fit_fwhm)
        if config.profile_smoothness > 0:
            smooth = fit_profile(image, m[sub, 3], m[sub, 4], scale, fwhm_guess=fw0, noise_var=nv,
                                 fit_shear=fw0 < config.shear_fit_fwhm, smoothness=config.profile_smoothness,
                                 n_basis=config.profile_widths)
            if smooth["used"].sum() < min(config.min_stars, len(sub)):
                smooth = None
            prof, choice = select_profile(image, prof, smooth, nv)
        if not (np.isfinite(prof["fwhm"]) and prof["used"].sum() >= min(config.min_stars, len(sub))):
            prof = None
        if prof is not None:
            cal = _profile_calibration(prof["sig"], prof["amp"], prof["fwhm"])
            if not np.all(np.diff(cal["T"]) > 0):
                prof = cal = None
    if cal is not None:
        fwhm = np.exp(np.interp(np.log(np.maximum(T, 1e-6)), np.log(cal["T"]), np.log(cal["fwhm"]), left=np.nan,
                                right=np.nan))
        # the stars of the profile fit: their fitted sizes; the others: moments, put on the same scale
        good = prof["used"]
        fw_fit = prof["scale"][good] * prof["fwhm"]
        den = fwhm[sub[good]]
        fin = np.isfinite(den)
        if good.sum() >= 3 and fin.any():  # (a star whose moment size is off the calibration has no moment FWHM)
            fwhm *= float(np.median(fw_fit[fin] / den[fin]))
        fwhm[sub[good]] = fw_fit
        fwhm[sub[~good]] = np.nan
        resp = np.interp(np.log(np.maximum(fwhm, 1e-3)), np.log(cal["fwhm"]), cal["R"])
    else:
        fwhm = fw_moffat
        resp = np.interp(np.log(np.maximum(fwhm, 1e-3)), np.log(table["fwhm"]), _interp_beta(table, beta, "R"))
    d1, d2 = delta1 / resp, delta2 / resp
    dd = np.hypot(d1, d2)
    # distortion delta = 2g / (1 + g^2)  =>  g = delta / (1 + sqrt(1 - delta^2))
    gfac = 1.0 / (1.0 + np.sqrt(np.clip(1.0 - dd * dd, 0.0, 1.0)))
    g1, g2 = d1 * gfac, d2 * gfac
    if prof is not None and fw0 < config.shear_fit_fwhm:
        # the stars of the profile fit: the shear fitted to their pixels (the moments' is noisier when undersampled)
        good = prof["used"]
        g1[sub[good]], g2[sub[good]] = prof["g1"][good], prof["g2"][good]
    ok &= np.isfinite(fwhm)
    if ok.sum() < config.min_stars:
        raise ReductionError("psf_failed", "the PSF stars' sizes are outside the calibrated range",
                             stage="psf")
    cxn, cyn = (nx - 1) / 2.0, (ny - 1) / 2.0
    # sub-pixel centres: the profile fit's where it has them
    sx, sy = m[:, 3].copy(), m[:, 4].copy()
    if prof is not None:
        good = prof["used"]
        sx[sub[good]], sy[sub[good]] = prof["x"][good], prof["y"][good]
    u, v = (sx - cxn) / cxn, (sy - cyn) / cyn
    order, cf, keep = _clipped_polyfit(u[ok], v[ok], fwhm[ok], config.variation_order)
    _, c1, k1 = _clipped_polyfit(u[ok], v[ok], g1[ok], order)
    _, c2, k2 = _clipped_polyfit(u[ok], v[ok], g2[ok], order)
    used = np.zeros(len(idx), bool)
    used[np.flatnonzero(ok)[keep]] = True
    nused = int(used.sum())
    zones = config.zones or int(np.clip(round(math.sqrt(nused / 25.0)), 1, 8))
    fmed_star = float(np.median(fwhm[used]))
    half = int(math.ceil(config.stamp_radius_fwhm * fmed_star))
    os_ = int(config.oversampling)
    ngrid = 2 * half * os_ + 1
    model = PsfModel(beta=beta, shape=(ny, nx), order=order, fwhm_coef=cf, g1_coef=c1, g2_coef=c2,
                     epsf=np.zeros((zones, zones, ngrid, ngrid), np.float32), oversampling=os_, zones=zones,
                     epsf_nstars=np.zeros((zones, zones), int))
    if prof is not None:
        model.profile_sig = prof["sig"] / prof["fwhm"]
        model.profile_amp = prof["amp"]
        model.calib_fwhm, model.calib_T = cal["fwhm"], cal["T"]
    zx = np.clip(np.nan_to_num(sx * zones / nx).astype(int), 0, zones - 1)
    zy = np.clip(np.nan_to_num(sy * zones / ny).astype(int), 0, zones - 1)
    zone_of = np.where(used, zy * zones + zx, -1)
    if prof is not None:
        model.epsf, model.epsf_nstars = _epsf_hybrid(image, model, sx, sy, zone_of, half, prof, sub)
    else:
        ee_half = np.clip(moffat_enclosed(float(half), fwhm, beta), 0.5, 1.0)
        mstamp = moffat_stamp(ngrid, half, half, fmed_star, beta, oversampling=os_)
        model.epsf, model.epsf_nstars = _epsf_grids(image, sx, sy, ee_half, zone_of, zones, half, os_, mstamp)
    gy, gx = np.mgrid[0:ny:17j, 0:nx:17j]
    fgrid = model.fwhm_at(gx.ravel(), gy.ravel())
    egrid = model.ellipticity_at(gx.ravel(), gy.ravel())
    fmed = float(np.median(fgrid))
    stars = {"index": idx, "x": sx, "y": sy, "fwhm": fwhm, "g1": g1, "g2": g2, "used": used}
    return PsfResult(model=model, n_stars=nused, fwhm_px=fmed, fwhm_arcsec=fmed * pixel_scale,
                     fwhm_min_px=float(fgrid.min()), fwhm_max_px=float(fgrid.max()),
                     ellipticity=float(np.median(egrid)), ellipticity_max=float(egrid.max()), beta=beta, stars=stars,
                     beta_error=beta_err, profile_choice=choice if prof is not None else {})


def _epsf_hybrid(image, model: "PsfModel", sx, sy, zone_of, half, prof, sub):
    """Empirical PSF per zone: the frame's profile (scaled to the zone's FWHM, sheared by its shear,
    pixel-integrated, unit flux) plus the clipped mean of the fitted stars' residuals binned on the oversampled grid
    (a pixel-basis correction of what the radial profile misses, e.g. coma)."""
    ny, nx = image.shape
    zones, os_ = model.zones, model.oversampling
    n = 2 * half * os_ + 1
    out = np.zeros((zones, zones, n, n))
    nst = np.zeros((zones, zones), int)
    pos = {int(k): j for j, k in enumerate(sub)}
    r = half + 1
    for z in range(zones * zones):
        zy, zx = divmod(z, zones)
        xc, yc = (zx + 0.5) * nx / zones - 0.5, (zy + 0.5) * ny / zones - 0.5
        grid = model.render(float(round(xc)), float(round(yc)), n, oversampling=os_)
        sel = np.flatnonzero(zone_of == z)
        nst[zy, zx] = len(sel)
        vals: list[np.ndarray] = []
        bins: list[np.ndarray] = []
        for k in sel:
            j = pos.get(int(k))
            if j is None or not prof["used"][j]:
                continue
            ic, jc = int(round(sx[k])), int(round(sy[k]))
            j0, j1, i0, i1 = max(0, jc - r), min(ny, jc + r + 1), max(0, ic - r), min(nx, ic + r + 1)
            yy, xx = np.mgrid[j0:j1, i0:i1]
            mod = model.render(sx[k], sy[k], 2 * r + 1)
            mod = mod[j0 - (jc - r):j1 - (jc - r), i0 - (ic - r):i1 - (ic - r)]
            res = image[j0:j1, i0:i1] / prof["flux"][j] - mod
            bx = np.rint((xx - sx[k]) * os_).astype(int) + half * os_
            by = np.rint((yy - sy[k]) * os_).astype(int) + half * os_
            good = (bx >= 0) & (bx < n) & (by >= 0) & (by < n)
            good &= (xx - sx[k]) ** 2 + (yy - sy[k]) ** 2 <= float(prof["radius"]) ** 2
            vals.append(res[good])
            bins.append(by[good] * n + bx[good])
        if vals:
            v, b = np.concatenate(vals), np.concatenate(bins)
            cnt = np.bincount(b, None, n * n)
            mean = np.bincount(b, v, n * n) / np.maximum(cnt, 1)
            sd = np.sqrt(np.maximum(np.bincount(b, v * v, n * n) / np.maximum(cnt, 1) - mean ** 2, 0.0))
            keep = np.abs(v - mean[b]) <= 3.0 * sd[b] + 1e-12
            cnt = np.bincount(b[keep], None, n * n)
            mean = np.bincount(b[keep], v[keep], n * n) / np.maximum(cnt, 1)
            corrected = grid + np.where(cnt >= 3, mean, 0.0).reshape(n, n)
            # the correction redistributes, it does not change the flux inside the grid
            if corrected.sum() > 0:
                grid = corrected * (grid.sum() / corrected.sum())
        out[zy, zx] = grid
    return out.astype(np.float32), nst
