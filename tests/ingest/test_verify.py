"""File verification: valid variants pass, and every kind of bad input is refused with its category and a reason."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from upad.ingest.errors import CATEGORIES, IngestRejected
from upad.ingest.quicklook import QuickLookConfig, quicklook
from upad.ingest.verify import fits_checksum, read_snapshot, scan_structure, verify_bytes, verify_file

from upad.instruments import get_instrument

from .fitsmaker import RawSpec, make_header, make_pixels, write_raw

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def refused(buf: bytes, filename: str = "m02-20150811T013019-01.fits.fz") -> IngestRejected:
    with pytest.raises(IngestRejected) as err:
        verify_bytes(buf, filename)
    assert err.value.category in CATEGORIES
    assert err.value.reason and err.value.hint, "a refusal says what was wrong and what to do"
    return err.value


@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize("layout", ["readout", "archived"])
@pytest.mark.parametrize("convention", ["OAJ", "T80S"])
def test_valid_variants(tmp_path: Path, compressed: bool, layout: str, convention: str) -> None:
    spec = RawSpec(layout=layout, convention=convention, n_stars=5)
    path = write_raw(tmp_path, spec, compressed=compressed)
    vf = verify_file(path)
    expected = make_pixels(spec)
    assert vf.layout == layout
    assert (vf.naxis2, vf.naxis1) == expected.shape
    assert vf.n_detectors == 1
    assert vf.data[0].dtype == np.uint16 and vf.data[0].dtype.isnative
    np.testing.assert_array_equal(vf.data[0], expected)  # lossless (RICE on integers)
    assert vf.metadata.convention == convention
    assert vf.checksum_verified is None
    assert vf.notes == []
    assert vf.header["INSTRUME"] == "MiniCam"


@pytest.mark.parametrize("compressed", [True, False])
def test_checksums_verified(tmp_path: Path, compressed: bool) -> None:
    path = write_raw(tmp_path, RawSpec(n_stars=0), compressed=compressed, checksum=True)
    assert verify_file(path).checksum_verified is True


def test_fits_checksum_matches_astropy(tmp_path: Path) -> None:
    path = write_raw(tmp_path, RawSpec(n_stars=0), compressed=False, checksum=True)
    buf = path.read_bytes()
    span = scan_structure(buf)[0]
    assert str(fits_checksum(buf[span.data_start:span.padded_end])) == span.card_str("DATASUM")
    assert fits_checksum(buf[span.header_start:span.padded_end]) == 0xFFFFFFFF


def test_structure_of_an_fpack_file(tmp_path: Path) -> None:
    buf = write_raw(tmp_path, RawSpec(n_stars=0)).read_bytes()
    spans = scan_structure(buf)
    assert [s.index for s in spans] == [0, 1]
    assert spans[1].card_str("XTENSION") == "BINTABLE" and spans[1].card_str("ZCMPTYPE") == "RICE_1"
    assert spans[-1].padded_end == len(buf)


# -- the bad-input matrix ----------------------------------------------------------------------------------------------
@pytest.fixture
def good_fz(tmp_path: Path) -> bytes:
    return write_raw(tmp_path / "good", RawSpec(n_stars=5)).read_bytes()


@pytest.fixture
def good_fits(tmp_path: Path) -> bytes:
    return write_raw(tmp_path / "good", RawSpec(n_stars=5), compressed=False).read_bytes()


def test_empty() -> None:
    err = refused(b"")
    assert err.category == "empty"


@pytest.mark.parametrize("content,word", [(b"observing log\nall fine\n" * 20, "text"), (PNG, "PNG"),
                                          (b"\x1f\x8b\x08\x00" + bytes(100), "gzip")])
def test_not_fits(content: bytes, word: str) -> None:
    err = refused(content)
    assert err.category == "not_fits"
    assert word in err.reason


@pytest.mark.parametrize("which", ["fz", "fits"])
def test_truncated_in_half(which: str, good_fz: bytes, good_fits: bytes) -> None:
    buf = good_fz if which == "fz" else good_fits
    err = refused(buf[:len(buf) // 2])
    assert err.category == "truncated"
    assert "missing" in err.reason


def test_truncated_inside_a_header(good_fz: bytes) -> None:
    err = refused(good_fz[:2880 + 1000])
    assert err.category == "truncated"
    assert "header of HDU 1" in err.reason


def test_truncated_on_a_block_boundary(good_fits: bytes) -> None:
    """A cut at a multiple of 2880 bytes is still found (astropy alone would only warn, or not at all)."""
    cut = (len(good_fits) // 2 // 2880) * 2880
    assert refused(good_fits[:cut]).category == "truncated"


def test_corrupt_compressed_data(good_fz: bytes) -> None:
    spans = scan_structure(good_fz)
    heap_middle = spans[1].data_start + spans[1].data_size // 2
    rng = np.random.default_rng(3)
    bad = bytearray(good_fz)
    bad[heap_middle:heap_middle + 20000] = rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()
    err = refused(bytes(bad))
    assert err.category == "corrupt"
    assert "cannot be decoded" in err.reason


def test_corrupt_header(good_fz: bytes) -> None:
    bad = bytearray(good_fz)
    bad[2880 + 80 * 12 + 20] = 0xFF  # a non-ASCII byte in the image header
    err = refused(bytes(bad))
    assert err.category == "corrupt"
    assert "non-ASCII" in err.reason


def test_trailing_garbage(good_fits: bytes) -> None:
    err = refused(good_fits + b"this is not an extension".ljust(2880, b"x"))
    assert err.category == "corrupt"
    assert "after the last HDU" in err.reason


def test_trailing_zero_padding_is_accepted(good_fits: bytes) -> None:
    assert verify_bytes(good_fits + bytes(2880), "m02-20150811T013019-01.fits").layout == "readout"


@pytest.mark.parametrize("compressed", [True, False])
def test_checksum_mismatch(tmp_path: Path, compressed: bool) -> None:
    buf = bytearray(write_raw(tmp_path, RawSpec(n_stars=0), compressed=compressed, checksum=True).read_bytes())
    spans = scan_structure(bytes(buf))
    where = spans[-1].data_start + 100
    buf[where] ^= 0x01  # one bit of one pixel (or of the compressed stream)
    err = refused(bytes(buf))
    assert err.category == "checksum"
    assert "DATASUM" in err.reason


def test_checksum_mismatch_in_header(tmp_path: Path) -> None:
    buf = write_raw(tmp_path, RawSpec(n_stars=0), compressed=False, checksum=True).read_bytes()
    bad = buf.replace(b"OBSERVER= 'pytest  '", b"OBSERVER= 'pytesT  '")
    assert bad != buf
    err = refused(bad)
    assert err.category == "checksum" and "CHECKSUM" in err.reason


@pytest.mark.parametrize("compressed", [True, False])
def test_wrong_shape(tmp_path: Path, compressed: bool) -> None:
    pixels = np.full((1000, 1000), 1000, dtype=np.uint16)
    buf = write_raw(tmp_path, RawSpec(), compressed=compressed, pixels=pixels).read_bytes()
    err = refused(buf)
    assert err.category == "wrong_shape"
    assert "1000 × 1000" in err.reason and "1056 × 1056" in err.reason and "1024 × 1024" in err.reason


@pytest.mark.parametrize("dtype,bitpix", [(np.float32, "-32"), (np.int32, "32"), (np.int16, "16")])
def test_wrong_dtype(tmp_path: Path, dtype, bitpix: str) -> None:
    pixels = np.full((1056, 1056), 1000, dtype=dtype)
    buf = write_raw(tmp_path, RawSpec(), compressed=False, pixels=pixels).read_bytes()
    err = refused(buf)
    assert err.category == "wrong_dtype"
    assert f"BITPIX={bitpix}" in err.reason


def test_wrong_dtype_compressed_float(tmp_path: Path) -> None:
    pixels = np.full((1056, 1056), 1000.5, dtype=np.float32)
    buf = write_raw(tmp_path, RawSpec(), pixels=pixels).read_bytes()
    assert refused(buf).category == "wrong_dtype"


def test_missing_keys(tmp_path: Path) -> None:
    buf = write_raw(tmp_path, RawSpec(drop_keys=("DATE-OBS", "INSTRUME"))).read_bytes()
    err = refused(buf)
    assert err.category == "missing_keys"
    assert "DATE-OBS" in err.reason and "INSTRUME" in err.reason


def test_bad_value(tmp_path: Path) -> None:
    buf = write_raw(tmp_path, RawSpec(extra_cards={"FILTER": "Halpha"})).read_bytes()
    assert refused(buf).category == "bad_value"


def test_unknown_instrument(tmp_path: Path) -> None:
    buf = write_raw(tmp_path, RawSpec(extra_cards={"INSTRUME": "OmegaCAM"})).read_bytes()
    assert refused(buf).category == "unknown_instrument"


def test_no_image(tmp_path: Path) -> None:
    path = tmp_path / "m02-20150811T013019-01.fits.fz"
    fits.HDUList([fits.PrimaryHDU(header=make_header(RawSpec()))]).writeto(path)
    err = refused(path.read_bytes())
    assert err.category == "wrong_shape" and "no 2-D image" in err.reason


def test_unreadable_directory(tmp_path: Path) -> None:
    d = tmp_path / "x.fits"
    d.mkdir()
    with pytest.raises(IngestRejected, match="directory") as err:
        read_snapshot(d)
    assert err.value.category == "unreadable"


def test_unreadable_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "y.fits.fz"
    os.symlink(tmp_path / "gone.fits.fz", link)
    with pytest.raises(IngestRejected, match="does not exist") as err:
        read_snapshot(link)
    assert err.value.category == "unreadable"


def test_unreadable_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "z.fits"
    os.mkfifo(fifo)
    with pytest.raises(IngestRejected, match="not a regular file") as err:
        read_snapshot(fifo)
    assert err.value.category == "unreadable"


def test_header_sections_disagreeing_with_the_description_are_notes(tmp_path: Path) -> None:
    spec = RawSpec(n_stars=0, extra_cards={"HIERARCH OAJ DET OUT1 DATASEC": "[1:512,1:512]"})
    vf = verify_file(write_raw(tmp_path, spec))
    assert any("DATASEC of amplifier 1" in n for n in vf.notes)


# -- a multi-detector camera (a tiny JPCam-like description through UPAD_INSTRUMENT_PATH) ----------------------------
MINIMEF = textwrap.dedent("""
    name = "MiniMEF"
    key = "minimef"
    telescope = "JST250"
    telescope_header = "OAJ-T250"
    origin = "OAJ"
    header_prefix = "OAJ"
    detector_name = "tiny"
    file_prefix = "x01"
    filter_system = "jplus"
    pixel_scale = 0.23
    pixel_size_um = 10.0
    focal_length_mm = 8970.0
    plate_scale = 22.99
    cd_sign_x = -1
    cd_sign_y = 1
    adc_max = 65535
    bzero = 32768
    dark_current = 0.0005
    read_modes = [{ name = "MODE_5", speed = "500 KHz", read_noise_factor = 1.0 }]
    default_read_mode = "MODE_5"
    [site]
    name = "OAJ"
    longitude = -1.0164
    latitude = 40.0417
    height = 1957.0
    timezone = "Europe/Madrid"
    [layout]
    n_amp_x = 2
    n_amp_y = 1
    amp_nx = 48
    amp_ny = 40
    prescan_x = 2
    overscan_x = 4
    overscan_y = 4
    flip_top_y = true
    flip_right_x = true
    layouts = ["readout", "archived"]
    default_layout = "readout"
""") + "".join(textwrap.dedent(f"""
    [[detector]]
    id = {d}
    name = "CCD0{d}"
    x0 = {100 * d}
    y0 = 0
    [[detector.amplifier]]
    id = 1
    gain = 1.0
    read_noise = 4.0
    full_well = 120000.0
    bias_level = 1000.0
    nonlinearity = [0.0, 0.0]
    [[detector.amplifier]]
    id = 2
    gain = 1.0
    read_noise = 4.0
    full_well = 120000.0
    bias_level = 1100.0
    nonlinearity = [0.0, 0.0]
""") for d in (1, 2))


def test_multi_extension_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "inst").mkdir()
    (tmp_path / "inst" / "minimef.toml").write_text(MINIMEF)
    monkeypatch.setenv("UPAD_INSTRUMENT_PATH", str(tmp_path / "inst"))
    spec = RawSpec(instrument="minimef", n_stars=0, sky=300.0)
    primary = fits.PrimaryHDU(header=make_header(spec))
    exts = []
    for det in (1, 2):
        spec.seed = det
        h = fits.Header()
        h["EXTNAME"] = f"CCD0{det}"
        h["DETID"] = det
        exts.append(fits.CompImageHDU(data=make_pixels(spec), header=h, compression_type="RICE_1"))
    path = tmp_path / "x01-20150811T013019-01.fits.fz"
    fits.HDUList([primary, *exts]).writeto(path)
    vf = verify_file(path)
    assert vf.metadata.instrument == "minimef"
    assert vf.n_detectors == 2 and vf.layout == "readout" and (vf.naxis1, vf.naxis2) == (108, 44)
    qc = quicklook(vf.data, get_instrument("minimef"), layout=vf.layout, obs_type="flat-dome", exptime=1.0,
                   config=QuickLookConfig(flat_min_adu=100.0))
    assert qc.bias == pytest.approx([1000.0, 1100.0, 1000.0, 1100.0], abs=1.5)  # detector-major; 80 px each
    assert qc.sky_median == pytest.approx(300.0, rel=0.02) and qc.status == "ok"
    # a file missing one CCD is refused
    fits.HDUList([primary, exts[0]]).writeto(tmp_path / "x01-20150811T013019-02.fits.fz")
    with pytest.raises(IngestRejected, match="2 detector") as err:
        verify_file(tmp_path / "x01-20150811T013019-02.fits.fz")
    assert err.value.category == "wrong_shape"
