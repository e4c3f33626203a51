"""Drawing stars and Sersic galaxies convolved with the PSF into an image, fast.

Objects are drawn in Fourier space, many at a time: for a stamp of ``N x N`` pixels the transform
of (galaxy x PSF x pixel) is evaluated on the grid of a ``2N x 2N`` real-space grid of half-pixel
spacing (so that aliasing up to twice the Nyquist frequency is folded correctly), multiplied by the
phase of the sub-pixel position, inverse-FFT'd in a batch and sampled at the pixel centres. The
result is the pixel-integrated profile, exactly what ``galsim.Convolve([gal, psf]).drawImage()``
draws (``method='auto'``); the Sersic transforms come from GalSim itself (``drawKImage`` of a
unit Sersic, one table per index), the Moffat transform is analytic. This is ~20x faster than one
GalSim ``drawImage`` call per object; :func:`draw_with_galsim` is the reference used in the tests.

Flux is exactly conserved (wings beyond the stamp wrap around inside it; stamps are chosen large
enough for the wing at their edge to be below ~0.5 e- per pixel and for the folded flux to add less than 0.02 e- per
pixel on average: a bright star's far wing folded into a small stamp would flatten the wing out to ~20 px). The PSF is evaluated at the centre of each of
``zones x zones`` zones of the frame and is constant within a zone.

Other PSF families (:mod:`upad.sim.psf`): the double Gaussian's transform is analytic; the Kolmogorov atmosphere's
comes from a table of GalSim's ``Kolmogorov`` transform (sheared like the Moffat), multiplied by the optical transfer
function of GalSim's ``OpticalPSF`` of the zone (drawn once per zone on a coarse k grid and interpolated). The true
(effective) FWHM of each zone's profile is measured on its real-space image (inverse FFT of the transform, no
pixel), see :func:`effective_fwhm`. Stamps of the heavy-winged Kolmogorov profile are sized as a Moffat of beta 2.5:
the wing beyond wraps around inside the stamp (flux is still conserved).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft as sfft
from scipy.special import gamma, gammainc, kv

from upad.sim.psf import PSFModel, double_gaussian_sigma, moffat_alpha

_DU = 0.01  # table step in u = |k| * scale
_UMAX = 400.0
_SIZES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
_MAX_ELEMENTS = 3_000_000  # complex elements per batch
KOLMOGOROV_STAMP_BETA = 1.5


@lru_cache(maxsize=None)
def moffat_ktable(beta: float) -> np.ndarray:
    """Fourier transform of a unit-flux round Moffat vs ``u = |k| * alpha`` on a grid of step ``_DU``."""
    u = np.arange(0.0, 80.0 + _DU, _DU)
    out = np.ones_like(u)
    uu = u[1:]
    out[1:] = 2 ** (2 - beta) / gamma(beta - 1) * uu ** (beta - 1) * kv(beta - 1, uu)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


@lru_cache(maxsize=None)
def kolmogorov_ktable() -> np.ndarray:
    """Fourier transform (from GalSim) of a unit-flux round Kolmogorov profile of FWHM 1, vs ``u = |k| * fwhm``."""
    import galsim

    nk = int(80.0 / _DU) + 2
    im = galsim.Kolmogorov(fwhm=1.0).drawKImage(nx=2 * nk + 2, ny=1, scale=_DU)
    i0 = -im.bounds.xmin
    return np.ascontiguousarray(im.array[0].real[i0:i0 + nk]).astype(np.float32)


class _OpticsOTF:
    """Optical transfer function of a GalSim ``OpticalPSF`` (pixel units), interpolated from a coarse k grid."""

    def __init__(self, lam_over_diam_px: float, aberrations: list[float], obscuration: float):
        import galsim
        from scipy.interpolate import RegularGridInterpolator

        # oversampling = pad_factor = 1: the transfer function within 2e-4 of GalSim's defaults, 8 times faster
        o = galsim.OpticalPSF(lam_over_diam=lam_over_diam_px, aberrations=aberrations, obscuration=obscuration,
                              oversampling=1.0, pad_factor=1.0)
        n = 128
        dk = 1.05 * o.maxk / (n // 2 - 1)
        im = o.drawKImage(nx=n, ny=n, scale=dk).array
        k = (np.arange(n) - n // 2) * dk
        self._re = RegularGridInterpolator((k, k), im.real, bounds_error=False, fill_value=0.0)
        self._im = RegularGridInterpolator((k, k), im.imag, bounds_error=False, fill_value=0.0)

    def __call__(self, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
        kx, ky = np.broadcast_arrays(kx, ky)
        pts = np.stack([ky.ravel(), kx.ravel()], axis=1)
        return (self._re(pts) + 1j * self._im(pts)).reshape(kx.shape)


@dataclass
class ZonePSF:
    """The PSF of one zone: family, FWHM parameter (pixels), shear, family parameters and the true FWHM."""

    family: str
    fwhm_px: float
    g1: float
    g2: float
    beta: float = 3.0
    dg_wing_fraction: float = 0.0
    dg_width_ratio: float = 1.0
    otf: _OpticsOTF | None = None
    true_fwhm_px: float = 0.0
    #: offsets (pixels) of the drawn light's centroid from the object's position: windowed x, y and first moment
    #: x, y (:func:`centroid_offset`); 0 for the centrosymmetric families
    centroid: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def profile_k(self, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
        """Transform of the PSF (no pixel) at wave vectors ``kx, ky`` (rad/pixel, broadcast)."""
        a, b, c = _shear_quad(self.g1, self.g2)
        q = np.sqrt(a * kx ** 2 + 2 * b * kx * ky + c * ky ** 2)
        if self.family == "moffat":
            return _lookup(moffat_ktable(self.beta), (q * (float(moffat_alpha(self.fwhm_px, self.beta)) / _DU)
                                                      ).astype(np.float32))
        if self.family == "double_gaussian":
            f, r = self.dg_wing_fraction, self.dg_width_ratio
            s1 = float(double_gaussian_sigma(self.fwhm_px, f, r))
            return ((1 - f) * np.exp(-0.5 * (q * s1) ** 2) + f * np.exp(-0.5 * (q * s1 * r) ** 2)).astype(np.float32)
        if self.family == "kolmogorov_optics":
            out = _lookup(kolmogorov_ktable(), (q * (self.fwhm_px / _DU)).astype(np.float32))
            return out * self.otf(kx, ky).astype(np.complex64) if self.otf is not None else out
        raise ValueError(f"unknown PSF family {self.family!r}")

    def kimage(self, N: int) -> np.ndarray:
        """Transform of (PSF x pixel) on the k grid of a stamp of size ``N`` (shape (2N, N+1))."""
        kx, ky, pix = _kgrid(N)
        if self.family == "moffat":
            return psf_kimage(N, float(moffat_alpha(self.fwhm_px, self.beta)), self.g1, self.g2, self.beta)
        return self.profile_k(kx[None, :], ky[:, None]) * pix

    def stamp_shape(self) -> tuple[float, float]:
        """(FWHM, beta) of the Moffat used to size this profile's stamps."""
        if self.family == "moffat":
            return self.fwhm_px, self.beta
        if self.family == "double_gaussian":
            return self.fwhm_px * self.dg_width_ratio, 4.0
        # the atmosphere's wing falls as r^-11/3, the optics' diffraction wing as r^-3: sized as a Moffat of beta
        # 1.5, whose wing falls as r^-3
        return max(self.true_fwhm_px, self.fwhm_px), KOLMOGOROV_STAMP_BETA


def profile_grid(profile_k, fwhm_guess_px: float, *, samples_per_fwhm: int = 24, n: int = 384
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """A profile's transform ``profile_k(kx, ky)`` on the ``n x n`` k grid of a real-space grid of step
    ``h = fwhm_guess_px / samples_per_fwhm`` pixels: returns (transform, k (rad/pixel, FFT order), h)."""
    h = fwhm_guess_px / samples_per_fwhm
    k = 2 * np.pi * np.fft.fftfreq(n, d=h)
    return np.asarray(profile_k(k[None, :], k[:, None])), k, h


def effective_fwhm(profile_k, fwhm_guess_px: float, *, samples_per_fwhm: int = 24, n: int = 384,
                   grid: tuple[np.ndarray, np.ndarray, float] | None = None) -> float:
    """Effective FWHM ``2 sqrt(A / pi)`` (``A``: area where the profile is at least half its peak) of a profile
    given by its transform ``profile_k(kx, ky)`` (pixels; measured on its real-space image, no pixel response).
    ``grid``: the transform already evaluated by :func:`profile_grid` (``profile_k`` is then not called)."""
    F, _, h = grid if grid is not None else profile_grid(profile_k, fwhm_guess_px, samples_per_fwhm=samples_per_fwhm,
                                                          n=n)
    img = np.fft.ifft2(F).real
    half = 0.5 * img.max()
    gy, gx = np.gradient(img, h)
    g = np.hypot(gx, gy) * h
    # fraction of each sample's cell above half the peak, to first order in the distance to the contour
    frac = np.clip(0.5 + (img - half) / np.maximum(g, 1e-30), 0.0, 1.0)
    return float(2 * math.sqrt(frac.sum() * h * h / math.pi))


def centroid_offset(F: np.ndarray, k: np.ndarray, h: float, *, maxit: int = 200, tol: float = 1e-7
                    ) -> tuple[float, float, float, float]:
    """Where the light of a point source drawn at the origin is centred: the offsets (pixels) of its windowed and of
    its first-moment centroid from the origin, for the pixel-convolved profile (no noise, no pixel sampling).

    Parameters
    ----------
    F, k, h : the profile's transform on a grid, its wave numbers and the real-space step (:func:`profile_grid`).
    maxit, tol : iterations and convergence (pixels) of the windowed centroid.

    Returns
    -------
    (dx_win, dy_win, dx_mom, dy_mom)
        ``win``: the fixed point of SExtractor's windowed centroid (``XWIN_IMAGE``): the position about which the
        first moment weighted by a Gaussian window vanishes, the window's sigma ``2 r50 / 2.3548`` (``r50``: the
        half-light radius, SExtractor's ``FLUX_RADIUS``). ``mom``: the unweighted first moment, ``-grad(phase)`` of
        the transform at ``k = 0`` (exact; the profile's wings make it ill-determined on a finite image).
        A centrosymmetric profile (real transform) has both at 0.
    """
    if not np.iscomplexobj(F) or not np.any(F.imag):
        return 0.0, 0.0, 0.0, 0.0
    n = len(k)
    pix = np.sinc(k / (2 * np.pi))
    img = np.fft.fftshift(np.fft.ifft2(F * pix[None, :] * pix[:, None]).real)
    c = (np.arange(n) - n // 2) * h
    # first moment: the phase's slope at k = 0 from the first two wave numbers either side (Richardson's
    # extrapolation of the central differences)
    dk = float(k[1])
    ph = np.angle(np.array([[F[0, 1], F[0, 2], F[0, -1], F[0, -2]], [F[1, 0], F[2, 0], F[-1, 0], F[-2, 0]]]))
    d1 = (ph[:, 0] - ph[:, 2]) / (2 * dk)
    d2 = (ph[:, 1] - ph[:, 3]) / (4 * dk)
    dx_mom, dy_mom = (float(v) for v in -(4 * d1 - d2) / 3)
    # half-light radius about the origin, from the profile's light in rings of h / 2
    ring = (np.hypot(c[None, :], c[:, None]) / (h / 2)).astype(np.int64).ravel()
    cum = np.cumsum(np.bincount(ring, weights=img.ravel()))
    j = int(np.searchsorted(cum, 0.5 * cum[-1]))
    r50 = (j + (0.5 * cum[-1] - (cum[j - 1] if j else 0.0)) / (cum[j] - (cum[j - 1] if j else 0.0))) * h / 2
    sw2 = (2 * r50 / 2.3548) ** 2
    m = min(n // 2, int(8 * math.sqrt(sw2) / h) + 2)  # the window is negligible beyond 8 sigma: crop
    img, c = img[n // 2 - m:n // 2 + m + 1, n // 2 - m:n // 2 + m + 1], c[n // 2 - m:n // 2 + m + 1]
    x = y = 0.0
    for _ in range(maxit):
        gx = np.exp(-0.5 * (c - x) ** 2 / sw2)
        gy = np.exp(-0.5 * (c - y) ** 2 / sw2)
        w = img * gy[:, None] * gx[None, :]
        sw = w.sum()
        ex = float((w.sum(axis=0) * (c - x)).sum() / sw)
        ey = float((w.sum(axis=1) * (c - y)).sum() / sw)
        x, y = x + 2 * ex, y + 2 * ey  # SExtractor's step (exact for a Gaussian as wide as the window)
        if abs(ex) + abs(ey) < tol:
            break
    return x, y, dx_mom, dy_mom


def zone_psfs(psf: PSFModel, x: np.ndarray, y: np.ndarray, pixel_scale: float) -> list[ZonePSF]:
    """The PSF at positions ``x, y`` (zone centres) with its true FWHM (pixels)."""
    fw, g1, g2 = psf.at(x, y)
    out = []
    for i in range(len(fw)):
        z = ZonePSF(psf.family, float(fw[i] / pixel_scale), float(g1[i]), float(g2[i]), beta=psf.beta,
                    dg_wing_fraction=psf.dg_wing_fraction, dg_width_ratio=psf.dg_width_ratio)
        z.true_fwhm_px = z.fwhm_px
        if psf.family == "kolmogorov_optics":
            z.otf = _OpticsOTF(psf.lam_over_diam / pixel_scale, psf.aberrations_at(float(x[i]), float(y[i])),
                               psf.obscuration)
            grid = profile_grid(z.profile_k, z.fwhm_px)
            z.true_fwhm_px = effective_fwhm(z.profile_k, z.fwhm_px, grid=grid)
            z.centroid = centroid_offset(*grid)
        out.append(z)
    return out


@lru_cache(maxsize=None)
def sersic_ktable(n: float, trunc: float) -> np.ndarray:
    """Fourier transform (from GalSim) of a unit-flux Sersic with half-light radius 1, vs ``u = |k| * hlr``."""
    import galsim

    nk = int(_UMAX / _DU) + 2
    im = galsim.Sersic(n, half_light_radius=1.0, trunc=trunc).drawKImage(nx=2 * nk + 2, ny=1, scale=_DU)
    i0 = -im.bounds.xmin
    return np.ascontiguousarray(im.array[0].real[i0:i0 + nk]).astype(np.float32)


@lru_cache(maxsize=None)
def sersic_radius(n: float, trunc: float, frac: float = 0.995) -> float:
    """Radius (in half-light radii) enclosing ``frac`` of a truncated Sersic's flux."""
    import galsim

    s = galsim.Sersic(n, half_light_radius=1.0, trunc=trunc)
    r0 = s.scale_radius
    r = np.linspace(0, trunc, 4001)
    f = gammainc(2 * n, (r / r0) ** (1 / n)) / gammainc(2 * n, (trunc / r0) ** (1 / n))
    return float(r[np.searchsorted(f, frac)] if f[-1] >= frac else trunc)


def _lookup(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``table`` at fractional indices ``x`` (float32, modified in place)."""
    np.minimum(x, len(table) - 2, out=x)
    i = x.astype(np.int32)
    x -= i
    v0 = table[i]
    v1 = table[i + 1]
    v1 -= v0
    v1 *= x
    v0 += v1
    return v0


def _shear_quad(g1: np.ndarray, g2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coefficients (a, b, c) of |A k|^2 = a kx^2 + 2 b kx ky + c ky^2 for a GalSim shear (g1, g2)."""
    f = 1.0 / (1.0 - g1 * g1 - g2 * g2)
    return f * ((1 + g1) ** 2 + g2 ** 2), f * 2 * g2, f * ((1 - g1) ** 2 + g2 ** 2)


@lru_cache(maxsize=64)
def _kgrid(N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    M = 2 * N
    kx = (2 * np.pi * np.fft.rfftfreq(M, d=0.5)).astype(np.float32)
    ky = (2 * np.pi * np.fft.fftfreq(M, d=0.5)).astype(np.float32)
    pix = (np.sinc(ky / (2 * np.pi))[:, None] * np.sinc(kx / (2 * np.pi))[None, :]).astype(np.float32)
    return kx, ky, pix


def psf_kimage(N: int, alpha_px: float, g1: float, g2: float, beta: float) -> np.ndarray:
    """Transform of (PSF x pixel) on the k grid of a stamp of size ``N`` (float32, shape (2N, N+1))."""
    kx, ky, pix = _kgrid(N)
    a, b, c = _shear_quad(g1, g2)
    q = a * kx[None, :] ** 2 + 2 * b * ky[:, None] * kx[None, :] + c * ky[:, None] ** 2
    x = (np.sqrt(q) * (alpha_px / _DU)).astype(np.float32)
    return _lookup(moffat_ktable(beta), x) * pix


def render_batch(N: int, pk: np.ndarray, flux: np.ndarray, cx: np.ndarray, cy: np.ndarray, *,
                 n: float = 0.0, hlr_px: np.ndarray | None = None, g1: np.ndarray | None = None,
                 g2: np.ndarray | None = None, trunc: float = 8.0) -> np.ndarray:
    """Draw a batch of objects sharing the PSF transform ``pk`` into ``N x N`` stamps.

    ``cx, cy`` are the object centres in stamp pixel coordinates (0-based); ``n = 0`` draws point
    sources, otherwise Sersic profiles of index ``n`` with half-light radii ``hlr_px`` and shears
    ``g1, g2``. Returns float32 stamps of shape (B, N, N) whose sums equal ``flux``.
    """
    kx, ky, _ = _kgrid(N)
    M = 2 * N
    B = len(flux)
    G = np.empty((B, M, N + 1), np.complex64)
    if n > 0:
        a, b, c = _shear_quad(np.asarray(g1, np.float64), np.asarray(g2, np.float64))
        s2 = (np.asarray(hlr_px, np.float64) / _DU) ** 2
        a, b, c = (a * s2).astype(np.float32), (2 * b * s2).astype(np.float32), (c * s2).astype(np.float32)
        kx2 = kx * kx
        ky2 = ky * ky
        kxy = ky[:, None] * kx[None, :]
        q = a[:, None, None] * kx2[None, None, :] + c[:, None, None] * ky2[None, :, None]
        q += b[:, None, None] * kxy[None]
        np.sqrt(q, out=q)
        prof = _lookup(sersic_ktable(n, trunc), q)
        if np.iscomplexobj(pk):
            prof = prof * pk[None]
        else:
            prof *= pk[None]
    else:
        prof = np.broadcast_to(pk, (B,) + pk.shape)
    phx = np.exp(-1j * np.outer(cx, kx)).astype(np.complex64)
    phy = np.exp(-1j * np.outer(cy, ky)).astype(np.complex64)
    phx *= np.asarray(flux, np.float32)[:, None]
    np.multiply(prof, phx[:, None, :], out=G)
    G *= phy[:, :, None]
    out = sfft.irfft2(G, s=(M, M), axes=(-2, -1), overwrite_x=True)[:, ::2, ::2]
    out *= 4.0
    return np.ascontiguousarray(out, dtype=np.float32)


@dataclass
class Sources:
    """Objects to draw: 0-based positions in the image, total flux (e-) and shape.

    ``sersic_n == 0`` marks point sources; galaxies carry ``hlr_px`` (circularised half-light radius in
    pixels) and the image-plane shear ``g1, g2``.
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    sersic_n: np.ndarray
    hlr_px: np.ndarray
    g1: np.ndarray
    g2: np.ndarray

    @classmethod
    def points(cls, x: np.ndarray, y: np.ndarray, flux: np.ndarray) -> "Sources":
        z = np.zeros(len(x))
        return cls(np.asarray(x, float), np.asarray(y, float), np.asarray(flux, float), z, z, z, z)


@dataclass
class RenderInfo:
    """Per-object results of :func:`render`: PSF used (zone values) and the brightest pixel drawn (e-)."""

    fwhm_arcsec: np.ndarray
    psf_g1: np.ndarray
    psf_g2: np.ndarray
    peak: np.ndarray
    zone: np.ndarray
    #: offsets (pixels) of each point source's light centroid from its position (its zone's PSF): windowed and
    #: first moment, shape (n, 4) as :attr:`ZonePSF.centroid`
    centroid: np.ndarray | None = None


def _stamp_size(flux: np.ndarray, alpha: np.ndarray, fwhm_px: np.ndarray, beta: float | np.ndarray,
                rgal: np.ndarray, thr: float, wrap_thr: float = 0.0) -> np.ndarray:
    """Stamp sizes (from ``_SIZES``): the PSF (a Moffat of ``alpha, beta``) is drawn out to where its wing falls
    below ``thr`` e-/pixel and, with ``wrap_thr`` > 0, to where the flux beyond the stamp, which the periodic
    transform folds back into it, adds less than ``wrap_thr`` e-/pixel on average over the stamp."""
    f = np.maximum(flux, 1.0)
    sb = f * (beta - 1) / (np.pi * alpha ** 2 * thr)
    r_psf = alpha * np.sqrt(np.maximum(sb ** (1 / beta) - 1, 0.0))
    if wrap_thr > 0:
        # the Moffat's flux beyond H is (1 + (H / alpha)^2)^(1 - beta) ~ (H / alpha)^(2 - 2 beta): folded over the
        # (2H)^2 stamp it stays below wrap_thr for H^(2 beta) >= F alpha^(2 beta - 2) / (4 wrap_thr)
        r_wrap = (f * alpha ** (2 * beta - 2) / (4 * wrap_thr)) ** (1 / (2 * beta))
        r_psf = np.maximum(r_psf, r_wrap)
    r_psf = np.maximum(r_psf, 3 * fwhm_px)
    R = np.sqrt(r_psf ** 2 + rgal ** 2) + 2
    sizes = np.asarray(_SIZES)
    idx = np.minimum(np.searchsorted(sizes, 2 * R), len(sizes) - 1)
    return sizes[idx]


def render(image: np.ndarray, src: Sources, psf: PSFModel, *, pixel_scale: float, zones: int = 8,
           trunc: float = 8.0, wing_threshold: float = 0.5, wrap_threshold: float = 0.02) -> RenderInfo:
    """Add every object of ``src`` to ``image`` (float32, modified in place).

    Parameters
    ----------
    image : 2-D float32 array (the assembled active area), e- per pixel.
    src : objects to draw (positions may lie outside the image: only the overlap is added).
    psf : the exposure's PSF model (FWHM in arcsec).
    pixel_scale : arcsec per pixel.
    zones : the PSF is evaluated at the centres of ``zones x zones`` zones.
    trunc : Sersic truncation radius (half-light radii).
    wing_threshold : stamps extend until the PSF wing falls below this many e- per pixel.
    wrap_threshold : and until the wing beyond the stamp, folded back into it by the periodic transform, adds
        less than this many e- per pixel on average (a bright star's far wing spread as a plateau over a small
        stamp would flatten the wing that photometry measures out to a few times the largest aperture).
    """
    ny, nx = image.shape
    n_obj = len(src.x)
    zx = np.clip((src.x / nx * zones).astype(int), 0, zones - 1)
    zy = np.clip((src.y / ny * zones).astype(int), 0, zones - 1)
    zone = zy * zones + zx
    zc = (np.arange(zones) + 0.5) * (nx / zones) - 0.5
    zr = (np.arange(zones) + 0.5) * (ny / zones) - 0.5
    zfwhm, zg1, zg2 = psf.at(np.tile(zc, zones), np.repeat(zr, zones))
    zp: list[ZonePSF] | None = None
    if psf.family != "moffat":
        zp = zone_psfs(psf, np.tile(zc, zones), np.repeat(zr, zones), pixel_scale)
        ztrue = np.array([z.true_fwhm_px for z in zp]) * pixel_scale
        zcen = np.array([z.centroid for z in zp], float)
        zst = np.array([z.stamp_shape() for z in zp])
        fwhm_px, beta_st = zst[zone, 0], zst[zone, 1]
        alpha = fwhm_px / (2 * np.sqrt(2 ** (1 / beta_st) - 1))
    else:
        ztrue = zfwhm
        zcen = np.zeros((len(zfwhm), 4))
        fwhm_px, beta_st = zfwhm[zone] / pixel_scale, psf.beta
        alpha = moffat_alpha(fwhm_px, psf.beta)
    rgal = np.zeros(n_obj)
    for n in np.unique(src.sersic_n[src.sersic_n > 0]):
        m = src.sersic_n == n
        rgal[m] = src.hlr_px[m] * sersic_radius(float(n), trunc)
    size = _stamp_size(src.flux, alpha, fwhm_px, beta_st, rgal, wing_threshold, wrap_threshold)
    peak = np.zeros(n_obj, np.float32)
    ix = np.floor(src.x + 0.5).astype(np.int64)
    iy = np.floor(src.y + 0.5).astype(np.int64)
    # skip objects whose stamp does not touch the image
    half = size // 2
    touch = (ix + half >= 0) & (ix - half < nx) & (iy + half >= 0) & (iy - half < ny) & (src.flux > 0)
    order = np.lexsort((src.sersic_n, zone, size))
    order = order[touch[order]]
    pk_cache: dict[tuple[int, int], np.ndarray] = {}
    # groups of equal (size, zone, n)
    keys = np.stack([size[order], zone[order], (src.sersic_n[order] * 10).astype(int)], axis=1)
    brk = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
    for grp in np.split(order, brk):
        if grp.size == 0:
            continue
        N = int(size[grp[0]])
        z = int(zone[grp[0]])
        n = float(src.sersic_n[grp[0]])
        if (N, z) not in pk_cache and zp is not None:
            pk_cache[(N, z)] = zp[z].kimage(N)
        if (N, z) not in pk_cache:
            pk_cache[(N, z)] = psf_kimage(N, float(zfwhm[z] / pixel_scale / (2 * math.sqrt(2 ** (1 / psf.beta) - 1))),
                                          float(zg1[z]), float(zg2[z]), psf.beta)
        pk = pk_cache[(N, z)]
        chunk = max(1, _MAX_ELEMENTS // (2 * N * (N + 1)))
        for s in range(0, grp.size, chunk):
            idx = grp[s:s + chunk]
            x0 = ix[idx] - N // 2
            y0 = iy[idx] - N // 2
            cx = (src.x[idx] - x0).astype(np.float32)
            cy = (src.y[idx] - y0).astype(np.float32)
            if n > 0:
                stamps = render_batch(N, pk, src.flux[idx], cx, cy, n=n, hlr_px=src.hlr_px[idx], g1=src.g1[idx],
                                      g2=src.g2[idx], trunc=trunc)
            else:
                stamps = render_batch(N, pk, src.flux[idx], cx, cy)
            peak[idx] = stamps.reshape(len(idx), -1).max(axis=1)
            for j in range(len(idx)):
                xa, ya = int(x0[j]), int(y0[j])
                xs0, ys0 = max(0, -xa), max(0, -ya)
                xs1, ys1 = min(N, nx - xa), min(N, ny - ya)
                if xs1 <= xs0 or ys1 <= ys0:
                    continue
                image[ya + ys0:ya + ys1, xa + xs0:xa + xs1] += stamps[j, ys0:ys1, xs0:xs1]
    return RenderInfo(ztrue[zone], zg1[zone], zg2[zone], peak, zone, zcen[zone])


def draw_with_galsim(N: int, flux: float, cx: float, cy: float, *, fwhm_px: float, beta: float, psf_g1: float = 0.0,
                     psf_g2: float = 0.0, n: float = 0.0, hlr_px: float = 0.0, g1: float = 0.0, g2: float = 0.0,
                     trunc: float = 8.0) -> np.ndarray:
    """Reference: the same object drawn by GalSim (``Convolve(Sersic, Moffat).drawImage``) on an N x N stamp."""
    import galsim

    psf = galsim.Moffat(beta=beta, fwhm=fwhm_px).shear(g1=psf_g1, g2=psf_g2)
    if n > 0:
        obj = galsim.Convolve(galsim.Sersic(n, half_light_radius=hlr_px, trunc=trunc * hlr_px,
                                            flux=flux).shear(g1=g1, g2=g2), psf)
    else:
        obj = psf.withFlux(flux)
    # GalSim puts the profile centre at the true centre of the stamp, (N-1)/2 in 0-based coordinates
    return obj.drawImage(nx=N, ny=N, scale=1.0, offset=(cx - (N - 1) / 2, cy - (N - 1) / 2)).array


def star_grid(rng: np.random.Generator, n: int, size: int, *, sky: float, snr_range: tuple[float, float] = (50.0, 400.0),
              margin: float = 40.0, aperture_radius_px: float = 2.5) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                               np.ndarray]:
    """``n`` point sources on a jittered square grid over a ``size`` x ``size`` image, their S/N log-uniform in
    ``snr_range`` (in an aperture of ``aperture_radius_px`` on a sky of ``sky`` e-/pixel, Poisson noise): returns
    x, y (0-based), flux (e-) and S/N. For synthetic PSF and photometry studies on the renderer's profiles."""
    k = int(np.ceil(np.sqrt(n)))
    gx, gy = np.meshgrid(np.linspace(margin, size - margin, k), np.linspace(margin, size - margin, k))
    x = gx.ravel()[:n] + rng.uniform(-0.5, 0.5, n)
    y = gy.ravel()[:n] + rng.uniform(-0.5, 0.5, n)
    snr = np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1]), n))
    npix = np.pi * aperture_radius_px ** 2
    flux = 0.5 * (snr ** 2 + np.sqrt(snr ** 4 + 4 * snr ** 2 * npix * sky))
    return x, y, flux, snr

