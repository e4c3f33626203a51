"""What the zero point means and how its colour term is fitted (issue #10, "the real sky"), on stars of the
simulator's own stellar model (``upad.sim.seds``, independent of the pipeline's library) seen through a camera
passband shifted from the nominal one.

Truth: the AB zero point ``ZP_E`` of the camera's real passband (AB magnitude of 1 e-/s); each star's magnitude
through the real and the nominal passband, and its Gaia G, BP, RP, from the same spectrum.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from upad.reduce.photcal import calibrate_zero_point
from upad.reduce.photometry import PhotometryConfig
from upad.reduce.validation import true_zero_point_at_colour
from upad.sim.seds import interp_table, star_mag_table

ZP_E, EXPTIME, SHAPE = 25.0, 60.0, (1000, 1000)
CWL, FWHM = 6250.0, 1388.0  # rSDSS
FLAT_FNU_BP_RP = 0.3561 - 0.0155  # Gaia BP-RP (Vega) of a flat-f_nu source (Riello et al. 2021 AB - Vega offsets)


def field(rng: np.random.Generator, n: int, shift: float, noise: float) -> dict:
    """``n`` stars of 4600-10000 K (the transformation's range; most of them cool, as at high latitude)."""
    grid, tab = star_mag_table({"rSDSS": (CWL, FWHM)}, {"rSDSS": shift})
    teff = np.where(rng.random(n) < 0.8, rng.uniform(4600, 6200, n), rng.uniform(6200, 10000, n))
    mnom = rng.uniform(14.0, 18.0, n)
    base = interp_table(teff, grid, tab["nominal:rSDSS"])

    def band(key: str) -> np.ndarray:
        return mnom + interp_table(teff, grid, tab[key]) - base

    mreal = band("rSDSS")
    flux = 10 ** (-0.4 * (mreal - ZP_E)) * EXPTIME * (1 + noise * rng.standard_normal(n))
    ref = {"g": band("gaia:G"), "bp": band("gaia:BP"), "rp": band("gaia:RP"), "mag_rSDSS": mnom,
           "magerr_rSDSS": np.full(n, 0.002)}
    col = ref["bp"] - ref["rp"]
    return {"flux": flux, "fluxerr": np.maximum(noise, 1e-3) * np.abs(flux), "x": rng.uniform(0, SHAPE[1] - 1, n),
            "y": rng.uniform(0, SHAPE[0] - 1, n), "ref": ref, "k_true": np.polyfit(col, mreal - mnom, 1)[0],
            "mreal": mreal, "mnom": mnom}


def calibrate(f: dict, reference: str, **over):
    n = len(f["flux"])
    cfg = dataclasses.replace(PhotometryConfig(), zp_reference=reference, zp_min_snr=5.0, **over)
    return calibrate_zero_point(f["flux"], f["fluxerr"], f["x"], f["y"], f["ref"], det_index=np.arange(n),
                                ref_index=np.arange(n), exptime=EXPTIME, filter_name="rSDSS", shape=SHAPE, config=cfg)


def truth_of(f: dict, colour_ref: float) -> float:
    """The validation's truth (:func:`true_zero_point_at_colour`) for the field's stars."""
    n = len(f["flux"])
    t = {"record": {"zp_e": ZP_E}, "objects": {"in_image": np.ones(n, bool)}, "is_star": np.ones(n, bool),
         "in_ref": np.ones(n, bool), "mags": {"mag": f["mreal"], "magnom": f["mnom"], "bp": f["ref"]["bp"],
                                              "rp": f["ref"]["rp"]}}
    return true_zero_point_at_colour(t, colour_ref)[0]


@pytest.mark.parametrize("shift", [-30.0, 30.0])
def test_zero_point_at_the_reference_colour(shift):
    """Exact nominal-passband reference magnitudes, a camera passband 30 A off: ZP_E is the zero point of a star of
    BP-RP = c0 in the nominal system — the validation's truth — and ZP_E + k (c0 - 0.34) the AB zero point."""
    f = field(np.random.default_rng(5), 300, shift, 0.0)
    z = calibrate(f, "survey")
    assert z.colour_term_fitted and abs(z.colour_term - f["k_true"]) < 0.003, (z.colour_term, f["k_true"])
    assert abs(z.zp_e - truth_of(f, z.colour_ref)) < 0.001, (z.zp_e, truth_of(f, z.colour_ref))
    assert abs(z.zp_e - ZP_E) > 0.005  # not the AB zero point: the colour term x (1 - 0.34)
    assert abs(z.zp_e + z.colour_term * (z.colour_ref - FLAT_FNU_BP_RP) - ZP_E) < 0.002


def test_colour_prior_steadies_few_star_frames():
    """Frames of 8-15 stars with 3 % flux errors: the prior on the colour term halves its error (G/BP/RP route:
    against the colour term the fit finds with exact fluxes) and leaves the zero point as good."""
    rng = np.random.default_rng(7)
    dk, dz = {"prior": [], "free": []}, {"prior": [], "free": []}
    for _ in range(40):
        f = field(rng, int(rng.integers(8, 16)), float(rng.normal(0, 15)), 0.03)
        exact = calibrate({**f, "flux": 10 ** (-0.4 * (f["mreal"] - ZP_E)) * EXPTIME}, "gaia", zp_colour_prior=0.0)
        for key, prior in (("prior", 0.03), ("free", 0.0)):
            z = calibrate(f, "gaia", zp_colour_prior=prior)
            dk[key].append(z.colour_term - exact.colour_term)
            dz[key].append(z.zp_e - exact.zp_e)
    rms = {f"{w}_{k}": float(np.sqrt(np.mean(np.square(v)))) for w, d in (("k", dk), ("zp", dz)) for k, v in d.items()}
    assert rms["k_prior"] < 0.6 * rms["k_free"], rms
    assert rms["zp_prior"] < 1.1 * rms["zp_free"], rms
