"""The flux of a star beyond the largest catalog aperture (the aperture correction's tail) against the truth.

The tail is measured on the stars' stacked wings (:func:`upad.reduce.photometry.wing_tail`), not taken from the PSF's
Moffat fit: a Kolmogorov+optics PSF has heavier wings than any Moffat of its core, and the beta fitted to an
undersampled PSF (0.6", FWHM about 1.1 pixel) is meaningless for its wings. Both are checked on simulated mini
frames reduced with the pipeline's own masters (``own_calibration``), and the stacking itself on noise-added profiles
drawn by the simulator's renderer.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from upad.reduce.photometry import PhotometryConfig, wing_tail
from upad.reduce.pipeline import ReductionConfig
from upad.reduce.psf import moffat_enclosed
from upad.reduce.validation import photometry_vs_truth

from .test_psf_families import _frame

#: (PSF family, seeing): heavy non-Moffat wings; undersampled with a Moffat beta that the fit cannot measure
CASES = [("kolmogorov_optics", 1.2), ("moffat_beta5", 0.6)]


@pytest.fixture(scope="module")
def frames(tmp_path_factory, own_calibration):
    tmp = tmp_path_factory.mktemp("apcor-tail")
    # three times the default star density: a single mini frame then has 15-25 stars of S/N > 100; both cases in the
    # independent world (Kolmogorov+optics 1.2" ran in the nominal world while its fluxes were +0.51 %: measured
    # 2026-12-05 -0.19 %, scatter 0.70 %, with the simulator's stamps no longer folding the wing inside and the
    # blank-sky level removed from the aperture fluxes)
    return {k: _frame(tmp, *k, own_calibration, config=ReductionConfig(cosmics_enabled=False),
                      star_density_r21=10500.0) for k in CASES}


@pytest.mark.parametrize("case", [
    # independent world, open (issue 10), measured 2026-12-05 on main e2be936 (the simulator's stamps holding the far
    # wings, the wing extrapolated beyond 24", the blank-sky level removed): Kolmogorov+optics 1.2" +0.62 % (scatter
    # 0.39 %), the undersampled Moffat beta 5 at 0.6" -0.65 % (scatter 0.54 %), each outside the 0.5 % goal
    pytest.param(CASES[0], marks=pytest.mark.xfail(strict=True, reason="flux median +0.62 % > 0.5 % (issue 10, open)")),
    pytest.param(CASES[1], marks=pytest.mark.xfail(strict=True, reason="flux median -0.65 % > 0.5 % (issue 10, open)")),
])
def test_total_star_flux_against_the_truth(frames, case):
    c, r = frames[case]
    assert r.failure is None, r.failure
    ob = c.objects
    stars = np.asarray(ob["in_image"], bool) & ~np.asarray(ob["saturated"], bool) & c.star
    ph = photometry_vs_truth(r.catalog, ob["x"], ob["y"], ob["flux_e"], usable=stars)
    assert ph["n"] >= 12, ph["n"]
    assert r.apcor.tail_n_stars >= 5
    r_big = max(ReductionConfig().detect.aper_diameters_arcsec) / 2.0 / r.stats["pixel_scale"]
    if case[0] == "kolmogorov_optics":
        # no Moffat fits the heavy wing: the measured one sets the tail
        assert r.apcor.tail_source == "measured"
    elif r.apcor.tail_source != "measured":
        # the undersampled core hardly constrains beta: the wing's beta, combined with it, gives the tail of the
        # true Moffat (beta 5) within 0.1 %
        true_tail = 1.0 / float(moffat_enclosed(r_big, r.psf.fwhm_px, 5.0))
        assert abs(r.apcor.tail - true_tail) < 0.001, (r.apcor.tail, r.apcor.tail_beta, true_tail)
    # FLUX_APCOR (4" aperture x measured 8"/4" ratio x measured wing) within the goal of the real-sky issue
    assert abs(ph["median"] - 1) <= 0.005, (case, ph["median"], ph["scatter"])
    # the previous tail, 1 / EE(8") of the PSF's Moffat fit, misses it by more than 1 %
    old = 1.0 / float(moffat_enclosed(r_big, r.psf.fwhm_px, r.psf.beta))
    assert abs(ph["median"] * old / r.apcor.tail - 1) > 0.01, (case, ph["median"], old, r.apcor.tail)


def _stars_image(n_stars: int, seed: int, N: int = 192):
    """Stars of a Kolmogorov x optics PSF at 1.2" (0.55"/pixel) drawn by the simulator's renderer on stamps large
    enough for the wings (N pixels), with sky noise; returns the image, positions, fluxes and the profile's EE."""
    from upad.sim import psf as sp, render as sr

    m = sp.PSFModel(beta=3.0, fwhm_centre=1.2, c_r2=0, c_x=0, c_y=0, g1_0=0, g2_0=0, g_r=0, nx=1024, ny=1024,
                    family="kolmogorov_optics", lam_over_diam=6250e-10 / 0.83 * 206264.8, obscuration=0.35,
                    optics={"z4_0": 0.05, "z4_r2": 0.1, "z5_0": 0.02, "z6_0": -0.02, "astig_r": 0.08,
                            "coma_r": 0.05, "z11": 0.03})
    zp = sr.zone_psfs(m, np.array([512.0]), np.array([512.0]), 0.55)[0]
    pk = zp.kimage(N)
    rng = np.random.default_rng(seed)
    img = np.zeros((1024, 1024), np.float32)
    xs, ys = rng.uniform(40, 984, n_stars), rng.uniform(40, 984, n_stars)
    fl = 10 ** rng.uniform(4.3, 5.7, n_stars)
    for x, y, f in zip(xs, ys, fl):
        ix, iy = int(x), int(y)
        st = sr.render_batch(N, pk, np.array([f]), np.array([N / 2 + x - ix]), np.array([N / 2 + y - iy]))[0]
        y0, x0 = iy - N // 2, ix - N // 2
        ya, yb, xa, xb = max(y0, 0), min(y0 + N, 1024), max(x0, 0), min(x0 + N, 1024)
        img[ya:yb, xa:xb] += st[ya - y0:yb - y0, xa - x0:xb - x0]
    img += rng.normal(0.0, math.sqrt(50.0), img.shape).astype(np.float32)
    one = sr.render_batch(N, pk, np.array([1.0]), np.array([N / 2.0]), np.array([N / 2.0]))[0]
    yy, xx = np.mgrid[0:N, 0:N]
    r = np.hypot(xx - N / 2.0, yy - N / 2.0)
    return img, xs, ys, fl, lambda R: float(one[r < R].sum())


def test_stacked_wing_of_a_kolmogorov_profile():
    import sep

    img, xs, ys, fl, ee = _stars_image(30, 3)
    cfg = PhotometryConfig()
    r_big = 4.0 / 0.55
    fb, _, _ = sep.sum_circle(img, xs, ys, r_big, subpix=5)
    wt = wing_tail(img, np.full(img.shape, 50.0), None, xs, ys, fb, np.arange(len(xs)), r_big_px=r_big,
                   fwhm_px=2.3, neighbour_radius=np.full(len(xs), 5.0), config=cfg)
    assert wt is not None and wt.n_stars >= 25
    # the flux between 8" and the outer radius, over the flux within 8"
    truth = ee(cfg.tail_outer_radius * r_big) / ee(r_big) - 1
    assert truth > 0.015  # heavy wings: a Moffat of the same core has a few 0.1 %
    assert abs(wt.within - truth) < 0.002, (wt.within, truth)
    # the power law beyond (the default) brings it to the whole profile's within 0.3 %
    assert abs(wt.fraction - (ee(95.0) / ee(r_big) - 1)) < 0.003, (wt.fraction, ee(95.0) / ee(r_big) - 1)
    assert wt.fraction > wt.within + 0.003  # the r^-3 wing beyond 24" holds several 0.1 % of the flux
    assert 2.8 < wt.slope < 3.8
    # without the extrapolation the tail is the measured profile's alone
    wx = wing_tail(img, np.full(img.shape, 50.0), None, xs, ys, fb, np.arange(len(xs)), r_big_px=r_big,
                   fwhm_px=2.3, neighbour_radius=np.full(len(xs), 5.0),
                   config=PhotometryConfig(tail_extrapolate=False))
    assert wx.fraction == pytest.approx(wt.within)


def test_stacked_wing_ignores_neighbours_and_needs_enough_stars():
    import sep

    img, xs, ys, fl, ee = _stars_image(30, 4)
    r_big = 4.0 / 0.55
    # faint galaxies (Gaussian blobs of 1 % of the star) beside every star, inside its wing annulus
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:1024, 0:1024]
    gx = xs + rng.uniform(10, 18, xs.size) * rng.choice([-1, 1], xs.size)
    gy = ys + rng.uniform(-6, 6, xs.size)
    for x, y, f in zip(gx, gy, fl):
        sl = (slice(max(int(y) - 12, 0), int(y) + 13), slice(max(int(x) - 12, 0), int(x) + 13))
        img[sl] += (0.01 * f / (2 * np.pi * 2.0 ** 2) * np.exp(-((xx[sl] - x) ** 2 + (yy[sl] - y) ** 2) / 8.0)
                    ).astype(np.float32)
    fb, _, _ = sep.sum_circle(img, xs, ys, r_big, subpix=5)
    cfg = PhotometryConfig()
    truth = ee(cfg.tail_outer_radius * r_big) / ee(r_big) - 1
    allx, ally = np.concatenate([xs, gx]), np.concatenate([ys, gy])
    allf = np.concatenate([fb, 0.01 * fl])
    wt = wing_tail(img, np.full(img.shape, 50.0), None, allx, ally, allf, np.arange(len(xs)), r_big_px=r_big,
                   fwhm_px=2.3, neighbour_radius=np.full(allx.size, 6.0), config=cfg)
    assert abs(wt.within - truth) < 0.002, (wt.within, truth)
    assert abs(wt.fraction - (ee(95.0) / ee(r_big) - 1)) < 0.003, (wt.fraction, ee(95.0) / ee(r_big) - 1)
    # too few stars: no measurement (the caller falls back to the PSF model)
    assert wing_tail(img, np.full(img.shape, 50.0), None, xs, ys, fb, np.arange(3), r_big_px=r_big, fwhm_px=2.3,
                     neighbour_radius=np.full(len(xs), 5.0), config=cfg) is None
