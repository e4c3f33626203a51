"""Detection, photometry, PSF and zero point against the truth and against SExtractor."""
from __future__ import annotations

import numpy as np
import pytest

from upad import maskbits as mb
from upad.reduce.validation import (
    compare_with_sextractor,
    photometry_vs_truth,
    psf_vs_truth,
    run_sextractor,
    sextractor_binary,
)

SEXTRACTOR_COLUMNS = ("NUMBER", "X_IMAGE", "Y_IMAGE", "ALPHA_J2000", "DELTA_J2000", "FLUX_AUTO", "FLUXERR_AUTO",
                      "MAG_AUTO", "MAGERR_AUTO", "FLUX_APER", "FLUXERR_APER", "MAG_APER", "MAGERR_APER",
                      "FWHM_IMAGE", "ELLIPTICITY", "CLASS_STAR", "FLAGS", "IMAFLAGS_ISO", "FLUX_RADIUS",
                      "XWIN_IMAGE", "YWIN_IMAGE", "ALPHAWIN_J2000", "DELTAWIN_J2000", "FLUX_APCOR", "MAG_APCOR")


def test_catalog_has_sextractor_columns_and_units(night):
    cat = night.reduced[0].catalog
    for c in SEXTRACTOR_COLUMNS:
        assert c in cat.colnames, c
    assert cat["FLUX_APER"].shape[1] == len(cat.meta["APERDIAM"].split(","))
    assert str(cat["FLUX_AUTO"].unit) == "electron" and str(cat["ALPHA_J2000"].unit) == "deg"
    assert (np.asarray(cat["NUMBER"]) == np.arange(1, len(cat) + 1)).all()
    bad = np.asarray(cat["FLUX_AUTO"]) <= 0
    assert (np.asarray(cat["MAG_AUTO"])[bad] == 99).all()
    assert np.all((np.asarray(cat["CLASS_STAR"]) >= 0) & (np.asarray(cat["CLASS_STAR"]) <= 1))


def test_flux_of_bright_stars_against_the_truth(night):
    ratios = []
    for c, r in zip(night.frames, night.reduced):
        ob = c.objects
        usable = np.asarray(ob["in_image"]) & ~np.asarray(ob["saturated"]) & c.star
        res = photometry_vs_truth(r.catalog, ob["x"], ob["y"], ob["flux_e"], usable=usable)
        ratios.append(res["ratios"])
    rr = np.concatenate(ratios)
    assert len(rr) >= 15
    assert abs(np.median(rr) - 1) < 0.005
    assert 1.4826 * np.median(np.abs(rr - np.median(rr))) <= 0.01


def test_zero_point_against_the_truth(night):
    diffs, errs = [], []
    for c, r in zip(night.frames, night.reduced):
        z = r.zeropoint
        assert z is not None and z.n_stars >= 5
        diffs.append(z.zp_e - c.record["zp_e"])
        errs.append(z.error)
        # each frame within its uncertainty (a mini frame has only ~10-20 reference stars with 0.015 mag errors)
        assert abs(diffs[-1]) < 3 * errs[-1] + 0.005, (diffs[-1], errs[-1])
    assert abs(np.mean(diffs)) < 0.01


def test_psf_fwhm_shape_and_model_against_the_truth(nominal_night):
    night = nominal_night  # NOMINAL WORLD: checks the fitted Moffat beta against the simulated 3 (mixed families: 4.0)
    meds = []
    for c, r in zip(night.frames, night.reduced):
        p = r.psf
        ob = c.objects
        res = psf_vs_truth(p, ob["x"], ob["y"], np.asarray(ob["fwhm_arcsec"]) / r.stats["pixel_scale"])
        assert res["n"] >= 5
        meds.append(res["model_median"])
        assert abs(res["model_median"] - 1) < 0.03, res
        assert 2.5 <= p.beta <= 3.5
        # ellipticity: model shear vs the truth's at the stars
        st = p.stars
        u = st["used"]
        from scipy.spatial import cKDTree

        d, i = cKDTree(np.column_stack([ob["x"], ob["y"]])).query(np.column_stack([st["x"][u], st["y"][u]]))
        g1, g2 = p.model.shear_at(st["x"][u], st["y"][u])
        assert np.sqrt(np.mean((g1 - np.asarray(ob["psf_g1"])[i]) ** 2)) < 0.02
        assert np.sqrt(np.mean((g2 - np.asarray(ob["psf_g2"])[i]) ** 2)) < 0.02
        # the empirical PSF grid: unit flux (per oversampled sample: sum / os^2 = enclosed fraction)
        epsf = p.model.epsf_at(500, 500)
        assert 0.9 < epsf.sum() / p.model.oversampling ** 2 < 1.02
        stamp = p.model.render(500.3, 500.0, 25)
        assert stamp.sum() == pytest.approx(1.0, abs=0.02)
    assert abs(np.median(meds) - 1) < 0.02


def test_class_star_separates_stars_from_galaxies(night):
    from scipy.spatial import cKDTree

    stars, gals = [], []
    for c, r in zip(night.frames, night.reduced):
        cat = r.catalog
        ob = c.objects
        d, i = cKDTree(np.column_stack([cat["XWIN_IMAGE"] - 1, cat["YWIN_IMAGE"] - 1])).query(
            np.column_stack([ob["x"], ob["y"]]))
        snr = np.asarray(cat["FLUX_AUTO"]) / np.asarray(cat["FLUXERR_AUTO"])
        ok = (d < 1.5) & (snr[i] > 30) & np.asarray(ob["in_image"]) & ~np.asarray(ob["saturated"])
        cs = np.asarray(cat["CLASS_STAR"])[i]
        stars.append(cs[ok & c.star])
        gals.append(cs[ok & ~c.star])
    stars, gals = np.concatenate(stars), np.concatenate(gals)
    assert len(stars) > 20 and len(gals) > 5
    assert np.median(stars) > 0.8
    assert np.median(gals) < 0.5


@pytest.mark.skipif(sextractor_binary() is None, reason="SExtractor (source-extractor) is not installed")
def test_catalog_matches_sextractor(night, tmp_path):
    diam = (2.0, 4.0, 8.0)
    for r in night.reduced[:2]:
        scale = r.stats["pixel_scale"]
        sc, _ = run_sextractor(r.image, weight=r.weight, pixel_scale=scale,
                               aper_diameters_px=tuple(d / scale for d in diam), workdir=tmp_path)
        ours = r.catalog.copy(copy_data=False)
        all_d = [float(v) for v in r.catalog.meta["APERDIAM"].split(",")]
        ours["FLUX_APER"] = np.asarray(r.catalog["FLUX_APER"])[:, [all_d.index(d) for d in diam]]
        res = compare_with_sextractor(ours, sc, exclude=(r.mask & np.int16(mb.SATELLITE | mb.NODATA)) != 0)
        assert res["n_sextractor"] > 30
        assert res["found"] >= 0.98, res
        assert res["n_bright"] >= 3
        for k in ("flux_auto_median", "flux_aper0_median", "flux_aper1_median", "flux_aper2_median"):
            assert abs(res[k] - 1) <= 0.01, (k, res)
