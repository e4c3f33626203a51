"""The daily pipeline's algorithms in sequence: one calibrated frame in, a reduced frame out (no I/O).

:func:`reduce_frame` takes the ISR output (an image in electrons, flat-fielded, with the raw saturation mask) and
runs, in order:

1. validation (``no_data`` for all-NaN, all-zero or constant frames) and the initial mask (NaN → ``NODATA``,
   bad-pixel mask → ``BAD``/``SUSPECT``, ``EDGE``, ``VIGNETTED``);
2. saturation and bleed trails (:mod:`~upad.reduce.saturation`);
3. sky background (:mod:`~upad.reduce.background`), the noise model (:mod:`~upad.reduce.noise`), background
   subtraction;
4. cosmetic correction of bad pixels (:mod:`~upad.reduce.cosmetics`);
5. satellite trails (:mod:`~upad.reduce.satellites`), then cosmic rays (:mod:`~upad.reduce.cosmics`, which must
   not eat the trails);
6. detection and photometry (:mod:`~upad.reduce.detect`);
7. astrometry (:mod:`~upad.reduce.astrometry`) → ``ALPHA_J2000``, ``DELTA_J2000``;
8. PSF (:mod:`~upad.reduce.psf`) → ``CLASS_STAR``;
9. aperture correction and zero point (:mod:`~upad.reduce.photometry`) → ``FLUX_APCOR``, ``MAG_*``;
10. image statistics, header keywords and QC (:mod:`~upad.reduce.qc`); the variance becomes the weight map; the sky
    is added back (``keep_sky``, default) so that the reduced image holds the sky as observed.

The image array is modified in place (bad pixels and cosmic rays replaced; background-subtracted when
``keep_sky`` is False) unless ``copy=True``. A frame without usable data raises
:class:`~upad.reduce.errors.ReductionError`; a later stage that fails (no stars, no astrometric match, no zero
point) does not: the frame is returned with QC status ``'failed'`` and the reason, and the products of the stages
that ran (``strict=True`` raises instead).
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from upad import maskbits as mb
from upad.config import StepConfig, param
from upad.io.refcat import at_epoch, observation_epoch
from upad.reduce._jit import set_threads
from upad.reduce._maskops import count_bits, init_mask
from upad.reduce.astrometry import AstrometryConfig, AstrometryResult, solve_astrometry
from upad.reduce.background import BackgroundConfig, BackgroundResult, estimate_background
from upad.reduce.cosmetics import CosmeticsConfig, CosmeticsResult, interpolate_bad_pixels
from upad.reduce.cosmics import CosmicConfig, CosmicResult, detect_cosmics
from upad.reduce.detect import DetectConfig, detect_sources
from upad.reduce.errors import ReductionError
from upad.reduce.noise import measured_noise, subtract_and_variance, weight_map
from upad.reduce.photometry import (
    ApertureCorrection,
    PhotometryConfig,
    ZeroPoint,
    add_magnitudes,
    class_star,
    point_source_photometry,
    require_apcor_aperture,
)
from upad.reduce.photcal import calibrate_zero_point, photcal_cards, photcal_meta, reference_column
from upad.reduce.psf import PsfConfig, PsfResult, measure_psf
from upad.reduce.qc import QC_BITS, QcConfig, QcResult, evaluate_qc
from upad.reduce.satellites import SatelliteConfig, SatelliteResult, detect_satellites
from upad.reduce.saturation import SaturationConfig, SaturationResult, mask_saturation

__all__ = ["ReductionConfig", "ReducedFrame", "reduce_frame", "validate_image"]


@dataclass(frozen=True)
class ReductionConfig(StepConfig):
    """Every parameter of the reduction of a science frame.

    The stage parameters live in nested configurations (fields whose type is a :class:`~upad.config.StepConfig`:
    ``[steps.reduce.cosmics]`` … in ``upad.toml``, ``steps.reduce.cosmics.sigclip`` in ``upad config show``).
    """

    edge_px: int = param(4, doc="width of the EDGE border", bounds=(0, 1000), unit="pixel")
    vignetted_below: float = param(0.5, doc="pixels whose flat response is below this are VIGNETTED",
                                   bounds=(0.0, 1.0))
    min_valid_fraction: float = param(0.5, doc="fewest finite, non-zero pixels for a frame to be reduced",
                                      bounds=(0.0, 1.0))
    cosmetics_enabled: bool = param(True, doc="interpolate bad pixels")
    satellites_enabled: bool = param(True, doc="search for satellite trails")
    cosmics_enabled: bool = param(True, doc="search for cosmic rays")
    keep_sky: bool = param(True, doc="the reduced image keeps the sky (the background is added back after the "
                                     "measurements); False: the image is background-subtracted")
    threads: int = param(0, doc="threads of the compiled kernels and of the extraction (0: every core)",
                         bounds=(0, 256), critical=False)
    saturation: SaturationConfig = SaturationConfig()
    background: BackgroundConfig = BackgroundConfig()
    cosmetics: CosmeticsConfig = CosmeticsConfig()
    satellites: SatelliteConfig = SatelliteConfig()
    cosmics: CosmicConfig = CosmicConfig()
    detect: DetectConfig = DetectConfig()
    astrometry: AstrometryConfig = AstrometryConfig()
    psf: PsfConfig = PsfConfig()
    photometry: PhotometryConfig = PhotometryConfig()
    qc: QcConfig = QcConfig()

    def validate(self) -> None:
        super().validate()
        require_apcor_aperture(self)


@dataclass
class ReducedFrame:
    """Everything :func:`reduce_frame` produced (see the module documentation).

    Attributes
    ----------
    image : ndarray
        Reduced image: e-, bad pixels and cosmic rays interpolated (float32); the sky is kept unless
        ``config.keep_sky`` is False (the model is in ``background``, the header's ``SKYSUB`` says which).
    mask : ndarray
        Bit-coded mask (:mod:`upad.maskbits`, int16).
    weight : ndarray
        Inverse-variance weight map (e-^-2, float32), zero on :data:`upad.maskbits.ZERO_WEIGHT` pixels.
    catalog : astropy.table.Table or None
        Catalog with SExtractor column names (docs/reduction.md).
    header : astropy.io.fits.Header
        WCS, photometric calibration, PSF, statistics and QC keywords.
    wcs : astropy.wcs.WCS or None
        The astrometric solution (``None`` when it failed).
    qc : QcResult
    stats : dict
        Image and stage statistics.
    timings : dict
        Seconds per stage.
    """

    image: np.ndarray
    mask: np.ndarray
    weight: np.ndarray
    catalog: Any
    header: Any
    wcs: Any
    qc: QcResult
    background: BackgroundResult | None = None
    saturation: SaturationResult | None = None
    cosmetics: CosmeticsResult | None = None
    satellites: SatelliteResult | None = None
    cosmics: CosmicResult | None = None
    astrometry: AstrometryResult | None = None
    psf: PsfResult | None = None
    apcor: ApertureCorrection | None = None
    zeropoint: ZeroPoint | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    failure: ReductionError | None = None


def validate_image(image: np.ndarray, *, min_valid_fraction: float = 0.5) -> np.ndarray:
    """Check that ``image`` is a usable 2-D frame and return it as native float32 (C order).

    Raises
    ------
    ReductionError
        ``no_data`` for a non-2-D array, an empty one, too few finite non-zero pixels or a constant frame.
    """
    a = np.asarray(image)
    if a.ndim != 2 or a.size == 0:
        raise ReductionError("no_data", f"expected a 2-D image, got shape {a.shape}", stage="validate")
    if a.dtype != np.float32 or a.dtype.byteorder not in ("=", "|") or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=np.float32)
    step = max(1, int(math.sqrt(a.size / 1_000_000)))
    sample = a[::step, ::step]
    finite = np.isfinite(sample)
    valid = finite & (sample != 0)
    frac = float(valid.mean())
    if frac < min_valid_fraction:
        what = "NaN" if finite.mean() < min_valid_fraction else "zero"
        raise ReductionError("no_data", f"only {frac:.1%} of the pixels are finite and non-zero (mostly {what})",
                             stage="validate")
    vals = sample[valid]
    if float(np.std(vals)) == 0.0:
        raise ReductionError("no_data", f"the frame is constant ({float(vals[0]):g})", stage="validate")
    return a


def _wcs_of(guess: Any):
    from astropy.io import fits
    from astropy.wcs import WCS

    if guess is None or isinstance(guess, WCS):
        return guess
    if isinstance(guess, (fits.Header, Mapping)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdr = guess if isinstance(guess, fits.Header) else fits.Header(dict(guess))
            return WCS(hdr, naxis=2)
    raise TypeError(f"wcs_guess must be an astropy WCS or a FITS header, got {type(guess).__name__}")


def _epoch_of_guess(guess: Any, exptime: float) -> float | None:
    """Julian epoch of the middle of the exposure from the header given as ``wcs_guess`` (or its WCS's
    ``MJD-OBS``); None when no date is known."""
    if isinstance(guess, Mapping) or hasattr(guess, "cards"):
        return observation_epoch({"exptime": exptime}, guess)
    mjd = getattr(getattr(guess, "wcs", None), "mjdobs", None)
    if mjd is not None and np.isfinite(mjd):
        return observation_epoch({"exptime": exptime, "mjd": float(mjd)})
    return None


def reduce_frame(image: np.ndarray, *, wcs_guess: Any, refcat: Any, filter_name: str, exptime: float,
                 read_noise: float | Sequence[float], amp_regions: Sequence[tuple[slice, slice]] | None = None,
                 saturated: np.ndarray | None = None, bpm: np.ndarray | None = None, flat: np.ndarray | None = None,
                 dark_e: np.ndarray | float | None = None, mask: np.ndarray | None = None,
                 pixel_scale: float | None = None, nominal_zp_e: float | None = None,
                 config: ReductionConfig = ReductionConfig(), copy: bool = False, strict: bool = False,
                 saturation_e: float | Sequence[float] | None = None, epoch: float | None = None) -> ReducedFrame:
    """Reduce one calibrated science frame (see the module documentation for the stages).

    Parameters
    ----------
    image : ndarray
        ISR output: electrons, flat-fielded, dark-subtracted, trimmed and assembled (float32). Modified in place
        unless ``copy``.
    wcs_guess : astropy.wcs.WCS or astropy.io.fits.Header
        The raw header's WCS (commanded pointing), for the astrometric match.
    refcat : astropy.table.Table or mapping
        Reference stars (:func:`upad.io.refcat.read_reference_catalog` columns: ``ra, dec`` in deg, optional ``g``,
        ``ra_error`` (mas), ``mag_<filter>``, ``magerr_<filter>``). With proper motions and a ``ref_epoch``
        (``pmra, pmdec, ref_epoch``) the positions are moved to the frame's ``epoch`` first
        (:func:`upad.io.refcat.at_epoch`: a Gaia DR3 star of 5 mas/yr is 0.08 pixel of 0.55" away after nine
        years); without them they must be at the frame's epoch.
    filter_name : str
        The frame's filter (J-PLUS name), for the reference magnitudes.
    exptime : float
        Exposure time (s).
    read_noise : float or sequence of float
        Read noise (e-), per amplifier with ``amp_regions``.
    amp_regions : sequence of (slice, slice), optional
        Region of each amplifier in the image (``AmpSection.active``).
    saturated : ndarray of bool, optional
        Pixels saturated in the raw frame (:attr:`upad.isr.IsrResult.saturated`).
    bpm : ndarray, optional
        Bad-pixel mask: boolean, or the calibration bits of :mod:`upad.calib.bpm`.
    flat : ndarray, optional
        The flat the image was divided by (noise model, ``VIGNETTED``, ``NODATA``).
    dark_e : ndarray or float, optional
        Dark charge subtracted (e-), for the noise model.
    mask : ndarray, optional
        An initial bit-coded mask (int16) to start from (e.g. crosstalk from the ISR); updated in place.
    pixel_scale : float, optional
        arcsec/pixel; default from ``wcs_guess``.
    nominal_zp_e : float, optional
        Zero point of a photometric night (1 e-/s) for the transparency check.
    config : ReductionConfig
    copy : bool
        Work on a copy of ``image``.
    strict : bool
        Raise the first :class:`ReductionError` instead of returning a frame with failed QC.
    saturation_e : float or sequence of float, optional
        Saturation level (e- of detected charge) per amplifier of ``amp_regions``: the measured level of the
        calibration, else the instrument file's full well (:func:`upad.reduce.saturation.instrument_levels`);
        the plateau measured in the frame and the raw-frame mask ``saturated`` apply in any case.
    epoch : float, optional
        Julian epoch (yr) of the middle of the exposure, for the reference positions; default: from the header given
        as ``wcs_guess`` (``MJD-OBS`` or ``DATE-OBS`` plus half of ``exptime``:
        :func:`upad.io.refcat.observation_epoch`), or the WCS's ``MJD-OBS``. Recorded in ``stats["ref_epoch"]``
        (None: no date known, the catalog's positions used as given).

    Returns
    -------
    ReducedFrame

    Raises
    ------
    ReductionError
        ``no_data`` always; any reason with ``strict``.
    """
    from astropy.io import fits

    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def tick(name: str) -> None:
        nonlocal t0
        t = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + t - t0
        t0 = t

    if config.threads:
        set_threads(config.threads)
        if config.detect.threads != config.threads:
            config = dataclasses.replace(config, detect=dataclasses.replace(config.detect, threads=config.threads))
    img = validate_image(image, min_valid_fraction=config.min_valid_fraction)
    if copy and img is image:
        img = img.copy()
    ny, nx = img.shape
    wcs_g = _wcs_of(wcs_guess)
    if pixel_scale is None:
        if wcs_g is None:
            raise ReductionError("bad_input", "give pixel_scale or a wcs_guess", stage="validate")
        pixel_scale = float(np.sqrt(abs(np.linalg.det(wcs_g.pixel_scale_matrix)))) * 3600.0
    # ---- initial mask
    if mask is None:
        mask = mb.new_mask(img.shape)
    elif mask.shape != img.shape or mask.dtype != mb.MASK_DTYPE:
        raise ReductionError("bad_input", f"mask must be {np.dtype(mb.MASK_DTYPE).name} of shape {img.shape}",
                             stage="validate")
    if bpm is not None and np.shape(bpm) != img.shape:
        raise ReductionError("bad_input", f"bad-pixel mask {np.shape(bpm)} does not match the image {img.shape}",
                             stage="validate")
    if flat is not None and np.shape(flat) != img.shape:
        raise ReductionError("bad_input", f"flat {np.shape(flat)} does not match the image {img.shape}",
                             stage="validate")
    bpm_arr = None if bpm is None else np.asarray(bpm)
    # a boolean mask marks bad pixels; an integer one carries the calibration bits (upad.calib.bpm: 4 = low
    # response alone is only SUSPECT)
    suspect_bits = 0 if (bpm_arr is None or bpm_arr.dtype == bool) else 4
    n_nan = init_mask(img, mask, bpm=bpm_arr, bpm_bad_bits=0xFF & ~suspect_bits, bpm_suspect_bits=suspect_bits,
                      flat=flat, vignetted_below=config.vignetted_below, edge_px=config.edge_px)
    tick("mask")
    # ---- saturation
    sat = mask_saturation(img, mask, saturated=saturated, levels_e=saturation_e, amp_regions=amp_regions,
                          flat=flat, config=config.saturation)
    tick("saturation")
    # ---- background and noise
    bkg = estimate_background(img, mask=mask, config=config.background)
    tick("background")
    noise = subtract_and_variance(img, bkg, read_noise=read_noise, amp_regions=amp_regions, flat=flat,
                                  dark_e=dark_e)
    var = noise.variance
    tick("noise")
    stats: dict[str, Any] = {"sky_e": bkg.level, "sky_rms_e": bkg.rms, "pixel_scale": pixel_scale,
                             "noise_model_sigma_e": noise.median_sigma, "n_nonfinite": n_nan}
    cosm = None
    if config.cosmetics_enabled:
        cosm = interpolate_bad_pixels(img, mask, config=config.cosmetics)
        tick("cosmetics")
    sats = None
    if config.satellites_enabled:
        sats = detect_satellites(img, var, mask, config=config.satellites)
        tick("satellites")
    crs = None
    if config.cosmics_enabled:
        crs = detect_cosmics(img, var, mask, config=config.cosmics)
        tick("cosmics")
    sig, ratio = measured_noise(img, var, mask)
    stats.update(noise_measured_e=sig, noise_ratio=ratio)
    # ---- reference positions at the frame's epoch (proper motions)
    if epoch is None:
        epoch = _epoch_of_guess(wcs_guess, exptime)
    refcat, moved = at_epoch(refcat, epoch)
    stats["ref_epoch"] = epoch
    stats["ref_moved_to_epoch"] = moved
    result = ReducedFrame(image=img, mask=mask, weight=var, catalog=None, header=fits.Header(), wcs=None,
                          qc=QcResult("failed", 0), background=bkg, saturation=sat, cosmetics=cosm,
                          satellites=sats, cosmics=crs, stats=stats, timings=timings)
    try:
        _characterise(result, wcs_g, refcat, filter_name, exptime, pixel_scale, config, tick,
                      nominal_zp_e=nominal_zp_e)
    except ReductionError as exc:
        if strict:
            raise
        result.failure = exc
    # ---- statistics, QC, header
    summ, unusable = count_bits(mask, mb.UNUSABLE)
    npix = float(img.size)
    stats.update(masked_fraction=unusable / npix, mask_counts=summ)
    zp = result.zeropoint
    zp_for_sky = zp.zp_e if zp is not None else nominal_zp_e
    if zp is not None and zp.source == "nominal":
        zp = None  # not a measurement: no transparency check (the QC warns below)
    if zp_for_sky is not None and bkg.level > 0:
        stats["sky_mag_arcsec2"] = zp_for_sky - 2.5 * math.log10(bkg.level / exptime / pixel_scale ** 2)
    psf = result.psf
    ast = result.astrometry
    result.qc = evaluate_qc(
        fwhm_arcsec=psf.fwhm_arcsec if psf else None, ellipticity=psf.ellipticity if psf else None,
        sky_mag_arcsec2=stats.get("sky_mag_arcsec2"), zp_e=zp.zp_e if zp else None, nominal_zp_e=nominal_zp_e,
        astrometric_rms_arcsec=ast.rms_arcsec if ast else None, n_matched=ast.n_matched if ast else None,
        masked_fraction=stats["masked_fraction"],
        failure=(result.failure.reason, result.failure.message) if result.failure else None, config=config.qc)
    if result.zeropoint is not None and result.zeropoint.source == "nominal":
        # no usable photometric reference: nominal zero point, a warning (not a failure)
        result.qc.flag |= QC_BITS["PHOTCAL"]
        result.qc.reasons.append(f"nominal zero point ({result.zeropoint.note})")
        if result.qc.status == "good":
            result.qc.status = "bad"
    result.header = _header(result, filter_name, exptime, pixel_scale)
    weight_map(var, mask, out=var)
    result.weight = var
    if config.keep_sky:
        bkg.add_to(img)
    result.stats["sky_subtracted"] = not config.keep_sky
    result.header["SKYSUB"] = (not config.keep_sky, "sky background subtracted from the image")
    tick("qc+weight")
    return result


def _characterise(res: ReducedFrame, wcs_g, refcat, filter_name: str, exptime: float, pixel_scale: float,
                  config: ReductionConfig, tick, nominal_zp_e: float | None = None) -> None:
    """Detection, astrometry, PSF and photometric calibration (fills ``res``; raises ReductionError)."""
    img, var, mask = res.image, res.weight, res.mask
    det = detect_sources(img, var, mask, pixel_scale=pixel_scale, config=config.detect)
    cat = det.catalog
    res.catalog = cat
    res.stats["n_sources"] = len(cat)
    res.stats["n_deblended"] = det.n_deblended
    cat["BACKGROUND"] = res.background.at(np.asarray(cat["X_IMAGE"]) - 1, np.asarray(cat["Y_IMAGE"]) - 1).astype(
        np.float32)
    cat["BACKGROUND"].unit = "electron"
    tick("detect")
    snr = np.asarray(cat["FLUX_AUTO"]) / np.maximum(np.asarray(cat["FLUXERR_AUTO"]), 1e-30)
    xw = np.asarray(cat["XWIN_IMAGE"]) - 1.0
    yw = np.asarray(cat["YWIN_IMAGE"]) - 1.0
    flags = np.asarray(cat["FLAGS"])
    imaf = np.asarray(cat["IMAFLAGS_ISO"])
    clean = ((flags & (4 | 8)) == 0) & ((imaf & (mb.UNUSABLE | mb.INTERPOLATED)) == 0)
    # ---- astrometry
    if wcs_g is None or not wcs_g.has_celestial:
        raise ReductionError("astrometry_failed", "the frame's header has no celestial WCS to start from",
                             stage="astrometry")
    ra_ref = reference_column(refcat, "ra")
    dec_ref = reference_column(refcat, "dec")
    if ra_ref is None or dec_ref is None or len(ra_ref) == 0:
        raise ReductionError("no_reference", "the reference catalog is empty or has no ra/dec", stage="astrometry")
    fwhm_img = np.asarray(cat["FWHM_IMAGE"], float)
    pos_err = np.clip(np.where(np.isfinite(fwhm_img), fwhm_img, 3.0), 1.0, 20.0) / (2.35 * np.maximum(snr, 1.0))
    ast = solve_astrometry(xw, yw, np.asarray(cat["FLUX_AUTO"]), ra_ref, dec_ref, wcs_guess=wcs_g,
                           shape=img.shape, ref_mag=reference_column(refcat, "g", "phot_g_mean_mag"), good=clean,
                           pos_err=pos_err, ref_err_mas=reference_column(refcat, "ra_error"), snr=snr,
                           config=config.astrometry)
    res.astrometry = ast
    res.wcs = ast.wcs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, d = ast.wcs.all_pix2world(np.asarray(cat["X_IMAGE"]) - 1, np.asarray(cat["Y_IMAGE"]) - 1, 0)
        aw, dw = ast.wcs.all_pix2world(xw, yw, 0)
    cat["ALPHA_J2000"], cat["DELTA_J2000"] = a, d
    cat["ALPHAWIN_J2000"], cat["DELTAWIN_J2000"] = aw, dw
    for c in ("ALPHA_J2000", "DELTA_J2000", "ALPHAWIN_J2000", "DELTAWIN_J2000"):
        cat[c].unit = "deg"
    tick("astrometry")
    # ---- PSF
    psf = measure_psf(img, xw, yw, np.asarray(cat["FLUX_AUTO"]), snr, flags, imaf, fwhm_img,
                      np.asarray(cat["ELLIPTICITY"]), np.asarray(cat["FLUX_MAX"]), pixel_scale=pixel_scale,
                      config=config.psf)
    res.psf = psf
    t_psf = psf.model.moment_size_at(xw, yw)  # the PSF's moment size from the frame's own profile
    t_obj = 2.0 * (fwhm_img / 2.3548) ** 2
    cat["CLASS_STAR"] = class_star(t_obj, t_psf, snr, sys=config.photometry.class_star_sys)
    cat["FWHM_WORLD"] = (fwhm_img * pixel_scale / 3600.0).astype(np.float32)
    cat["FWHM_WORLD"].unit = "deg"
    tick("psf")
    # ---- photometric calibration
    diam = tuple(float(v) for v in config.detect.aper_diameters_arcsec)
    phot = point_source_photometry(img, var, mask, cat, psf, pixel_scale=pixel_scale, diameters_arcsec=diam,
                                   bad_bits=mb.UNUSABLE, config=config.photometry)
    blank, apc = phot.blank, phot.apcor
    res.stats["blank_sky"] = {"level": round(blank.level, 5), "error": None if not math.isfinite(blank.error)
                              else round(blank.error, 5), "n": blank.n}
    res.apcor = apc
    corr = apc.at(xw, yw)
    cat["FLUX_APCOR"] = phot.flux_apcor
    cat["FLUXERR_APCOR"] = np.asarray(cat["FLUXERR_APER"])[:, phot.k_mid] * corr
    cat["FLUX_APCOR"].unit = cat["FLUXERR_APCOR"].unit = "electron"
    zp = calibrate_zero_point(np.asarray(cat["FLUX_APCOR"]), np.asarray(cat["FLUXERR_APCOR"]), xw, yw, refcat,
                              det_index=ast.det_index, ref_index=ast.ref_index, exptime=exptime,
                              filter_name=filter_name, shape=img.shape, good=clean & ((flags & 2) == 0),
                              nominal_zp_e=nominal_zp_e, config=config.photometry)
    res.zeropoint = zp
    res.stats["photcal"] = photcal_meta(zp)
    cat.meta["ZPSOURCE"] = zp.source
    add_magnitudes(cat, zp.magzp)
    cat.meta["MAGZP"] = zp.magzp
    tick("photometry")


def _header(res: ReducedFrame, filter_name: str, exptime: float, pixel_scale: float):
    """FITS keywords describing the reduced frame (WCS, calibration, PSF, statistics, QC)."""
    from astropy.io import fits

    h = fits.Header()
    h["BUNIT"] = ("electron", "calibrated, flat-fielded")
    h["FILTER"] = filter_name
    h["EXPTIME"] = (float(exptime), "[s]")
    if res.astrometry is not None:
        h.extend(res.astrometry.header, update=True)
        a = res.astrometry
        h["ASTRRMS"] = (round(a.rms_arcsec, 4), "[arcsec] astrometric rms of the fit")
        h["ASTRNSTR"] = (a.n_matched, "stars in the astrometric fit")
        h["ASTROFFX"] = (round(a.offset_arcsec[0], 2), "[arcsec] pointing offset east")
        h["ASTROFFY"] = (round(a.offset_arcsec[1], 2), "[arcsec] pointing offset north")
        h["ASTRROT"] = (round(a.rotation_deg, 5), "[deg] rotation relative to the header WCS")
        h["ASTRSCAL"] = (round(a.scale_ratio, 6), "plate scale / the header WCS's")
        h["ASTRFLIP"] = (bool(a.parity_flipped), "parity opposite to the header WCS's")
        h["ASTRORDR"] = (int(a.sip_order), "SIP order of the astrometric solution")
        if res.stats.get("ref_epoch") is not None:
            h["REFEPOCH"] = (round(float(res.stats["ref_epoch"]), 6), "[yr] Julian epoch of the reference positions")
    s = res.stats
    h["SKYLEVEL"] = (round(float(s.get("sky_e", float("nan"))), 3), "[e-] median sky background")
    h["SKYRMS"] = (round(float(s.get("sky_rms_e", float("nan"))), 3), "[e-] sky noise")
    if "sky_mag_arcsec2" in s:
        h["SKYMAG"] = (round(s["sky_mag_arcsec2"], 3), "[mag/arcsec2] sky brightness")
    if np.isfinite(s.get("noise_ratio", float("nan"))):
        h["NOISERAT"] = (round(s["noise_ratio"], 4), "measured / modelled sky noise")
    if res.psf is not None:
        p = res.psf
        h["FWHM"] = (round(p.fwhm_arcsec, 4), "[arcsec] median PSF FWHM")
        h["FWHMPIX"] = (round(p.fwhm_px, 4), "[pixel] median PSF FWHM")
        h["FWHMMIN"] = (round(p.fwhm_min_px * pixel_scale, 4), "[arcsec] smallest FWHM over the field")
        h["FWHMMAX"] = (round(p.fwhm_max_px * pixel_scale, 4), "[arcsec] largest FWHM over the field")
        h["ELLIPT"] = (round(p.ellipticity, 4), "median PSF ellipticity 1-b/a")
        h["PSFBETA"] = (round(p.beta, 3), "Moffat beta of the PSF")
        h["NPSFSTAR"] = (p.n_stars, "stars in the PSF model")
    if res.apcor is not None:
        h["APCOR"] = (round(res.apcor.median, 5), "median aperture correction to total")
        h["APCORDIA"] = (res.apcor.diameter_arcsec, "[arcsec] aperture of FLUX_APCOR")
        h["APCTAIL"] = (round(res.apcor.tail, 5), "flux beyond the largest aperture: 1 + tail")
        h["APCBIGD"] = (res.apcor.large_diameter_arcsec, "[arcsec] the largest aperture (of APCTAIL)")
        h["APCTSRC"] = (res.apcor.tail_source, "tail: measured (wings), model (confirmed)")
    if "blank_sky" in res.stats:
        h["APSKYOFF"] = (res.stats["blank_sky"]["level"], "[e-/pix] sky above the mesh (out of FLUX_APCOR)")
    if res.zeropoint is not None:
        z = res.zeropoint
        h["ZP_E"] = (round(z.zp_e, 5), "[mag] AB zero point for 1 e-/s")
        h["MAGZP"] = (round(z.magzp, 5), "[mag] AB zero point for 1 e- in EXPTIME")
        if math.isfinite(z.error):
            h["ZPERR"] = (round(z.error, 5), "[mag] zero-point uncertainty")
        h["NZPSTAR"] = (z.n_stars, "stars in the zero point")
        h.extend(photcal_cards(z), update=True)
    if res.cosmics is not None:
        h["NCOSMIC"] = (res.cosmics.n_pixels, "cosmic-ray pixels")
    if res.satellites is not None:
        h["NSATTRL"] = (len(res.satellites.trails), "satellite trails")
    h["MASKFRAC"] = (round(float(s.get("masked_fraction", 0.0)), 6), "fraction of unusable pixels")
    if "n_sources" in s:
        h["NSOURCES"] = (int(s["n_sources"]), "detections in the catalog")
    h["QCSTATUS"] = (res.qc.status, "good, bad or failed")
    h["QCFLAG"] = (res.qc.flag, "QC bits (docs/reduction.md)")
    if res.qc.reasons:
        h["QCREASON"] = ("; ".join(res.qc.reasons))[:68]
    return h
