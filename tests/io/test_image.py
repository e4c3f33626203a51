"""`upad.io.image.read_image`: native arrays from FITS image extensions, scaled integers included."""
from __future__ import annotations

import errno

import numpy as np
import pytest
from astropy.io import fits

from upad.errors import DataError, MissingInputError, TransientError, io_error
from upad.io.image import read_image


def test_float_and_scaled_integer_images(tmp_path):
    rng = np.random.default_rng(0)
    flt = rng.normal(1, 0.01, (40, 30)).astype(np.float32)
    u16 = rng.integers(0, 65535, (40, 30)).astype(np.uint16)  # stored as int16 with BZERO = 32768
    i16 = rng.integers(-100, 100, (40, 30)).astype(np.int16)
    scaled = fits.ImageHDU(i16.copy(), name="SCALED")
    scaled.scale("int16", bscale=0.5)  # a BSCALE image: values come back as astropy scales them
    path = tmp_path / "m.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(flt, name="SCI"), fits.ImageHDU(u16, name="BPM"),
                  scaled]).writeto(path)
    a = read_image(path, first_image=True)  # the primary HDU is empty: the first image extension
    assert a.dtype == np.float32 and a.dtype.isnative and a.flags.c_contiguous
    np.testing.assert_array_equal(a, flt)
    b = read_image(path, "BPM")
    assert b.dtype == np.uint16 and b.dtype.isnative
    np.testing.assert_array_equal(b, u16)
    np.testing.assert_array_equal(read_image(path, "BPM", dtype=np.float32), u16.astype(np.float32))
    c = read_image(path, "SCALED")
    np.testing.assert_allclose(c, fits.getdata(path, "SCALED"))
    # the result is a private copy: writing to it leaves the file alone
    a[:] = 0
    np.testing.assert_array_equal(fits.getdata(path, "SCI"), flt)


@pytest.mark.filterwarnings("ignore:File may have been truncated")  # astropy's, for the truncated file below
def test_errors(tmp_path):
    with pytest.raises(DataError, match="holds no image data"):
        fits.PrimaryHDU().writeto(tmp_path / "empty.fits")
        read_image(tmp_path / "empty.fits")
    truncated = tmp_path / "t.fits"
    fits.PrimaryHDU(np.ones((200, 200), np.float32)).writeto(truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(DataError):
        read_image(truncated)
    with pytest.raises(MissingInputError, match="does not exist") as missing:
        read_image(tmp_path / "missing.fits")  # ENOENT: the environment's, tried again when the file is there
    assert missing.value.path == str(tmp_path / "missing.fits")


def test_io_errors_worth_a_retry_are_transient():
    assert isinstance(io_error(OSError(errno.EIO, "Input/output error"), "x.fits"), TransientError)
    assert isinstance(io_error(OSError(errno.ESTALE, "Stale file handle"), "x.fits"), TransientError)
    # a missing or unreadable input is the environment's fault (an unmounted archive): it can appear later
    assert isinstance(io_error(OSError(errno.ENOENT, "No such file"), "x.fits"), TransientError)
    assert isinstance(io_error(OSError(errno.EACCES, "Permission denied"), "x.fits"), TransientError)
    assert isinstance(io_error(OSError("truncated: 100 requested and 20 read"), "x.fits"), DataError)
    assert isinstance(io_error(ValueError("bad header"), "x.fits"), DataError)
