"""Synthetic WCS and images for the coadd tests."""
from __future__ import annotations

import numpy as np
from astropy.wcs import Sip, WCS
from scipy.special import erf


def tan_wcs(shape: tuple[int, int], *, crval=(150.0, 2.0), crpix=None, scale_arcsec: float = 0.55,
            rot_deg: float = 0.0, sip: dict | None = None) -> WCS:
    """A TAN (or TAN-SIP) WCS of an image of ``shape``; ``sip`` maps ``("a"|"b", p, q)`` to a coefficient."""
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    cp = crpix if crpix is not None else ((nx + 1) / 2.0, (ny + 1) / 2.0)
    w.wcs.crpix = list(cp)
    s = scale_arcsec / 3600.0
    t = np.deg2rad(rot_deg)
    w.wcs.cd = s * np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])
    if sip:
        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        for (ab, p, q), c in sip.items():
            (a if ab == "a" else b)[p, q] = c
        w.sip = Sip(a, b, None, None, list(cp))
    w.wcs.set()
    w.pixel_shape = (nx, ny)
    return w


#: a distortion of a few tenths of a pixel at 100 px from the centre, like a wide-field camera's
SIP = {("a", 2, 0): 1.2e-5, ("a", 1, 1): -6e-6, ("a", 0, 2): 4e-6, ("b", 2, 0): -5e-6, ("b", 1, 1): 9e-6,
       ("b", 0, 2): 1.0e-5, ("a", 3, 0): 2e-9, ("b", 0, 3): -3e-9}


def gaussian_stars(shape: tuple[int, int], xs, ys, fluxes, sigma: float) -> np.ndarray:
    """Pixel-integrated circular Gaussians (0-based centres): each star's pixel values sum to its flux."""
    ny, nx = shape
    img = np.zeros(shape, np.float64)
    ex = np.arange(nx + 1) - 0.5
    ey = np.arange(ny + 1) - 0.5
    k = 1.0 / (np.sqrt(2.0) * sigma)
    for x, y, f in zip(xs, ys, fluxes):
        px = np.diff(0.5 * erf((ex - x) * k))
        py = np.diff(0.5 * erf((ey - y) * k))
        img += f * np.outer(py, px)
    return img


def src_to_dst(src_wcs: WCS, dst_wcs: WCS, x, y):
    """Exact mapping of exposure pixels to tile pixels (0-based)."""
    ra, dec = src_wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    return dst_wcs.all_world2pix(ra, dec, 0, tolerance=1e-10, maxiter=100)
