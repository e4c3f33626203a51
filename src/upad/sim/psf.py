"""The point-spread function: a Moffat profile whose FWHM and ellipticity vary smoothly over the field.

Field coordinates are normalised so that the frame spans ``u, v`` in [-1, 1] (``u`` along x) and
``rho**2 = (u**2 + v**2) / 2`` is 1 at the corners::

    fwhm(u, v) = fwhm_centre * (1 + c_r2 * rho**2 + c_x * u + c_y * v)
    g1(u, v)   = g1_0 + g_r * (u**2 - v**2) / 2
    g2(u, v)   = g2_0 + g_r * u * v

``g1, g2`` are GalSim reduced shears (the Moffat is sheared keeping its area; the FWHM is that of
the round profile before shearing, and excludes the pixel response). ``fwhm`` is in arcsec.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from upad.sim.config import SimConfig


@dataclass(frozen=True)
class PSFModel:
    """PSF of one exposure (see module docstring for the formulas)."""

    beta: float
    fwhm_centre: float
    c_r2: float
    c_x: float
    c_y: float
    g1_0: float
    g2_0: float
    g_r: float
    nx: int
    ny: int

    def uv(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hx, hy = (self.nx - 1) / 2, (self.ny - 1) / 2
        return (np.asarray(x, float) - hx) / hx, (np.asarray(y, float) - hy) / hy

    def at(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FWHM (arcsec), g1, g2 at 0-based pixel positions ``x, y`` of the assembled image."""
        u, v = self.uv(x, y)
        r2 = (u * u + v * v) / 2
        fwhm = self.fwhm_centre * (1 + self.c_r2 * r2 + self.c_x * u + self.c_y * v)
        return fwhm, self.g1_0 + self.g_r * (u * u - v * v) / 2, self.g2_0 + self.g_r * u * v

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = "moffat"
        d["formula"] = ("u,v=(x-(nx-1)/2)/((nx-1)/2),(y-(ny-1)/2)/((ny-1)/2) [0-based x,y]; rho2=(u^2+v^2)/2; "
                        "fwhm=fwhm_centre*(1+c_r2*rho2+c_x*u+c_y*v) [arcsec, before pixel]; "
                        "g1=g1_0+g_r*(u^2-v^2)/2; g2=g2_0+g_r*u*v [GalSim reduced shear]")
        return d


def draw_psf_model(rng: np.random.Generator, *, fwhm_centre: float, shape: tuple[int, int], cfg: SimConfig) -> PSFModel:
    """Random field variation around a central FWHM (arcsec) for one exposure."""
    ny, nx = shape
    if not cfg.enabled("psf_variation"):
        return PSFModel(cfg.psf_beta, fwhm_centre, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, nx, ny)
    var = cfg.psf_fwhm_field_variation
    e = cfg.psf_ellipticity
    return PSFModel(
        beta=cfg.psf_beta, fwhm_centre=fwhm_centre,
        c_r2=var * rng.uniform(0.7, 1.3), c_x=rng.normal(0, var / 4), c_y=rng.normal(0, var / 4),
        g1_0=rng.normal(0, e / 2), g2_0=rng.normal(0, e / 2), g_r=e * rng.uniform(0.5, 1.5) * rng.choice([-1, 1]),
        nx=nx, ny=ny,
    )


def moffat_alpha(fwhm: np.ndarray | float, beta: float) -> np.ndarray | float:
    """Moffat scale radius for a FWHM (same units)."""
    return np.asarray(fwhm) / (2 * math.sqrt(2 ** (1 / beta) - 1))


def exposure_fwhm(rng: np.random.Generator, *, night_seeing: float, wavelength: float, airmass: float,
                  cfg: SimConfig) -> float:
    """Central FWHM (arcsec) of one exposure: night seeing (r band, zenith) scaled by lambda^-0.2 and X^0.6."""
    f = night_seeing * (wavelength / 6250.0) ** -0.2 * airmass ** 0.6 * (1 + rng.normal(0, cfg.seeing_exposure_sigma))
    lo, hi = cfg.seeing_range_arcsec
    return float(np.clip(f, lo, hi))
