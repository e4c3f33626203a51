"""World coordinate systems: the nominal one written in raw headers and the true one used to draw.

Pixel coordinates are those of the assembled (trimmed) image of the detector. The header WCS is a
plain TAN projection centred on the *commanded* pointing, with ``CRPIX`` at the image centre and the
nominal plate scale (``CD = diag(cd_sign_x, cd_sign_y) * pixel_scale``). The true WCS is TAN-SIP:
centred on the true pointing (commanded + pointing error), slightly rotated, with a small scale
error and a cubic radial distortion (``A_3_0 = A_1_2 = B_2_1 = B_0_3 = k``) of
``distortion_corner_px`` pixels at the field corner, plus small quadratic terms. The inverse
polynomials ``AP/BP`` are fitted (order 4) so that tools that use them work.

Optionally (:func:`true_wcs` keyword arguments, ``SimConfig`` fields ``distortion_radial5_corner_px``,
``distortion_tangential_corner_px``, ``plate_scale_error``, ``parity_flip``) the true world goes beyond what the
header says and beyond a cubic SIP: a 5th-order radial term ``k5 r^4 (u, v)``, a Brown-Conrady tangential
(decentering) term ``(1 + r^2/rc^2) [p1 (r^2 + 2u^2) + 2 p2 u v, p2 (r^2 + 2v^2) + 2 p1 u v]``, a plate-scale error and
a mirrored x axis. The truth is still an exact TAN-SIP header (order 5 when those terms are on: the distortion is a
polynomial of that order), so the truth records the true pixel-to-sky mapping exactly.
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
             quad_terms: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0), radial5_corner_px: float = 0.0,
             tangential_corner_px: tuple[float, float] = (0.0, 0.0), parity_flip: bool = False) -> WCS:
    """The true TAN-SIP WCS of an exposure.

    Parameters
    ----------
    ra, dec : true pointing (deg) at the image centre.
    shape : (ny, nx) of the assembled image.
    rotation_deg : rotation of the detector on the sky.
    scale_factor : true / nominal plate scale.
    distortion_corner_px : radial cubic distortion at the corner (pixels, + = pincushion).
    quad_terms : (A_2_0, A_0_2, B_2_0, B_0_2) expressed as displacement in pixels at the corner.
    radial5_corner_px : 5th-order radial distortion ``k5 r^4 (u, v)`` at the corner (pixels).
    tangential_corner_px : (p1, p2) of a tangential (decentering) distortion, as the displacement each gives at the
        corner (pixels); modulated by ``1 + r^2 / rc^2`` (order 2 and 4 terms).
    parity_flip : the true x axis is mirrored relative to the nominal (header) one.
    """
    ny, nx = shape
    s = pixel_scale / 3600.0 * scale_factor
    th = math.radians(rotation_deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    cd = rot @ np.diag([(-cd_sign_x if parity_flip else cd_sign_x) * s, cd_sign_y * s])
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
    extra = radial5_corner_px != 0.0 or any(t != 0.0 for t in tangential_corner_px)
    if extra:
        _add_high_order(hdr, nx, ny, rc, radial5_corner_px, tangential_corner_px)
    _fit_inverse_sip(hdr, nx, ny, order=6 if extra else 4)
    return WCS(hdr)


def _add_high_order(hdr: fits.Header, nx: int, ny: int, rc: float, radial5: float,
                    tangential: tuple[float, float]) -> None:
    """Add the 5th-order radial and the tangential terms to the SIP polynomials of ``hdr`` (order raised to 5).

    The terms are defined as functions of the pixel offsets and turned into SIP coefficients by an exact
    least-squares fit on a grid (they are polynomials of order <= 5, so the fit is exact to rounding).
    """
    g = np.linspace(-0.6, 0.6, 31)
    u, v = np.meshgrid(g * nx, g * ny)
    u, v = u.ravel(), v.ravel()
    r2 = u * u + v * v
    k5 = radial5 / rc ** 5
    p1, p2 = (t / rc ** 2 for t in tangential)
    mod = 1.0 + r2 / rc ** 2
    du = k5 * r2 * r2 * u + mod * (p1 * (r2 + 2 * u * u) + 2 * p2 * u * v)
    dv = k5 * r2 * r2 * v + mod * (p2 * (r2 + 2 * v * v) + 2 * p1 * u * v)
    order = 5
    terms = [(p, q) for p in range(order + 1) for q in range(order + 1 - p) if p + q >= 2]
    sc = float(max(nx, ny))
    A = np.stack([(u / sc) ** p * (v / sc) ** q for p, q in terms], axis=1)
    ca = np.linalg.lstsq(A, du, rcond=None)[0]
    cb = np.linalg.lstsq(A, dv, rcond=None)[0]
    hdr["A_ORDER"] = order
    hdr["B_ORDER"] = order
    for (p, q), a, b in zip(terms, ca, cb):
        a, b = a / sc ** (p + q), b / sc ** (p + q)
        if abs(a) * rc ** (p + q) > 1e-9:
            hdr[f"A_{p}_{q}"] = float(hdr.get(f"A_{p}_{q}", 0.0)) + float(a)
        if abs(b) * rc ** (p + q) > 1e-9:
            hdr[f"B_{p}_{q}"] = float(hdr.get(f"B_{p}_{q}", 0.0)) + float(b)


def _sip_forward(hdr: fits.Header, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fu, fv = np.zeros_like(u), np.zeros_like(v)
    n = int(max(hdr.get("A_ORDER", 3), hdr.get("B_ORDER", 3))) + 1
    for p in range(n):
        for q in range(n - p):
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
    # orders above 4 (the high-order world) on scaled offsets: raw pixel powers up to 6 are too ill-conditioned
    sc = float(max(nx, ny)) / 2.0 if order > 4 else 1.0
    A = np.stack([(U / sc) ** p * (V / sc) ** q for p, q in terms], axis=1)
    cu = np.linalg.lstsq(A, u - U, rcond=None)[0]
    cv = np.linalg.lstsq(A, v - V, rcond=None)[0]
    if sc != 1.0:
        cu = np.array([c / sc ** (p + q) for (p, q), c in zip(terms, cu)])
        cv = np.array([c / sc ** (p + q) for (p, q), c in zip(terms, cv)])
    hdr["AP_ORDER"] = order
    hdr["BP_ORDER"] = order
    for (p, q), a, b in zip(terms, cu, cv):
        hdr[f"AP_{p}_{q}"] = float(a)
        hdr[f"BP_{p}_{q}"] = float(b)


def wcs_header(w: WCS) -> fits.Header:
    """FITS header cards of a WCS, including SIP (A/B/AP/BP)."""
    return w.to_header(relax=True)
