"""Writing FITS files atomically (temporary name in the same folder, then rename)."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_hdulist(path: Path, hdul: fits.HDUList) -> Path:
    """Write ``hdul`` to ``path`` atomically."""
    def w(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            hdul.writeto(tmp, overwrite=True, output_verify="silentfix")
    return _atomic(path, w)


def write_json(path: Path, obj: Any) -> Path:
    def w(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    return _atomic(path, w)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, (tuple, set, frozenset)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def raw_hdulist(data: np.ndarray, header: fits.Header, *, compress: bool) -> fits.HDUList:
    """The HDUs of a raw frame: uint16 data (BITPIX=16, BZERO=32768), RICE_1 tile-compressed when ``compress``."""
    if data.dtype != np.uint16:
        raise TypeError("raw data must be uint16")
    if compress:
        return fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data=data, header=header, compression_type="RICE_1")])
    return fits.HDUList([fits.PrimaryHDU(data=data, header=header)])


def image_hdu(data: np.ndarray, *, compress: bool, name: str | None = None, header: fits.Header | None = None,
              quantize_step: float | None = None) -> fits.ImageHDU | fits.CompImageHDU:
    """An image extension for truth maps, or a plain one when not compressing.

    Integers: RICE_1 (lossless). Floats: GZIP_2 (lossless), or, with ``quantize_step``, RICE_1 quantised to that
    absolute step with a fixed dither seed (deterministic; errors below ``quantize_step / 2``).
    """
    if compress:
        kw: dict = {"compression_type": "RICE_1"}
        if data.dtype.kind == "f":
            if quantize_step:
                kw.update(quantize_level=-abs(quantize_step), quantize_method=2, dither_seed=1)
            else:
                kw = {"compression_type": "GZIP_2"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyUserWarning)
            return fits.CompImageHDU(data=data, header=header, name=name, **kw)
    return fits.ImageHDU(data=data, header=header, name=name)
