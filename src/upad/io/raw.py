"""Reading raw frames (``.fits`` with the image in the primary HDU, or fpack ``.fits.fz`` with it in HDU 1)."""
from __future__ import annotations

import numpy as np
from astropy.io import fits

from upad.errors import DataError, io_error

_STRUCTURAL = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "PCOUNT", "GCOUNT", "BZERO",
               "BSCALE", "CHECKSUM", "DATASUM", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZNAXIS1", "ZNAXIS2", "ZTILE1",
               "ZTILE2", "ZCMPTYPE", "ZNAME1", "ZVAL1", "ZNAME2", "ZVAL2", "ZQUANTIZ", "ZSIMPLE", "ZEXTEND", ""}


def read_raw(path: str, *, merged_header: bool = False) -> tuple[fits.Header, np.ndarray]:
    """The header and the first 2-D image of a raw file.

    Parameters
    ----------
    path
        The raw file.
    merged_header
        Return the primary header updated with the image extension's keys (fpack files keep the observatory's
        keys in HDU 1); otherwise the primary header alone.

    Raises
    ------
    DataError
        The file cannot be read (truncated, corrupt) or holds no 2-D image.
    TransientError
        An I/O error worth a retry (see :data:`upad.errors.TRANSIENT_ERRNO`).
    """
    try:
        with fits.open(path, memmap=False) as hdul:
            header = hdul[0].header.copy()
            for hdu in hdul:
                if hdu.is_image and hdu.data is not None and hdu.data.ndim == 2:
                    if merged_header and hdu is not hdul[0]:
                        # the cards themselves (not key/value pairs): HIERARCH keys are kept without a warning
                        header.extend([c for c in hdu.header.cards if c.keyword not in _STRUCTURAL], update=True)
                    return header, np.asarray(hdu.data)
    except (OSError, ValueError, TypeError) as exc:
        raise io_error(exc, str(path)) from exc
    raise DataError(f"{path} has no 2-D image")
