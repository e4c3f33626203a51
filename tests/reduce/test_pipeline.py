"""The whole reduction of a frame: products, header, QC, configuration, and bad input."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from upad import maskbits as mb
from upad.config import config_hash
from upad.errors import UpadError
from upad.flow.step import DataError
from upad.reduce.errors import ReductionError
from upad.io.products import write_catalog, write_psf, write_reduced
from upad.reduce.pipeline import ReductionConfig, reduce_frame
from upad.reduce.preview import frame_preview, qc_plot, write_previews
from upad.reduce.qc import QC_BITS, QcConfig, evaluate_qc

from .helpers import reduce_calibrated


def test_good_frames_pass_qc_and_describe_themselves(night):
    for r in night.reduced:
        assert r.qc.status == "good", r.qc.reasons
        assert r.failure is None
        h = r.header
        for key in ("CTYPE1", "CRVAL1", "CD1_1", "A_ORDER", "ZP_E", "MAGZP", "FWHM", "ELLIPT", "SKYLEVEL", "ASTRRMS",
                    "QCSTATUS", "MASKFRAC", "NCOSMIC", "APCOR"):
            assert key in h, key
        assert r.stats["noise_ratio"] == pytest.approx(1.0, abs=0.05)
        assert set(r.timings) >= {"background", "cosmics", "detect", "astrometry", "psf", "photometry"}
        assert (r.weight[(r.mask & np.int16(mb.ZERO_WEIGHT)) != 0] == 0).all()
        assert (r.weight[(r.mask & np.int16(mb.ZERO_WEIGHT)) == 0] > 0).all()
        assert ((r.mask[:4, :] & mb.EDGE) != 0).all()


def test_products_on_disk(night, tmp_path):
    c, r = night.frames[2], night.reduced[2]
    img0, w0, m0 = r.image.copy(), r.weight.copy(), r.mask.copy()
    p = write_reduced(tmp_path / "reduced.fits", r, header=c.header,
                      provenance={"product": "0123456789abcdef", "raw": "fedcba9876543210", "flat": "aaaa"})
    with fits.open(p) as hd:
        assert [h.name for h in hd] == ["PRIMARY", "SCI", "MASK", "WEIGHT", "BKGMESH"]
        assert isinstance(hd["MASK"], fits.CompImageHDU) and hd["MASK"].compression_type == "RICE_1"
        assert np.array_equal(hd["SCI"].data, img0) and np.array_equal(hd["WEIGHT"].data, w0)
        assert np.array_equal(hd["MASK"].data, m0)  # lossless
        assert mb.from_header(hd["MASK"].header) == {b.name: b.value for b in mb.BITS}
        h1 = hd["SCI"].header
        assert h1["UPADPROV"] == "0123456789ab" and h1["RAWPROV"] == "fedcba987654" and h1["CAL_FLAT"] == "aaaa"
        assert h1["WCSSOLVE"] and h1["BUNIT"] == "electron" and h1["SKYSUB"] is False
        assert h1["OBJECT"] == c.header["OBJECT"] and h1["QCSTATUS"] == "good"
        assert hd[0].header["UPADPROV"] == "0123456789ab" and hd[0].header["FILTER"] == "rSDSS"
        # the sky is in the image, as the BKGMESH model says
        sky = np.median(hd["SCI"].data[(m0 & mb.UNUSABLE) == 0])
        assert sky == pytest.approx(c.record["sky_e"], rel=0.02)
        assert np.median(hd["BKGMESH"].data) == pytest.approx(sky, rel=0.01)
        from astropy.wcs import WCS

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy's MJD-OBS 'datfix' notes
            w = WCS(h1)
        assert np.allclose(w.all_pix2world([[100, 200]], 0), r.wcs.all_pix2world([[100, 200]], 0))
    # the mask compresses to almost nothing
    assert p.stat().st_size < 2 * img0.nbytes + 0.2 * m0.nbytes + 100_000
    cat = Table.read(write_catalog(tmp_path / "cat.fits", r.catalog, header=r.header), hdu="CATALOG")
    assert len(cat) == len(r.catalog) and cat.meta["MAGZP"] == pytest.approx(r.zeropoint.magzp, abs=1e-4)
    with fits.open(write_psf(tmp_path / "psf.fits", r.psf)) as hd:
        assert hd["EPSF"].data.shape[:2] == (r.psf.model.zones, r.psf.model.zones)
        assert len(hd["MODEL"].data) == len(r.psf.model.fwhm_coef)
    paths = write_previews(r, tmp_path / "p.png", tmp_path / "qc.png", refcat=night.refcat)
    from PIL import Image

    assert Image.open(paths[0]).size == (1024, 1024)
    assert Image.open(paths[1]).mode == "RGB"
    assert frame_preview(r.image, max_size=256).shape == (256, 256)
    assert qc_plot(r).ndim == 3


def test_bad_input_raises_a_clear_reason(night):
    c = night.frames[0]
    kw = dict(wcs_guess=c.header, refcat=night.refcat, filter_name="rSDSS", exptime=40.0, read_noise=4.0)
    for img in (np.full((256, 256), np.nan, np.float32), np.zeros((256, 256), np.float32),
                np.full((256, 256), 7.0, np.float32), np.zeros((10,), np.float32)):
        with pytest.raises(ReductionError) as exc:
            reduce_frame(img, **kw)
        assert exc.value.reason == "no_data" and isinstance(exc.value, DataError)
        assert "no_data" in str(exc.value)
    with pytest.raises(ReductionError) as exc:
        reduce_frame(c.image.copy(), bpm=np.zeros((3, 3), bool), **kw)
    assert exc.value.reason == "bad_input"


def test_partly_bad_frame_is_reduced_with_nodata(night):
    c = night.frames[0]
    img = c.image.copy()
    img[:100, :] = np.nan  # a readout glitch
    r = reduce_frame(
        img, wcs_guess=c.header, refcat=night.refcat, filter_name="rSDSS", exptime=40.0, read_noise=c.read_noise,
        amp_regions=c.amp_regions, flat=c.flat, dark_e=c.dark_e, saturated=c.saturated)
    assert ((r.mask[:100] & mb.NODATA) != 0).all() and (r.weight[:100] == 0).all()
    assert np.isfinite(r.image).all()
    assert r.qc.status == "bad" and r.qc.flag & QC_BITS["MASKED"]
    assert r.zeropoint is not None


def test_frame_without_stars_fails_qc_with_its_reason(night):
    c = night.frames[0]
    rng = np.random.default_rng(11)
    cloudy = (40.0 + rng.normal(0, 7.0, c.image.shape)).astype(np.float32)  # sky only: clouds or a closed dome
    r = reduce_frame(cloudy, wcs_guess=c.header, refcat=night.refcat, filter_name="rSDSS", exptime=40.0,
                     read_noise=4.0)
    assert r.qc.status == "failed" and r.qc.flag & QC_BITS["FAILED"]
    assert r.failure.reason in ("no_sources", "astrometry_failed", "too_few_stars")
    assert r.qc.reasons and r.header["QCSTATUS"] == "failed"
    assert r.image.shape == c.image.shape and r.weight is not None  # still writable
    with pytest.raises(ReductionError):
        reduce_frame(cloudy.copy(), wcs_guess=c.header, refcat=night.refcat, filter_name="rSDSS", exptime=40.0,
                     read_noise=4.0, strict=True)


def test_failed_astrometry_keeps_the_frame_and_says_why(night, tmp_path):
    c = night.frames[1]
    far = night.refcat.copy()
    far["dec"] = np.asarray(far["dec"]) + 1.0  # the reference catalog of another field
    r = reduce_calibrated(c, far)
    assert r.qc.status == "failed" and r.failure.reason in ("astrometry_failed", "no_reference")
    assert r.wcs is None and r.catalog is not None and r.cosmics.n_pixels > 0
    p = write_reduced(tmp_path / "r.fits", r, header=c.header)
    with fits.open(p) as hd:
        assert hd["SCI"].header["WCSSOLVE"] is False and "CRVAL1" in hd["SCI"].header
        assert hd["SCI"].header["QCFLAG"] & QC_BITS["FAILED"]


def test_header_without_wcs(night):
    c = night.frames[0]
    hdr = c.header.copy()
    for k in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CD1_1", "CD1_2", "CD2_1", "CD2_2", "CRPIX1", "CRPIX2"):
        del hdr[k]
    r = reduce_frame(c.image.copy(), wcs_guess=hdr, refcat=night.refcat, filter_name="rSDSS", exptime=40.0,
                     read_noise=c.read_noise, amp_regions=c.amp_regions, pixel_scale=0.55)
    assert r.qc.status == "failed" and r.failure.reason == "astrometry_failed" and r.catalog is not None


def test_missing_reference_magnitudes(night):
    c = night.frames[0]
    ref = night.refcat.copy()
    ref.remove_column("mag_rSDSS")
    # a plain Gaia extract: calibrated through the G/BP/RP transformation (upad.reduce.photcal)
    r = reduce_calibrated(c, ref)
    assert r.failure is None and r.zeropoint.source == "gaia"
    assert abs(r.zeropoint.zp_e - c.record["zp_e"]) < 0.03
    # no photometry at all: a failure without a nominal zero point, a warning with one
    ref.remove_columns(["g", "bp", "rp"])
    r = reduce_calibrated(c, ref)
    assert r.failure.reason == "no_reference" and r.astrometry is not None and r.psf is not None
    r = reduce_calibrated(c, ref, nominal_zp_e=c.record["zp_e"])
    assert r.failure is None and r.zeropoint.source == "nominal" and r.qc.status == "bad"


def test_qc_thresholds():
    q = evaluate_qc(fwhm_arcsec=2.4, ellipticity=0.05, sky_mag_arcsec2=16.0, zp_e=22.0, nominal_zp_e=22.8,
                    astrometric_rms_arcsec=0.05, n_matched=5, masked_fraction=0.01)
    assert q.status == "bad"
    assert q.flag == QC_BITS["FWHM"] | QC_BITS["SKY"] | QC_BITS["TRANSPARENCY"] | QC_BITS["NSTARS"]
    assert len(q.reasons) == 4 and any("fwhm 2.40" in s for s in q.reasons)
    assert evaluate_qc(fwhm_arcsec=1.0).status == "good"
    loose = QcConfig(max_fwhm_arcsec=3.0)
    assert evaluate_qc(fwhm_arcsec=2.4, config=loose).ok
    f = evaluate_qc(failure=("no_sources", "nothing detected"))
    assert f.status == "failed" and f.failure == "no_sources" and f.flag == QC_BITS["FAILED"]


def test_configuration_is_declared_once_and_overridable():
    assert ReductionConfig().keep_sky
    cfg = ReductionConfig.from_mapping({"edge_px": 8, "cosmics": {"sigclip": 5.0}, "qc": {"max_fwhm_arcsec": 1.8}})
    assert cfg.edge_px == 8 and cfg.cosmics.sigclip == 5.0 and cfg.qc.max_fwhm_arcsec == 1.8
    assert cfg.cosmics.objlim == ReductionConfig().cosmics.objlim
    assert cfg.hash() != ReductionConfig().hash() and ReductionConfig().hash() == ReductionConfig().hash()
    assert config_hash(cfg.critical()) == cfg.hash()
    assert cfg.critical()["cosmics"]["sigclip"] == 5.0
    with pytest.raises(UpadError, match="unknown parameter"):
        ReductionConfig.from_mapping({"cosmics": {"nope": 1}})
    with pytest.raises(UpadError, match="bounds"):
        ReductionConfig.from_mapping({"cosmics": {"sigclip": -1.0}})
