"""Toy spectral energy distributions: magnitudes of stars and galaxies in every filter.

Colours are evaluated at each filter's central wavelength (monochromatic approximation):

* stars: a blackbody of temperature ``teff`` with line blanketing below 4500 A growing for cool
  stars and a Balmer jump below 3650 A for hot ones;
* galaxies: ``f_nu ~ lambda**slope`` with a 4000 A break whose depth depends on the type, and an
  H-alpha emission boost in J0660 for star-forming galaxies (galaxies are at z ~ 0).

The reference filter (rSDSS) magnitude is given; the others follow from the colours.
"""
from __future__ import annotations

import numpy as np

_H_OVER_K = 1.438777e8  # h c / k in Angstrom * K


def _bb_mag(wl: float, teff: np.ndarray) -> np.ndarray:
    """-2.5 log10 of B_nu(wl, T) up to a constant (wl in Angstrom)."""
    x = _H_OVER_K / (wl * teff)
    # B_nu ~ nu^3 / (exp(h nu / kT) - 1) ~ wl^-3 / expm1(x)
    return -2.5 * (-3.0 * np.log10(wl) - np.log10(np.expm1(x)))


def star_colours(teff: np.ndarray, wl: float, ref_wl: float) -> np.ndarray:
    """Magnitude difference m(wl) - m(ref_wl) of stars with effective temperatures ``teff`` (K)."""
    teff = np.asarray(teff, dtype=float)
    col = _bb_mag(wl, teff) - _bb_mag(ref_wl, teff)
    if wl < 4500:
        col = col + 0.3 * (4500 - wl) / 1000.0 * (5800.0 / teff) ** 2
    if wl < 3650:
        col = col + 0.4 * np.clip((teff - 6000.0) / 4000.0, 0, 1)
    return col


def galaxy_colours(slope: np.ndarray, break_mag: np.ndarray, halpha: np.ndarray, wl: float,
                   ref_wl: float, *, halpha_filter: bool = False) -> np.ndarray:
    """Magnitude difference m(wl) - m(ref_wl) for the toy galaxy SED."""
    col = -2.5 * np.asarray(slope) * np.log10(wl / ref_wl)
    if wl < 4000:
        col = col + np.asarray(break_mag)
    if halpha_filter:
        col = col - np.asarray(halpha)
    return col


def gaia_g(mags: dict[str, np.ndarray]) -> np.ndarray:
    """Gaia-like broad G magnitude from g, r, i (flux-weighted mix)."""
    f = 0.3 * 10 ** (-0.4 * mags["gSDSS"]) + 0.45 * 10 ** (-0.4 * mags["rSDSS"]) + 0.25 * 10 ** (-0.4 * mags["iSDSS"])
    return -2.5 * np.log10(f) - 0.05
