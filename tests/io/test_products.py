"""`upad.io.products`: every product kind written and read back (small arrays), and the pick of a file by role."""
from __future__ import annotations

import datetime as dt
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from upad import maskbits as mb
from upad.errors import DataError
from upad.flow.step import ResolvedInput
from upad.io import products as pr
from upad.reduce.psf import PsfModel

SHAPE = (48, 64)


def _wcs_header() -> fits.Header:
    """A TAN-SIP solution as the astrometry writes it (with a noticeable distortion)."""
    h = fits.Header()
    h["WCSAXES"] = 2
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["CRVAL1"], h["CRVAL2"] = 150.1, 2.2
    h["CRPIX1"], h["CRPIX2"] = 32.5, 24.5
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = -1.5e-4, 2e-6, 1e-6, 1.5e-4
    h["RADESYS"] = "ICRS"
    h["A_ORDER"] = h["B_ORDER"] = 2
    h["A_2_0"], h["A_1_1"], h["A_0_2"] = 2e-5, -1e-5, 3e-6
    h["B_2_0"], h["B_1_1"], h["B_0_2"] = -4e-6, 1.2e-5, 2e-5
    return h


def _psf() -> SimpleNamespace:
    rng = np.random.default_rng(4)
    model = PsfModel(beta=2.875, shape=SHAPE, order=2, fwhm_coef=np.array([3.1, 0.1, -0.05, 0.02, 0.01, -0.03]),
                     g1_coef=rng.normal(0, 0.01, 6), g2_coef=rng.normal(0, 0.01, 6),
                     epsf=rng.random((2, 2, 9, 9)).astype(np.float32), oversampling=2, zones=2,
                     epsf_nstars=np.zeros((2, 2), int))
    return SimpleNamespace(model=model, fwhm_arcsec=1.7, fwhm_px=3.1)


def _frame():
    rng = np.random.default_rng(1)
    image = rng.normal(100.0, 5.0, SHAPE).astype(np.float32)
    mask = np.zeros(SHAPE, mb.MASK_DTYPE)
    mask[3, :] |= mb.BAD
    mask[10:12, 20:22] |= mb.SATURATED | mb.BLEED
    mask[:, -1] |= mb.EDGE
    weight = np.where((mask & mb.ZERO_WEIGHT) == 0, 1 / 25.0, 0.0).astype(np.float32)
    header = _wcs_header()
    header["ZP_E"] = (25.1234, "[mag] AB zero point for 1 e-/s")
    header["MAGZP"] = (28.7012, "[mag] AB zero point for 1 e- in EXPTIME")
    header["ZPERR"] = (0.0123, "[mag] zero-point uncertainty")
    header["QCSTATUS"] = ("bad", "good, bad or failed")
    header["QCFLAG"] = (3, "QC bits")
    header["QCREASON"] = "FWHM 2.1 > 2.0; ELLIPTICITY 0.25 > 0.2"
    header["SKYSUB"] = False
    bkg = SimpleNamespace(mesh=rng.normal(100.0, 1.0, (2, 3)).astype(np.float32), mesh_px=24)
    return SimpleNamespace(image=image, mask=mask, weight=weight, header=header, wcs=object(), background=bkg)


def _catalog() -> Table:
    t = Table({"NUMBER": np.arange(1, 6, dtype=np.int32), "X_IMAGE": np.linspace(1, 60, 5),
               "FLUX_AUTO": np.linspace(100, 500, 5), "MAG_AUTO": np.linspace(20, 18, 5)})
    t["X_IMAGE"].unit = "pix"
    t["FLUX_AUTO"].unit = "electron"
    t["MAG_AUTO"].unit = "mag"
    t.meta["APERDIAM"] = "2.0,4.0"
    return t


def test_reduced_frame_round_trip(tmp_path):
    frame, psf = _frame(), _psf()
    raw_header = fits.Header({"OBJECT": "field 7", "FILTER": "rSDSS", "EXPTIME": 40.0})
    red = pr.write_reduced(tmp_path / "x_red.fits", frame, header=raw_header, provenance={"product": "a" * 40})
    cat = pr.write_catalog(tmp_path / "x_cat.fits", _catalog(), header=frame.header)
    psf_path = pr.write_psf(tmp_path / "x_psf.fits", psf)
    meta = {"qc": "bad", "qc_flags": 3, "qc_reasons": ["FWHM 2.1 > 2.0", "ELLIPTICITY 0.25 > 0.2"],
            "qc_values": {"fwhm_arcsec": 2.1}, "file_roles": ["reduced", "catalog", "psf", "preview"]}
    res = ResolvedInput("product", 12, "reduced", (str(red), str(cat), str(psf_path), str(tmp_path / "x.png")),
                        meta)
    got = pr.read_reduced_frame(res)
    np.testing.assert_array_equal(got.image, frame.image)
    np.testing.assert_array_equal(got.weight, frame.weight)
    np.testing.assert_array_equal(got.mask, frame.mask)  # the bits, losslessly
    assert got.mask.dtype == mb.MASK_DTYPE and got.image.dtype.isnative
    assert mb.from_header(fits.getheader(red, "MASK")) == {b.name: b.value for b in mb.BITS}
    # the WCS, SIP distortion included: pixel -> sky as the header it was written from
    from astropy.wcs import WCS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = WCS(_wcs_header())
    pix = np.array([[0, 0], [63, 47], [10.5, 30.25]])
    np.testing.assert_allclose(got.wcs.all_pix2world(pix, 0), want.all_pix2world(pix, 0), rtol=0, atol=1e-10)
    assert got.wcs.sip is not None and got.wcs_solved
    assert (got.zero_point, got.zero_point_error, got.zero_point_e_s) == (28.7012, 0.0123, 25.1234)
    assert got.qc.status == "bad" and got.qc.flag == 3 and got.qc.values == {"fwhm_arcsec": 2.1}
    assert got.qc.reasons == ["FWHM 2.1 > 2.0", "ELLIPTICITY 0.25 > 0.2"]
    np.testing.assert_array_equal(got.background_mesh, frame.background.mesh)
    assert got.mesh_px == 24 and got.header["UPADPROV"] == "a" * 12 and got.primary_header["OBJECT"] == "field 7"
    # the PSF model read back evaluates as the one written
    m, w = got.psf, psf.model
    xs, ys = np.array([0.0, 31.5, 63.0]), np.array([0.0, 20.0, 47.0])
    np.testing.assert_array_equal(m.fwhm_at(xs, ys), w.fwhm_at(xs, ys))
    for a, b in zip(m.shear_at(xs, ys), w.shear_at(xs, ys)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m.epsf_at(50.0, 40.0), w.epsf_at(50.0, 40.0))
    np.testing.assert_allclose(m.render(20.3, 30.6, 15), w.render(20.3, 30.6, 15), rtol=1e-12)
    assert (m.order, m.zones, m.oversampling, m.shape) == (w.order, w.zones, w.oversampling, w.shape)
    # the catalog, lazily
    assert "catalog" not in got.__dict__
    c = got.catalog
    np.testing.assert_array_equal(c["FLUX_AUTO"], _catalog()["FLUX_AUTO"])
    np.testing.assert_array_equal(c["NUMBER"], np.arange(1, 6))
    assert c.meta["MAGZP"] == 28.7012 and str(c["FLUX_AUTO"].unit) == "ct"
    # from a file list (role -> path) without meta: the QC comes from the header
    got2 = pr.read_reduced_frame({"reduced": red, "psf": psf_path}, psf=False)
    assert got2.psf is None and got2.catalog is None
    assert got2.qc.status == "bad" and got2.qc.reasons == ["FWHM 2.1 > 2.0", "ELLIPTICITY 0.25 > 0.2"]
    # the database's file list, relative to the data root
    got3 = pr.read_reduced_frame([{"role": "reduced", "path": "x_red.fits"}], root=tmp_path)
    np.testing.assert_array_equal(got3.image, frame.image)


def test_failed_qc_frame_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    image = rng.normal(50.0, 3.0, SHAPE).astype(np.float32)
    image[0, :5] = np.nan
    mask = np.zeros(SHAPE, mb.MASK_DTYPE)
    mask[0, :5] |= mb.NODATA
    weight = np.where(mask == 0, 0.1, 0.0).astype(np.float32)
    header = _wcs_header()  # the raw frame's nominal WCS (not solved)
    header["BUNIT"] = "electron"
    path = pr.write_isr_only(tmp_path / "f_red.fits", image, mask, weight, header)
    got = pr.read_reduced_frame(path)
    np.testing.assert_array_equal(got.image[1:], image[1:])
    assert (got.image[0, :5] == 0).all()  # non-finite pixels are written as 0, NODATA in the mask
    np.testing.assert_array_equal(got.mask, mask)
    np.testing.assert_array_equal(got.weight, weight)
    assert got.wcs is not None and not got.wcs_solved and got.zero_point is None and got.background_mesh is None
    assert got.qc.status is None and got.psf is None


def test_master_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    image = rng.normal(1.0, 0.01, SHAPE).astype(np.float32)
    err = np.full(SHAPE, 0.002, np.float32)
    ncomb = np.full(SHAPE, 9, np.int16)
    hot = (rng.random(SHAPE) > 0.99).astype(np.uint8)
    ga, gu = dt.datetime(2025, 3, 1, 15, 47, 36), dt.datetime(2025, 3, 2, 15, 47, 36)
    ctx = {"instrument": "mini", "layout": "readout", "read_mode": "MODE_5", "night": "2025-03-01",
           "filter": "rSDSS"}
    header = pr.master_header(step="master_dark", kind="dark", provenance_id="b" * 64, unit_key="mini/x/2025-03-01",
                              context=ctx, n_inputs=10, n_used=9, good_after=ga, good_until=gu, bunit="electron/s",
                              extra={"EXPTIME": (300.0, "total exposure combined (s)")})
    path = tmp_path / "master_dark.fits"
    pr.write_master(path, image, header, [("ERR", err, {"BUNIT": "electron/s"}), ("NCOMB", ncomb, None),
                                          ("HOT", hot, {"COMMENT": "1: hot pixel"})])
    res = ResolvedInput("product", 3, "dark", (str(path), str(tmp_path / "master_dark.png")),
                        {"file_roles": ["master", "qc_plot"]})
    got = pr.read_master_product(res)
    np.testing.assert_array_equal(got.image, image)
    np.testing.assert_array_equal(got.error, err)
    np.testing.assert_array_equal(got.ncomb, ncomb)
    np.testing.assert_array_equal(got.extension("HOT"), hot)
    assert got.extensions == ("ERR", "NCOMB", "HOT")
    assert (got.kind, got.unit, got.good_after, got.good_until) == ("dark", "electron/s", ga, gu)
    h = got.header
    assert h["PROVID"] == "b" * 12 and h["NIGHT"] == "2025-03-01" and h["FILTER"] == "rSDSS"
    assert h["NINPUTS"] == 10 and h["NCOMBINE"] == 9 and h["EXPTIME"] == 300.0 and h["UPADSTEP"] == "master_dark"
    np.testing.assert_array_equal(pr.read_master(res, "ERR"), err)
    with pytest.raises(DataError, match="no BIN extension"):
        got.extension("BIN")


def test_file_of_picks_a_file_by_role():
    res = ResolvedInput("product", 7, "flat", ("/a/master_flat.fits", "/a/master_flat.png", "/a/qc/x.png"),
                        {"file_roles": ["master", "qc_plot", "qc_plot"]})
    assert pr.file_of(res) == "/a/master_flat.fits"
    assert pr.file_of(res, "qc_plot") == "/a/master_flat.png"  # the first of the role
    with pytest.raises(DataError, match=r"input 'flat' \(product 7\) has no 'psf' file among its 3 files"):
        pr.file_of(res, "psf")
    # a product with one file: that file, whatever its role
    assert pr.file_of(ResolvedInput("product", 8, "bias", ("/b/m.fits",), {}), "master") == "/b/m.fits"
    # several files without roles: no guess
    with pytest.raises(DataError):
        pr.file_of(ResolvedInput("product", 9, "bias", ("/b/m.fits", "/b/m.png"), {}))
    assert pr.file_of({"reduced": "/r.fits", "catalog": "/c.fits"}, "catalog") == "/c.fits"
    assert pr.file_of([{"role": "master", "path": "calibration/m.fits"}], root="/root") == "/root/calibration/m.fits"
    assert pr.product_files(res) == {"master": "/a/master_flat.fits", "qc_plot": "/a/master_flat.png"}
