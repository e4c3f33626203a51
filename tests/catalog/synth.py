"""A synthetic pointing in several bands on one pixel grid, drawn with GalSim: stars and galaxies of known fluxes
and colours, a different PSF (family and width) per band, Gaussian sky noise. The catalogs are measured with the
pipeline's own PSF models (measured on these images by the coadd's PSF measurement), never the drawn PSFs."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PIXEL_SCALE = 0.55
MAGZP = 30.0

#: band -> (PSF family, FWHM arcsec); the detection band rSDSS is not the sharpest: J0660 is sharper
BANDS = {
    "rSDSS": ("moffat3", 1.15),
    "gSDSS": ("kolmogorov", 1.55),
    "J0660": ("gauss2", 0.95),
    "iSDSS": ("moffat2.5", 1.35),
}


@dataclass
class Synth:
    images: dict
    weights: dict
    truth: dict  # numpy structured: x, y, kind, mag per band, half-light radius
    sky_sigma: float


def _psf(galsim, family: str, fwhm: float):
    if family.startswith("moffat"):
        return galsim.Moffat(beta=float(family[6:]), fwhm=fwhm)
    if family == "kolmogorov":
        return galsim.Kolmogorov(fwhm=fwhm)
    if family == "gauss2":  # core + halo
        core = galsim.Gaussian(fwhm=fwhm * 0.93)
        return galsim.Add([core * 0.85, galsim.Gaussian(fwhm=fwhm * 2.6) * 0.15])
    raise ValueError(family)


def make_synth(*, seed: int = 3, size: int = 700, n_stars: int = 260, n_gals: int = 120, bands=BANDS,
               sky_sigma: float = 2.0, dropouts: int = 0, dropout_band: str = "gSDSS") -> Synth:
    """``dropouts``: that many of the stars (the last ones) have no flux at all in ``dropout_band``."""
    import galsim

    rng = np.random.default_rng(seed)
    n = n_stars + n_gals
    x = rng.uniform(25, size - 25, n)
    y = rng.uniform(25, size - 25, n)
    kind = np.array(["star"] * n_stars + ["galaxy"] * n_gals)
    rmag = np.concatenate([rng.uniform(16.0, 22.5, n_stars), rng.uniform(17.0, 21.5, n_gals)])
    colour = {"rSDSS": np.zeros(n), "gSDSS": rng.normal(0.5, 0.3, n), "J0660": rng.normal(-0.1, 0.1, n),
              "iSDSS": rng.normal(-0.25, 0.15, n)}
    if dropouts:
        colour[dropout_band][n_stars - dropouts:n_stars] = np.inf
    hlr = np.where(kind == "galaxy", rng.uniform(0.6, 2.0, n), 0.0)
    q = rng.uniform(0.5, 1.0, n)
    beta = rng.uniform(0, np.pi, n)
    images, weights = {}, {}
    for band, (family, fwhm) in bands.items():
        psf = _psf(galsim, family, fwhm)
        img = galsim.ImageF(size, size, scale=PIXEL_SCALE)
        for k in range(n):
            flux = 10 ** (-0.4 * (rmag[k] + colour[band][k] - MAGZP))
            if flux <= 0:
                continue
            if kind[k] == "star":
                obj = psf.withFlux(flux)
            else:
                gal = galsim.Exponential(half_light_radius=hlr[k], flux=flux).shear(q=q[k], beta=beta[k] *
                                                                                     galsim.radians)
                obj = galsim.Convolve(gal, psf)
            stamp = obj.drawImage(scale=PIXEL_SCALE, center=galsim.PositionD(x[k] + 1, y[k] + 1),
                                  nx=96 if kind[k] == "galaxy" else 64, ny=96 if kind[k] == "galaxy" else 64)
            b = stamp.bounds & img.bounds
            if b.isDefined():
                img[b] += stamp[b]
        arr = img.array.astype(np.float32) + rng.normal(0, sky_sigma, (size, size)).astype(np.float32)
        images[band] = arr
        weights[band] = np.full((size, size), 1.0 / sky_sigma ** 2, np.float32)
    truth = {"x": x, "y": y, "kind": kind, "hlr": hlr}
    for band in bands:
        truth[band] = rmag + colour[band]
    return Synth(images, weights, truth, sky_sigma)
