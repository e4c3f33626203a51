"""World coordinate systems: the nominal one written in raw headers and the true one used to draw.

Pixel coordinates are those of the assembled (trimmed) image of the detector. The header WCS is a
plain TAN projection centred on the *commanded* pointing, with ``CRPIX`` at the image centre and the
nominal plate scale (``CD = diag(cd_sign_x, cd_sign_y) * pixel_scale``). The true WCS is TAN-SIP:
centred on the true pointing (commanded + pointing error), slightly rotated, with a small scale
error and a cubic radial distortion (``A_3_0 = A_1_2 = B_2_1 = B_0_3 = k``) of
``distortion_corner_px`` pixels at the field corner, plus small quadratic terms. The inverse
polynomials ``AP/BP`` are fitted (order 4) so that tools that use them work.
"""
from __future__ import annotations

import math

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS


def nominal_header(ra: float, dec: float, shape: tuple[int, int], *, pixel_scale: float, cd_sign_x: int,
                   cd_sign_y: int) -> dict[str, float | str]:
    """TAN WCS cards for the commanded pointing (values for the assembled image, 1-based CRPIX)."""
    ny, nx = shape
    s = pixel_scale / 3600.0
    return {
        "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg",
        "CRVAL1": round(float(ra), 8), "CRVAL2": round(float(dec), 8),
        "CRPIX1": (nx + 1) / 2.0, "CRPIX2": (ny + 1) / 2.0,
        "CD1_1": cd_sign_x * s, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": cd_sign_y * s,
    }


def true_wcs(ra: float, dec: float, shape: tuple[int, int], *, pixel_scale: float, cd_sign_x: int, cd_sign_y: int,
             rotation_deg: float = 0.0, scale_factor: float = 1.0, distortion_corner_px: float = 0.0,
             quad_terms: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)) -> WCS:
    """The true TAN-SIP WCS of an exposure.

    Parameters
    ----------
    ra, dec : true pointing (deg) at the image centre.
    shape : (ny, nx) of the assembled image.
    rotation_deg : rotation of the detector on the sky.
    scale_factor : true / nominal plate scale.
    distortion_corner_px : radial cubic distortion at the corner (pixels, + = pincushion).
    quad_terms : (A_2_0, A_0_2, B_2_0, B_0_2) expressed as displacement in pixels at the corner.
    """
    ny, nx = shape
    s = pixel_scale / 3600.0 * scale_factor
    th = math.radians(rotation_deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    cd = rot @ np.diag([cd_sign_x * s, cd_sign_y * s])
    crpix = ((nx + 1) / 2.0, (ny + 1) / 2.0)
    rc = math.hypot(nx / 2.0, ny / 2.0)
    k = distortion_corner_px / rc ** 3
    q = [t / rc ** 2 for t in quad_terms]
    hdr = fits.Header()
    hdr["NAXIS"] = 2
    hdr["NAXIS1"] = nx
    hdr["NAXIS2"] = ny
    for key, val in {
        "CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP", "CUNIT1": "deg", "CUNIT2": "deg",
        "CRVAL1": float(ra), "CRVAL2": float(dec), "CRPIX1": crpix[0], "CRPIX2": crpix[1],
        "CD1_1": cd[0, 0], "CD1_2": cd[0, 1], "CD2_1": cd[1, 0], "CD2_2": cd[1, 1],
        "A_ORDER": 3, "B_ORDER": 3,
        "A_3_0": k, "A_1_2": k, "B_2_1": k, "B_0_3": k,
        "A_2_0": q[0], "A_0_2": q[1], "B_2_0": q[2], "B_0_2": q[3],
    }.items():
        hdr[key] = val
    _fit_inverse_sip(hdr, nx, ny)
    return WCS(hdr)


def _sip_forward(hdr: fits.Header, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fu, fv = np.zeros_like(u), np.zeros_like(v)
    for p in range(4):
        for q in range(4 - p):
            a, b = hdr.get(f"A_{p}_{q}", 0.0), hdr.get(f"B_{p}_{q}", 0.0)
            if a:
                fu += a * u ** p * v ** q
            if b:
                fv += b * u ** p * v ** q
    return u + fu, v + fv


def _fit_inverse_sip(hdr: fits.Header, nx: int, ny: int, order: int = 4) -> None:
    """Least-squares AP/BP polynomials (SIP inverse) over the image, written into ``hdr``."""
    g = np.linspace(-0.55, 0.55, 41)
    u, v = np.meshgrid(g * nx, g * ny)
    u, v = u.ravel(), v.ravel()
    U, V = _sip_forward(hdr, u, v)
    terms = [(p, q) for p in range(order + 1) for q in range(order + 1 - p)]
    A = np.stack([U ** p * V ** q for p, q in terms], axis=1)
    cu = np.linalg.lstsq(A, u - U, rcond=None)[0]
    cv = np.linalg.lstsq(A, v - V, rcond=None)[0]
    hdr["AP_ORDER"] = order
    hdr["BP_ORDER"] = order
    for (p, q), a, b in zip(terms, cu, cv):
        hdr[f"AP_{p}_{q}"] = float(a)
        hdr[f"BP_{p}_{q}"] = float(b)


def wcs_header(w: WCS) -> fits.Header:
    """FITS header cards of a WCS, including SIP (A/B/AP/BP)."""
    return w.to_header(relax=True)
