"""Toy spectral energy distributions: magnitudes of stars and galaxies in every filter.

Stars are evaluated **through filter curves** (:func:`star_mag_table`): the toy stellar spectrum is

* a blackbody of temperature ``teff``, with line blanketing below 4500 A growing towards the blue and for cool
  stars (``0.3 mag per 1000 A x (5800 / teff)^2``) and a Balmer jump below 3650 A for hot stars (smoothed over
  ~60 A),

integrated (photon counting, AB) through the simulator's own model of each survey filter (:func:`sim_passband`: a
super-Gaussian of the filter's central wavelength and FWHM, optionally shifted by a drawn amount to model a camera
whose real passband differs from the nominal one) and through the Gaia DR3 G, BP, RP passbands shipped with
``speclite`` (Vega magnitudes, with the zero points of Riello et al. 2021). Magnitudes are tabulated on a
temperature grid once and interpolated (cheap). :func:`star_colours` (central wavelength) is kept for
compatibility.

Galaxies: ``f_nu ~ lambda**slope`` with a 4000 A break whose depth depends on the type, and an H-alpha emission
boost in J0660 for star-forming galaxies (galaxies are at z ~ 0), evaluated at the central wavelength.

The reference filter (rSDSS) magnitude is given; the others follow from the colours.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

_H_OVER_K = 1.438777e8  # h c / k in Angstrom * K

#: AB - Vega offsets of Gaia (E)DR3 G, BP, RP (Riello et al. 2021, zero points 25.8010/25.6874, 25.3540/25.3385,
#: 25.1040/24.7479): mag_Vega = mag_AB - offset
GAIA_AB_MINUS_VEGA = {"G": 0.1136, "BP": 0.0155, "RP": 0.3561}

#: wavelength grid of the synthetic photometry (Angstrom)
WAVE = np.arange(3000.0, 11200.0, 5.0)


def _bb_mag(wl, teff: np.ndarray) -> np.ndarray:
    """-2.5 log10 of B_nu(wl, T) up to a constant (wl in Angstrom)."""
    x = _H_OVER_K / (wl * teff)
    # B_nu ~ nu^3 / (exp(h nu / kT) - 1) ~ wl^-3 / expm1(x)
    return -2.5 * (-3.0 * np.log10(wl) - np.log10(np.expm1(x)))


def star_colours(teff: np.ndarray, wl: float, ref_wl: float) -> np.ndarray:
    """Magnitude difference m(wl) - m(ref_wl) of stars with effective temperatures ``teff`` (K), monochromatic."""
    teff = np.asarray(teff, dtype=float)
    col = _bb_mag(wl, teff) - _bb_mag(ref_wl, teff)
    if wl < 4500:
        col = col + 0.3 * (4500 - wl) / 1000.0 * (5800.0 / teff) ** 2
    if wl < 3650:
        col = col + 0.4 * np.clip((teff - 6000.0) / 4000.0, 0, 1)
    return col


def star_spectrum_mag(teff: np.ndarray, wave: np.ndarray = WAVE) -> np.ndarray:
    """AB magnitude spectrum ``-2.5 log10 f_nu`` (arbitrary constant) of the toy stars, shape (n_teff, n_wave)."""
    t = np.atleast_1d(np.asarray(teff, float))[:, None]
    wl = np.asarray(wave, float)[None, :]
    m = _bb_mag(wl, t)
    m = m + 0.3 * np.clip(4500.0 - wl, 0, None) / 1000.0 * (5800.0 / t) ** 2
    jump = 1.0 / (1.0 + np.exp((wl - 3650.0) / 15.0))  # smoothed step below 3650 A
    return m + 0.4 * np.clip((t - 6000.0) / 4000.0, 0, 1) * jump


def sim_passband(cwl: float, fwhm: float, *, shift: float = 0.0, wave: np.ndarray = WAVE) -> np.ndarray:
    """The simulator's model of a survey filter: super-Gaussian (order 6) of the given FWHM, shifted by ``shift`` A."""
    hw = 0.5 * fwhm
    return np.exp(-np.log(2.0) * np.abs((np.asarray(wave) - cwl - shift) / hw) ** 6)


@lru_cache(maxsize=1)
def gaia_passbands(wave_key: tuple = (float(WAVE[0]), float(WAVE[-1]), len(WAVE))) -> dict[str, np.ndarray]:
    """Gaia DR3 G, BP, RP responses (``speclite``'s ``gaiadr3-*`` curves) on :data:`WAVE`."""
    import speclite.filters as sf

    out = {}
    for band in ("G", "BP", "RP"):
        f = sf.load_filter(f"gaiadr3-{band}")
        out[band] = np.interp(WAVE, np.asarray(f.wavelength, float), np.asarray(f.response, float), left=0, right=0)
    return out


def synth_ab(mag_spec: np.ndarray, response: np.ndarray, wave: np.ndarray = WAVE) -> np.ndarray:
    """Photon-counting AB magnitude of spectra ``mag_spec`` (-2.5 log10 f_nu) through ``response``."""
    w = np.asarray(response, float) / np.asarray(wave, float)  # photon counting: int f_nu R dlambda/lambda
    fnu = 10 ** (-0.4 * (mag_spec - mag_spec.min(axis=-1, keepdims=True)))
    return -2.5 * np.log10((fnu * w).sum(-1) / w.sum()) + mag_spec.min(axis=-1)


_TEFF_GRID = np.geomspace(2800.0, 40000.0, 600)


def star_mag_table(cwl_fwhm: dict[str, tuple[float, float]], shifts: dict[str, float] | None = None
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Synthetic magnitudes of the toy stars on a temperature grid.

    Returns ``(teff_grid, table)`` where ``table`` has, for every filter name, its magnitude through the
    (possibly shifted) simulator passband, ``nominal:<name>`` through the unshifted one, and ``gaia:G``,
    ``gaia:BP``, ``gaia:RP`` (Vega). All share one arbitrary constant per temperature.
    """
    spec = star_spectrum_mag(_TEFF_GRID)
    table: dict[str, np.ndarray] = {}
    for name, (cwl, fwhm) in cwl_fwhm.items():
        table[f"nominal:{name}"] = synth_ab(spec, sim_passband(cwl, fwhm))
        s = (shifts or {}).get(name, 0.0)
        table[name] = synth_ab(spec, sim_passband(cwl, fwhm, shift=s)) if s else table[f"nominal:{name}"]
    for band, resp in gaia_passbands().items():
        table[f"gaia:{band}"] = synth_ab(spec, resp) - GAIA_AB_MINUS_VEGA[band]
    return _TEFF_GRID, table


def interp_table(teff: np.ndarray, grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Interpolate a tabulated magnitude in log temperature."""
    return np.interp(np.log(np.asarray(teff, float)), np.log(grid), values)


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
    """Gaia-like broad G magnitude from g, r, i (flux-weighted mix; used for galaxies)."""
    f = 0.3 * 10 ** (-0.4 * mags["gSDSS"]) + 0.45 * 10 ** (-0.4 * mags["rSDSS"]) + 0.25 * 10 ** (-0.4 * mags["iSDSS"])
    return -2.5 * np.log10(f) - 0.05
