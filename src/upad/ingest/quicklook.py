"""Quick-look quality control of a raw frame: pure functions on the pixel arrays, a few seconds per T80Cam frame.

What is measured (all on the raw ADU of the file, before any calibration):

``bias`` (ADU, one value per amplifier)
    Readout layout: 4σ-clipped mean of the amplifier's serial overscan (the columns next to the data are skipped,
    see :attr:`QuickLookConfig.overscan_skip`). Archived layout of a bias frame: the same statistic on the
    amplifier's data. Otherwise ``None``.
``sky_median`` (ADU)
    Median of the data pixels, per amplifier (subsampled), minus that amplifier's overscan level when the layout has
    one, then the median over amplifiers. In the archived layout the value includes the electronic offset.
``sky_noise`` (ADU)
    Robust standard deviation ``1.4826 × MAD`` of the data pixels per amplifier (integer ADU dithered to undo the
    quantisation of the MAD), median over amplifiers. Includes photon noise, read noise and any structure (stars,
    gradients).
``saturated_fraction`` (0–1)
    Fraction of data pixels at or above the ADC maximum (65535 ADU for T80Cam).
``fwhm_arcsec`` (arcsec)
    Science and focus frames: median FWHM of isolated, unsaturated, round point-like detections in the central
    region (≤ 2048 × 2048 pixels of the trimmed image): ``FWHM = 2.3548 σ`` with ``σ`` from the half-flux radius
    assuming a Gaussian profile, corrected for the pixel (``σ² − 1/12 px²``). Rough: ±10–15 %.
``n_sources``
    Number of detections above ``detect_sigma`` in that central region (science and focus frames only).

The status is ``fail``, ``warn`` or ``ok`` from the thresholds of :class:`QuickLookConfig`; every threshold crossed
adds a reason.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from upad.config import StepConfig, param
from upad.instruments import AmpSection, Instrument

__all__ = ["QuickLookConfig", "QuickLookResult", "measure_fwhm", "quicklook"]

_MAD_TO_SIGMA = 1.4826
_GAUSS_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))  # FWHM / sigma


#: Observation types of the upad vocabulary (docs/raw-format.md).
_OBS_TYPES = ("bias", "dark", "flat-dome", "flat-sky", "science", "focus", "test", "unknown")


@dataclass(frozen=True)
class QuickLookConfig(StepConfig):
    """Parameters and thresholds of the quick-look QC (one place; every value documented).

    Set in ``<root>/upad.toml`` under ``[ingest.quicklook]`` (``upad config show`` lists them as
    ``ingest.quicklook.<name>``).
    """

    max_stat_pixels_per_amp: int = param(200_000, doc="Data pixels sampled per amplifier (regular stride) for the "
                                                      "sky median and noise", bounds=(1000, None), unit="pixel")
    overscan_skip: int = param(2, doc="Serial-overscan columns next to the data left out of the bias level "
                                      "(charge-transfer trail)", bounds=(0, 100), unit="column")
    saturation_adu: int | None = param(None, doc="Saturation level; unset: the instrument's ADC maximum (65535)",
                                       bounds=(1, None), unit="ADU")
    fwhm_box: int = param(2048, doc="Side of the central region of the trimmed image used for detection and FWHM",
                          bounds=(64, 100_000), unit="pixel")
    fwhm_obs_types: tuple[str, ...] = param(("science", "focus"), doc="Observation types on which sources and "
                                                                      "FWHM are measured")
    fwhm_max_detectors: int = param(1, doc="Multi-detector cameras: number of detectors (the first ones) on which "
                                           "sources are measured", bounds=(0, 1000))
    detect_sigma: float = param(5.0, doc="Detection threshold in units of the background RMS", bounds=(0.5, 1000.0),
                                unit="sigma")
    min_area: int = param(5, doc="Minimum connected pixels of a detection", bounds=(1, 10_000), unit="pixel")
    isolation_px: float = param(12.0, doc="A FWHM star has no other detection closer than this", bounds=(0.0, None),
                                unit="pixel")
    max_ellipticity: float = param(0.3, doc="A FWHM star has 1 - b/a below this", bounds=(0.0, 1.0))
    min_snr: float = param(20.0, doc="A FWHM star has at least this signal-to-noise ratio", bounds=(0.0, None))
    min_fwhm_px: float = param(1.0, doc="Detections narrower than this (cosmic rays, hot pixels) are not stars",
                               bounds=(0.0, None), unit="pixel")
    min_fwhm_stars: int = param(3, doc="Fewer stars than this: no FWHM (a warning)", bounds=(1, None))
    max_fwhm_stars: int = param(300, doc="At most this many stars (the brightest) are measured", bounds=(1, None))
    saturated_warn: float = param(0.05, doc="Saturated fraction above which the status is warn", bounds=(0.0, 1.0))
    saturated_fail: float = param(0.5, doc="Saturated fraction above which the status is fail", bounds=(0.0, 1.0))
    science_min_sky_adu: float = param(1.0, doc="Science frames whose bias-subtracted sky median is below this "
                                                "fail (shutter closed, no light)", unit="ADU")
    bias_tolerance_adu: float = param(300.0, doc="An amplifier whose bias level differs from the instrument's "
                                                 "nominal level by more than this warns", bounds=(0.0, None),
                                      unit="ADU")
    bias_max_noise_adu: float = param(25.0, doc="Bias and dark frames with a larger robust noise warn",
                                      bounds=(0.0, None), unit="ADU")
    flat_min_adu: float = param(2000.0, doc="Flat fields whose bias-subtracted level is below this warn "
                                            "(underexposed)", unit="ADU")
    flat_max_adu: float = param(50000.0, doc="Flat fields whose bias-subtracted level is above this warn (near "
                                             "saturation)", unit="ADU")
    fwhm_warn_arcsec: float = param(3.0, doc="Science frames with a larger FWHM warn (survey seeing limit 2.0\")",
                                    bounds=(0.0, None), unit="arcsec")

    def validate(self) -> None:
        super().validate()
        bad = [t for t in self.fwhm_obs_types if t not in _OBS_TYPES]
        self.require(not bad, "fwhm_obs_types", f"has unknown observation type(s) {bad}",
                     hint=f"observation types: {', '.join(_OBS_TYPES)}")
        self.require(self.saturated_warn <= self.saturated_fail, "saturated_warn",
                     f"= {self.saturated_warn:g} is above saturated_fail = {self.saturated_fail:g}",
                     hint="a frame warns above saturated_warn and fails above saturated_fail: keep warn <= fail")
        self.require(self.flat_min_adu < self.flat_max_adu, "flat_min_adu",
                     f"= {self.flat_min_adu:g} ADU is not below flat_max_adu = {self.flat_max_adu:g} ADU",
                     hint="flats outside [flat_min_adu, flat_max_adu] warn: lower flat_min_adu or raise flat_max_adu")
        self.require(self.min_fwhm_stars <= self.max_fwhm_stars, "min_fwhm_stars",
                     f"= {self.min_fwhm_stars} is above max_fwhm_stars = {self.max_fwhm_stars}",
                     hint="raise max_fwhm_stars or lower min_fwhm_stars")


DEFAULT_QC = QuickLookConfig()


@dataclass
class QuickLookResult:
    """Quick-look QC values of one frame (units in :mod:`upad.ingest.quicklook`'s docstring).

    Attributes
    ----------
    status : str
        ``ok``, ``warn`` or ``fail``.
    reasons : list of str
        Why the status is not ``ok`` (each prefixed ``warn:`` or ``fail:``).
    bias : list of float or None
        Per-amplifier bias level, ADU (detector-major for multi-detector cameras).
    bias_source : str or None
        ``'overscan'``, ``'data'`` (archived bias frame) or ``None``.
    sky_median, sky_noise : float
        ADU.
    sky_per_amp : list of float
        Per-amplifier sky medians (same convention as ``sky_median``), ADU.
    saturated_fraction : float
        0–1.
    fwhm_arcsec, fwhm_px : float or None
        Median FWHM of point sources.
    n_sources : int or None
        Detections in the central region.
    n_fwhm_stars : int or None
        Stars the FWHM is the median of.
    seconds : float
        Time the QC took.
    """

    status: str
    reasons: list[str]
    bias: list[float] | None
    bias_source: str | None
    sky_median: float
    sky_noise: float
    sky_per_amp: list[float]
    saturated_fraction: float
    fwhm_arcsec: float | None = None
    fwhm_px: float | None = None
    n_sources: int | None = None
    n_fwhm_stars: int | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- statistics ------------------------------------------------------------------------------------------------------
def _robust(sample: np.ndarray) -> tuple[float, float]:
    """(median, robust standard deviation) of a sample.

    The standard deviation is ``1.4826 × MAD``. Integer ADU are first dithered by a uniform ±0.5 ADU (fixed seed)
    and the dither's variance (1/12) is removed again: without it the MAD of integer data is itself an integer or
    half-integer (4 ADU of read noise would read 4.45).
    """
    s = np.asarray(sample).ravel()
    med = float(np.median(s))
    if np.issubdtype(s.dtype, np.integer):
        dither = np.random.default_rng(12345).uniform(-0.5, 0.5, s.size).astype(np.float32)
        x = s.astype(np.float32) + dither
        mad = float(np.median(np.abs(x - np.float32(np.median(x)))))
        var = (_MAD_TO_SIGMA * mad) ** 2 - 1.0 / 12.0
        return med, math.sqrt(max(var, 0.0))
    x = s.astype(np.float32)
    return med, _MAD_TO_SIGMA * float(np.median(np.abs(x - np.float32(med))))


def _subsample(region: np.ndarray, max_pixels: int) -> np.ndarray:
    ny, nx = region.shape
    stride = max(1, math.ceil(math.sqrt(ny * nx / max(max_pixels, 1))))
    return region[::stride, ::stride]


def _overscan_level(data: np.ndarray, sec: AmpSection, skip: int) -> float | None:
    if sec.overscan_x is None:
        return None
    sy, sx = sec.overscan_x
    width = sx.stop - sx.start
    skip = min(max(skip, 0), max(width - 1, 0))
    # the columns next to the data are the first ones when read left to right, the last ones when mirrored
    cols = slice(sx.start, sx.stop - skip) if sec.read_flip_x else slice(sx.start + skip, sx.stop)
    return _clipped_mean(data[sy, cols])


def _clipped_mean(region: np.ndarray, *, nsigma: float = 4.0) -> float:
    """Mean of the pixels within ``nsigma`` robust standard deviations of the median (cosmic rays, hot columns out).

    Unlike the median of integer ADU, which moves in steps of 0.5 ADU, the clipped mean resolves the level to
    ``σ / √N``.
    """
    med, sig = _robust(region)
    x = np.asarray(region, dtype=np.float32)
    half = nsigma * max(sig, 0.5)
    sel = x[(x >= med - half) & (x <= med + half)]
    return float(sel.mean(dtype=np.float64)) if sel.size else med


# -- sources and FWHM ---------------------------------------------------------------------------------------------------
def _central_window(active_shape: tuple[int, int], box: int) -> tuple[slice, slice]:
    ny, nx = active_shape
    by, bx = min(box, ny), min(box, nx)
    y0, x0 = (ny - by) // 2, (nx - bx) // 2
    return slice(y0, y0 + by), slice(x0, x0 + bx)


def _assemble(data: np.ndarray, sections: Sequence[AmpSection], window: tuple[slice, slice],
              levels: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``window`` (trimmed-image coordinates) out of a raw frame, level-subtracted per amplifier.

    Returns the float32 image and the raw values (uint16) of the same pixels (for saturation).
    """
    wy, wx = window
    out = np.zeros((wy.stop - wy.start, wx.stop - wx.start), dtype=np.float32)
    raw = np.zeros(out.shape, dtype=data.dtype)
    for sec, level in zip(sections, levels):
        ay, ax = sec.active
        y0, y1 = max(ay.start, wy.start), min(ay.stop, wy.stop)
        x0, x1 = max(ax.start, wx.start), min(ax.stop, wx.stop)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = sec.data
        src = data[dy.start + y0 - ay.start:dy.start + y1 - ay.start, dx.start + x0 - ax.start:dx.start + x1 - ax.start]
        dst = (slice(y0 - wy.start, y1 - wy.start), slice(x0 - wx.start, x1 - wx.start))
        raw[dst] = src
        np.subtract(src, np.float32(level), out=out[dst], dtype=np.float32)
    return out, raw


def _core_fwhm(img: np.ndarray, xc: float, yc: float, r50: float) -> float:
    """FWHM (pixels) of one star from its core: a weighted fit of ``ln I = c0 + c1 r²`` to the pixels above 40 %
    of the peak (fewer above 30 or 20 % when the star is undersampled), i.e. the Gaussian that matches the profile
    down to about half maximum, corrected for the pixel (``σ² − 1/12``).

    Unlike the half-flux radius, this hardly depends on the wings: within ~5 % of the true FWHM for Gaussian and
    Moffat (β ≥ 2.5) profiles of 1.8–4 pixels. NaN when it cannot be measured.
    """
    h = int(min(max(4, math.ceil(2.5 * r50)), 15))
    ix, iy = int(round(xc)), int(round(yc))
    ny, nx = img.shape
    if ix - h < 0 or iy - h < 0 or ix + h >= nx or iy + h >= ny:
        return math.nan
    stamp = img[iy - h:iy + h + 1, ix - h:ix + h + 1]
    yy, xx = np.mgrid[iy - h:iy + h + 1, ix - h:ix + h + 1]
    r2 = (xx - xc) ** 2 + (yy - yc) ** 2
    peak = float(stamp.max())
    if not peak > 0:
        return math.nan
    for frac in (0.4, 0.3, 0.2):
        m = (stamp > frac * peak) & (r2 <= h * h)
        if np.count_nonzero(m) >= 6:
            break
    else:
        return math.nan
    v = stamp[m].astype(np.float64)
    w = v  # sqrt of the weight v² (noise of ln I ~ sigma / I)
    a = np.column_stack([np.ones_like(v), r2[m]]) * w[:, None]
    (c0, c1), *_ = np.linalg.lstsq(a, np.log(v) * w, rcond=None)
    if not c1 < 0:
        return math.nan
    sigma2 = -1.0 / (2.0 * c1) - 1.0 / 12.0
    return _GAUSS_FWHM * math.sqrt(sigma2) if sigma2 > 0 else math.nan


def measure_fwhm(image: np.ndarray, *, saturated: np.ndarray | None = None,
                 config: QuickLookConfig = DEFAULT_QC) -> dict[str, Any]:
    """Detect sources and measure the median FWHM of isolated point sources on a level-subtracted image.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image, ADU, roughly level-subtracted (the smooth background is fitted and removed here). Modified in
        place when it is native float32.
    saturated : numpy.ndarray of bool, optional
        Saturated pixels (detections touching one are not used for the FWHM).
    config : QuickLookConfig

    Returns
    -------
    dict
        ``n_sources`` (int), ``fwhm_px`` (float or None), ``n_stars`` (int), ``background_rms`` (ADU) and
        ``error`` (str or None).
    """
    import sep
    from scipy.spatial import cKDTree

    img = np.ascontiguousarray(image, dtype=np.float32)  # native byte order float32, as sep needs
    out: dict[str, Any] = {"n_sources": 0, "fwhm_px": None, "n_stars": 0, "background_rms": None, "error": None}
    try:
        bkg = sep.Background(img, bw=64, bh=64, fw=3, fh=3)
        bkg.subfrom(img)
        rms = float(bkg.globalrms)
        out["background_rms"] = rms
        if not rms > 0:
            out["error"] = "flat image (zero background noise)"
            return out
        sep.set_extract_pixstack(max(300_000, img.size // 4))
        sep.set_sub_object_limit(4096)
        objs = sep.extract(img, config.detect_sigma, err=rms, minarea=config.min_area)
    except Exception as exc:  # sep raises plain Exceptions (buffer full, …)
        out["error"] = f"source detection failed: {exc}"
        return out
    out["n_sources"] = int(len(objs))
    if len(objs) == 0:
        return out
    x, y, a, b = objs["x"], objs["y"], objs["a"], objs["b"]
    keep = (objs["flag"] == 0) & (a > 0) & (b > 0)
    keep &= (1.0 - b / np.where(a > 0, a, 1.0)) < config.max_ellipticity
    snr = objs["flux"] / (rms * np.sqrt(np.maximum(objs["npix"], 1)))
    keep &= snr >= config.min_snr
    if len(objs) > 1:
        dist, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
        keep &= dist[:, 1] > config.isolation_px
    if saturated is not None:
        for i in np.flatnonzero(keep):
            if saturated[objs["ymin"][i]:objs["ymax"][i] + 1, objs["xmin"][i]:objs["xmax"][i] + 1].any():
                keep[i] = False
    ny, nx = img.shape
    rmax = np.maximum(6.0 * a, 4.0)
    keep &= (x > rmax) & (x < nx - 1 - rmax) & (y > rmax) & (y < ny - 1 - rmax)
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        return out
    if len(idx) > config.max_fwhm_stars:  # the brightest ones
        idx = idx[np.argsort(objs["flux"][idx])[::-1][:config.max_fwhm_stars]]
    r50, rflag = sep.flux_radius(img, x[idx], y[idx], rmax[idx], 0.5, subpix=5)
    ok = (rflag == 0) & (r50 > 0)
    idx, r50 = idx[ok], r50[ok]
    if len(idx) == 0:
        return out
    xc, yc, wflag = sep.winpos(img, x[idx], y[idx], 2.0 / 2.35 * r50)
    fwhm = np.array([_core_fwhm(img, cx, cy, r) if f == 0 else np.nan
                     for cx, cy, r, f in zip(xc, yc, r50, wflag)])
    fwhm = fwhm[np.isfinite(fwhm) & (fwhm >= config.min_fwhm_px)]
    if len(fwhm) == 0:
        return out
    for _ in range(3):  # clip outliers (galaxies, blends) around the median
        med = float(np.median(fwhm))
        mad = float(np.median(np.abs(fwhm - med))) * _MAD_TO_SIGMA
        sel = np.abs(fwhm - med) <= max(3.0 * mad, 0.05 * med)
        if sel.all():
            break
        fwhm = fwhm[sel]
    out["n_stars"] = int(len(fwhm))
    if len(fwhm) >= config.min_fwhm_stars:
        out["fwhm_px"] = float(np.median(fwhm))
    return out


# -- the QC ----------------------------------------------------------------------------------------------------------------
def quicklook(data: np.ndarray | Sequence[np.ndarray], instrument: Instrument, *, layout: str, obs_type: str,
              exptime: float | None = None, config: QuickLookConfig = DEFAULT_QC) -> QuickLookResult:
    """Quick-look QC of one raw frame.

    Parameters
    ----------
    data : numpy.ndarray or sequence of numpy.ndarray
        Raw pixels (uint16 ADU), one 2-D array per detector, in ``layout``.
    instrument : Instrument
        Geometry, nominal bias levels, pixel scale and ADC maximum.
    layout : str
        ``'readout'`` or ``'archived'``.
    obs_type : str
        upad observation type (selects the checks).
    exptime : float, optional
        Exposure time in seconds (a science frame with ``exptime > 0`` and no sky fails).
    config : QuickLookConfig

    Returns
    -------
    QuickLookResult
    """
    t0 = time.perf_counter()
    arrays = [data] if isinstance(data, np.ndarray) else list(data)
    sat_level = config.saturation_adu if config.saturation_adu is not None else instrument.adc_max
    reasons: list[tuple[str, str]] = []

    biases: list[float] = []
    nominal: list[float] = []
    sky: list[float] = []
    noise: list[float] = []
    n_sat = n_pix = 0
    bias_source: str | None = "overscan" if layout == "readout" else None
    fwhm_values: list[float] = []
    n_sources: int | None = None
    n_stars = 0
    fwhm_errors: list[str] = []

    for det_index, arr in enumerate(arrays):
        det_id = instrument.detectors[det_index].id if det_index < len(instrument.detectors) else det_index + 1
        sections = instrument.amp_sections(layout, detector=det_id)
        levels: list[float] = []
        for sec in sections:
            region = arr[sec.data]
            n_sat += int(np.count_nonzero(region >= sat_level))
            n_pix += region.size
            med, sig = _robust(_subsample(region, config.max_stat_pixels_per_amp))
            level = _overscan_level(arr, sec, config.overscan_skip)
            nominal.append(sec.amplifier.bias_level)
            if level is not None:
                biases.append(level)
                sky.append(med - level)
            else:
                sky.append(med)
                if obs_type == "bias":
                    biases.append(_clipped_mean(_subsample(region, config.max_stat_pixels_per_amp)))
                    bias_source = "data"
            noise.append(sig)
            levels.append(med)
        if obs_type in config.fwhm_obs_types and det_index < config.fwhm_max_detectors:
            window = _central_window(instrument.layout.active_shape, config.fwhm_box)
            image, raw = _assemble(arr, sections, window, levels)
            res = measure_fwhm(image, saturated=raw >= sat_level, config=config)
            n_sources = (n_sources or 0) + res["n_sources"]
            n_stars += res["n_stars"]
            if res["fwhm_px"] is not None:
                fwhm_values.append(res["fwhm_px"])
            if res["error"]:
                fwhm_errors.append(res["error"])

    sky_median = float(np.median(sky))
    sky_noise = float(np.median(noise))
    sat_frac = n_sat / n_pix if n_pix else 0.0
    fwhm_px = float(np.median(fwhm_values)) if fwhm_values else None
    fwhm_arcsec = fwhm_px * instrument.pixel_scale if fwhm_px is not None else None
    bias_out = biases if biases else None
    if bias_out is None:
        bias_source = None

    # -- checks ------------------------------------------------------------------------------------------------------
    if sat_frac > config.saturated_fail:
        reasons.append(("fail", f"{100 * sat_frac:.1f} % of the pixels are saturated (> "
                                f"{100 * config.saturated_fail:.0f} %)"))
    elif sat_frac > config.saturated_warn:
        reasons.append(("warn", f"{100 * sat_frac:.1f} % of the pixels are saturated (> "
                                f"{100 * config.saturated_warn:.0f} %)"))
    if bias_out is not None:
        far = [(i + 1, b, n) for i, (b, n) in enumerate(zip(bias_out, nominal))
               if abs(b - n) > config.bias_tolerance_adu]
        if far:
            text = ", ".join(f"amp {i}: {b:.0f} (nominal {n:.0f})" for i, b, n in far[:4])
            more = f" and {len(far) - 4} more" if len(far) > 4 else ""
            reasons.append(("warn", f"bias level far from nominal (> {config.bias_tolerance_adu:.0f} ADU): "
                                    f"{text}{more}"))
    # bias-subtracted level: measured overscan when present, else the nominal offsets
    level = sky_median if layout == "readout" else float(np.median(np.asarray(sky) - np.asarray(nominal)))
    if obs_type in ("bias", "dark") and sky_noise > config.bias_max_noise_adu:
        reasons.append(("warn", f"{obs_type} noise {sky_noise:.1f} ADU exceeds {config.bias_max_noise_adu:.0f} ADU"))
    if obs_type in ("flat-dome", "flat-sky"):
        if level < config.flat_min_adu:
            reasons.append(("warn", f"flat level {level:.0f} ADU is below {config.flat_min_adu:.0f} ADU"))
        elif level > config.flat_max_adu:
            reasons.append(("warn", f"flat level {level:.0f} ADU is above {config.flat_max_adu:.0f} ADU "
                                    "(non-linear regime)"))
    if obs_type == "science":
        if (exptime is None or exptime > 0) and level < config.science_min_sky_adu:
            reasons.append(("fail", f"no sky signal in a science frame (sky {level:.1f} ADU above bias): shutter "
                                    "closed or dome shut?"))
        if n_sources == 0:
            reasons.append(("warn", "no sources detected in a science frame (clouds, dome or defocus?)"))
        elif fwhm_px is None:
            detail = f"; {fwhm_errors[0]}" if fwhm_errors else ""
            reasons.append(("warn", f"FWHM not measured: {n_stars} isolated point sources, "
                                    f"{config.min_fwhm_stars} needed{detail}"))
        elif fwhm_arcsec is not None and fwhm_arcsec > config.fwhm_warn_arcsec:
            reasons.append(("warn", f"FWHM {fwhm_arcsec:.2f}\" is above {config.fwhm_warn_arcsec:.1f}\""))
    status = "fail" if any(k == "fail" for k, _ in reasons) else ("warn" if reasons else "ok")
    return QuickLookResult(
        status=status, reasons=[f"{k}: {t}" for k, t in reasons], bias=bias_out, bias_source=bias_source,
        sky_median=sky_median, sky_noise=sky_noise, sky_per_amp=[float(s) for s in sky],
        saturated_fraction=float(sat_frac), fwhm_arcsec=fwhm_arcsec, fwhm_px=fwhm_px, n_sources=n_sources,
        n_fwhm_stars=n_stars if obs_type in config.fwhm_obs_types else None,
        seconds=time.perf_counter() - t0,
        details={"layout": layout, "saturation_adu": sat_level, "fwhm_box": config.fwhm_box,
                 "detectors_measured": min(len(arrays), config.fwhm_max_detectors)},
    )
