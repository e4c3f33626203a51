"""Satellite trails: found and masked in the simulated frames, no false trail elsewhere."""
from __future__ import annotations

import math

import numpy as np

from upad import maskbits as mb
from upad.reduce.satellites import detect_satellites
from upad.reduce.validation import satellites_vs_truth

from .helpers import pixel_sigma


def test_trails_are_masked_and_no_false_trail(night):
    n_with = 0
    for c, r in zip(night.frames, night.reduced):
        if c.satellite is None:
            assert r.satellites.trails == [], r.satellites.trails
            assert not ((r.mask & mb.SATELLITE) != 0).any()
            continue
        n_with += 1
        res = satellites_vs_truth(r.mask, c.satellite["x"], c.satellite["y"], c.satellite["e"], pixel_sigma(r))
        assert res["completeness"] >= 0.95, res
        t = r.satellites.trails[0]
        truth = c.record["satellite"]
        # same line: angle of the trail vs its normal (theta), and the true point lies on it
        d_ang = abs(((t.theta_deg - 90.0) - truth["angle_deg"] + 90) % 180 - 90)
        assert d_ang < 0.5
        th = math.radians(t.theta_deg)
        assert abs(truth["x0"] * math.cos(th) + truth["y0"] * math.sin(th) - t.rho) < 1.0
        assert abs(t.flux_per_px / truth["line_flux_e_per_px"] - 1) < 0.1
    assert n_with >= 1


def test_faint_partial_trail_in_noise():
    rng = np.random.default_rng(7)
    ny, nx = 600, 800
    img = rng.normal(0, 8.0, (ny, nx)).astype(np.float32)
    var = np.full(img.shape, 64.0, np.float32)
    yy, xx = np.mgrid[0:ny, 0:nx]
    # a trail of 300 e- per pixel of length (sigma 0.9 px), only for x in [100, 700]
    d = (yy - (0.3 * xx + 120)) / math.hypot(1, 0.3)
    prof = 300.0 / (0.9 * math.sqrt(2 * math.pi)) * np.exp(-0.5 * (d / 0.9) ** 2)
    prof[(xx < 100) | (xx > 700)] = 0
    img += prof.astype(np.float32)
    mask = mb.new_mask(img.shape)
    res = detect_satellites(img, var, mask)
    assert len(res.trails) == 1
    on = prof > 2 * 8.0
    assert ((mask[on] & mb.SATELLITE) != 0).mean() >= 0.95
    # not much beyond the trail's ends
    assert ((mask[:, :60] & mb.SATELLITE) != 0).sum() == 0
