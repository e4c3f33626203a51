"""Tile masks (:mod:`upad.catalog.masks`): the tile area from the exposure maps, bright-star halos and spikes,
coadding artefacts; the mangle polygons (read back with pymangle) and the MOC (mocpy) describe the pixel mask."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS

from upad import maskbits as mb
from upad.catalog.masks import (VETO_BITS, TileMaskConfig, mangle_polygons, star_radius_arcsec, tile_mask, tile_moc,
                                write_mangle)

SCALE = 0.55
NY, NX = 500, 640


def _wcs():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 30.0]
    w.wcs.crpix = [NX / 2 + 0.5, NY / 2 + 0.5]
    w.wcs.cdelt = [-SCALE / 3600, SCALE / 3600]
    return w


def _world(seed=2):
    rng = np.random.default_rng(seed)
    exps = []
    for f in range(2):  # two filters, three dithers each: thinner coverage at the edges
        e = np.zeros((NY, NX), np.float32)
        for _ in range(3):
            dx, dy = rng.integers(-40, 40, 2)
            e[max(dy, 0) + 10:NY + min(dy, 0) - 10, max(dx, 0) + 10:NX + min(dx, 0) - 10] += 100.0
        exps.append(e)
    rej = np.zeros((NY, NX), np.int16)
    t = np.arange(100, 500)
    rej[(0.3 * t + 150).astype(int), t] = 1  # a residual trail
    rej[(0.3 * t + 151).astype(int), t] = 1
    cr = rng.integers(0, [NY, NX], (40, 2))
    rej[cr[:, 0], cr[:, 1]] = 1  # isolated rejections (cosmic rays): not artefacts
    w = _wcs()
    ra, dec = w.all_pix2world([200.0, 450.0, 320.0, NX + 20.0], [250.0, 120.0, 380.0, 250.0], 0)
    stars = {"ra": ra, "dec": dec, "mag": np.array([9.5, 13.0, 15.0, 11.0])}
    return exps, [rej, None], stars, w, (t, cr)


@pytest.fixture(scope="module")
def made():
    exps, rej, stars, w, extra = _world()
    cfg = TileMaskConfig()
    return tile_mask(exps, rej, wcs=w, pixel_scale=SCALE, stars=stars, config=cfg), exps, stars, w, cfg, extra


def test_the_tile_area_is_the_exposure_fraction(made):
    m, exps, _, _, cfg, _ = made
    low = np.zeros((NY, NX), bool)
    for e in exps:
        low |= e < 0.5 * np.median(e[e > 0])
    assert np.array_equal((m.image & mb.LOWEXP) != 0, low)
    assert m.area_deg2 == pytest.approx(np.count_nonzero(~low) * (SCALE / 3600) ** 2)


def test_bright_stars_halos_and_spikes(made):
    m, _, stars, w, cfg, _ = made
    assert sorted(m.stars["mag"].tolist()) == [9.5, 11.0, 13.0]  # 15 is too faint; 11 is off the grid, its halo in
    yy, xx = np.mgrid[:NY, :NX]
    for x, y, r in zip(m.stars["x"], m.stars["y"], m.stars["radius_arcsec"] / SCALE):
        d = np.hypot(xx - x, yy - y)
        assert np.all(m.image[d <= r - 0.5] & mb.BRIGHT_STAR)
        # off the spikes (diagonals), just outside the disc: not masked by this star
        ring = (d > r + 1) & (d < r + 3) & (np.abs(np.abs(xx - x) - np.abs(yy - y)) < 2)
        others = [(xo, yo, ro) for xo, yo, ro in zip(m.stars["x"], m.stars["y"], m.stars["radius_arcsec"] / SCALE)
                  if (xo, yo) != (x, y)]
        for xo, yo, ro in others:
            ring &= np.hypot(xx - xo, yy - yo) > 1.6 * ro + 3
        assert ring.any() and not np.any(m.image[ring] & mb.BRIGHT_STAR)
    assert star_radius_arcsec(np.array([cfg.star_mag_limit - 1]), cfg)[0] == pytest.approx(
        cfg.star_radius_arcsec * 10 ** cfg.star_radius_growth)


def test_residual_trails_are_masked_cosmic_rays_are_not(made):
    m, *_, (t, cr) = made
    assert np.all(m.image[(0.3 * t + 150).astype(int), t] & mb.SATELLITE)
    lone = [(y, x) for y, x in cr if abs(y - (0.3 * x + 150)) > 10]
    assert sum(bool(m.image[y, x] & mb.SATELLITE) for y, x in lone) == 0
    assert len(m.artefacts) == 1


def _positions(w, n=20000, seed=4):
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-0.49, NX - 0.51, n), rng.uniform(-0.49, NY - 0.51, n)
    ra, dec = w.all_pix2world(x, y, 0)
    return x, y, ra, dec


def test_mangle_polygons_describe_the_pixel_mask(made, tmp_path):
    import pymangle

    m, _, _, w, cfg, _ = made
    area, veto = mangle_polygons(m, w)
    write_mangle(tmp_path / "area.ply", area)
    write_mangle(tmp_path / "veto.ply", veto)
    a, v = pymangle.Mangle(str(tmp_path / "area.ply")), pymangle.Mangle(str(tmp_path / "veto.ply"))
    x, y, ra, dec = _positions(w)
    good_ply = a.contains(ra, dec) & ~v.contains(ra, dec)
    pix = m.image[np.round(y).astype(int), np.round(x).astype(int)]
    good_pix = (pix & VETO_BITS) == 0
    agree = np.mean(good_ply == good_pix)
    # away from the area's edges (where the polygons follow 64-pixel blocks) they agree but for pixelisation
    inner = (pix & mb.LOWEXP) == 0
    inner_agree = np.mean((good_ply == good_pix)[inner])
    print(f"mangle vs pixel mask: {agree:.4f} of positions agree, {inner_agree:.4f} inside the area")
    assert agree > 0.97 and inner_agree > 0.995
    # the veto areas: the polygons' stated areas against the pixel counts
    star_sr = sum(s for caps, s in veto[:len(m.stars["ra"])])
    assert star_sr > 0


@pytest.mark.parametrize("order", [15, 17])
def test_the_moc_is_the_unmasked_area(made, order):
    """The MOC's cells (6.4" at the default order 15, 1.6" at 17) against the pixel mask: the same area; the same
    positions but for the cells along the vetoes' edges (trails and spikes are a few pixels wide)."""
    import astropy.units as u

    m, _, _, w, cfg, _ = made
    moc = tile_moc(m, w, order=order)
    x, y, ra, dec = _positions(w)
    inside = moc.contains_lonlat(ra * u.deg, dec * u.deg)
    pix = m.image[np.round(y).astype(int), np.round(x).astype(int)]
    agree = np.mean(inside == ((pix & VETO_BITS) == 0))
    area = moc.sky_fraction * 4 * np.pi * (180 / np.pi) ** 2
    print(f"MOC order {order} vs pixel mask: {agree:.4f} agree; MOC area {area:.5f} deg2, pixel mask "
          f"{m.unmasked_deg2:.5f} deg2")
    assert area == pytest.approx(m.unmasked_deg2, rel=0.05)
    assert agree > (0.85 if order == 15 else 0.95)


def test_a_mask_that_covers_everything(made):
    exps, rej, stars, w, _ = _world()
    huge = {"ra": np.array([150.0]), "dec": np.array([30.0]), "mag": np.array([-1.0])}
    m = tile_mask(exps, rej, wcs=w, pixel_scale=SCALE, stars=huge, config=TileMaskConfig())
    assert m.unmasked_deg2 == 0 and m.summary()["masked_fraction"]["BRIGHT_STAR"] == 1.0
    with pytest.raises(ValueError, match="at least one"):
        tile_mask([], [], wcs=w, pixel_scale=SCALE)
