"""Quick-look QC against known inputs: bias per amplifier, sky, noise, saturation, FWHM, and the status rules."""
from __future__ import annotations

import math

import numpy as np
import pytest

from upad.ingest.quicklook import QuickLookConfig, measure_fwhm, quicklook
from upad.instruments import get_instrument

from .fitsmaker import RawSpec, bias_levels, make_pixels

MINI = get_instrument("mini")


def qc(spec: RawSpec, **kw):
    return quicklook(make_pixels(spec), get_instrument(spec.instrument), layout=spec.layout,
                     obs_type=spec.obs_type, exptime=spec.exptime, **kw)


@pytest.mark.parametrize("fwhm_px", [2.5, 4.0])
def test_science_readout_against_truth(fwhm_px: float) -> None:
    spec = RawSpec(fwhm_px=fwhm_px, sky=500.0, bias=[1010.0, 1250.0, 900.0, 1180.0], seed=7)
    res = qc(spec)
    assert res.status == "ok", res.reasons
    assert res.bias_source == "overscan"
    assert res.bias == pytest.approx(spec.bias, abs=0.5)
    assert res.sky_median == pytest.approx(500.0, rel=0.01)
    assert res.sky_per_amp == pytest.approx([500.0] * 4, rel=0.01)
    expected_noise = math.sqrt(500.0 / 0.93 + 4.0 ** 2)
    assert res.sky_noise == pytest.approx(expected_noise, rel=0.1)
    assert res.saturated_fraction == 0.0
    assert res.fwhm_px == pytest.approx(fwhm_px, rel=0.15)
    assert res.fwhm_arcsec == pytest.approx(fwhm_px * MINI.pixel_scale, rel=0.15)
    assert res.n_sources == pytest.approx(spec.n_stars, abs=3)
    assert res.n_fwhm_stars >= 20
    assert 0 < res.seconds < 5


def test_science_archived_layout() -> None:
    spec = RawSpec(layout="archived", sky=300.0, seed=2)
    res = qc(spec)
    assert res.bias is None and res.bias_source is None
    # no overscan: the sky includes the electronic offset of each amplifier
    assert res.sky_per_amp == pytest.approx([300.0 + b for b in bias_levels(spec)], rel=0.01)
    assert res.fwhm_px == pytest.approx(3.0, rel=0.15)
    assert res.status == "ok", res.reasons


@pytest.mark.parametrize("layout", ["readout", "archived"])
def test_bias_frame(layout: str) -> None:
    spec = RawSpec(obs_type="bias", layout=layout, exptime=0.0, bias=[1000.0, 1200.0, 950.0, 1150.0])
    res = qc(spec)
    assert res.bias == pytest.approx(spec.bias, abs=0.5)
    assert res.bias_source == ("overscan" if layout == "readout" else "data")
    assert res.sky_noise == pytest.approx(4.0, rel=0.1)  # read noise in ADU
    assert res.fwhm_arcsec is None and res.n_sources is None
    assert res.status == "ok", res.reasons


def test_bias_far_from_nominal_warns() -> None:
    spec = RawSpec(obs_type="bias", exptime=0.0, bias=[1017.5, 1264.4, 1908.0, 1171.4])
    res = qc(spec)
    assert res.status == "warn"
    assert any("amp 3" in r and "bias" in r for r in res.reasons)


def test_saturation_warn_and_fail() -> None:
    res = qc(RawSpec(saturated_fraction=0.10, n_stars=10))
    assert res.saturated_fraction == pytest.approx(0.10, abs=0.03)
    assert res.status == "warn" and any("saturated" in r for r in res.reasons)
    res = qc(RawSpec(saturated_fraction=0.7, n_stars=10))
    assert res.status == "fail" and any("saturated" in r for r in res.reasons)


def test_science_without_sky_fails() -> None:
    res = qc(RawSpec(sky=0.0, n_stars=0))
    assert res.status == "fail"
    assert any("no sky" in r for r in res.reasons)


def test_science_without_sources_warns() -> None:
    res = qc(RawSpec(n_stars=0))
    assert res.status == "warn"
    assert res.n_sources == 0
    assert any("no sources" in r for r in res.reasons)


def test_bad_seeing_warns() -> None:
    res = qc(RawSpec(fwhm_px=7.0, n_stars=15), config=QuickLookConfig(fwhm_warn_arcsec=2.5))
    assert res.fwhm_arcsec == pytest.approx(7.0 * 0.55, rel=0.15)
    assert res.status == "warn" and any("FWHM" in r for r in res.reasons)


def test_flat_levels() -> None:
    assert qc(RawSpec(obs_type="flat-sky", sky=20000.0)).status == "ok"
    low = qc(RawSpec(obs_type="flat-dome", sky=500.0))
    assert low.status == "warn" and any("flat level" in r for r in low.reasons)


def test_thresholds_are_configurable() -> None:
    spec = RawSpec(saturated_fraction=0.10, n_stars=10)
    assert qc(spec, config=QuickLookConfig(saturated_warn=0.2, saturated_fail=0.5)).status == "ok"


def test_measure_fwhm_ignores_saturated_and_crowded_sources() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(0.0, 5.0, (256, 256)).astype(np.float32)
    sigma = 3.0 / 2.3548
    yy, xx = np.mgrid[0:256, 0:256]
    for x, y in [(40, 40), (120, 60), (200, 200), (60, 190), (180, 100)]:
        img += 3000 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2)).astype(np.float32)
    # a pair closer than the isolation distance, and a saturated blob
    for x, y in [(100, 150), (106, 150)]:
        img += 3000 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2)).astype(np.float32)
    img += 60000 * np.exp(-((xx - 150) ** 2 + (yy - 200) ** 2) / (2 * (2 * sigma) ** 2)).astype(np.float32)
    saturated = img > 50000
    res = measure_fwhm(img.astype(">f4"), saturated=saturated)  # any byte order is accepted
    assert res["n_sources"] >= 7
    assert res["n_stars"] == 5
    assert res["fwhm_px"] == pytest.approx(3.0, rel=0.1)


def test_full_size_t80cam_frame_within_seconds() -> None:
    """A full 9648 x 9340 T80Cam readout frame (noise + stars) is QC'd in a few seconds."""
    inst = get_instrument("t80cam")
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 20, inst.raw_shape("readout"), dtype=np.uint16)  # noise, median 9.5 ADU
    sections = inst.amp_sections("readout")
    for sec in sections:
        offset = np.uint16(int(sec.amplifier.bias_level) - 10)
        for region in (sec.prescan, sec.overscan_x, sec.overscan_y):
            raw[region] += offset
        raw[sec.data] += offset + np.uint16(800)
    # stars in the central region (where the FWHM is measured)
    ny, nx = inst.layout.active_shape
    fwhm = 2.6
    sigma = fwhm / 2.3548
    yy, xx = np.mgrid[-8:9, -8:9]
    active = np.zeros((ny, nx), dtype=np.float32)
    for x, y in rng.uniform([nx / 2 - 1000, ny / 2 - 1000], [nx / 2 + 1000, ny / 2 + 1000], (300, 2)):
        ix, iy = int(x), int(y)
        active[iy - 8:iy + 9, ix - 8:ix + 9] += 5000 * np.exp(-((xx + ix - x) ** 2 + (yy + iy - y) ** 2)
                                                              / (2 * sigma ** 2))
    for sec in sections:
        raw[sec.data] += active[sec.active].astype(np.uint16)
    res = quicklook(raw, inst, layout="readout", obs_type="science", exptime=30.0)  # speed: benchmarks, not tests
    assert res.bias == pytest.approx([int(a.bias_level) for a in inst.detectors[0].amplifiers], abs=1.0)
    assert res.sky_median == pytest.approx(800.0, abs=1.0)
    assert res.fwhm_px == pytest.approx(fwhm, rel=0.15)
