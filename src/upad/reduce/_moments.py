"""Adaptive second moments of sources (compiled), shared by detection and PSF analysis.

The weight is an elliptical Gaussian ``W`` iterated towards the source's own moments (Bernstein & Jarvis 2002):
the weighted moments ``M`` of the source give its moments through the Gaussian identity
``S = (M^-1 - W^-1)^-1`` and the next weight is ``S`` with its eigenvalues kept above ``min_sigma**2`` so that
undersampled stars (FWHM below 2 pixels) are still measured over several pixels. At convergence ``S`` is the
second-moment matrix of a Gaussian source of the same size and shape; for other profiles it is a well-defined,
monotonic size measure (calibrated against rendered Moffat stars in :mod:`upad.reduce.psf`).
"""
from __future__ import annotations

import math

import numpy as np

from upad.reduce._jit import njit, prange

__all__ = ["moments"]


@njit(parallel=True, nogil=True, cache=True)
def _kernel(img, xs, ys, s0, maxit, min_var, conc):  # pragma: no cover - compiled
    ny, nx = img.shape
    n = len(xs)
    out = np.full((n, 7), np.nan)
    for k in prange(n):
        wxx = max(s0[k] * s0[k], min_var)
        wyy = wxx
        wxy = 0.0
        cx = xs[k]
        cy = ys[k]
        sxx_o = np.nan
        syy_o = np.nan
        sxy_o = np.nan
        for it in range(maxit):
            det = wxx * wyy - wxy * wxy
            if det <= 0:
                break
            ixx = wyy / det
            iyy = wxx / det
            ixy = -wxy / det
            r = int(4.0 * math.sqrt(max(wxx, wyy))) + 1
            if r > 40:
                r = 40
            ic = int(cx + 0.5)
            jc = int(cy + 0.5)
            s = 0.0
            sx = 0.0
            sy = 0.0
            sxx = 0.0
            syy = 0.0
            sxy = 0.0
            for j in range(max(0, jc - r), min(ny, jc + r + 1)):
                dy = j - cy
                for i in range(max(0, ic - r), min(nx, ic + r + 1)):
                    dx = i - cx
                    q = 0.5 * (ixx * dx * dx + iyy * dy * dy + 2 * ixy * dx * dy)
                    if q > 12.0:
                        continue
                    w = math.exp(-q) * img[j, i]
                    s += w
                    sx += w * dx
                    sy += w * dy
                    sxx += w * dx * dx
                    syy += w * dy * dy
                    sxy += w * dx * dy
            if s <= 0:
                break
            mx = sx / s
            my = sy / s
            mxx = sxx / s - mx * mx
            myy = syy / s - my * my
            mxy = sxy / s - mx * my
            dm = mxx * myy - mxy * mxy
            if dm <= 0:
                break
            # S = (M^-1 - W^-1)^-1
            axx = myy / dm - ixx
            ayy = mxx / dm - iyy
            axy = -mxy / dm - ixy
            da = axx * ayy - axy * axy
            if da <= 0 or axx <= 0:
                break
            qxx = ayy / da
            qyy = axx / da
            qxy = -axy / da
            if abs(mx) < 2 and abs(my) < 2:
                cx += mx
                cy += my
            else:
                break
            conv = (abs(qxx - sxx_o) + abs(qyy - syy_o) + abs(qxy - sxy_o) < 1e-6 * (qxx + qyy)) if it > 0 else False
            sxx_o = qxx
            syy_o = qyy
            sxy_o = qxy
            # next weight: S with eigenvalues >= min_var
            tr = qxx + qyy
            disc = math.sqrt(max((qxx - qyy) ** 2 / 4 + qxy * qxy, 0.0))
            l1 = tr / 2 + disc
            l2 = tr / 2 - disc
            if l2 >= min_var:
                wxx, wyy, wxy = qxx, qyy, qxy
            else:
                # rebuild with floored eigenvalues along the same axes
                if disc > 0:
                    c2 = (qxx - qyy) / 2 / disc
                    s2 = qxy / disc
                else:
                    c2 = 1.0
                    s2 = 0.0
                e1 = max(l1, min_var)
                e2 = max(l2, min_var)
                wxx = 0.5 * (e1 + e2) + 0.5 * (e1 - e2) * c2
                wyy = 0.5 * (e1 + e2) - 0.5 * (e1 - e2) * c2
                wxy = 0.5 * (e1 - e2) * s2
            if conv and abs(mx) < 1e-4 and abs(my) < 1e-4:
                break
        if not np.isfinite(sxx_o):
            continue
        out[k, 0] = sxx_o
        out[k, 1] = syy_o
        out[k, 2] = sxy_o
        out[k, 3] = cx
        out[k, 4] = cy
        if not conc:
            continue
        # concentration: fluxes under round Gaussian weights of sigma r and 3 r (smooth, so insensitive to the
        # sub-pixel phase, unlike hard apertures)
        t = 0.5 * (sxx_o + syy_o)
        v1 = 1.0 / (2.0 * t)
        v2 = 1.0 / (18.0 * t)
        f1 = 0.0
        f2 = 0.0
        r = int(4.0 * 3.0 * math.sqrt(t)) + 1
        if r > 60:
            r = 60
        ic = int(cx + 0.5)
        jc = int(cy + 0.5)
        for j in range(max(0, jc - r), min(ny, jc + r + 1)):
            dy = j - cy
            for i in range(max(0, ic - r), min(nx, ic + r + 1)):
                dx = i - cx
                d2 = dx * dx + dy * dy
                q = img[j, i]
                f1 += math.exp(-d2 * v1) * q
                f2 += math.exp(-d2 * v2) * q
        out[k, 5] = f1
        out[k, 6] = f2
    return out


def moments(image: np.ndarray, x: np.ndarray, y: np.ndarray, *, sigma0: float | np.ndarray = 1.5,
            min_sigma: float = 1.0, maxit: int = 50, concentration: bool = True) -> np.ndarray:
    """Adaptive moments of sources at 0-based ``(x, y)``.

    Returns an ``(n, 7)`` array: ``Sxx, Syy, Sxy`` (pixels^2), the refined centre ``x, y`` and the fluxes under
    round Gaussian weights of sigma ``r`` and ``3 r``, ``r = sqrt((Sxx + Syy) / 2)`` (NaN rows where the iteration
    failed); without ``concentration`` the last two columns are NaN (faster).
    """
    s0 = np.broadcast_to(np.asarray(sigma0, np.float64), np.shape(x)).copy()
    img = np.asarray(image)
    if img.dtype != np.float32:
        img = img.astype(np.float32)
    return _kernel(img, np.asarray(x, np.float64), np.asarray(y, np.float64), s0, int(maxit),
                   float(min_sigma) ** 2, bool(concentration))
