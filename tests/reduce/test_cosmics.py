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


def test_growth_spares_the_core_of_a_star_beside_a_cosmic_ray():
    """A cosmic ray beside a star's core: L.A.Cosmic's growth (S' of the neighbours) eats the core, which the rest of
    the star predicts; with the growth limited to pixels above that prediction the core is kept and the cosmic ray
    still flagged whole."""
    ny = nx = 200
    yy, xx = np.mgrid[0:ny, 0:nx]
    # a star of 8000 e- (sigma 1 pixel) and five bright ones for the PSF width
    stars = [(100.3, 100.2, 8000.0), (40.6, 50.1, 2e4), (150.2, 60.7, 2e4), (60.1, 160.4, 2e4), (160.8, 150.3, 2e4),
             (30.4, 130.6, 2e4)]
    model = np.zeros((ny, nx))
    for x0, y0, f in stars:
        model += f / (2 * np.pi) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 2.0)
    cr = [(101, 98, 1200.0), (102, 98, 900.0), (102, 99, 1000.0), (103, 99, 300.0)]  # (y, x, e-) beside the core
    core = np.zeros((ny, nx), bool)
    core[99:102, 99:102] = True
    for y, x, _ in cr:
        core[y, x] = False
    for seed in range(3):
        rng = np.random.default_rng(seed)
        base = rng.poisson(model + 100.0).astype(float) - 100.0 + rng.normal(0, 4, model.shape)
        for y, x, e in cr:
            base[y, x] += e
        var = np.full(model.shape, 116.0, np.float32)
        flags = {}
        for nsig in (3.0, 0.0):
            mask = mb.new_mask(model.shape)
            res = detect_cosmics(base.astype(np.float32), var, mask, config=CosmicConfig(grow_excess_nsigma=nsig))
            assert 0.95 < res.psf_sigma_px < 1.15
            flags[nsig] = (mask & mb.COSMIC) != 0
            assert all(flags[nsig][y, x] for y, x, _ in cr), nsig
        assert not (flags[3.0] & core).any()
        assert (flags[0.0] & core).sum() >= 2  # what the rule is for


def _field_with_cosmics(seed: int, sigma: float, *, size: int = 512, n_stars: int = 400):
    """Stars (a double Gaussian: 80 % of sigma, 20 % of 2 sigma) on a flat sky, with the simulator's cosmic rays at
    200x the natural rate (straight tracks, bilinear charge sharing: faint edges beside bright pixels)."""
    from upad.sim import SimConfig
    from upad.sim.detector import cosmic_rays

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    xs, ys = rng.uniform(3, size - 3, n_stars), rng.uniform(3, size - 3, n_stars)
    fl = 10 ** rng.uniform(2.5, 4.7, n_stars)
    model = np.zeros((size, size))
    for x, y, f in zip(xs, ys, fl):
        sl = np.s_[max(int(y) - 12, 0):int(y) + 13, max(int(x) - 12, 0):int(x) + 13]
        r2 = (xx[sl] - x) ** 2 + (yy[sl] - y) ** 2
        model[sl] += f * (0.8 * np.exp(-r2 / (2 * sigma ** 2)) / (2 * np.pi * sigma ** 2)
                          + 0.2 * np.exp(-r2 / (8 * sigma ** 2)) / (8 * np.pi * sigma ** 2))
    img = rng.poisson(model + 60.0) - 60.0 + rng.normal(0, 4, model.shape)
    cr = cosmic_rays(rng, (size, size), exposure_s=40.0, cfg=SimConfig(cosmic_rate=600.0), pixel_um=10.0)
    img[cr.y, cr.x] += cr.e
    return img.astype(np.float32), np.full(img.shape, 76.0, np.float32), cr, xs, ys


@pytest.mark.parametrize("sigma", [1.3, 2.1])
def test_faint_edges_of_tracks_at_wide_seeing(sigma):
    """The fainter pixels along a bright track (> 5 sigma, beside flagged ones) are grown into at 1.2-2" seeing: the
    PSF fitted to decide the growth leaves out the pixels that touch the cosmic ray (else the track's own faint edge
    reads as a faint star and predicts the pixel), and the second dilation's S' is evaluated with the first-level
    pixels cleaned (beside a bright pixel a faint one's Laplacian is negative). 94 % found here before, now 96-97 %."""
    found = n = false_core = 0
    for seed in (0, 1):
        img, var, cr, xs, ys = _field_with_cosmics(seed, sigma)
        mask = mb.new_mask(img.shape)
        detect_cosmics(img, var, mask)
        c = cosmics_vs_truth(mask, cr.x, cr.y, cr.e, np.sqrt(var), star_x=xs, star_y=ys)
        found += c["completeness"] * c["n_injected"]
        n += c["n_injected"]
        false_core += c["false_core"]
    assert n > 1500
    assert found / n >= 0.955, found / n
    assert false_core == 0
