"""The star flat algorithm (:mod:`upad.reduce.starflat`) on toy catalogs with a known response pattern: recovered
from dithered exposures, its gradient only with reference magnitudes, its uncertainty honest when the dithers are
small; outliers clipped; matching across exposures."""
from __future__ import annotations

import numpy as np
import pytest

from upad.reduce.starflat import StarFlatConfig, fit_star_flat, match_exposures

SHAPE = (1024, 1024)


def _true_s(x, y):
    u, v = 2 * x / 1023 - 1, 2 * y / 1023 - 1
    return 0.01 * u + 0.008 * (1.5 * v * v - 0.5) - 0.005 * u * v


def _exposures(step, *, seed=1, n_stars=300, variable=None):
    rng = np.random.default_rng(seed)
    sx, sy = rng.uniform(-300, 1300, n_stars), rng.uniform(-300, 1300, n_stars)
    mt = rng.uniform(14, 18, n_stars)
    xs, ys, ms, es, ids = [], [], [], [], []
    for j, (dx, dy) in enumerate([(0, 0), (step, step), (-step, step), (step, -step), (-step, -step)]):
        x, y = sx + dx, sy + dy
        inn = (x >= 0) & (x < 1024) & (y >= 0) & (y < 1024)
        e = 0.003 + 0.01 * 10 ** (0.4 * (mt[inn] - 18))
        m = mt[inn] + 0.1 * j + _true_s(x[inn], y[inn]) + rng.normal(0, e)
        if variable is not None:
            m = np.where(np.flatnonzero(inn) == variable, m + 0.3 * (j % 2), m)
        xs.append(x[inn]), ys.append(y[inn]), ms.append(m), es.append(e), ids.append(np.flatnonzero(inn))
    ref = (np.arange(n_stars), mt + 25 + rng.normal(0, 0.02, n_stars), np.full(n_stars, 0.02))
    return xs, ys, ms, es, ids, ref


def _map_error(sf, *, without_linear=False):
    gx, gy, s = sf.grid(32)
    t = _true_s(gx, gy)
    if without_linear:
        t = t - 0.01 * (2 * gx / 1023 - 1)
    return float(np.std((s - s.mean()) - (t - t.mean())))


def test_large_dithers_with_a_reference_recover_the_whole_pattern():
    xs, ys, ms, es, ids, ref = _exposures(200)
    sf = fit_star_flat(xs, ys, ms, es, ids, shape=SHAPE, reference=ref)
    assert sf.constrained and sf.n_reference > 100
    assert _map_error(sf) < 0.001  # the pattern is 7 mmag rms, 27 mmag peak to valley
    assert sf.rms_mag == pytest.approx(0.007, abs=0.001)
    assert sf.significance > 3
    np.testing.assert_allclose(sf.zero_points, [-0.2, -0.1, 0.0, 0.1, 0.2], atol=0.003)
    # the response map follows the illumination-correction convention: brighter where stars look brighter
    r = sf.response(32)
    assert r.mean() == pytest.approx(1.0)
    gx, gy, s = sf.grid(32)
    assert np.corrcoef(r.ravel(), -s.ravel())[0, 1] > 0.99


def test_without_a_reference_the_gradient_is_not_measured_but_the_rest_is():
    xs, ys, ms, es, ids, _ = _exposures(200)
    sf = fit_star_flat(xs, ys, ms, es, ids, shape=SHAPE)
    assert sf.n_reference == 0
    assert any("gradient" in n for n in sf.notes)
    assert _map_error(sf, without_linear=True) < 0.001


def test_small_dithers_do_not_constrain_the_map_and_say_so():
    xs, ys, ms, es, ids, ref = _exposures(10)
    sf = fit_star_flat(xs, ys, ms, es, ids, shape=SHAPE, reference=ref)
    assert not sf.constrained
    assert sf.error_mag > 0.003
    assert any("larger offsets" in n for n in sf.notes)


def test_a_variable_star_is_clipped():
    xs, ys, ms, es, ids, ref = _exposures(200, variable=7)
    sf = fit_star_flat(xs, ys, ms, es, ids, shape=SHAPE, reference=ref)
    assert sf.n_rejected >= 2
    assert _map_error(sf) < 0.001


def test_too_few_common_stars_is_an_error_with_its_reason():
    xs, ys, ms, es, ids, ref = _exposures(200, n_stars=20)
    with pytest.raises(ValueError, match="two exposures or more"):
        fit_star_flat(xs, ys, ms, es, ids, shape=SHAPE, reference=ref, config=StarFlatConfig(min_stars=50))
    with pytest.raises(ValueError, match="one exposure"):
        fit_star_flat(xs[:1], ys[:1], ms[:1], es[:1], ids[:1], shape=SHAPE)


def test_matching_across_exposures_drops_ambiguous_groups():
    ra = [np.array([10.0, 10.001, 10.002, 10.003]), np.array([10.0 + 1e-5, 10.002, 10.003, 10.00301])]
    dec = [np.zeros(4), np.zeros(4)]
    a, b = match_exposures(ra, dec, radius_arcsec=1.0)
    assert a[0] == b[0] >= 0 and a[2] == b[1] >= 0 and a[0] != a[2]
    assert a[1] == -1  # seen once
    # two sources of the second exposure within the radius of one star: a blend, not used
    assert a[3] == -1 and b[2] == -1 and b[3] == -1


def test_writer_and_reader_round_trip(tmp_path):
    import warnings

    from upad.io.products import read_star_flat, write_star_flat

    xs, ys, ms, es, ids, _ = _exposures(200)
    sf = fit_star_flat(xs, ys, ms, es, ids, shape=SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncated card, no non-ASCII note
        write_star_flat(tmp_path / "sf.fits", sf, exposures=[f"e{k}" for k in range(5)], cells=16)
    back = read_star_flat(tmp_path / "sf.fits")
    np.testing.assert_allclose(back.coef, sf.coef)
    np.testing.assert_allclose(back.cov, sf.cov, atol=1e-15)
    np.testing.assert_allclose(back.zero_points, sf.zero_points)
    np.testing.assert_allclose(back.mag_at([10.0, 900.0], [500.0, 20.0]), sf.mag_at([10.0, 900.0], [500.0, 20.0]))
    assert back.exposures == [f"e{k}" for k in range(5)]
    assert back.notes == sf.notes and back.n_reference == 0 and back.constrained == sf.constrained
