"""Saturation, bleed trails and the cosmetic correction."""
from __future__ import annotations

import numpy as np
import pytest

from upad import maskbits as mb
from upad.reduce.cosmetics import CosmeticsConfig, bad_pixel_bits, interpolate_bad_pixels
from upad.reduce.saturation import SaturationConfig, mask_saturation


def test_saturated_star_core_and_bleed_trail():
    img = np.zeros((200, 100), np.float32)
    sat = np.zeros(img.shape, bool)
    yy, xx = np.mgrid[0:200, 0:100]
    core = (xx - 50) ** 2 + (yy - 100) ** 2 <= 16
    sat |= core
    sat[60:140, 50] = True  # the trail, one column, far beyond the core
    img[sat] = 6e4
    img[140:143, 50] = 30000.0  # partly filled pixels at the end of the trail
    mask = mb.new_mask(img.shape)
    res = mask_saturation(img, mask, saturated=sat)
    assert len(res.regions) == 1 and res.regions[0].bleed_length >= 70
    assert ((mask[sat] & mb.SATURATED) != 0).all()
    assert ((mask[60:90, 50] & mb.BLEED) != 0).all() and ((mask[110:140, 50] & mb.BLEED) != 0).all()
    assert ((mask[140:143, 50] & mb.BLEED) != 0).all()  # extended beyond the last saturated pixel
    assert (mask[100, 45:56] & mb.BLEED == 0).sum() >= 7  # the round core is not a trail
    assert (mask[0:40, :] == 0).all()


def test_saturation_on_simulated_frames(night):
    # the truth is the simulator's own (kind 3: charge at the amplifier's capacity, from its readout model in
    # electrons; kind 2: charge received by bleeding), not the ISR's raw-frame rule (kind 1)
    n_cap = n_bled = 0
    for c, r in zip(night.frames, night.reduced):
        if c.saturation is None:
            continue
        kind = np.asarray(c.saturation["kind"])
        x, y = np.asarray(c.saturation["x"]), np.asarray(c.saturation["y"])
        e = np.asarray(c.saturation["e"])
        m = r.mask[y, x]
        cap = kind == 3
        n_cap += int(cap.sum())
        assert ((m[cap] & mb.SATURATED) != 0).all()
        sig = r.stats["noise_model_sigma_e"]
        bled = (kind == 2) & (e > 5 * sig)
        n_bled += int(bled.sum())
        if bled.any():
            assert ((m[bled] & (mb.SATURATED | mb.BLEED)) != 0).mean() >= 0.99
        # few false flags: saturated or bleed pixels farther than 2 pixels from every true one
        truth = np.zeros(r.mask.shape, bool)
        truth[y[cap | (kind == 2)], x[cap | (kind == 2)]] = True
        from scipy import ndimage

        near = ndimage.binary_dilation(truth, structure=np.ones((3, 3), bool), iterations=2)
        flagged = (r.mask & (mb.SATURATED | mb.BLEED)) != 0
        assert (flagged & ~near).sum() <= 0.02 * flagged.sum(), ((flagged & ~near).sum(), flagged.sum())
    assert n_cap > 100 and n_bled > 20


def test_bad_column_and_hot_pixel_are_interpolated():
    ny, nx = 80, 80
    yy, xx = np.mgrid[0:ny, 0:nx]
    truth = (100 + 0.5 * xx + 0.3 * yy).astype(np.float32)
    img = truth.copy()
    mask = mb.new_mask(img.shape)
    img[10:70, 40] = 1e4
    mask[10:70, 40] |= mb.BAD
    img[5, 5] = -500
    mask[5, 5] |= mb.BAD
    res = interpolate_bad_pixels(img, mask, config=CosmeticsConfig())
    assert res.n_interpolated == 61 and res.n_unfixed == 0
    assert np.abs(img - truth).max() < 1e-3
    assert ((mask[10:70, 40] & mb.INTERPOLATED) != 0).all()
    assert (mask[10:70, 40] & mb.BAD).all()  # the BAD bit stays


def test_calibration_bpm_bits_translate():
    bpm = np.array([[0, 1, 2, 4, 8, 5]], np.uint8)  # calib.bpm: 1 hot, 2 dead, 4 low response, 8 bad column
    m = bad_pixel_bits(bpm)
    assert list(m[0]) == [0, mb.BAD, mb.BAD, mb.SUSPECT, mb.BAD, mb.BAD]


def _full_well_frame(sky_e: float, full_well: float, seed: int = 4):
    """Two amplifiers side by side, bright stars whose charge beyond the full well bleeds along the columns (the
    simulator's own bleeding), a 1 % pixel response, noise; the ADC never clips (no raw-frame mask)."""
    from upad.sim.detector import bleed

    rng = np.random.default_rng(seed)
    ny, nx = 400, 400
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    img = np.full((ny, nx), sky_e)
    stars = ((100.3, 200.6, 8 * full_well), (300.7, 120.2, 3 * full_well), (250.1, 300.4, 0.3 * full_well))
    for (x0, y0, peak) in stars:
        img += peak * (1 + ((xx - x0) ** 2 + (yy - y0) ** 2) / 2.5 ** 2) ** -3
    img = img.astype(np.float32)
    fw = np.array([[full_well, full_well * 1.02]])  # (n_amp_y, n_amp_x): amplifiers of 200 columns
    bled = bleed(img, fw, 200)
    fw_map = np.where(xx < 200, fw[0, 0], fw[0, 1])
    at_capacity = img >= fw_map * (1 - 1e-6)
    charge = img + rng.normal(0, 1, img.shape) * np.sqrt(img + 16)
    charge = np.minimum(charge, fw_map)  # a full pixel holds its full well (the read noise is far smaller)
    flat = (1 + rng.normal(0, 0.01, img.shape)).astype(np.float32)
    image = (charge / flat).astype(np.float32)
    regions = [(slice(0, ny), slice(0, 200)), (slice(0, ny), slice(200, nx))]
    return image, flat, regions, at_capacity, bled, img


def test_full_well_below_the_adc_is_found_from_the_frame():
    fw = 45000.0
    image, flat, regions, at_cap, bled, _ = _full_well_frame(800.0, fw)
    assert at_cap.sum() > 50 and len(bled.x) > 20
    # the instrument file's full well (121100 e-) is far above: only the plateau measured in the frame finds them
    mask = mb.new_mask(image.shape)
    res = mask_saturation(image, mask, levels_e=[121100.0, 121100.0], amp_regions=regions, flat=flat)
    assert abs(res.measured_e[0] / fw - 1) < 0.002 and abs(res.measured_e[1] / (1.02 * fw) - 1) < 0.002
    assert ((mask[at_cap] & mb.SATURATED) != 0).all()
    big = bled.e > 100.0
    assert ((mask[bled.y[big], bled.x[big]] & (mb.SATURATED | mb.BLEED)) != 0).all()
    # the faint star (peak 0.3 full well) is not saturated
    assert (mask[295:306, 245:256] == 0).all()
    # without the measurement, the level of the calibration does the same; the instrument's misses them all
    m2 = mb.new_mask(image.shape)
    cfg = SaturationConfig(measure_level=False)
    mask_saturation(image, m2, levels_e=[fw, 1.02 * fw], amp_regions=regions, flat=flat, config=cfg)
    assert ((m2[at_cap] & mb.SATURATED) != 0).all()
    m3 = mb.new_mask(image.shape)
    mask_saturation(image, m3, levels_e=[121100.0, 121100.0], amp_regions=regions, flat=flat, config=cfg)
    assert not (m3 & mb.SATURATED).any()


@pytest.mark.parametrize("sky", [50.0, 20000.0])
def test_bleed_trail_ends_where_it_does_at_any_sky_level(sky):
    fw = 45000.0
    image, flat, regions, at_cap, bled, charge = _full_well_frame(sky, fw, seed=9)
    mask = mb.new_mask(image.shape)
    mask_saturation(image, mask, amp_regions=regions, flat=flat)
    # every pixel that received a significant bled charge is flagged, whatever the sky
    sig = np.sqrt(sky + 16)
    big = bled.e > 5 * sig
    assert big.sum() > 10
    assert ((mask[bled.y[big], bled.x[big]] & (mb.SATURATED | mb.BLEED)) != 0).all()
    # the trail stops within 2 pixels of the last pixel that holds bled charge (an absolute level of 2000 e- ran
    # along the whole column on a 20000 e- sky)
    for x0 in (100, 300):  # the two saturated stars
        near = np.abs(bled.x - x0) <= 5
        rows = np.flatnonzero(((mask[:, x0 - 5:x0 + 6] & mb.BLEED) != 0).any(axis=1))
        lo, hi = int(bled.y[near].min()), int(bled.y[near].max())
        assert lo - 2 <= rows.min() <= lo + 1 and hi - 1 <= rows.max() <= hi + 2, (x0, rows.min(), rows.max(), lo, hi)
    assert ((mask & mb.BLEED) != 0).sum() < 6 * len(bled.x)
