"""The products' file formats, in one place: a writer and a reader for every kind (see ``docs/products.md``).

=================  =====================================  ==================================================
kind               writer                                 reader
=================  =====================================  ==================================================
reduced frame      :func:`write_reduced` (failed QC:      :func:`read_reduced_frame` → :class:`ReducedFrameProduct`
                   :func:`write_isr_only`)
catalog            :func:`write_catalog`                  :func:`read_catalog` → astropy Table
PSF model          :func:`write_psf`                      :func:`read_psf` → :class:`~upad.reduce.psf.PsfModel`
master             :func:`master_header`,                 :func:`read_master_product` → :class:`MasterProduct`;
(bias, dark, …)    :func:`write_master`                   :func:`read_master` (one image extension)
night summary      :func:`write_night_summary`            :func:`read_night_summary` →
                                                          :class:`~upad.reduce.nightqc.NightSummary`
=================  =====================================  ==================================================

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

A frame that could not be characterised (failed QC) keeps its instrumentally corrected image in the same first
four HDUs (:func:`write_isr_only`: no ``BKGMESH``, the raw frame's WCS, no photometric calibration).

Float images are written uncompressed: a lossless float compression barely pays and a quantised one costs
seconds per frame (``docs/reduction.md``). The big arrays are converted to FITS byte order by a parallel compiled
byte swap (numpy's is single-threaded) and written with astropy.

**Catalog** (:func:`write_catalog`): FITS binary table ``CATALOG`` with SExtractor column names and units, the
calibration keywords in its header. **PSF** (:func:`write_psf`): the empirical PSF grids (``EPSF``, a cube per zone)
and the analytic model's coefficients (``MODEL``). **Masters** (:func:`write_master`): the image in the primary HDU
with the validity and provenance cards of :func:`master_header`, then ``ERR``, ``NCOMB`` and the kind's own
extensions (``HOT``, ``BIN``, ``DATA``).

Readers take a product as its file list — a mapping ``role → path``, the database's ``[{"role", "path"}, …]``
(with ``root``), or a worker's :class:`~upad.flow.step.ResolvedInput` (``.paths`` with ``.meta["file_roles"]``) —
or the path of its main file; :func:`file_of` picks a file by role. Paths are written as given (the step adapters
write into their staging directory; the flow renames atomically). Nothing here touches a database.
"""
from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.io import fits

from upad import maskbits as mb
from upad.errors import DataError, io_error
from upad.io.image import read_image

if TYPE_CHECKING:  # pragma: no cover
    from astropy.table import Table
    from astropy.wcs import WCS

    from upad.reduce.psf import PsfModel

try:  # pragma: no cover - exercised where numba is installed
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

__all__ = [
    "MasterProduct",
    "QcSummary",
    "ReducedFrameProduct",
    "file_of",
    "master_header",
    "product_files",
    "provenance_cards",
    "read_catalog",
    "read_master",
    "read_master_product",
    "read_psf",
    "read_night_summary",
    "read_reduced_frame",
    "read_signature",
    "to_big_endian",
    "write_catalog",
    "write_isr_only",
    "write_master",
    "write_night_summary",
    "write_psf",
    "write_reduced",
    "write_signature",
]


# ------------------------------------------------------------------------------------------------------ file lists
def _pairs(src: Any, root: str | PathLike | None = None) -> list[tuple[str | None, str]]:
    """``(role or None, path)`` of every file of a product, in its order."""
    if isinstance(src, (str, PathLike)):
        pairs: list[tuple[str | None, str]] = [(None, str(src))]
    elif hasattr(src, "paths") and hasattr(src, "meta"):  # a ResolvedInput
        roles = list((src.meta or {}).get("file_roles") or [])
        paths = [str(p) for p in src.paths]
        pairs = list(zip(roles, paths)) if len(roles) == len(paths) else [(None, p) for p in paths]
    elif isinstance(src, Mapping):
        pairs = [(str(r), str(p)) for r, p in src.items()]
    elif isinstance(src, Iterable):  # the database's Product.files: [{"role": ..., "path": ...}, ...], or paths
        pairs = [(None, str(f)) if isinstance(f, (str, PathLike)) else (f.get("role"), str(f["path"])) for f in src]
    else:
        raise TypeError(f"not a product's files: {src!r}")
    if root is not None:
        pairs = [(r, str(Path(root) / p)) for r, p in pairs]
    return pairs


def _describe(src: Any) -> str:
    if hasattr(src, "id") and hasattr(src, "role"):
        return f"input {src.role!r} (product {src.id})"
    return "the product"


def file_of(src: Any, role: str = "master", *, root: str | PathLike | None = None) -> str:
    """The file of ``role`` of a product (the first one when several files have the role).

    Parameters
    ----------
    src : ResolvedInput, mapping role → path, list of ``{"role", "path"}``, or a path
        The product (see the module documentation).
    role : str
        ``master``, ``reduced``, ``catalog``, ``psf``, ``qc_plot`` …
    root : path, optional
        Directory that relative paths are relative to (the data root for the database's file lists).

    Raises
    ------
    DataError
        No file has the role and the product has several files (a product with a single file gives that file).
    """
    pairs = _pairs(src, root)
    for r, p in pairs:
        if r == role:
            return p
    if len(pairs) == 1:
        return pairs[0][1]
    roles = [r for r, _ in pairs]
    raise DataError(f"{_describe(src)} has no {role!r} file among its {len(pairs)} files (roles {roles})")


def product_files(src: Any, *, root: str | PathLike | None = None) -> dict[str, str]:
    """``role → path`` of a product's files (the first file of each role; files without a role are left out)."""
    out: dict[str, str] = {}
    for r, p in _pairs(src, root):
        if r is not None:
            out.setdefault(r, p)
    return out


def _meta_of(src: Any) -> dict[str, Any]:
    return dict(getattr(src, "meta", None) or {}) if hasattr(src, "paths") else {}


# ------------------------------------------------------------------------------------------------------ header cards
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


def _mask_header() -> fits.Header:
    hm = fits.Header()
    for k, (bit, doc) in mb.header_cards().items():
        hm[k if len(k) <= 8 else f"HIERARCH {k}"] = (bit, doc)
    return hm


# ------------------------------------------------------------------------------------------------------ byte order
if HAVE_NUMBA:

    @njit(parallel=True, nogil=True, cache=True)
    def _bswap32(src, dst):  # pragma: no cover - compiled
        n = src.shape[0]
        for i in prange(n):
            v = src[i]
            dst[i] = ((v >> 24) & 0xFF) | ((v >> 8) & 0xFF00) | ((v << 8) & 0xFF0000) | ((v << 24) & 0xFF000000)

else:  # pragma: no cover - without numba: numpy's byte swap (the same bytes)

    def _bswap32(src, dst):
        np.copyto(dst, src.byteswap())


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


# ------------------------------------------------------------------------------------------------------ reduced frame
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
    hm = _mask_header()
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


def write_isr_only(path: str | Path, image: np.ndarray, mask: np.ndarray, weight: np.ndarray,
                   header: fits.Header, *, mask_compression: str = "RICE_1") -> Path:
    """Write the instrumentally corrected frame of a frame that failed QC: ``SCI`` (non-finite pixels → 0, the
    ``NODATA`` bit says where), ``MASK``, ``WEIGHT``, after an empty primary HDU (with checksums)."""
    path = Path(path)
    finite = np.isfinite(image)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.where(finite, image, 0).astype(np.float32), header=header,
                                                   name="SCI"),
                  fits.CompImageHDU(mask, header=_mask_header(), name="MASK", compression_type=mask_compression),
                  fits.ImageHDU(weight, name="WEIGHT")]).writeto(path, checksum=True)
    return path


@dataclass
class QcSummary:
    """The QC of a reduced frame: ``status`` (``good``, ``bad``, ``failed``), ``flag`` (``QCFLAG`` bits,
    ``docs/reduction.md``), ``reasons`` and the measured ``values`` (from the product's meta when known)."""

    status: str | None
    flag: int | None
    reasons: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReducedFrameProduct:
    """A reduced frame read back (:func:`read_reduced_frame`).

    Attributes
    ----------
    path : str
        The reduced FITS file.
    image : ndarray
        ``SCI``, float32, e- (the sky kept unless ``header['SKYSUB']``).
    mask : ndarray
        ``MASK``, int16 bits of :mod:`upad.maskbits`.
    weight : ndarray
        ``WEIGHT``, inverse variance (e-^-2), 0 for unusable pixels.
    header : astropy.io.fits.Header
        The ``SCI`` header (WCS, calibration, PSF, statistics, QC, provenance).
    primary_header : astropy.io.fits.Header
    wcs : astropy.wcs.WCS or None
        The ``SCI`` header's WCS (TAN-SIP); with ``wcs_solved`` False it is the raw frame's nominal one.
    wcs_solved : bool
    zero_point, zero_point_error : float or None
        ``MAGZP`` (AB magnitude of 1 e- in the exposure: the image's own unit) and ``ZPERR``; ``zero_point_e_s``:
        ``ZP_E`` (1 e-/s). ``None`` when the frame has no photometric calibration.
    qc : QcSummary
    psf : PsfModel or None
        The PSF model of the ``psf`` file, when the product has one.
    background_mesh : ndarray or None
        ``BKGMESH`` (e-), mesh of ``mesh_px`` pixels.
    files : dict
        ``role → path`` of the product's files.
    meta : dict
        The product's meta (from a ResolvedInput, or given).
    catalog : astropy.table.Table or None
        The ``catalog`` file, read on first access.
    """

    path: str
    image: np.ndarray
    mask: np.ndarray
    weight: np.ndarray | None
    header: fits.Header
    primary_header: fits.Header
    wcs: WCS | None
    wcs_solved: bool
    zero_point: float | None
    zero_point_error: float | None
    zero_point_e_s: float | None
    qc: QcSummary
    psf: PsfModel | None = None
    background_mesh: np.ndarray | None = None
    mesh_px: int | None = None
    files: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def catalog(self) -> Table | None:
        p = self.files.get("catalog")
        return read_catalog(p) if p else None


def _header_wcs(header: fits.Header) -> WCS | None:
    if "CTYPE1" not in header:
        return None
    from astropy.wcs import WCS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's 'datfix' notes on MJD-OBS / DATE-OBS
        return WCS(header)


def _card(header: Mapping[str, Any], key: str) -> Any:
    v = header.get(key)
    return None if v is None or (isinstance(v, float) and not np.isfinite(v)) else v


def read_reduced_frame(src: Any, *, root: str | PathLike | None = None, meta: Mapping[str, Any] | None = None,
                       psf: bool = True) -> ReducedFrameProduct:
    """Read a reduced frame: image, mask, weight, WCS, zero point, QC, PSF model (and the catalog, lazily).

    Parameters
    ----------
    src : ResolvedInput, mapping role → path, list of ``{"role", "path"}``, or the reduced FITS path
        The ``reduce`` step's product (roles ``reduced``, ``catalog``, ``psf`` …).
    root : path, optional
        Directory relative paths are relative to.
    meta : mapping, optional
        The product's meta (QC values and reasons), when ``src`` is not a ResolvedInput (which carries it).
    psf : bool
        Read the PSF model when the product has one.

    Raises
    ------
    DataError
        A file cannot be read, or the product has no reduced image.
    """
    files = product_files(src, root=root)
    path = file_of(src, "reduced", root=root)
    files.setdefault("reduced", path)
    info = {**_meta_of(src), **dict(meta or {})}
    try:
        with fits.open(path) as hdul:
            names = [h.name for h in hdul]
            h0 = hdul[0].header.copy()
            h1 = hdul["SCI"].header.copy()
            mesh_px = hdul["BKGMESH"].header.get("MESHPX") if "BKGMESH" in names else None
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise io_error(exc, path) from exc
    image = read_image(path, "SCI")
    mask = read_image(path, "MASK")
    weight = read_image(path, "WEIGHT") if "WEIGHT" in names else None
    mesh = read_image(path, "BKGMESH") if "BKGMESH" in names else None
    reasons = info.get("qc_reasons")
    if reasons is None:
        reasons = [r.strip() for r in str(h1.get("QCREASON", "")).split(";") if r.strip()]
    flag = info.get("qc_flags", h1.get("QCFLAG"))
    qc = QcSummary(status=info.get("qc", h1.get("QCSTATUS")), flag=None if flag is None else int(flag),
                   reasons=list(reasons), values=dict(info.get("qc_values") or {}))
    return ReducedFrameProduct(
        path=path, image=image, mask=mask, weight=weight, header=h1, primary_header=h0, wcs=_header_wcs(h1),
        wcs_solved=bool(h1.get("WCSSOLVE", False)), zero_point=_card(h1, "MAGZP"),
        zero_point_error=_card(h1, "ZPERR"), zero_point_e_s=_card(h1, "ZP_E"), qc=qc,
        psf=read_psf(files["psf"]) if psf and "psf" in files else None, background_mesh=mesh,
        mesh_px=None if mesh_px is None else int(mesh_px), files=files, meta=info)


# ------------------------------------------------------------------------------------------------------ night summary
def write_night_summary(path: str | Path, summary: Any, *, provenance: str | None = None) -> Path:
    """Write a :class:`~upad.reduce.nightqc.NightSummary`: FITS table ``NIGHTQC`` (one row per frame, units in the
    columns) whose header has the night and, per filter ``F``, ``HIERARCH F NFRAMES / OKFRAC / FWHM / ZP / ZPSCAT /
    SKY`` cards."""
    from astropy.table import Table

    from upad.reduce.nightqc import COLUMNS

    table = Table({name: summary.columns[name] for name, _, _ in COLUMNS},
                  units={name: unit for name, unit, _ in COLUMNS if unit})
    hdu = fits.table_to_hdu(table)
    hdu.name = "NIGHTQC"
    hdu.header["NIGHT"] = (summary.night, "observing night")
    if provenance:
        hdu.header["UPADPROV"] = (provenance, "short provenance id")
    keys = {"n_frames": "NFRAMES", "ok_fraction": "OKFRAC", "fwhm_median_arcsec": "FWHM", "zp_median": "ZP",
            "zp_scatter": "ZPSCAT", "sky_median": "SKY"}
    for filt, stats in summary.filters.items():
        for key, card in keys.items():
            value = stats.get(key)
            hdu.header[f"HIERARCH {filt} {card}"] = value if value is not None else "UNDEF"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True, checksum=True)
    return Path(path)


def read_night_summary(src: Any, *, root: str | PathLike | None = None) -> Any:
    """Read what :func:`write_night_summary` wrote (a product's file list or the file's path)."""
    from upad.reduce.nightqc import COLUMNS, NightSummary

    path = file_of(src, "summary", root=root)
    try:
        with fits.open(path) as hdul:
            hdu = hdul["NIGHTQC"]
            data, header = hdu.data, hdu.header
            columns = {name: np.asarray(data[name]).astype(dtype if not dtype.startswith("U") else str)
                       for name, _, dtype in COLUMNS}
            filters: dict[str, dict[str, Any]] = {}
            keys = {"NFRAMES": "n_frames", "OKFRAC": "ok_fraction", "FWHM": "fwhm_median_arcsec", "ZP": "zp_median",
                    "ZPSCAT": "zp_scatter", "SKY": "sky_median"}
            for card in header:
                parts = card.split()
                if len(parts) == 2 and parts[1] in keys:
                    value = header[card]
                    filters.setdefault(parts[0], {})[keys[parts[1]]] = None if value == "UNDEF" else value
            return NightSummary(str(header.get("NIGHT", "")), columns, filters)
    except (OSError, KeyError) as exc:
        raise DataError(f"{path} is not a night summary: {exc}") from exc


# ------------------------------------------------------------------------------------------------------ star flat
def write_star_flat(path: str | Path, star_flat: Any, *, exposures: list[str], cells: int = 32,
                    provenance: str | None = None) -> Path:
    """Write a :class:`~upad.reduce.starflat.StarFlat`: primary ``STARFLAT`` (the map ``S`` in mag on ``cells`` x
    ``cells`` cells, the coefficients and QC figures in the header), image ``RESPONSE`` (mean 1: divide a frame by
    it) and table ``EXPOSURES`` (``exposure``, ``zero_point``; ``exposures`` names them in the fit's order)."""
    from astropy.table import Table

    sf = star_flat
    h = fits.Header()
    h["EXTNAME"] = "STARFLAT"
    h["BUNIT"] = "mag"
    h["SFORDER"] = (sf.order, "Legendre total degree of the star flat")
    for k, c in enumerate(sf.coef):
        h[f"SFCOEF{k}"] = (float(c), "[mag] coefficient (upad.reduce.starflat basis)")
    for k in range(len(sf.coef)):
        for j in range(k, len(sf.coef)):
            h[f"HIERARCH SFCOV {k} {j}"] = float(sf.cov[k, j])
    h["SFNAXIS1"], h["SFNAXIS2"] = (int(sf.shape[1]), "detector x size"), (int(sf.shape[0]), "detector y size")
    h["SFRMS"] = (round(float(sf.rms_mag), 6), "[mag] rms of the star flat")
    h["SFERR"] = (round(float(sf.error_mag), 6), "[mag] rms uncertainty of the map")
    h["SFPTP"] = (round(float(sf.ptp_mag), 6), "[mag] peak to valley")
    h["SFNSTAR"] = (int(sf.n_stars), "stars seen in two exposures or more")
    h["SFNOBS"] = (int(sf.n_obs), "their observations used")
    h["SFNREJ"] = (int(sf.n_rejected), "observations rejected")
    h["SFRMSOBS"] = (round(float(sf.rms_obs), 6), "[mag] rms of the kept observations")
    h["SFNREF"] = (int(sf.n_reference), "reference mags used (0: no gradient)")
    h["SFCONSTR"] = (bool(sf.constrained), "map constrained by the dithers")
    h["CELLX"] = (float(sf.shape[1] / cells), "[pixel] cell size along x")
    h["CELLY"] = (float(sf.shape[0] / cells), "[pixel] cell size along y")
    for k, note in enumerate(sf.notes):
        h[f"SFNOTE{k}"] = note.encode("ascii", "replace").decode()  # long strings: CONTINUE cards
    if provenance:
        h["UPADPROV"] = (provenance, "short provenance id")
    prim = fits.PrimaryHDU(sf.grid(cells)[2].astype(np.float32), header=h)
    resp = fits.ImageHDU(sf.response(cells).astype(np.float32), name="RESPONSE")
    t = Table({"exposure": np.array(list(exposures), dtype=str), "zero_point": np.asarray(sf.zero_points, float)})
    t["zero_point"].unit = "mag"
    fits.HDUList([prim, resp, fits.BinTableHDU(t, name="EXPOSURES")]).writeto(path, overwrite=True, checksum=True)
    return Path(path)


def read_star_flat(src: Any, *, root: str | PathLike | None = None) -> Any:
    """Read what :func:`write_star_flat` wrote: a :class:`~upad.reduce.starflat.StarFlat` (``mag_at``, ``grid``,
    ``response``, ``exposures``)."""
    from upad.reduce.starflat import StarFlat

    path = file_of(src, "star_flat", root=root)
    try:
        with fits.open(path) as hdul:
            h = hdul[0].header
            n = sum(1 for k in h if k.startswith("SFCOEF"))
            coef = np.array([h[f"SFCOEF{k}"] for k in range(n)], float)
            cov = np.zeros((n, n))
            for k in range(n):
                for j in range(k, n):
                    cov[k, j] = cov[j, k] = float(h.get(f"HIERARCH SFCOV {k} {j}", 0.0))
            tab = hdul["EXPOSURES"].data
            sf = StarFlat(coef=coef, cov=cov, order=int(h["SFORDER"]), shape=(int(h["SFNAXIS2"]), int(h["SFNAXIS1"])),
                          zero_points=np.asarray(tab["zero_point"], float), n_stars=int(h["SFNSTAR"]),
                          n_obs=int(h.get("SFNOBS", 0)), n_rejected=int(h.get("SFNREJ", 0)),
                          rms_obs=float(h.get("SFRMSOBS", np.nan)), rms_mag=float(h["SFRMS"]),
                          error_mag=float(h["SFERR"]), ptp_mag=float(h["SFPTP"]), constrained=bool(h["SFCONSTR"]),
                          significance=float(h["SFRMS"]) / float(h["SFERR"]) if float(h["SFERR"]) > 0 else np.inf,
                          notes=[str(h[k]) for k in h if k.startswith("SFNOTE")], n_reference=int(h.get("SFNREF", 0)),
                          exposures=[str(e) for e in tab["exposure"]])
            return sf
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path} is not a star flat: {exc}") from exc


# ------------------------------------------------------------------------------------------------------ catalog
def write_catalog(path: str | Path, catalog: Any, *, header: Any = None,
                  provenance: Mapping[str, str] | None = None) -> Path:
    """Write a catalog (astropy Table) as a FITS binary table ``CATALOG`` (``header``: calibration keywords)."""
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


def read_catalog(src: Any, *, root: str | PathLike | None = None) -> Table:
    """The ``CATALOG`` table of a catalog file (fluxes in electrons, unit ``ct``; its header keywords in
    ``meta``); ``src``: the catalog's path or the reduced frame's product (role ``catalog``)."""
    from astropy.table import Table

    path = file_of(src, "catalog", root=root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)  # unit strings astropy does not parse
            return Table.read(path, hdu="CATALOG")
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise io_error(exc, path) from exc


# ------------------------------------------------------------------------------------------------------ PSF model
def write_psf(path: str | Path, psf: Any, *, provenance: Mapping[str, str] | None = None) -> Path:
    """Write a PSF model (:class:`~upad.reduce.psf.PsfResult`): ``EPSF`` cube (zones x zones x n x n, unit-flux
    grids sampled every 1/OVERSAMP pixel), ``MODEL`` (polynomial coefficients of FWHM, g1, g2) and, when the model
    has one, ``PROFILE`` (the frame's radial profile: Gaussian widths in units of the FWHM and amplitudes) and
    ``MOMCAL`` (adaptive-moment size vs FWHM of that profile). Readers of older files get a Moffat model."""
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
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(m.epsf, header=he, name="EPSF"), ht]
    if getattr(m, "profile_sig", None) is not None:
        # the frame's radial profile: PSF(r) = sum AMP * N(0, (SIG * FWHM(x, y))^2), before the pixel response
        hp = fits.BinTableHDU(Table({"SIG": np.asarray(m.profile_sig, np.float64),
                                     "AMP": np.asarray(m.profile_amp, np.float64)}), name="PROFILE")
        hp.header["COMMENT"] = "PSF = sum AMP * round Gaussian of sigma SIG * FWHM(x, y), sheared by (G1, G2)"
        hdus.append(hp)
        if getattr(m, "calib_T", None) is not None:
            hm = fits.BinTableHDU(Table({"FWHM_PX": np.asarray(m.calib_fwhm, np.float64),
                                         "T_PX2": np.asarray(m.calib_T, np.float64)}), name="MOMCAL")
            hm.header["COMMENT"] = "T_PX2: adaptive-moment Sxx + Syy of the pixelated PSF, mean over sub-pixel phases"
            hdus.append(hm)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


def read_psf(src: Any, *, root: str | PathLike | None = None) -> PsfModel:
    """The :class:`~upad.reduce.psf.PsfModel` of a PSF file (``src``: its path or the reduced frame's product,
    role ``psf``): field polynomials of FWHM and shear, empirical PSF grids.

    ``beta`` is the file's ``PSFBETA`` (4 decimals); the number of stars per zone is not stored (zeros).
    """
    from upad.reduce.psf import PsfModel, _poly_terms

    path = file_of(src, "psf", root=root)
    try:
        with fits.open(path) as hdul:
            he = hdul["EPSF"].header
            epsf = np.asarray(hdul["EPSF"].data, dtype=np.float64)
            tab = hdul["MODEL"].data
            p, q = np.asarray(tab["P"], int), np.asarray(tab["Q"], int)
            coef = {k: np.asarray(tab[k], np.float64) for k in ("FWHM_PX", "G1", "G2")}
            zones, oversampling = int(he["ZONES"]), int(he["OVERSAMP"])
            shape = (int(he["IMNAXIS2"]), int(he["IMNAXIS1"]))
            beta = float(he["PSFBETA"])
            prof = {}
            if "PROFILE" in hdul:
                prof["profile_sig"] = np.asarray(hdul["PROFILE"].data["SIG"], np.float64)
                prof["profile_amp"] = np.asarray(hdul["PROFILE"].data["AMP"], np.float64)
            if "MOMCAL" in hdul:
                prof["calib_fwhm"] = np.asarray(hdul["MOMCAL"].data["FWHM_PX"], np.float64)
                prof["calib_T"] = np.asarray(hdul["MOMCAL"].data["T_PX2"], np.float64)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise io_error(exc, path) from exc
    order = int((p + q).max()) if len(p) else 0
    if [(int(a), int(b)) for a, b in zip(p, q)] != _poly_terms(order):
        raise DataError(f"{path}: MODEL terms {list(zip(p, q))} are not those of a polynomial of order {order}")
    return PsfModel(beta=beta, shape=shape, order=order, fwhm_coef=coef["FWHM_PX"], g1_coef=coef["G1"],
                    g2_coef=coef["G2"], epsf=epsf, oversampling=oversampling, zones=zones,
                    epsf_nstars=np.zeros((zones, zones), int), **prof)


# ------------------------------------------------------------------------------------------------------ masters
def master_header(*, step: str, kind: str, provenance_id: str, unit_key: str, context: Mapping[str, Any],
                  n_inputs: int, n_used: int, good_after: dt.datetime, good_until: dt.datetime, bunit: str,
                  extra: Mapping[str, Any] | None = None) -> fits.Header:
    """The primary header of a master: the step and kind, the upad version, the short provenance id, the unit and
    its instrumental configuration (``context``), the inputs counted, the validity (UTC) and ``BUNIT``;
    ``extra`` cards last."""
    from upad import __version__

    h = fits.Header()
    h["UPADSTEP"] = (step, "upad step that made this file")
    h["UPADKIND"] = (kind, "kind of master calibration")
    h["UPADVER"] = (__version__, "upad version")
    h["PROVID"] = (provenance_id[:12], "short provenance id (full record in the db)")
    h["UNITKEY"] = (unit_key[:68], "unit of the step")
    for key, ck in (("INSTRUME", "instrument"), ("TELESCOP", "telescope"), ("DETECTOR", "detector"),
                    ("LAYOUT", "layout"), ("READMODE", "read_mode"), ("FILTER", "filter"),
                    ("FLATTYPE", "flat_type"), ("NIGHT", "night")):
        if context.get(ck) is not None:
            h[key] = str(context[ck])[:68]
    h["NINPUTS"] = (n_inputs, "input frames")
    h["NCOMBINE"] = (n_used, "frames combined (after exclusions)")
    h["GOODAFT"] = (good_after.isoformat(timespec="seconds"), "validity start (UTC)")
    h["GOODUNT"] = (good_until.isoformat(timespec="seconds"), "validity end (UTC, exclusive)")
    h["BUNIT"] = bunit
    h["DATE"] = (dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
                 "file creation (UTC)")
    for k, v in (extra or {}).items():
        h[k] = v
    return h


def write_master(path: str | Path, primary: np.ndarray, header: fits.Header,
                 extensions: Sequence[tuple[str, np.ndarray, Mapping[str, Any] | None]] = ()) -> Path:
    """Write a master: ``primary`` with ``header`` (:func:`master_header`), then one image extension per
    ``(EXTNAME, data, cards)``."""
    hdus: list[Any] = [fits.PrimaryHDU(primary, header=header)]
    for name, data, hdr in extensions:
        h = fits.Header()
        for k, v in (hdr or {}).items():
            h[k] = v
        hdus.append(fits.ImageHDU(data, header=h, name=name))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return Path(path)


def read_master(src: Any, ext: str | int = 0, *, dtype: Any = None) -> np.ndarray:
    """One image extension of a master (``src``: its path or the product, role ``master``) as a native-endian
    array."""
    return read_image(file_of(src, "master"), ext, dtype=dtype)


@dataclass
class MasterProduct:
    """A master read back (:func:`read_master_product`): the image and header; the extensions are read on demand.

    Attributes
    ----------
    path : str
    image : ndarray
        The primary image (bias ADU, dark e-/s, flat and illumination relative, fringe fraction of the sky,
        bad-pixel mask uint8 bits).
    header : astropy.io.fits.Header
    extensions : tuple of str
        ``EXTNAME`` of the other HDUs (``ERR``, ``NCOMB``, ``HOT``, ``BIN``, ``DATA``).
    kind, unit : str
        ``UPADKIND`` and ``BUNIT``.
    good_after, good_until : datetime or None
        The validity (UTC, naive): ``GOODAFT``, ``GOODUNT`` (exclusive).
    """

    path: str
    image: np.ndarray
    header: fits.Header
    extensions: tuple[str, ...]
    kind: str | None
    unit: str | None
    good_after: dt.datetime | None
    good_until: dt.datetime | None

    def extension(self, name: str, *, dtype: Any = None) -> np.ndarray:
        """The image of extension ``name``."""
        if name not in self.extensions:
            raise DataError(f"{self.path} has no {name} extension (it has {list(self.extensions)})")
        return read_image(self.path, name, dtype=dtype)

    @property
    def error(self) -> np.ndarray | None:
        """``ERR``: the 1-sigma uncertainty of every pixel (the image's unit)."""
        return self.extension("ERR") if "ERR" in self.extensions else None

    @property
    def ncomb(self) -> np.ndarray | None:
        """``NCOMB``: the number of frames combined at every pixel."""
        return self.extension("NCOMB") if "NCOMB" in self.extensions else None


def _when(v: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(v)) if v else None
    except ValueError:
        return None


def read_master_product(src: Any, *, root: str | PathLike | None = None) -> MasterProduct:
    """Read a master (``src``: its path or the product, role ``master``): image, header, validity."""
    path = file_of(src, "master", root=root)
    try:
        with fits.open(path) as hdul:
            header = hdul[0].header.copy()
            names = tuple(h.name for h in hdul[1:])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise io_error(exc, path) from exc
    return MasterProduct(path=path, image=read_image(path, 0), header=header, extensions=names,
                         kind=header.get("UPADKIND"), unit=header.get("BUNIT"), good_after=_when(header.get("GOODAFT")),
                         good_until=_when(header.get("GOODUNT")))


# ------------------------------------------------------------------------------------------------------ signature
def write_signature(path: str | Path, signature: Any, header: fits.Header | None = None) -> Path:
    """Write an instrument signature (:class:`upad.calib.signature.Signature`): primary header (``header``, e.g.
    :func:`master_header`, plus ``SIGQC``), table ``AMPS`` (one row per amplifier: ``amp``, ``gain`` e-/ADU,
    ``read_noise_adu``, ``read_noise_e``, ``lin_a1..a3`` (ADU⁻¹…ADU⁻³, 0 when not measured), ``saturation_adu``
    (NaN when not measured)), image ``CROSSTALK`` (``C[target, source]``, when measured) and table ``QC`` (one row
    per quantity: ``quantity``, ``status``, ``reason``)."""
    from astropy.table import Table

    hdr = fits.Header() if header is None else header.copy()
    hdr["SIGQC"] = (signature.qc_status, "ok: all measured; warn: some first guesses")
    n = len(signature.gain)
    lin = np.zeros((n, 3)) if signature.linearity is None else np.asarray(signature.linearity, np.float64)[:, :3]
    sat = np.full(n, np.nan) if signature.saturation_adu is None else np.asarray(signature.saturation_adu)
    amps = Table({"amp": np.arange(1, n + 1, dtype=np.int16), "gain": np.asarray(signature.gain, np.float64),
                  "read_noise_adu": np.asarray(signature.read_noise_adu, np.float64),
                  "read_noise_e": np.asarray(signature.read_noise_e, np.float64),
                  "lin_a1": lin[:, 0], "lin_a2": lin[:, 1], "lin_a3": lin[:, 2], "saturation_adu": sat})
    h_amps = fits.BinTableHDU(amps, name="AMPS")
    h_amps.header["LINMEAS"] = (signature.linearity is not None, "linearity measured (else the instrument file's)")
    hdus: list[Any] = [fits.PrimaryHDU(header=hdr), h_amps]
    if signature.crosstalk is not None:
        hdus.append(fits.ImageHDU(np.asarray(signature.crosstalk, np.float64), name="CROSSTALK"))
    names = sorted(signature.qc)
    qc = Table({"quantity": names, "status": [signature.qc[k].get("status", "") for k in names],
                "reason": [str(signature.qc[k].get("reason", "")) or "-" for k in names]})
    hdus.append(fits.BinTableHDU(qc, name="QC"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return Path(path)


def read_signature(src: Any, *, root: str | PathLike | None = None) -> Any:
    """Read what :func:`write_signature` wrote (a product, or the file's path) as a
    :class:`upad.calib.signature.Signature`."""
    from astropy.table import Table

    from upad.calib.signature import Signature

    path = src if isinstance(src, (str, Path)) else file_of(src, "master", root=root)
    with fits.open(path) as hd:
        amps = Table(hd["AMPS"].data)
        lin_measured = bool(hd["AMPS"].header.get("LINMEAS", False))
        xt = np.array(hd["CROSSTALK"].data, np.float64) if "CROSSTALK" in hd else None
        qc_t = Table(hd["QC"].data)
    qc = {str(r["quantity"]): {"status": str(r["status"]), "reason": "" if str(r["reason"]) == "-" else str(r["reason"])}
          for r in qc_t}
    sat = np.asarray(amps["saturation_adu"], np.float64)
    lin = np.column_stack([np.asarray(amps[c], np.float64) for c in ("lin_a1", "lin_a2", "lin_a3")])
    return Signature(gain=np.asarray(amps["gain"], np.float64),
                     read_noise_adu=np.asarray(amps["read_noise_adu"], np.float64),
                     read_noise_e=np.asarray(amps["read_noise_e"], np.float64),
                     linearity=lin if lin_measured else None, crosstalk=xt,
                     saturation_adu=None if np.isnan(sat).all() else sat, qc=qc)
