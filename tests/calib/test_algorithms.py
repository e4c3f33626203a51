"""The pure calibration algorithms on small arrays."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from upad.calib import bias, bpm, dark, epochs, flat, fringe, illumination, qc


def test_clipped_std_is_not_quantised_on_integers():
    rng = np.random.default_rng(0)
    # serial differences of integer raw values of two amplifiers with read noise 4.0 and 4.3 ADU
    d1, d2 = (np.diff(np.rint(rng.normal(1000, s, (400, 500))), axis=1).ravel() for s in (4.0, 4.3))
    assert qc.robust_std(d1) == qc.robust_std(d2)  # the median absolute deviation is an integer: quantised
    assert qc.clipped_std(d1) / np.sqrt(2) == pytest.approx(4.0, rel=0.01)
    assert qc.clipped_std(d2) / np.sqrt(2) == pytest.approx(4.3, rel=0.01)
    d1[:100] = 1e4  # outliers do not matter
    assert qc.clipped_std(d1) / np.sqrt(2) == pytest.approx(4.0, rel=0.01)


def test_series_screening_finds_light_leaks_noise_and_saturation():
    rng = np.random.default_rng(1)
    amps = [(slice(0, 50), slice(0, 50)), (slice(0, 50), slice(50, 100))]
    frames = [rng.normal(0, 4, (50, 100)) for _ in range(8)]
    frames[2][:, 50:] += np.linspace(20, 200, 50)  # a leak in amplifier 2
    frames[5] *= 2.5  # noisy
    stats = [bias.frame_stats(f, amps, step=1) for f in frames]
    stats[6].saturated_fraction = 0.2
    reasons = bias.screen_series(stats, level_tol=5.0, noise_ratio=1.5, max_saturated=0.0)
    assert [i for i, r in enumerate(reasons) if r] == [2, 5, 6]
    assert "amplifier 2" in reasons[2] and "series median" in reasons[2]
    assert "noise" in reasons[5] and "saturated" in reasons[6]
    assert bias.screen_series(stats[:2], level_tol=5.0) == [None, None]  # too few to compare


def test_hot_pixels_and_dark_noise_model():
    rng = np.random.default_rng(2)
    rate = rng.normal(0.001, 0.01, (100, 100)).astype(np.float32)
    err = np.full_like(rate, 0.01)
    rate[3, 4] = 0.2
    rate[7, 7] = 0.04  # 4 sigma: not hot at 5 sigma
    hot = dark.hot_pixels(rate, err, nsigma=5)
    assert hot[3, 4] and not hot[7, 7] and hot.sum() == 1
    assert dark.hot_pixels(rate, err, nsigma=5, min_excess=0.5).sum() == 0
    rv, po = dark.dark_noise_model(np.array([4.0, 5.0]), np.array([100.0, 300.0]))
    assert rv.shape == po.shape == (2, 2)
    assert rv[1, 1] == pytest.approx((5 / 300) ** 2) and po[0, 1] == pytest.approx(1 / 100)
    e = dark.dark_error(np.full((2, 2), 0.03, np.float32), np.full((2, 2), 12.0, np.float32), 300.0)
    assert e[0, 0] == pytest.approx(0.05, rel=1e-5)


def test_flat_residual_qc_measures_rms_and_gradient():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    master = (1 + 0.05 * rng.standard_normal((256, 256))).astype(np.float32)
    good = master * (1 + 0.005 * rng.standard_normal(master.shape))
    tilted = master * (1 + 0.02 * (xx - 0.5)) * (1 + 0.005 * rng.standard_normal(master.shape))
    r1 = flat.residual_qc(good * 1.3, master)  # a different normalisation is not a residual
    r2 = flat.residual_qc(tilted, master)
    assert r1.rms == pytest.approx(0.005, rel=0.05) and r1.gradient < 0.002 and abs(r1.mean_offset - 0.3) < 0.01
    assert r2.gradient == pytest.approx(0.02, rel=0.1)
    assert r1.hist_counts.sum() > 0.99 * good.size


def test_stars_in_sky_flats_are_masked():
    rng = np.random.default_rng(4)
    ref = np.ones((200, 200), np.float32)
    img = (1 + 0.007 * rng.standard_normal(ref.shape)).astype(np.float32)
    yy, xx = np.mgrid[0:200, 0:200]
    for x0, y0, peak in ((50, 60, 0.05), (150, 120, 0.02), (100, 170, 0.2)):
        img += peak * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.5 ** 2))
    mask = flat.sky_source_mask(img, ref, nsigma=4, grow_px=4)
    for x0, y0, _ in ((50, 60, 0), (150, 120, 0), (100, 170, 0)):
        assert mask[y0 - 3:y0 + 4, x0 - 3:x0 + 4].all()
    assert mask.mean() < 0.06 and mask[0:40, 0:40].mean() < 0.1


def test_fringe_helpers():
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:256, 0:256]
    pattern = 0.02 * np.sin(2 * np.pi * xx / 40) * np.cos(2 * np.pi * yy / 55)
    sky = 2000.0 * (1 + 0.0005 * (xx - 128))
    img = (sky * (1 + pattern) + rng.normal(0, 45, xx.shape)).astype(np.float32)
    img[100:104, 100:104] += 30000  # a star
    bkg, _ = fringe.sky_background(img, None, box=64)
    mask = fringe.source_mask(img, bkg, nsigma=5, grow_px=2)
    assert mask[100:104, 100:104].all() and mask.mean() < 0.05
    norm = fringe.normalised_frame(img, bkg, mask)
    assert np.isnan(norm[101, 101])
    smoothed = fringe.smooth_nan(norm, 2.0)
    assert np.isfinite(smoothed).all()
    assert np.corrcoef(smoothed.ravel(), pattern.ravel())[0, 1] > 0.9
    assert fringe.fit_fringe_scale(norm, pattern.astype(np.float32)) == pytest.approx(1.0, abs=0.1)


def test_illumination_surface_fit():
    ny, nx = 300, 400
    v, u = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    truth = 1 + 0.01 * u - 0.006 * v + 0.004 * (u * u - 1 / 3) + 0.003 * u * v
    truth /= truth.mean()
    cell = illumination.cell_size((ny, nx), 20)
    rng = np.random.default_rng(6)
    grids = []
    for _ in range(5):
        bkg = (truth * 150 * rng.uniform(0.9, 1.1)).astype(np.float32)
        g = illumination.background_grid(bkg, cell=cell)
        g *= 1 + 0.002 * rng.standard_normal(g.shape)
        g[2, 3] = 1.5  # a residual star halo in one frame
        grids.append(g)
    combined = illumination.combine_grids(grids)
    coef, info = illumination.fit_surface(combined, shape=(ny, nx), cell=cell, order=3)
    icor = illumination.evaluate_surface(coef, (ny, nx), 3)
    assert icor.mean() == pytest.approx(1.0, abs=1e-6)
    assert np.abs(icor / truth - 1).max() < 0.002
    with pytest.raises(ValueError, match="not positive"):
        illumination.background_grid(np.zeros((10, 10), np.float32), cell=5)


def test_bad_pixel_mask_bits_and_columns():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:128, 0:128]
    flat_img = ((1 - 0.1 * ((xx - 64) ** 2 + (yy - 64) ** 2) / 64 ** 2) * (1 + 0.01 * rng.standard_normal(xx.shape))
                ).astype(np.float32)
    flat_img[40:128, 30] *= 0.3  # a dead column segment
    flat_img[5, 5] = 0.0
    flat_img[9, 9] *= 0.7
    dead, low = bpm.flat_defects([flat_img], box=16, dead_below=0.2, low_below=0.85)
    assert dead[5, 5] and low[9, 9] and low[40:128, 30].all() and not low[:40, 30].any()
    hot = np.zeros(flat_img.shape, bool)
    hot[0:60, 100] = True  # a hot column from the bottom edge
    hot[20, 20] = True
    mask = bpm.combine_mask(hot=hot, dead=dead, low=low, min_run=20)
    assert mask[20, 20] == bpm.HOT and mask[5, 5] == bpm.DEAD and mask[9, 9] == bpm.LOW
    assert (mask[40:128, 30] & bpm.BAD_COLUMN).all() and (mask[0:60, 100] & bpm.BAD_COLUMN).all()
    assert bpm.bpm_stats(mask)["total"] == int((mask > 0).sum())
    # isolated defects are not flagged as columns outside their runs
    assert not (mask[:38, 30] & bpm.BAD_COLUMN).any()
    # flat field shape (vignetting) is not a defect
    assert low.sum() + dead.sum() == 88 + 2


def test_epochs_breakpoints_and_proposals():
    t = dt.datetime(2025, 1, 10)
    bps = [epochs.Breakpoint(dt.datetime(2025, 1, 5), kinds=("flat",)),
           epochs.Breakpoint(dt.datetime(2025, 1, 20), instrument="t80cam"),
           epochs.Breakpoint(dt.datetime(2025, 1, 15), filter="zSDSS")]
    applicable = [b for b in bps if epochs.applies(b, instrument="mini", filter_name="rSDSS", kind="flat")]
    assert epochs.epoch_bounds(t, applicable) == (dt.datetime(2025, 1, 5), None)
    assert [b for b in bps if epochs.applies(b, instrument="mini", filter_name="rSDSS", kind="bias")] == []
    base = np.ones((8, 8))
    ramp = np.linspace(0.98, 1.02, 8)[None, :] * base
    series = [(dt.datetime(2025, 1, d), d, m) for d, m in
              ((1, base), (2, base * 1.3), (3, base), (4, ramp), (5, ramp), (6, ramp * 1.0001))]
    props, changes = epochs.propose_breakpoints(series, threshold=0.005)
    assert np.isnan(changes[0]) and changes[1] < 1e-12  # a uniform scale is no change
    assert [(p.kind, p.after) for p in props] == [("step", 4)]
    series[1] = (dt.datetime(2025, 1, 2), 2, ramp)  # one master unlike both neighbours: an outlier
    props, _ = epochs.propose_breakpoints(series, threshold=0.005)
    assert [(p.kind, p.after) for p in props] == [("outlier", 2), ("step", 4)]
