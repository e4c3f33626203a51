"""Background and noise model on synthetic images with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from upad import maskbits as mb
from upad.reduce.background import BackgroundConfig, estimate_background
from upad.reduce.errors import ReductionError
from upad.reduce.noise import measured_noise, subtract_and_variance, variance_map, weight_map


def _sky(shape=(512, 640), seed=1):
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    sky = 100.0 + 20.0 * xx / nx + 10.0 * (yy / ny) ** 2
    flat = 1.0 + 0.05 * np.sin(xx / 50.0) * np.cos(yy / 70.0)
    rn = 5.0
    electrons = rng.poisson(sky * flat) + rng.normal(0, rn, shape)
    return (electrons / flat).astype(np.float32), sky, flat.astype(np.float32), rn


def test_background_follows_a_smooth_sky_and_ignores_sources_and_masked_pixels():
    img, sky, flat, rn = _sky()
    rng = np.random.default_rng(2)
    mask = mb.new_mask(img.shape)
    # bright stars and a block of garbage under the mask
    for x, y in rng.uniform(20, 480, (40, 2)):
        yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
        img += (5000 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 4.0)).astype(np.float32)
    img[100:140, 200:260] = 1e5
    mask[100:140, 200:260] = mb.SATURATED
    b = estimate_background(img, mask=mask, config=BackgroundConfig(mesh_px=64))
    full = b.evaluate()
    resid = (full - sky)[32:-32, 32:-32]
    assert abs(np.median(resid)) < 0.6
    assert np.abs(resid).max() < 3.0
    assert b.rms == pytest.approx(np.sqrt(100 + 25), rel=0.15)


def test_background_fails_cleanly_on_a_fully_masked_frame():
    img, *_ = _sky((128, 128))
    mask = np.full(img.shape, mb.NODATA, mb.MASK_DTYPE)
    with pytest.raises(ReductionError) as exc:
        estimate_background(img, mask=mask)
    assert exc.value.reason == "no_data"


def test_noise_model_matches_the_measured_scatter():
    img, sky, flat, rn = _sky()
    b = estimate_background(img, config=BackgroundConfig(mesh_px=64))
    full = b.evaluate()
    nr = variance_map(full, read_noise=rn, flat=flat)
    expected = (sky * flat + rn * rn) / flat ** 2
    assert np.allclose(nr.variance[50:-50, 50:-50], expected[50:-50, 50:-50], rtol=0.02)
    work = img.copy()
    nr2 = subtract_and_variance(work, b, read_noise=rn, flat=flat)
    assert np.allclose(nr2.variance, nr.variance, rtol=1e-5)
    assert np.allclose(work, img - full, atol=1e-3)
    sig, ratio = measured_noise(work, nr2.variance)
    assert ratio == pytest.approx(1.0, abs=0.03)


def test_per_amplifier_read_noise_and_weight_map():
    shape = (64, 64)
    bkg = np.full(shape, 10.0, np.float32)
    regions = [(slice(0, 64), slice(0, 32)), (slice(0, 64), slice(32, 64))]
    nr = variance_map(bkg, read_noise=[3.0, 6.0], amp_regions=regions)
    assert nr.variance[0, 0] == pytest.approx(19.0)
    assert nr.variance[0, 40] == pytest.approx(46.0)
    mask = mb.new_mask(shape)
    mask[5, 5] = mb.COSMIC
    mask[6, 6] = mb.INTERPOLATED  # usable: keeps its weight
    w = weight_map(nr.variance, mask)
    assert w[5, 5] == 0 and w[6, 6] == pytest.approx(1 / 19.0) and w[0, 40] == pytest.approx(1 / 46.0)
    with pytest.raises(ValueError):
        variance_map(bkg, read_noise=[3.0, 6.0])
