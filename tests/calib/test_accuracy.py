"""Masters against the simulator's truth (mini camera, one simulated night; see conftest.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from upad.db.models import Product
from upad.sim.truth import read_map

from .helpers import INST


def master(pipeline, step: str, unit_like: str = "") -> tuple[Product, Path]:
    with pipeline.db.session() as s:
        rows = [p for p in s.scalars(select(Product).where(Product.step == step, Product.is_current.is_(True)))
                if unit_like in p.unit_key]
    assert len(rows) == 1, [p.unit_key for p in rows]
    p = rows[0]
    return p, pipeline.settings.root / p.files[0]["path"]


def truth(pipeline, name: str) -> np.ndarray:
    data = read_map(pipeline.night.out / "truth" / "camera" / f"{name}.fits")
    return data if data.dtype.kind in "iu" else data.astype(np.float64)


def gain_ratio(pipeline) -> np.ndarray:
    """Applied / true gain per pixel: what a flat must contain besides the response, made with the gains the pipeline
    converts with (the night's measured signature's, else the nominal ones): flat-fielding a frame converted with
    the same gains then leaves its true electrons. The gains' own accuracy is judged in test_signature."""
    cam = pipeline.night.manifest["camera"]
    with pipeline.db.session() as s:
        sig = list(s.scalars(select(Product).where(Product.step == "instrument_signature",
                                                   Product.is_current.is_(True))))
    applied = sig[0].meta["gain"] if sig else cam["gain_nominal_e_per_adu"]
    out = np.ones(INST.layout.active_shape)
    for sec in INST.amp_sections("readout"):
        out[sec.active] = applied[sec.index] / cam["gain_true_e_per_adu"][sec.index]
    return out


def good_pixels(pipeline, edge: int = 3) -> np.ndarray:
    good = truth(pipeline, "bpm") == 0
    good[:edge] = good[-edge:] = False
    good[:, :edge] = good[:, -edge:] = False
    return good


def rms_ratio(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    r = a[mask] / b[mask]
    r /= np.median(r)
    return float(np.std(r - 1))


def test_master_bias_is_zero_within_noise(pipeline):
    prod, path = master(pipeline, "master_bias")
    data = fits.getdata(path).astype(np.float64)
    err = fits.getdata(path, "ERR")
    rn_e = pipeline.night.manifest["camera"]["read_noise_e"]
    maps = pipeline.night.manifest["camera"]["maps"]
    if "bias_structure" in maps:  # the drawn signature's fixed bias structure (ADU) is what the master must hold
        data = data - truth(pipeline, "bias_structure")
    for sec in INST.amp_sections("readout"):
        a = data[sec.active]
        expected = float(np.median(err[sec.active]))
        # the overscan-corrected bias less the camera's fixed structure: mean 0 and pixel scatter = read noise / sqrt(n)
        assert abs(a.mean()) < 5 * expected / np.sqrt(a.size) + 0.05, (sec.index, a.mean())
        assert a.std() == pytest.approx(expected, rel=0.05)
        # the read noise measured on the frames matches the simulated one (e-, nominal gain ~ true gain)
        assert prod.meta["read_noise_e"][sec.index] == pytest.approx(rn_e[sec.index], rel=0.03)
    assert prod.meta["n_used"] == 8  # 9 biases, one with a light leak


def test_master_dark_recovers_dark_rate(pipeline):
    prod, path = master(pipeline, "master_dark")
    rate = fits.getdata(path).astype(np.float64)
    err = fits.getdata(path, "ERR").astype(np.float64)
    true = truth(pipeline, "dark_rate")
    good = good_pixels(pipeline)
    z = (rate - true)[good] / err[good]
    # residuals are consistent with the recorded uncertainty: the injected pattern is recovered within noise
    assert 0.9 < z.std() < 1.1
    # the zero point is set by the overscan fits (~0.1 ADU per amplifier and frame): below 0.3 e- per 300 s
    assert abs(float(np.mean((rate - true)[good]))) < 1e-3
    hot = (truth(pipeline, "bpm") & 1) > 0
    bright = hot & (true > 1.0)
    assert np.median(np.abs(rate[bright] / true[bright] - 1)) < 0.03
    hot_map = fits.getdata(path, "HOT").astype(bool)
    assert (hot_map & hot).sum() / hot.sum() > 0.98


@pytest.mark.parametrize("filt", ["rSDSS", "zSDSS"])
def test_master_flats_recover_response_and_vignetting(pipeline, filt):
    good = good_pixels(pipeline)
    flat_sky = truth(pipeline, "flat_sky")
    illum = truth(pipeline, "illum_dome")
    g = gain_ratio(pipeline)
    _, dome = master(pipeline, "master_flat", f"/{filt}/dome/")
    _, sky = master(pipeline, "master_flat", f"/{filt}/sky/")
    dome_rms = rms_ratio(fits.getdata(dome).astype(np.float64), flat_sky * illum * g, good)
    sky_rms = rms_ratio(fits.getdata(sky).astype(np.float64), flat_sky * g, good)
    assert dome_rms <= 0.003, dome_rms
    assert sky_rms <= 0.003, sky_rms
    # and the recorded uncertainty says so
    assert np.median(fits.getdata(dome, "ERR")) == pytest.approx(dome_rms, rel=0.15)


def test_fringe_map_correlates_with_injected_fringes(pipeline):
    prod, path = master(pipeline, "master_fringe", "/zSDSS/")
    fr = fits.getdata(path).astype(np.float64)
    true = truth(pipeline, "fringe_zSDSS")
    good = good_pixels(pipeline)
    corr = np.corrcoef(fr[good], true[good])[0, 1]
    assert corr >= 0.95, corr
    assert prod.meta["rms"] == pytest.approx(float(true.std()), rel=0.15)
    with pipeline.db.session() as s:  # rSDSS does not fringe: no fringe map
        assert not list(s.scalars(select(Product).where(Product.step == "master_fringe",
                                                        Product.unit_key.contains("rSDSS"))))


@pytest.mark.parametrize("filt", [
    # open (issue 10): since the simulator's stamps hold the stars' far wings (2026-12-05) the rSDSS dome-flat
    # illumination correction leaves 0.125 % rms of the dome term (goal: half of its 0.233 %); not the unsaturated
    # stars' wings: masking every source out to where an r^-3 wing falls below 0.1 % of the sky gave 0.128 %
    pytest.param("rSDSS", marks=pytest.mark.xfail(strict=True, reason="dome-term residual 0.125 % rms > 0.116 % "
                                                                      "(issue 10, open)")),
    "zSDSS"])
def test_illumination_correction_recovers_injected_term(pipeline, filt):
    illum = truth(pipeline, "illum_dome")
    effect = float(np.std(illum / illum.mean() - 1))  # the dome-only term: 1.5 % peak to peak, 0.23 % rms
    assert effect > 0.002
    _, path = master(pipeline, "master_illumination", f"/{filt}/dome/")
    icor = fits.getdata(path).astype(np.float64)
    # after a dome flat the sky keeps 1/illum_dome: the correction must be that term, well below its own size
    r = icor * illum
    r /= r.mean()
    assert np.std(r - 1) <= 0.5 * effect and np.abs(r - 1).max() <= 0.4 * np.ptp(illum), (np.std(r - 1), effect)
    assert np.corrcoef(icor.ravel()[::7], 1 / illum.ravel()[::7])[0, 1] >= 0.9
    # with a twilight flat there is no dome term: the map does not follow it, and is smaller than it
    _, path = master(pipeline, "master_illumination", f"/{filt}/sky/")
    sky = fits.getdata(path).astype(np.float64)
    assert abs(np.corrcoef(sky.ravel()[::7], 1 / illum.ravel()[::7])[0, 1]) < 0.5
    assert np.std(sky / sky.mean() - 1) <= 0.75 * effect
    # what it holds is the response's own plane that the twilight gradient removal took out of the master flat:
    # master x correction agrees with the true response on large scales
    _, flat = master(pipeline, "master_flat", f"/{filt}/sky/")
    good = good_pixels(pipeline)
    ratio = fits.getdata(flat).astype(np.float64) * sky / (truth(pipeline, "flat_sky") * gain_ratio(pipeline))
    ratio /= np.median(ratio[good])
    assert rms_ratio(ratio, np.ones_like(ratio), good) <= 0.003


def test_bad_pixel_mask_finds_injected_defects(pipeline):
    prod, path = master(pipeline, "bad_pixel_mask")
    bpm = fits.getdata(path) > 0
    tb = truth(pipeline, "bpm").astype(np.uint8)
    bad = tb > 0
    recall = (bpm & bad).sum() / bad.sum()
    false_pos = (bpm & ~bad).sum() / bpm.size
    assert recall >= 0.99, recall
    assert false_pos <= 1e-4, false_pos
    # every injected bad column is found as a column
    for col in pipeline.night.manifest["camera"]["bad_columns"]:
        seg = (fits.getdata(path)[col["y0"]:col["y1"], col["x"]] & 8) > 0
        assert seg.mean() >= 0.99, col
