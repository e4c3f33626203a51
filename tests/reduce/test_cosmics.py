"""Cosmic rays against the truth and against astroscrappy (L.A.Cosmic in C)."""
from __future__ import annotations


import numpy as np
import pytest

from upad import maskbits as mb
from upad.reduce.cosmics import CosmicConfig, detect_cosmics
from upad.reduce.validation import cosmics_vs_truth, run_astroscrappy

from .helpers import pixel_sigma


def _truth_check(c, r):
    ob = c.objects
    stars = np.asarray(ob["in_image"]) & ~np.asarray(ob["saturated"]) & c.star
    excl = (r.mask & np.int16(mb.SATELLITE | mb.SATURATED | mb.BLEED)) != 0
    return cosmics_vs_truth(r.mask, c.cosmics["x"], c.cosmics["y"], c.cosmics["e"], pixel_sigma(r),
                            star_x=np.asarray(ob["x"])[stars], star_y=np.asarray(ob["y"])[stars], exclude=excl)


def test_completeness_and_star_cores(night):
    inj = found = core = false_core = 0
    for c, r in zip(night.frames, night.reduced):
        res = _truth_check(c, r)
        inj += res["n_injected"]
        found += res["completeness"] * res["n_injected"]
        core += res["n_core"]
        false_core += res["false_core"]
        assert res["completeness"] >= 0.95, res
    assert inj > 3000
    assert found / inj >= 0.95
    # fewer than 1 in 10^4 star-core pixels flagged
    assert false_core / core < 1e-4, (false_core, core)


def test_cleaned_pixels_are_replaced_and_flagged(night):
    r = night.reduced[0]
    cr = r.cosmics
    assert cr.n_pixels > 500 and cr.psf_sigma_px > 0.5
    m = r.mask[cr.y, cr.x]
    assert ((m & mb.COSMIC) != 0).all() and ((m & mb.INTERPOLATED) != 0).all()
    # replaced values are near the local sky, the originals were not (the reduced image keeps the sky)
    sky = r.background.at(cr.x, cr.y)
    assert np.median(np.abs(r.image[cr.y, cr.x] - sky)) < 5 * r.stats["sky_rms_e"]
    assert np.median(cr.original) > 20 * r.stats["sky_rms_e"]


def test_matches_astroscrappy_on_a_cutout(night):
    c = night.frames[1]
    sl = np.s_[256:768, 256:768]
    from upad.reduce.background import estimate_background
    from upad.reduce.noise import subtract_and_variance

    img = c.image[sl].copy()
    mask = mb.new_mask(img.shape)
    mask[(c.bpm[sl] > 0)] |= mb.BAD
    bkg = estimate_background(img, mask=mask)
    sky = bkg.level
    nr = subtract_and_variance(img, bkg, read_noise=float(np.mean(c.read_noise)), flat=c.flat[sl],
                               dark_e=c.dark_e[sl])
    data = img.copy()
    res = detect_cosmics(img, nr.variance, mask, config=CosmicConfig())
    ours = (mask & mb.COSMIC) != 0
    theirs, _ = run_astroscrappy(data, mask=(c.bpm[sl] > 0), read_noise=float(np.mean(c.read_noise)),
                                        background=sky)
    cx, cy, ce = (np.asarray(c.cosmics[k]) for k in "xye")
    inside = (cx >= 256) & (cx < 768) & (cy >= 256) & (cy < 768)
    sig = np.sqrt(nr.variance)
    obj = c.objects
    st = np.asarray(obj["in_image"]) & c.star & ~np.asarray(obj["saturated"])
    kw = dict(star_x=np.asarray(obj["x"])[st] - 256, star_y=np.asarray(obj["y"])[st] - 256)
    a = cosmics_vs_truth(mask, cx[inside] - 256, cy[inside] - 256, ce[inside], sig, flags=ours, **kw)
    b = cosmics_vs_truth(mask, cx[inside] - 256, cy[inside] - 256, ce[inside], sig, flags=theirs, **kw)
    assert a["n_injected"] > 100
    assert a["completeness"] >= b["completeness"] - 0.02, (a, b)
    assert a["false_core"] <= b["false_core"]
    # the real (> 5 sigma) cosmic-ray pixels astroscrappy flags, we flag too; our flags on pixels without any
    # cosmic-ray charge are fewer than its own
    deposit = np.zeros(img.shape)
    deposit[cy[inside] - 256, cx[inside] - 256] = ce[inside]
    real = deposit > 5 * sig
    assert (theirs & real & ours).sum() >= 0.98 * (theirs & real).sum()
    assert (ours & (deposit == 0)).sum() <= (theirs & (deposit == 0)).sum()
    assert res.n_pixels > 0
    # speed is measured by bench/bench_reduce.py (astroscrappy vs upad on a full T80Cam frame), never by a test


def test_no_cosmic_ray_no_flag():
    rng = np.random.default_rng(3)
    img = rng.normal(0, 5.0, (256, 256)).astype(np.float32)
    var = np.full(img.shape, 25.0, np.float32)
    mask = mb.new_mask(img.shape)
    res = detect_cosmics(img, var, mask)
    assert res.n_pixels <= 2  # a 5-sigma noise peak per ~10^6 pixels at most


def test_input_checks():
    img = np.zeros((10, 10), np.float64)
    with pytest.raises(ValueError, match="float32"):
        detect_cosmics(img, np.ones((10, 10), np.float32), mb.new_mask((10, 10)))
