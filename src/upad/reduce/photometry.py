"""Photometric calibration: aperture correction to total flux, zero point against the reference catalog, magnitudes,
and a PSF-based stellarity.

**Aperture correction.** The total flux of a point source is estimated from a mid-size aperture
(``apcor_diameter_arcsec``, a good compromise between noise and sensitivity to the PSF) times the aperture
correction ``F(large) / F(mid)`` measured on the PSF stars (``large`` = the largest catalog aperture) and fitted as a
low-order polynomial over the field (the PSF changes across it), times the fraction of the PSF model beyond the
large aperture (``1 / EE(large)``, a few 0.1 %). The result is ``FLUX_APCOR`` (e-). ``FLUX_AUTO`` misses the wings
of the PSF (about 1-4 % for a Moffat ``beta = 3``): it is the right flux for galaxies, not for stars.

**Zero point.** ``ZP_E`` is the AB magnitude of 1 e-/s: the sigma-clipped, error-weighted mean of
``mag_ref + 2.5 log10(FLUX_APCOR / EXPTIME)`` over unsaturated, unblended reference stars with a survey magnitude in
the frame's filter. ``MAGZP = ZP_E + 2.5 log10(EXPTIME)`` converts the catalog fluxes (e- in the exposure):
``MAG_X = MAGZP - 2.5 log10(FLUX_X)``, ``MAGERR_X = 1.0857 FLUXERR_X / FLUX_X``; non-detections and non-positive
fluxes get 99 (as J-PLUS).

**Stellarity.** ``CLASS_STAR`` (an equivalent of SExtractor's neural-network classifier, from the PSF model): the
size excess ``d = T_object / T_psf - 1`` of the object's adaptive moments over the PSF's at its position, in units
of its uncertainty (``sqrt(8) / SNR`` plus 3 % systematics): ``CLASS_STAR = exp(-z^2 / 2)`` for ``z > 0``, 1
otherwise (1 = point-like, 0 = extended).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from upad.config import StepConfig, param
from upad.reduce.errors import ReductionError

__all__ = ["PhotometryConfig", "ApertureCorrection", "ZeroPoint", "aperture_correction", "zero_point",
           "add_magnitudes", "class_star"]


@dataclass(frozen=True)
class PhotometryConfig(StepConfig):
    """Parameters of the photometric calibration."""

    apcor_diameter_arcsec: float = param(4.0, doc="aperture whose flux is corrected to the total (must be one of "
                                                  "the catalog apertures)", bounds=(0.1, None), unit="arcsec")
    apcor_order: int = param(2, doc="order of the polynomial of the aperture correction over the field",
                             bounds=(0, 4))
    apcor_min_snr: float = param(100.0, doc="S/N in the largest aperture of the stars that measure the "
                                            "correction", bounds=(5.0, None))
    zp_min_snr: float = param(20.0, doc="S/N of the stars used for the zero point", bounds=(1.0, None))
    zp_clip_sigma: float = param(3.0, doc="outlier rejection of the zero point", bounds=(1.0, 100.0))
    zp_min_stars: int = param(3, doc="fewest reference stars for a zero point", bounds=(1, None))
    zp_max_mag_error: float = param(0.1, doc="largest reference magnitude error used", bounds=(0.0, None),
                                    unit="mag")
    class_star_sys: float = param(0.03, doc="systematic uncertainty of the PSF size in CLASS_STAR",
                                  bounds=(0.0, 1.0))
    zp_reference: str = param("auto", doc="reference magnitudes of the zero point: 'survey' (mag_<filter> "
                                          "columns), 'gaia' (G, BP, RP through the packaged transformation), "
                                          "'auto' (survey where at least zp_min_stars have them, else gaia)",
                              choices=("auto", "survey", "gaia"))
    zp_colour_term: str = param("fit", doc="colour term in BP-RP: 'fit' (when the colours span enough), 'none'",
                                choices=("fit", "none"))
    zp_colour_ref: float = param(1.0, doc="BP-RP at which the zero point is quoted", bounds=(-1.0, 5.0), unit="mag")
    zp_colour_min_spread: float = param(0.15, doc="smallest rms of the stars' BP-RP for a fitted colour term",
                                        bounds=(0.0, None), unit="mag")
    zp_colour_prior: float = param(0.03, doc="width of a Gaussian prior around 0 on the fitted colour term: a "
                                             "camera's colour term against its nominal system is a few hundredths "
                                             "per mag; a frame's own stars determine it only when they are many "
                                             "(0: no prior)", bounds=(0.0, None), unit="mag/mag")
    zp_colour_min_stars: int = param(10, doc="fewest stars for a fitted colour term", bounds=(3, None))
    zp_map_order: int = param(1, doc="order of the residual zero-point map over the field (0: none)",
                              bounds=(0, 3))
    zp_nominal_fallback: bool = param(True, doc="without a usable photometric reference use the nominal zero "
                                                "point (instrument file) with a QC warning instead of failing")
    zp_transform_system: str = param("jplus", doc="packaged Gaia transformation (data/gaia_transforms_<name>.json)")


@dataclass
class ApertureCorrection:
    """Aperture correction from ``apcor_diameter`` to the total flux.

    Attributes
    ----------
    median : float
        Median correction factor over the field (multiplies the aperture flux).
    tail : float
        Part of it that is the PSF model's flux beyond the largest aperture (``1 / EE``).
    rms : float
        Scatter of the stars about the fitted correction (relative).
    n_stars : int
    coef : ndarray
        Polynomial coefficients (normalised coordinates, see :mod:`upad.reduce.psf`).
    order : int
    shape : (ny, nx)
    diameter_arcsec, large_diameter_arcsec : float
    """

    median: float
    tail: float
    rms: float
    n_stars: int
    coef: np.ndarray
    order: int
    shape: tuple[int, int]
    diameter_arcsec: float
    large_diameter_arcsec: float

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Correction factor at 0-based positions."""
        from upad.reduce.psf import _poly_design

        ny, nx = self.shape
        cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
        u = (np.atleast_1d(np.asarray(x, float)) - cx) / cx
        v = (np.atleast_1d(np.asarray(y, float)) - cy) / cy
        return (_poly_design(u, v, self.order) @ self.coef) * self.tail


@dataclass
class ZeroPoint:
    """A photometric zero point.

    Attributes
    ----------
    zp_e : float
        AB magnitude of 1 e-/s (``ZP_E``).
    magzp : float
        AB magnitude of 1 e- in the exposure (``MAGZP = ZP_E + 2.5 log10(EXPTIME)``).
    error : float
        Uncertainty of the mean (mag).
    rms : float
        Scatter of the stars (mag).
    n_stars : int
    filter : str
    det_index, ref_index : ndarray
        The stars used.
    """

    zp_e: float
    magzp: float
    error: float
    rms: float
    n_stars: int
    filter: str
    det_index: np.ndarray = field(repr=False)
    ref_index: np.ndarray = field(repr=False)
    #: where the reference magnitudes came from: ``'survey'`` (mag_<filter> columns), ``'gaia'`` (G, BP-RP through
    #: the packaged transformation, :mod:`upad.reduce.photcal`) or ``'nominal'`` (no usable reference: the
    #: instrument file's zero point, ``error`` NaN)
    source: str = "survey"
    #: natural minus reference magnitude per magnitude of BP-RP (``instrumental = reference + colour_term x
    #: (BP-RP - colour_ref)``); ``zp_e`` is the zero point at ``colour_ref``
    colour_term: float = 0.0
    colour_term_error: float = float("nan")
    colour_term_fitted: bool = False
    colour_ref: float = float("nan")
    #: residual zero-point pattern over the field: ``sum coef_k u^p v^q`` (mag, added to ``zp_e``) in the
    #: coordinates ``u = (x - cx) / cx``, ``v = (y - cy) / cy`` of :func:`upad.reduce.psf._poly_design`
    map_order: int = 0
    map_coef: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    map_rms: float = float("nan")
    #: systematic error of the reference in this filter (the transformation's rms), included in ``error``
    systematic: float = 0.0
    #: why the frame has a nominal zero point, or notes on the calibration
    note: str = ""


def aperture_correction(x: np.ndarray, y: np.ndarray, flux_aper: np.ndarray, fluxerr_aper: np.ndarray,
                        diameters_arcsec: tuple[float, ...], stars: np.ndarray, *, shape: tuple[int, int],
                        pixel_scale: float, psf_fwhm_px: float, psf_beta: float,
                        config: PhotometryConfig = PhotometryConfig()) -> ApertureCorrection:
    """Measure the aperture correction on point sources.

    Parameters
    ----------
    x, y : ndarray
        0-based positions of all detections.
    flux_aper, fluxerr_aper : ndarray
        ``(n, n_apertures)`` aperture fluxes and errors.
    diameters_arcsec : tuple of float
        The catalog apertures.
    stars : ndarray
        Indices of clean point sources (e.g. the PSF stars).
    shape : (ny, nx)
    pixel_scale : float
        arcsec/pixel.
    psf_fwhm_px, psf_beta : float
        PSF model (for the flux beyond the largest aperture).
    config : PhotometryConfig

    Raises
    ------
    ReductionError
        ``too_few_stars`` when no star qualifies.
    """
    from upad.reduce.psf import _clipped_polyfit, moffat_enclosed

    diam = np.asarray(diameters_arcsec, float)
    k_mid = int(np.argmin(np.abs(diam - config.apcor_diameter_arcsec)))
    k_big = int(np.argmax(diam))
    if k_big == k_mid:
        raise ValueError("the aperture correction needs a larger catalog aperture than apcor_diameter_arcsec")
    stars = np.asarray(stars, int)
    fb, fm = flux_aper[stars, k_big], flux_aper[stars, k_mid]
    eb = fluxerr_aper[stars, k_big]
    ok = (fm > 0) & (fb > 0) & (fb / np.maximum(eb, 1e-30) > config.apcor_min_snr)
    if ok.sum() < 3:
        ok = (fm > 0) & (fb > 0) & (fb / np.maximum(eb, 1e-30) > 20)
    if ok.sum() < 3:
        raise ReductionError("too_few_stars", f"{int(ok.sum())} stars for the aperture correction",
                             stage="photometry")
    ratio = fb[ok] / fm[ok]
    ny, nx = shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    u = (np.asarray(x, float)[stars][ok] - cx) / cx
    v = (np.asarray(y, float)[stars][ok] - cy) / cy
    order, coef, keep = _clipped_polyfit(u, v, ratio, config.apcor_order)
    from upad.reduce.psf import _poly_design

    resid = ratio - _poly_design(u, v, order) @ coef
    rms = float(1.4826 * np.median(np.abs(resid[keep])) / np.median(ratio))
    r_big_px = diam[k_big] / 2.0 / pixel_scale
    tail = float(1.0 / moffat_enclosed(r_big_px, psf_fwhm_px, psf_beta))
    gy, gx = np.mgrid[0:ny:9j, 0:nx:9j]
    med = float(np.median(_poly_design((gx.ravel() - cx) / cx, (gy.ravel() - cy) / cy, order) @ coef)) * tail
    return ApertureCorrection(median=med, tail=tail, rms=rms, n_stars=int(keep.sum()), coef=coef, order=order,
                              shape=shape, diameter_arcsec=float(diam[k_mid]),
                              large_diameter_arcsec=float(diam[k_big]))


def zero_point(flux: np.ndarray, fluxerr: np.ndarray, ref_mag: np.ndarray, ref_magerr: np.ndarray | None, *,
               det_index: np.ndarray, ref_index: np.ndarray, exptime: float, filter_name: str,
               good: np.ndarray | None = None, config: PhotometryConfig = PhotometryConfig()) -> ZeroPoint:
    """Zero point from matched reference stars.

    Parameters
    ----------
    flux, fluxerr : ndarray
        Total fluxes of the detections (e.g. ``FLUX_APCOR``, e- in the exposure).
    ref_mag, ref_magerr : ndarray
        The reference catalog's magnitudes in the frame's filter (AB; NaN where absent) and errors.
    det_index, ref_index : ndarray
        Matched pairs (from the astrometry).
    exptime : float
        Exposure time (s).
    filter_name : str
    good : ndarray of bool, optional
        Detections usable for photometry (unsaturated, unblended, unmasked).
    config : PhotometryConfig

    Raises
    ------
    ReductionError
        ``no_reference`` (no magnitudes in the filter) or ``photometry_failed`` (too few stars).
    """
    if exptime <= 0:
        raise ReductionError("bad_input", f"exposure time {exptime} s", stage="photometry")
    di, rj = np.asarray(det_index, int), np.asarray(ref_index, int)
    m = np.asarray(ref_mag, float)[rj]
    me = np.full(len(rj), 0.02) if ref_magerr is None else np.nan_to_num(np.asarray(ref_magerr, float)[rj],
                                                                          nan=0.02)
    if not np.isfinite(np.asarray(ref_mag, float)).any():
        raise ReductionError("no_reference", f"the reference catalog has no magnitudes in {filter_name}",
                             stage="photometry")
    f, fe = np.asarray(flux, float)[di], np.asarray(fluxerr, float)[di]
    ok = np.isfinite(m) & (f > 0) & (f / np.maximum(fe, 1e-30) > config.zp_min_snr) & (me <= config.zp_max_mag_error)
    if good is not None:
        ok &= np.asarray(good, bool)[di]
    if ok.sum() < config.zp_min_stars:
        raise ReductionError("photometry_failed", f"{int(ok.sum())} reference stars with {filter_name} magnitudes "
                                                  f"(at least {config.zp_min_stars} needed)", stage="photometry")
    z = m[ok] + 2.5 * np.log10(f[ok] / exptime)
    sig = np.hypot(1.0857 * fe[ok] / f[ok], me[ok])
    keep = np.ones(len(z), bool)
    zp = float(np.median(z))
    for _ in range(10):
        w = 1.0 / sig[keep] ** 2
        zp = float(np.sum(w * z[keep]) / np.sum(w))
        r = z - zp
        s = 1.4826 * np.median(np.abs(r[keep]))
        new = np.abs(r) <= config.zp_clip_sigma * np.maximum(np.hypot(s, 0.0), sig)
        if new.sum() < config.zp_min_stars or np.array_equal(new, keep):
            break
        keep = new
    w = 1.0 / sig[keep] ** 2
    err_formal = float(1.0 / math.sqrt(np.sum(w)))
    rms = float(np.std(z[keep] - zp)) if keep.sum() > 1 else float("nan")
    chi2 = float(np.sum(((z[keep] - zp) / sig[keep]) ** 2) / max(keep.sum() - 1, 1))
    err = err_formal * math.sqrt(max(chi2, 1.0))
    return ZeroPoint(zp_e=zp, magzp=zp + 2.5 * math.log10(exptime), error=err, rms=rms, n_stars=int(keep.sum()),
                     filter=filter_name, det_index=di[ok][keep], ref_index=rj[ok][keep])


def _mag(flux: np.ndarray, err: np.ndarray, magzp: float) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(flux, float)
    e = np.asarray(err, float)
    pos = f > 0
    mag = np.full(f.shape, 99.0)
    merr = np.full(f.shape, 99.0)
    mag[pos] = magzp - 2.5 * np.log10(f[pos])
    merr[pos] = 1.0857 * e[pos] / f[pos]
    return mag.astype(np.float32), merr.astype(np.float32)


def add_magnitudes(catalog, magzp: float) -> None:
    """Add ``MAG_*``/``MAGERR_*`` columns for every ``FLUX_*``/``FLUXERR_*`` pair of an astropy Table (in place)."""
    for name in list(catalog.colnames):
        if not name.startswith("FLUX_") or name in ("FLUX_RADIUS", "FLUX_MAX"):
            continue
        kind = name[5:]
        ename = f"FLUXERR_{kind}"
        err = catalog[ename] if ename in catalog.colnames else np.zeros(len(catalog))
        mag, merr = _mag(np.asarray(catalog[name]), np.asarray(err), magzp)
        catalog[f"MAG_{kind}"] = mag
        catalog[f"MAG_{kind}"].unit = "mag"
        if ename in catalog.colnames:
            catalog[f"MAGERR_{kind}"] = merr
            catalog[f"MAGERR_{kind}"].unit = "mag"


def class_star(size_T: np.ndarray, psf_T: np.ndarray, snr: np.ndarray, *, sys: float = 0.03) -> np.ndarray:
    """PSF-based stellarity in [0, 1] (see the module documentation)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.asarray(size_T, float) / np.asarray(psf_T, float) - 1.0
        sig = np.hypot(math.sqrt(8.0) / np.maximum(np.asarray(snr, float), 0.1), sys)
        z = np.clip(d / sig, 0.0, None)
        out = np.exp(-0.5 * z * z)
    return np.where(np.isfinite(out), out, 0.0).astype(np.float32)
