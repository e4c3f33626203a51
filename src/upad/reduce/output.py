"""Writing the products of a reduced frame: the reduced FITS file, the catalog, the PSF model.

**Reduced frame** (:func:`write_reduced`), one FITS file:

======  ==========  =====================================================================================
HDU     EXTNAME     content
======  ==========  =====================================================================================
0       (primary)   header only: identity keywords (OBJECT, FILTER, DATE-OBS, EXPTIME …, UPADPROV, QCSTATUS)
1       ``SCI``     reduced image, float32, e- (with the sky unless ``SKYSUB = T``); header: WCS (TAN-SIP),
                    photometric calibration, PSF, statistics, QC and short provenance ids
2       ``MASK``    bit-coded mask (int16, :mod:`upad.maskbits`), RICE_1 tile-compressed (lossless; a few MB
                    for a T80Cam frame), ``MP_<NAME>`` cards give the bit of each flag
3       ``WEIGHT``  inverse-variance weight map, float32, e-^-2, 0 for unusable pixels
4       ``BKGMESH`` the sky background model at the mesh centres (e-), ``MESHPX`` = mesh size: the model is the
                    natural cubic spline through them (:mod:`upad.reduce.background`)
======  ==========  =====================================================================================

This is the layout of the ``reduce`` step's file (``upad.reduce.steps``), extended with the measurements.

Float images are written uncompressed: a lossless float compression barely pays and a quantised one costs
seconds per frame (``docs/reduction.md``). The big arrays are converted to FITS byte order by a parallel compiled
byte swap (numpy's is single-threaded) and written with astropy.

**Catalog** (:func:`write_catalog`): FITS binary table ``CATALOG`` with SExtractor column names and units, the
calibration keywords in its header. **PSF** (:func:`write_psf`): the empirical PSF grids (``EPSF``, a cube per zone)
and the analytic model's coefficients (``MODEL``).

Paths are written as given (the step adapter writes into its staging directory; the flow renames atomically).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from upad import maskbits as mb
from upad.reduce._jit import njit, prange

__all__ = ["write_reduced", "write_catalog", "write_psf", "provenance_cards", "to_big_endian"]


@njit(parallel=True, nogil=True, cache=True)
def _bswap32(src, dst):  # pragma: no cover - compiled
    n = src.shape[0]
    for i in prange(n):
        v = src[i]
        dst[i] = ((v >> 24) & 0xFF) | ((v >> 8) & 0xFF00) | ((v << 8) & 0xFF0000) | ((v << 24) & 0xFF000000)


def to_big_endian(a: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """A big-endian (FITS byte order) version of a native float32 array, byte-swapped in parallel.

    With ``inplace`` the input's memory is reused (the input must not be used afterwards).
    """
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and np.little_endian is False):
        return a
    if a.dtype.itemsize != 4:
        return a.astype(a.dtype.newbyteorder(">"))
    src = a.reshape(-1).view(np.uint32)
    dst = src if inplace else np.empty_like(src)
    _bswap32(src, dst)
    return dst.view(a.dtype.newbyteorder(">")).reshape(a.shape)


def provenance_cards(provenance: Mapping[str, str] | None) -> dict[str, tuple[str, str]]:
    """Header cards for short provenance ids (12 characters; the database keeps the whole record), as the ``reduce``
    step writes them: ``{"product": id}`` → ``UPADPROV``, ``{"raw": id}`` → ``RAWPROV``, any other role (a master
    calibration: ``bias``, ``flat`` …) → ``CAL_<ROLE>`` (4 letters)."""
    out: dict[str, tuple[str, str]] = {}
    for role, pid in (provenance or {}).items():
        if role in ("product", "self", "provenance"):
            key, doc = "UPADPROV", "upad provenance id (short)"
        elif role == "raw":
            key, doc = "RAWPROV", "provenance id of the raw frame"
        else:
            key, doc = f"CAL_{role[:4].upper()}", f"master {role}"
        out[key] = (str(pid)[:12], doc)
    return out


_IDENTITY = ("OBJECT", "DATE-OBS", "EXPTIME", "FILTER", "AIRMASS", "TELESCOP", "INSTRUME", "ORIGIN", "RAWFILE",
             "UPADPROV", "QCSTATUS")
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BZERO", "BSCALE", "XTENSION", "PCOUNT",
               "GCOUNT", "EXTNAME", "BUNIT", "CHECKSUM", "DATASUM"}
_WCS_PREFIXES = ("CTYPE", "CRVAL", "CRPIX", "CD1_", "CD2_", "CDELT", "CUNIT", "PC1_", "PC2_", "CROTA", "A_", "B_",
                 "AP_", "BP_", "PV1_", "PV2_", "WCSAXES", "RADESYS", "RADECSYS", "LONPOLE", "LATPOLE", "EQUINOX")


def _is_wcs(key: str) -> bool:
    return key.upper().startswith(_WCS_PREFIXES)


def _structural_or_wcs(key: str) -> bool:
    return key.upper() in _STRUCTURAL or _is_wcs(key)


def write_reduced(path: str | Path, frame: Any, *, provenance: Mapping[str, str] | None = None,
                  header: Any = None, mask_compression: str = "RICE_1", consume: bool = False) -> Path:
    """Write a reduced frame (:class:`~upad.reduce.pipeline.ReducedFrame`) as one FITS file (see the module
    documentation).

    Parameters
    ----------
    path : str or Path
        Output file (overwritten).
    frame : ReducedFrame
    provenance : mapping, optional
        Short provenance ids by role (``product``, ``raw``, ``bias``, ``flat`` …).
    header : astropy.io.fits.Header, optional
        Extra cards for the primary header (e.g. the raw frame's identity keywords).
    mask_compression : {'RICE_1', 'PLIO_1', 'GZIP_1', 'GZIP_2'}
        Tile compression of the mask (lossless).
    consume : bool
        Byte-swap the image and weight arrays in place (saves 2 x 340 MB on a T80Cam frame; the frame's arrays
        are unusable afterwards).

    Returns
    -------
    Path
    """
    from astropy.io import fits

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hs = fits.Header()
    if header is not None:
        hs.extend([c for c in header.cards if c.keyword and not _structural_or_wcs(c.keyword)])
    if getattr(frame, "wcs", None) is None and header is not None:
        # no astrometric solution: keep the raw (commanded) WCS and say so
        hs.extend([c for c in header.cards if c.keyword and _is_wcs(c.keyword)])
        hs["WCSSOLVE"] = (False, "astrometric calibration failed: nominal WCS")
    else:
        hs["WCSSOLVE"] = (True, "WCS fitted to the reference catalog")
    hs.extend(frame.header, update=True)
    for k, v in provenance_cards(provenance).items():
        hs[k] = v
    h0 = fits.Header()
    for key in _IDENTITY:
        if key in hs:
            h0[key] = (hs[key], hs.comments[key])
    ny, nx = frame.image.shape
    tile = (max(1, min(ny, 262144 // max(nx, 1))), nx)
    hm = fits.Header()
    for k, (bit, doc) in mb.header_cards().items():
        hm[k if len(k) <= 8 else f"HIERARCH {k}"] = (bit, doc)
    hm["COMMENT"] = "bit-coded mask: value = OR of 2**bit of the MP_* flags (docs/mask-bits.md)"
    hw = fits.Header()
    hw["BUNIT"] = "electron-2"
    hw["COMMENT"] = "inverse variance (background + read noise), 0 where the mask makes a pixel unusable"
    bkg = frame.background
    hdus = [fits.PrimaryHDU(header=h0),
            fits.ImageHDU(to_big_endian(frame.image, inplace=consume), header=hs, name="SCI"),
            fits.CompImageHDU(np.asarray(frame.mask, mb.MASK_DTYPE), header=hm, name="MASK",
                              compression_type=mask_compression, tile_shape=tile),
            fits.ImageHDU(to_big_endian(frame.weight, inplace=consume), header=hw, name="WEIGHT")]
    if bkg is not None:
        hb = fits.Header()
        hb["BUNIT"] = "electron"
        hb["MESHPX"] = (bkg.mesh_px, "[pixel] mesh size")
        hb["COMMENT"] = "sky at the mesh centres ((i + 0.5) * MESHPX - 0.5, last mesh centred)"
        hdus.append(fits.ImageHDU(np.asarray(bkg.mesh, np.float32), header=hb, name="BKGMESH"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def write_catalog(path: str | Path, catalog: Any, *, header: Any = None,
                  provenance: Mapping[str, str] | None = None) -> Path:
    """Write a catalog (astropy Table) as a FITS binary table ``CATALOG`` (``header``: calibration keywords)."""
    from astropy.io import fits

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # units as plain TUNITn strings in the FITS standard ('electron' is not one: fluxes are written as 'ct',
    # i.e. counts of electrons, as the comment says)
    units = {name: _fits_unit(catalog[name].unit) for name in catalog.colnames if catalog[name].unit is not None}
    plain = catalog.copy(copy_data=False)
    for name in units:
        plain[name].unit = None
    hdu = fits.BinTableHDU(plain, name="CATALOG")
    for i, name in enumerate(plain.colnames, 1):
        if name in units:
            hdu.header[f"TUNIT{i}"] = units[name]
    if header is not None:
        for key in ("FILTER", "EXPTIME", "MAGZP", "ZP_E", "ZPERR", "FWHM", "ELLIPT", "APCOR", "APCORDIA", "SKYLEVEL",
                    "SKYRMS", "ASTRRMS", "QCSTATUS", "QCFLAG"):
            if key in header:
                hdu.header[key] = (header[key], header.comments[key])
    for k, v in provenance_cards(provenance).items():
        hdu.header[k] = v
    aper = catalog.meta.get("APERDIAM") if hasattr(catalog, "meta") else None
    if aper:
        hdu.header["APERDIAM"] = (aper, "[arcsec] diameters of FLUX_APER")
    hdu.header["COMMENT"] = "fluxes in electrons (TUNIT 'ct'); magnitudes AB; positions 1-based (SExtractor)"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    return path


def _fits_unit(unit: Any) -> str:
    import astropy.units as u

    text = str(unit)
    if text.startswith("electron"):
        text = "ct" + text[len("electron"):]
    try:
        return u.Unit(text).to_string("fits")
    except ValueError:
        return text


def write_psf(path: str | Path, psf: Any, *, provenance: Mapping[str, str] | None = None) -> Path:
    """Write a PSF model (:class:`~upad.reduce.psf.PsfResult`): ``EPSF`` cube (zones x zones x n x n, unit-flux
    grids sampled every 1/OVERSAMP pixel) and ``MODEL`` (polynomial coefficients of FWHM, g1, g2)."""
    from astropy.io import fits
    from astropy.table import Table

    from upad.reduce.psf import _poly_terms

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = psf.model
    he = fits.Header()
    he["OVERSAMP"] = (m.oversampling, "samples per pixel")
    he["ZONES"] = (m.zones, "zones per axis")
    he["PSFBETA"] = (round(m.beta, 4), "Moffat beta")
    he["FWHM"] = (round(psf.fwhm_arcsec, 4), "[arcsec] median FWHM")
    he["FWHMPIX"] = (round(psf.fwhm_px, 4), "[pixel] median FWHM")
    he["IMNAXIS1"] = (m.shape[1], "image width")
    he["IMNAXIS2"] = (m.shape[0], "image height")
    he["COMMENT"] = "EPSF[zy, zx] = pixel-convolved PSF of zone (zy, zx), unit total flux, centre at (n-1)/2"
    for k, v in provenance_cards(provenance).items():
        he[k] = v
    terms = _poly_terms(m.order)
    tab = Table({"P": np.array([p for p, _ in terms], np.int16), "Q": np.array([q for _, q in terms], np.int16),
                 "FWHM_PX": m.fwhm_coef, "G1": m.g1_coef, "G2": m.g2_coef})
    ht = fits.BinTableHDU(tab, name="MODEL")
    ht.header["COMMENT"] = "value(x, y) = sum c * u**P * v**Q, u = (x - cx)/cx, v = (y - cy)/cy, 0-based x, y"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(m.epsf, header=he, name="EPSF"), ht]).writeto(path,
                                                                                              overwrite=True)
    return path
