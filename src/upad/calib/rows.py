"""Row-strip readers of uncompressed 2-D arrays on disk, for the block-wise combination.

A :class:`RowReader` reads rows ``[r0, r1)`` of an image stored contiguously in a file (an ``.npy`` intermediate
or the data unit of an uncompressed FITS image) with a positioned read. Unlike a memory map it leaves nothing
mapped in the process: the resident memory of a combination of 20 full T80Cam frames stays the size of the strips
being combined, instead of growing with every page of every input touched.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["RowReader"]


class RowReader:
    """Rows of a C-ordered 2-D array at byte ``offset`` of file ``path``.

    Supports ``reader.shape``, ``reader.dtype`` and ``reader[r0:r1]`` (a contiguous row slice), which is all
    :func:`upad.calib.combine.combine_stack` needs.
    """

    def __init__(self, path: str | os.PathLike, *, offset: int, shape: tuple[int, int], dtype: np.dtype) -> None:
        self.path = Path(path)
        self.offset = int(offset)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)

    @classmethod
    def from_npy(cls, path: str | os.PathLike) -> RowReader:
        """A reader of a 2-D ``.npy`` file (as written by ``numpy.save``)."""
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: a C-ordered 2-D array is expected, got shape {shape} (fortran={fortran})")
        return cls(path, offset=offset, shape=shape, dtype=dtype)

    @classmethod
    def from_fits(cls, path: str | os.PathLike, ext: int | str = 0) -> RowReader:
        """A reader of an uncompressed FITS image extension (``BSCALE`` = 1, ``BZERO`` = 0)."""
        from astropy.io import fits

        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            hdu = hdul[ext]
            h = hdu.header
            if h.get("BSCALE", 1) != 1 or h.get("BZERO", 0) != 0 or h.get("NAXIS") != 2:
                raise ValueError(f"{path}[{ext}]: only unscaled 2-D images can be read by rows")
            if isinstance(hdu, fits.CompImageHDU):
                raise ValueError(f"{path}[{ext}] is tile-compressed: read it with astropy's section instead")
            offset = hdu.fileinfo()["datLoc"]
            dtype = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}[h["BITPIX"]]
            shape = (h["NAXIS2"], h["NAXIS1"])
        return cls(path, offset=offset, shape=shape, dtype=np.dtype(dtype))

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("a RowReader only reads contiguous row slices, e.g. reader[100:200]")
        r0, r1, _ = key.indices(self.shape[0])
        n = max(0, r1 - r0)
        row_bytes = self.shape[1] * self.dtype.itemsize
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + r0 * row_bytes)
            data = np.fromfile(fh, dtype=self.dtype, count=n * self.shape[1])
        if data.size != n * self.shape[1]:
            raise OSError(f"{self.path}: truncated (expected {n} rows from row {r0})")
        return data.reshape(n, self.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"RowReader({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"
