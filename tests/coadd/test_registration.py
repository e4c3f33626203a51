"""The registration check across filters on exact synthetic coadds: stars rendered on one grid, a known sub-pixel
shift in one filter, noise; the measured median offset against the shift put in."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.coadd.helpers import gaussian_stars
from upad.coadd.registration import StarCentroids, registration_offsets, star_centroids

SHAPE = (600, 640)


def _coadd(rng, xs, ys, fluxes, *, shift=(0.0, 0.0), sigma=1.6, noise=4.0):
    img = gaussian_stars(SHAPE, xs + shift[0], ys + shift[1], fluxes, sigma)
    img += rng.normal(0.0, noise, SHAPE)
    weight = np.full(SHAPE, 1.0 / noise**2, np.float32)
    weight[:, :40] = 0.0  # a strip without data
    return img.astype(np.float32), weight


@pytest.fixture(scope="module")
def field():
    rng = np.random.default_rng(5)
    n = 140
    xs = rng.uniform(60, SHAPE[1] - 20, n)
    ys = rng.uniform(20, SHAPE[0] - 20, n)
    fluxes = 10 ** rng.uniform(3.0, 5.0, n)
    return rng, xs, ys, fluxes


@pytest.mark.parametrize("shift", [(0.0, 0.0), (0.05, -0.03), (0.3, 0.2)])
def test_offsets_recover_the_shift(field, shift):
    rng, xs, ys, fluxes = field
    ref = star_centroids(*_coadd(rng, xs, ys, fluxes), min_snr=30)
    other = star_centroids(*_coadd(rng, xs, ys, fluxes, shift=shift, sigma=1.9), min_snr=30)
    assert len(ref) > 50 and len(other) > 50
    assert np.all(ref.x > 40)  # nothing detected where there is no data
    (o,) = registration_offsets({"rSDSS": ref, "gSDSS": other}, reference="rSDSS")
    assert o.filter == "gSDSS" and o.n_stars > 50
    # the uncertainty is honest and small: a few thousandths of a pixel on these stars
    assert 0 < o.dx_err_px < 0.004 and 0 < o.dy_err_px < 0.004
    assert abs(o.dx_px - shift[0]) < 4 * o.dx_err_px + 1e-3
    assert abs(o.dy_px - shift[1]) < 4 * o.dy_err_px + 1e-3
    assert o.offset_px == pytest.approx(math.hypot(o.dx_px, o.dy_px))


def test_too_few_stars_is_not_measured():
    a = StarCentroids(np.array([10.0, 50.0]), np.array([10.0, 50.0]), np.array([100.0, 100.0]))
    b = StarCentroids(np.array([10.1, 50.1]), np.array([10.0, 50.0]), np.array([100.0, 100.0]))
    empty = StarCentroids(np.zeros(0), np.zeros(0), np.zeros(0))
    o1, o2 = registration_offsets({"r": a, "g": b, "i": empty}, reference="r", min_stars=5)
    assert o1.n_stars == 2 and math.isnan(o1.dx_px)
    assert o2.n_stars == 0 and math.isnan(o2.dx_px)
