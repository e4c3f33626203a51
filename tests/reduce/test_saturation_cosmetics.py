"""Saturation, bleed trails and the cosmetic correction."""
from __future__ import annotations

import numpy as np

from upad import maskbits as mb
from upad.reduce.cosmetics import CosmeticsConfig, bad_pixel_bits, interpolate_bad_pixels
from upad.reduce.saturation import mask_saturation


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
    for c, r in zip(night.frames, night.reduced):
        if c.saturation is None:
            continue
        kind = np.asarray(c.saturation["kind"])
        x, y = np.asarray(c.saturation["x"]), np.asarray(c.saturation["y"])
        m = r.mask[y, x]
        assert ((m[kind == 1] & mb.SATURATED) != 0).all()
        if (kind == 2).any():
            assert ((m[kind == 2] & (mb.SATURATED | mb.BLEED)) != 0).mean() >= 0.99


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
