"""PSF homogenisation for the catalogs' photometry: matching kernels between the coadds' PSF models, and images
degraded with them.

Released coadds are never homogenised; only the catalog photometry is (``MAG_PSFCOR``, ``MAG_APER3_WORSTPSF``:
:mod:`upad.catalog.measure`). A matching kernel ``K`` takes a narrower PSF ``P_s`` to a broader one ``P_t``
(``P_s * K = P_t``); it is the ratio of their Fourier transforms (photutils :func:`~photutils.psf_matching.make_kernel`)
computed from the PSF models' noise-free stamps at the image centre.
Convolving an image with ``K`` correlates its noise: the catalogs do not take errors from degraded images (see
:mod:`upad.catalog.measure`).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["psf_stamp", "matching_kernel", "degrade", "stamp_size", "target_psf"]


def stamp_size(fwhm_px: float, *, factor: float = 8.0, minimum: int = 25) -> int:
    """Odd stamp size (pixels) that holds ``factor`` FWHMs of the broadest PSF of a match."""
    n = max(int(minimum), int(math.ceil(factor * float(fwhm_px))))
    return n + 1 - n % 2


def psf_stamp(psf, size: int, *, x: float | None = None, y: float | None = None) -> np.ndarray:
    """The PSF model's stamp (unit sum, pixel-integrated, centred on the central pixel) at ``(x, y)`` (default: the
    image centre), ``size`` x ``size`` pixels (odd)."""
    if size % 2 == 0:
        raise ValueError(f"the PSF stamp size must be odd, not {size}")
    ny, nx = psf.shape
    xc = (nx - 1) / 2.0 if x is None else float(x)
    yc = (ny - 1) / 2.0 if y is None else float(y)
    # render on the pixel grid: the phase is removed (centred stamp)
    s = np.asarray(psf.render(float(round(xc)), float(round(yc)), size), np.float64)
    total = s.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("the PSF model renders an empty stamp")
    return s / total


def matching_kernel(source: np.ndarray, target: np.ndarray, *, taper: float = 0.0,
                    regularization: float = 1e-4) -> np.ndarray:
    """Kernel ``K`` (unit sum) with ``source * K ≈ target``, from two centred PSF stamps of the same odd shape.

    ``source`` must be the narrower PSF. The Fourier ratio is cut where the source's transfer function is below
    ``regularization`` of its peak and, when ``taper > 0``, tapered by photutils'
    :class:`~photutils.psf_matching.TukeyWindow` of that fraction. The PSF models' stamps are noise-free, so no taper
    is needed: a window changes the matched profile (a split cosine bell of alpha 0.4, beta 0.3 moves the flux of a
    1.5″ PSF within 2 pixels by 7 %), and ``source * K`` then differs from ``target`` by what the window removed.
    """
    from photutils.psf_matching import TukeyWindow, make_kernel

    if source.shape != target.shape or source.shape[0] != source.shape[1] or source.shape[0] % 2 == 0:
        raise ValueError(f"the PSF stamps must be square, odd and of one shape (got {source.shape} and "
                         f"{target.shape})")
    k = make_kernel(np.asarray(source, np.float64), np.asarray(target, np.float64),
                    window=TukeyWindow(alpha=taper) if taper > 0 else None,
                    regularization=regularization)
    k = np.asarray(k, np.float64)
    return k / k.sum()


def degrade(image: np.ndarray, kernel: np.ndarray, *, valid: np.ndarray | None = None) -> np.ndarray:
    """``image`` convolved with ``kernel`` (float32, same shape; overlap-add FFT, so memory stays a few image
    copies). ``valid``: pixels with data; the others are 0 before and after the convolution."""
    from scipy.signal import oaconvolve

    img = np.asarray(image, np.float32)
    if valid is not None:
        img = np.where(valid, img, np.float32(0))
    out = oaconvolve(img, np.asarray(kernel, np.float32), mode="same").astype(np.float32, copy=False)
    if valid is not None:
        out[~valid] = 0
    return out


def target_psf(psfs, *, broadening: float = 1.1) -> tuple[np.ndarray, float]:
    """The common PSF of a set of bands: the stamp of the broadest PSF model (largest FWHM at the centre) convolved
    with a Gaussian that takes its FWHM to ``broadening`` times (in quadrature, ``σ_G = FWHM √(b² − 1) / 2.3548``).

    Broadening makes the target broader than every band's PSF, the broadest included, whatever the profiles: two
    PSFs of one FWHM with different wings cannot be matched to each other, but both can be matched to a broader one.
    Returns the stamp (unit sum) and its nominal FWHM in pixels."""
    from scipy.signal import fftconvolve

    fw = [float(p.fwhm_at((p.shape[1] - 1) / 2.0, (p.shape[0] - 1) / 2.0)[0]) for p in psfs]
    k = int(np.argmax(fw))
    target_fwhm = fw[k] * float(broadening)
    size = stamp_size(target_fwhm)
    stamp = psf_stamp(psfs[k], size)
    if broadening > 1.0:
        sig = fw[k] * math.sqrt(broadening ** 2 - 1.0) / 2.3548
        h = size // 2
        yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
        g = np.exp(-(xx * xx + yy * yy) / (2 * sig * sig))
        stamp = fftconvolve(stamp, g / g.sum(), mode="same")
        stamp = np.clip(stamp, 0.0, None)
        stamp /= stamp.sum()
    return stamp, target_fwhm
