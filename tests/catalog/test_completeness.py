"""Depth and completeness by injection (upad.catalog.completeness) against the truth: synthetic coadds with a
population of faint stars and galaxies of known magnitudes; the completeness the injection measures against the
fraction of those true sources the same detection finds, in two worlds of PSF and seeing."""
from __future__ import annotations

import galsim
import numpy as np
import pytest

from upad.catalog.completeness import aperture_depth, completeness, extended_stamp, logistic_fit
from upad.catalog.measure import BandImage, CatalogConfig, _prepare, detect_catalog_sources

SCALE = 0.55
MAGZP = 30.0
WORLDS = {"moffat-1.2": (galsim.Moffat(beta=3.0, fwhm=1.2), 1), "kolmogorov-1.7": (galsim.Kolmogorov(fwhm=1.7), 2)}


def _image(psf, seed: int, size: int = 1100, sky: float = 2.0):
    rng = np.random.default_rng(seed)
    img = galsim.ImageF(size, size, scale=SCALE)

    def draw(obj, x, y, n=48):
        stamp = obj.drawImage(scale=SCALE, center=galsim.PositionD(x + 1, y + 1), nx=n, ny=n)
        b = stamp.bounds & img.bounds
        img[b] += stamp[b]

    # bright stars for the PSF model, anywhere
    for _ in range(120):
        x, y = rng.uniform(30, size - 30, 2)
        draw(psf.withFlux(10 ** (-0.4 * (rng.uniform(17, 20) - MAGZP))), x, y, 64)
    # the faint population on a jittered grid (18 px apart: no blends)
    slots = np.array([(x, y) for y in range(40, size - 40, 18) for x in range(40, size - 40, 18)], float)
    pick = rng.permutation(len(slots))[:1500]
    pos = slots[pick] + rng.uniform(-3, 3, (len(pick), 2))
    kind = np.where(np.arange(len(pick)) < 750, "point", "extended")
    mag = np.where(kind == "point", rng.uniform(24.0, 27.6, len(pick)), rng.uniform(23.0, 26.6, len(pick)))
    for (x, y), k, m in zip(pos, kind, mag):
        flux = 10 ** (-0.4 * (m - MAGZP))
        obj = psf.withFlux(flux) if k == "point" else galsim.Convolve(
            galsim.Exponential(half_light_radius=1.0, flux=flux).shear(q=rng.uniform(0.4, 1.0),
                                                                      beta=rng.uniform(0, np.pi) * galsim.radians),
            psf)
        draw(obj, x, y)
    arr = img.array.astype(np.float32) + rng.normal(0, sky, (size, size)).astype(np.float32)
    weight = np.full(arr.shape, 1.0 / sky ** 2, np.float32)
    return arr, weight, pos, kind, mag


def _true_completeness(arr, weight, psf_model, pos, kind, mag):
    """The fraction of the true faint sources that the catalogs' detection finds, per kind (logistic m50, m90)."""
    from scipy.spatial import cKDTree

    band = BandImage("r", arr, weight, MAGZP, psf_model)
    cfg = CatalogConfig()
    sub, var, valid, _, m = _prepare(band, cfg, SCALE)
    src = detect_catalog_sources(sub, np.where(valid, var, 1e30).astype(np.float32), m, pixel_scale=SCALE,
                                 config=cfg)
    fwhm = float(psf_model.fwhm_at(550, 550)[0])
    d, _ = cKDTree(np.column_stack([src.x, src.y])).query(pos)
    found = d < fwhm
    out = {}
    for k in ("point", "extended"):
        sel = kind == k
        edges = np.arange(np.floor(mag[sel].min()), mag[sel].max() + 0.25, 0.25)
        b = np.digitize(mag[sel], edges) - 1
        centres = edges[:-1] + 0.125
        n = np.bincount(b, minlength=len(centres))[:len(centres)]
        r = np.bincount(b, weights=found[sel], minlength=len(centres))[:len(centres)]
        m50, w, p = logistic_fit(centres, n, r)
        out[k] = (m50, m50 + w * np.log(p / 0.9 - 1.0))
    return out


@pytest.fixture(scope="module", params=list(WORLDS))
def world(request):
    from upad.coadd.pipeline import coadd_psf
    from upad.coadd.step import CoaddConfig

    psf, seed = WORLDS[request.param]
    arr, weight, pos, kind, mag = _image(psf, seed)
    res, note, _ = coadd_psf(arr, weight, pixel_scale=SCALE, config=CoaddConfig())
    assert res is not None, note
    truth = _true_completeness(arr, weight, res.model, pos, kind, mag)
    mags = np.arange(23.0, 27.76, 0.25)
    curves = completeness(arr, weight, None, res.model, magzp=MAGZP, pixel_scale=SCALE, mags=mags, per_bin=40,
                          hlr_arcsec=1.0, seed=seed)
    return request.param, truth, curves, arr, weight


def test_completeness_magnitudes_against_the_truth(world):
    name, truth, curves, _, _ = world
    for kind in ("point", "extended"):
        c = curves[kind]
        t50, t90 = truth[kind]
        print(f"{name} {kind}: injection m50 {c.m50:.3f} m90 {c.m90:.3f} (plateau {c.plateau:.3f}, {c.meta['passes']} "
              f"passes) vs the true sources' m50 {t50:.3f} m90 {t90:.3f}")
        assert c.injected.sum() == 40 * len(c.mags) and c.meta["left"] == 0
        assert abs(c.m50 - t50) < 0.1, (kind, c.m50, t50)
        assert abs(c.m90 - t90) < 0.2, (kind, c.m90, t90)
        assert c.plateau > 0.95
        # complete when bright, empty when faint
        f = c.fraction
        assert f[0] > 0.95 and f[-1] < 0.2
    assert curves["extended"].m50 < curves["point"].m50  # extended sources are harder at one magnitude


def test_blank_aperture_depth_against_the_noise(world):
    """5σ in 3″ from blank apertures against the white noise's expectation σ √(Σ wᵢ²) (wᵢ: the fraction of pixel i
    inside the aperture; ≈ 4 % below σ √(π r²) for a 5.5-pixel aperture): on the noise alone, and on the image (whose
    undetected faint sources add a little)."""
    name, _, _, arr, weight = world
    r = 3.0 / SCALE / 2
    rng = np.random.default_rng(0)
    sub = (np.arange(15) + 0.5) / 15 - 0.5
    sw2 = []
    for xc, yc in rng.uniform(0, 1, (200, 2)):
        px = np.arange(-8, 9)
        dx = px[None, :, None, None] + sub[None, None, None, :] - xc
        dy = px[:, None, None, None] + sub[None, None, :, None] - yc
        w = (dx * dx + dy * dy < r * r).mean(axis=(2, 3))
        sw2.append(np.sum(w * w))
    expected = MAGZP - 2.5 * np.log10(5 * 2.0 * np.sqrt(np.mean(sw2)))
    noise = np.random.default_rng(3).normal(0, 2.0, arr.shape).astype(np.float32)
    alone = aperture_depth(noise, weight, None, magzp=MAGZP, pixel_scale=SCALE)
    d = aperture_depth(arr, weight, None, magzp=MAGZP, pixel_scale=SCALE)
    print(f"{name}: 5σ 3\" depth {d['depth']:.3f} (noise alone {alone['depth']:.3f}, expected {expected:.3f})")
    assert alone["n"] > 1000 and d["n"] > 500
    assert abs(alone["depth"] - expected) < 0.03, (alone, expected)
    assert -0.08 < d["depth"] - expected < 0.01, (d, expected)


def test_logistic_fit_recovers_a_known_curve():
    m = np.arange(22, 27, 0.2)
    n = np.full(len(m), 4000)
    f = 0.98 / (1 + np.exp((m - 25.1) / 0.15))
    m50, w, p = logistic_fit(m, n, np.round(n * f))
    assert m50 == pytest.approx(25.1, abs=0.01) and w == pytest.approx(0.15, abs=0.01) and p == pytest.approx(0.98,
                                                                                                              abs=0.005)


def test_extended_stamp_has_unit_flux_and_the_half_light_radius():
    psf = galsim.Gaussian(fwhm=0.5).drawImage(nx=61, ny=61, scale=1.0).array
    s = extended_stamp(psf / psf.sum(), 6.0)
    assert s.sum() == pytest.approx(1.0)
    yy, xx = np.mgrid[:61, :61] - 30
    assert s[np.hypot(xx, yy) < 6.0].sum() == pytest.approx(0.5, abs=0.03)
