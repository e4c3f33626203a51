"""The point-spread function: a profile of one of several families whose size and ellipticity vary over the field.

Field coordinates are normalised so that the frame spans ``u, v`` in [-1, 1] (``u`` along x) and
``rho**2 = (u**2 + v**2) / 2`` is 1 at the corners::

    fwhm(u, v) = fwhm_centre * (1 + c_r2 * rho**2 + c_x * u + c_y * v + bump(u, v))
    bump(u, v) = bump_amp * exp(-((u - bump_u)**2 + (v - bump_v)**2) / (2 * bump_w**2))
    g1(u, v)   = g1_0 + g_r * (u**2 - v**2) / 2
    g2(u, v)   = g2_0 + g_r * u * v

``g1, g2`` are GalSim reduced shears (the profile is sheared keeping its area). ``fwhm`` is in arcsec and excludes
the pixel response. The bump (``SimConfig.psf_field_bump``, off by default) is a variation that no low-order
polynomial follows.

Families (``SimConfig.psf_family``):

``moffat``
    Moffat of index ``beta`` (``psf_beta``, or drawn per exposure from ``psf_beta_range``) and FWHM ``fwhm``.
``double_gaussian``
    ``(1 - f) N(sigma_1) + f N(r sigma_1)``: a core and a wing (``f`` = ``dg_wing_fraction``, ``r`` =
    ``dg_width_ratio``), ``sigma_1`` such that the FWHM of the sum is ``fwhm``.
``kolmogorov_optics``
    GalSim ``Kolmogorov(fwhm)`` (sheared) convolved with ``OpticalPSF(lambda/D, aberrations, obscuration)``:
    defocus, astigmatism, coma and spherical aberration (Zernike, waves) that vary over the field (defocus with
    rho^2, astigmatism with the field angle squared, coma with the field angle). The FWHM of the convolution is
    larger than ``fwhm`` (the atmosphere's).

**The true FWHM** of any profile, recorded in the truth per object (``fwhm_arcsec``), is the *effective* FWHM
``2 sqrt(A / pi)`` of the area ``A`` where the profile (before the pixel response) is at least half its peak; for a
round profile it is the ordinary FWHM, and for a sheared one the FWHM of the round profile before shearing.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from upad.sim.config import SimConfig

FAMILIES = ("moffat", "double_gaussian", "kolmogorov_optics")

#: T80 telescope (JAST80) aperture (m) and linear central obscuration, for the optical PSF
T80_DIAMETER_M = 0.83
T80_OBSCURATION = 0.35


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
    family: str = "moffat"
    bump_amp: float = 0.0
    bump_u: float = 0.0
    bump_v: float = 0.0
    bump_w: float = 0.5
    #: double Gaussian: flux fraction of the wing and its width over the core's
    dg_wing_fraction: float = 0.0
    dg_width_ratio: float = 1.0
    #: optics: lambda / D (arcsec), linear obscuration, Zernike coefficients (waves): defocus at the centre and its
    #: rho^2 term, astigmatism at the centre (z5, z6) and its field term, coma field term, spherical
    lam_over_diam: float = 0.0
    obscuration: float = 0.0
    optics: dict = field(default_factory=dict)

    def uv(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hx, hy = (self.nx - 1) / 2, (self.ny - 1) / 2
        return (np.asarray(x, float) - hx) / hx, (np.asarray(y, float) - hy) / hy

    def at(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FWHM parameter (arcsec), g1, g2 at 0-based pixel positions ``x, y`` of the assembled image.

        For ``kolmogorov_optics`` the FWHM parameter is the atmosphere's; :func:`upad.sim.render.render` reports the
        true (effective) FWHM of the profile drawn."""
        u, v = self.uv(x, y)
        r2 = (u * u + v * v) / 2
        f = 1 + self.c_r2 * r2 + self.c_x * u + self.c_y * v
        if self.bump_amp:
            f = f + self.bump_amp * np.exp(-((u - self.bump_u) ** 2 + (v - self.bump_v) ** 2) / (2 * self.bump_w ** 2))
        return self.fwhm_centre * f, self.g1_0 + self.g_r * (u * u - v * v) / 2, self.g2_0 + self.g_r * u * v

    def aberrations_at(self, x: float, y: float) -> list[float]:
        """GalSim ``aberrations`` (Noll-indexed list, waves) of the optics at a 0-based position."""
        o = self.optics
        u, v = (float(a) for a in self.uv(x, y))
        r2 = (u * u + v * v) / 2
        ab = [0.0] * 12
        ab[4] = o.get("z4_0", 0.0) + o.get("z4_r2", 0.0) * r2
        ab[5] = o.get("z5_0", 0.0) + o.get("astig_r", 0.0) * (u * u - v * v) / 2
        ab[6] = o.get("z6_0", 0.0) + o.get("astig_r", 0.0) * u * v
        ab[7] = o.get("coma_r", 0.0) * v
        ab[8] = o.get("coma_r", 0.0) * u
        ab[11] = o.get("z11", 0.0)
        return ab

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.family
        d["formula"] = ("u,v=(x-(nx-1)/2)/((nx-1)/2),(y-(ny-1)/2)/((ny-1)/2) [0-based x,y]; rho2=(u^2+v^2)/2; "
                        "fwhm=fwhm_centre*(1+c_r2*rho2+c_x*u+c_y*v+bump_amp*exp(-((u-bump_u)^2+(v-bump_v)^2)"
                        "/(2 bump_w^2))) [arcsec, before pixel; kolmogorov_optics: the atmosphere's]; "
                        "g1=g1_0+g_r*(u^2-v^2)/2; g2=g2_0+g_r*u*v [GalSim reduced shear]; "
                        "true FWHM per object in the OBJECTS table (effective: 2 sqrt(area above half peak / pi))")
        return d


def draw_psf_model(rng: np.random.Generator, *, fwhm_centre: float, shape: tuple[int, int], cfg: SimConfig,
                   rng_family: np.random.Generator | None = None, wavelength: float = 6250.0) -> PSFModel:
    """Random field variation around a central FWHM (arcsec) for one exposure.

    ``rng`` draws the Moffat field pattern exactly as before the PSF families existed (so that default simulations
    are unchanged); ``rng_family`` (a separate stream) draws the family, its parameters and the bump.
    ``wavelength`` (Angstrom) sets the optics' lambda / D.
    """
    ny, nx = shape
    if not cfg.enabled("psf_variation"):
        base = PSFModel(cfg.psf_beta, fwhm_centre, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, nx, ny)
    else:
        var = cfg.psf_fwhm_field_variation
        e = cfg.psf_ellipticity
        base = PSFModel(
            beta=cfg.psf_beta, fwhm_centre=fwhm_centre,
            c_r2=var * rng.uniform(0.7, 1.3), c_x=rng.normal(0, var / 4), c_y=rng.normal(0, var / 4),
            g1_0=rng.normal(0, e / 2), g2_0=rng.normal(0, e / 2), g_r=e * rng.uniform(0.5, 1.5) * rng.choice([-1, 1]),
            nx=nx, ny=ny,
        )
    family = cfg.psf_family
    if family == "moffat" and cfg.psf_beta_range is None and not cfg.psf_field_bump:
        return base
    fr = rng_family if rng_family is not None else np.random.default_rng(0)
    if family == "mixed":
        family = str(fr.choice(FAMILIES))
    ch: dict = {"family": family}
    if cfg.psf_field_bump and cfg.enabled("psf_variation"):
        ch.update(bump_amp=float(cfg.psf_field_bump * fr.choice([-1, 1])), bump_u=float(fr.uniform(-0.6, 0.6)),
                  bump_v=float(fr.uniform(-0.6, 0.6)), bump_w=float(fr.uniform(0.25, 0.45)))
    if family == "moffat" and cfg.psf_beta_range is not None:
        ch["beta"] = float(fr.uniform(*cfg.psf_beta_range))
    elif family == "double_gaussian":
        ch.update(dg_wing_fraction=float(fr.uniform(0.1, 0.3)), dg_width_ratio=float(fr.uniform(1.8, 2.6)))
    elif family == "kolmogorov_optics":
        lod = wavelength * 1e-10 / T80_DIAMETER_M * 206264.806
        vary = cfg.enabled("psf_variation")
        ch.update(lam_over_diam=float(lod), obscuration=T80_OBSCURATION,
                  optics={"z4_0": float(fr.normal(0, 0.06)), "z4_r2": float(fr.uniform(0.05, 0.15)) * vary,
                          "z5_0": float(fr.normal(0, 0.03)), "z6_0": float(fr.normal(0, 0.03)),
                          "astig_r": float(fr.uniform(0.05, 0.12) * fr.choice([-1, 1])) * vary,
                          "coma_r": float(fr.uniform(0.03, 0.08)) * vary, "z11": float(fr.uniform(0.0, 0.05))})
    return PSFModel(**{**asdict(base), **ch})


def moffat_alpha(fwhm: np.ndarray | float, beta: float) -> np.ndarray | float:
    """Moffat scale radius for a FWHM (same units)."""
    return np.asarray(fwhm) / (2 * math.sqrt(2 ** (1 / beta) - 1))


def double_gaussian_sigma(fwhm: np.ndarray | float, wing_fraction: float, width_ratio: float) -> np.ndarray | float:
    """Core sigma of a double Gaussian (wing fraction ``f``, wing sigma ``r`` times the core's) of a given FWHM."""
    from scipy.optimize import brentq

    f, r = wing_fraction, width_ratio

    def prof(x: float) -> float:  # radial profile for sigma_1 = 1, minus half its peak
        return (1 - f) * math.exp(-x * x / 2) + f / (r * r) * math.exp(-x * x / (2 * r * r)) - 0.5 * (1 - f + f / (r * r))

    x_half = brentq(prof, 0.0, 10.0 * r)
    return np.asarray(fwhm) / (2 * x_half)


def exposure_fwhm(rng: np.random.Generator, *, night_seeing: float, wavelength: float, airmass: float,
                  cfg: SimConfig) -> float:
    """Central FWHM (arcsec) of one exposure: night seeing (r band, zenith) scaled by lambda^-0.2 and X^0.6."""
    f = night_seeing * (wavelength / 6250.0) ** -0.2 * airmass ** 0.6 * (1 + rng.normal(0, cfg.seeing_exposure_sigma))
    lo, hi = cfg.seeing_range_arcsec
    return float(np.clip(f, lo, hi))


def override_fwhm(rng_family: np.random.Generator, fwhm: float, cfg: SimConfig) -> float:
    """The central FWHM when ``psf_seeing_arcsec`` or ``psf_seeing_draw_range`` replace the seeing model."""
    if cfg.psf_seeing_arcsec is not None:
        return float(cfg.psf_seeing_arcsec)
    if cfg.psf_seeing_draw_range is not None:
        lo, hi = cfg.psf_seeing_draw_range
        return float(math.exp(rng_family.uniform(math.log(lo), math.log(hi))))
    return fwhm
