"""Derivation of the Gaia (G, BP-RP) -> survey-filter transformations from synthetic photometry (offline tool).

The pipeline calibrates frames against a plain Gaia DR3 extract with per-filter polynomials
``m_filter - G = P_filter(BP - RP)`` (:mod:`upad.reduce.photcal`). This module derives them; its output is the
packaged file ``upad/reduce/data/gaia_transforms_<system>.json``, which is all the pipeline reads at run time.
Re-derive with ``python -m upad.reduce.photcal_derive`` (needs ``speclite``).

**Stellar library.** No library of stellar spectra can be installed from the package registries this project
uses, so the library is built from two *measured* stellar spectra shipped in ``data/anchor_spectra.ecsv``
(resampled to 5 A from the files distributed with ``astro-sedpy``, MIT licence):

* Vega, HST/STIS CALSPEC ``alpha_lyr_stis_011`` (A0 V, T_eff = 9550 K);
* the Sun, Kurucz (1993) ATLAS model ``sun_kurucz93`` (G2 V, 5777 K).

Each anchor's spectrum divided by the blackbody of its temperature gives its line blanketing ``L(lambda)``
(log flux ratio). A star of temperature ``T`` is the blackbody ``B_lambda(T)`` times the blanketing interpolated
between the anchors linearly in ``1/T`` (``w = (1/T - 1/T_Vega) / (1/T_Sun - 1/T_Vega)``), with the solar
(metal-line) part scaled by ``s`` in {0.7, 1, 1.3} to span a range of metallicities. This is **not** the
simulator's stellar model (``upad.sim.seds``: blackbody with a parametric blue ramp): the two were written
independently and disagree at the few-percent level in the blue, which is what the accuracy tests measure.

**Passbands.** Gaia DR3 G, BP, RP: the published curves (``speclite``'s ``gaiadr3-*``), Vega magnitudes with the
zero points of Riello et al. (2021). Survey filters: until the measured J-PLUS curves are packaged, each filter is
modelled from its central wavelength and FWHM in the instrument's filter file as a flat top with raised-cosine
edges (edge width 20 % of the FWHM). Photon-counting AB magnitudes.

**Validity.** Temperatures 4500-10000 K (w between -0.05 and 1.6: no more than a modest extrapolation beyond the
anchors), i.e. the BP-RP range written into the file per filter; stars outside it are not used by the pipeline.
The file also records the rms of the library about each polynomial (the metallicity spread), which the pipeline
adds to each star's error.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["anchor_spectra", "library", "survey_passband", "derive_transformations", "write_transformations"]

DATA = Path(__file__).parent / "data"
WAVE = np.arange(3000.0, 11200.0, 5.0)
T_VEGA, T_SUN = 9550.0, 5777.0
GAIA_AB_MINUS_VEGA = {"G": 0.1136, "BP": 0.0155, "RP": 0.3561}  # Riello et al. 2021
TEFF_RANGE = (4500.0, 10000.0)
METAL_SCALES = (0.7, 1.0, 1.3)
_C2 = 1.438777e8  # h c / k, A K


def prepare_anchor_spectra(sun_fits: str | Path, vega_fits: str | Path, out: str | Path = DATA / "anchor_spectra.ecsv"
                           ) -> Path:
    """Resample the two anchor spectra (F_lambda, FITS tables WAVELENGTH/FLUX) to :data:`WAVE` (bin averages)."""
    from astropy.io import fits
    from astropy.table import Table

    cols = {}
    for name, path in (("sun", sun_fits), ("vega", vega_fits)):
        d = fits.open(path)[1].data
        w, f = np.asarray(d["WAVELENGTH"], float), np.asarray(d["FLUX"], float)
        ok = np.isfinite(f) & (w > 2500) & (w < 12000)
        w, f = w[ok], f[ok]
        cum = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(w))])
        edges = np.concatenate([WAVE - 2.5, [WAVE[-1] + 2.5]])
        c = np.interp(edges, w, cum)
        cols[f"{name}_flam"] = (np.diff(c) / 5.0).astype(np.float32)
    t = Table({"wave": WAVE.astype(np.float32), **cols})
    t.meta["comments"] = ["F_lambda (erg/s/cm2/A) bin-averaged over 5 A: sun = Kurucz 1993 sun_kurucz93, "
                          "vega = HST/STIS CALSPEC alpha_lyr_stis_011; from the astro-sedpy package data (MIT)"]
    t.write(out, format="ascii.ecsv", overwrite=True)
    return Path(out)


def anchor_spectra() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(wave, F_lambda Sun, F_lambda Vega) of the packaged anchors."""
    from astropy.table import Table

    t = Table.read(DATA / "anchor_spectra.ecsv", format="ascii.ecsv")
    return np.asarray(t["wave"], float), np.asarray(t["sun_flam"], float), np.asarray(t["vega_flam"], float)


def _log_planck_lam(wave: np.ndarray, t: np.ndarray) -> np.ndarray:
    return -5.0 * np.log10(wave) - np.log10(np.expm1(_C2 / (wave * t)))


def library(teff: np.ndarray, scales: tuple[float, ...] = METAL_SCALES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Library spectra ``log10 F_lambda`` (arbitrary scale), shape (n_teff * n_scale, n_wave), with their T and s."""
    wave, sun, vega = anchor_spectra()
    l_sun = np.log10(sun) - _log_planck_lam(wave, T_SUN)
    l_vega = np.log10(vega) - _log_planck_lam(wave, T_VEGA)
    red = (wave > 7000) & (wave < 9000)  # blanketing measured relative to the red continuum
    l_sun -= np.median(l_sun[red])
    l_vega -= np.median(l_vega[red])
    tt, ss = np.meshgrid(np.asarray(teff, float), np.asarray(scales, float), indexing="ij")
    tt, ss = tt.ravel(), ss.ravel()
    w = (1.0 / tt - 1.0 / T_VEGA) / (1.0 / T_SUN - 1.0 / T_VEGA)
    logf = (_log_planck_lam(wave[None, :], tt[:, None]) + (1.0 - w)[:, None] * l_vega[None, :]
            + (w * ss)[:, None] * l_sun[None, :])
    return logf, tt, ss


def survey_passband(cwl: float, fwhm: float, wave: np.ndarray = WAVE, edge: float = 0.2) -> np.ndarray:
    """Flat-topped passband with raised-cosine edges (width ``edge * fwhm``) centred on the half-power points."""
    d = np.abs(np.asarray(wave, float) - cwl) - 0.5 * fwhm  # distance beyond the half-power point
    h = 0.5 * edge * fwhm
    return np.where(d <= -h, 1.0, np.where(d >= h, 0.0, 0.5 * (1.0 - np.sin(0.5 * np.pi * d / h))))


def _ab(logflam: np.ndarray, resp: np.ndarray, wave: np.ndarray) -> np.ndarray:
    """Photon-counting AB magnitude (arbitrary common constant): f_nu = F_lambda lambda^2 / c."""
    fnu = 10 ** (logflam - logflam.max(axis=-1, keepdims=True)) * wave ** 2
    w = resp / wave
    return -2.5 * np.log10((fnu * w).sum(-1) / w.sum()) - 2.5 * logflam.max(axis=-1)


def _gaia_responses(wave: np.ndarray) -> dict[str, np.ndarray]:
    import speclite.filters as sf

    out = {}
    for band in ("G", "BP", "RP"):
        f = sf.load_filter(f"gaiadr3-{band}")
        out[band] = np.interp(wave, np.asarray(f.wavelength, float), np.asarray(f.response, float), left=0, right=0)
    return out


def derive_transformations(system: str = "jplus", *, degree: int = 3, n_teff: int = 80) -> dict:
    """Fit ``m_filter - G`` as a polynomial of ``BP - RP`` for every filter of ``system`` over the library."""
    from upad.instruments import get_filter_system

    fs = get_filter_system(system)
    teff = np.geomspace(*TEFF_RANGE, n_teff)
    logf, tt, ss = library(teff)
    gaia = {b: _ab(logf, r, WAVE) - GAIA_AB_MINUS_VEGA[b] for b, r in _gaia_responses(WAVE).items()}
    x = gaia["BP"] - gaia["RP"]
    out = {"system": system, "colour": "BP-RP", "reference": "G", "gaia_system": "Vega (Riello et al. 2021)",
           "degree": degree, "library": "two-anchor (Vega STIS, Kurucz Sun) blanketing interpolation, "
                                        f"T_eff {TEFF_RANGE[0]:.0f}-{TEFF_RANGE[1]:.0f} K, metal scales "
                                        f"{list(METAL_SCALES)}", "filters": {}}
    for f in fs.filters:
        y = _ab(logf, survey_passband(f.cwl, f.fwhm), WAVE) - gaia["G"]
        coef = np.polynomial.polynomial.polyfit(x, y, degree)
        resid = y - np.polynomial.polynomial.polyval(x, coef)
        out["filters"][f.name] = {"coef": [round(float(c), 6) for c in coef],
                                  "colour_min": round(float(x.min()), 4), "colour_max": round(float(x.max()), 4),
                                  "rms": round(float(np.sqrt(np.mean(resid ** 2))), 5),
                                  "cwl": float(f.cwl), "fwhm": float(f.fwhm)}
    return out


def write_transformations(system: str = "jplus", out: str | Path | None = None) -> Path:
    path = Path(out) if out else DATA / f"gaia_transforms_{system}.json"
    path.write_text(json.dumps(derive_transformations(system), indent=1) + "\n")
    return path


if __name__ == "__main__":  # pragma: no cover
    print(write_transformations())
