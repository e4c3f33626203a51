"""Every parameter of the survey simulator, with its default and meaning.

A :class:`SimConfig` is a frozen dataclass: build one with keyword arguments (or
:meth:`SimConfig.with_overrides` from ``KEY=VALUE`` strings) and pass it to
:func:`upad.sim.simulate`. Parameters left at ``None`` take an instrument-dependent
default resolved by :meth:`SimConfig.resolved` (e.g. the pointing error is 2' for
T80Cam but 45" for the 9.4' field of the test camera ``mini``).

Detector and sky effects can be switched off one by one through ``disabled``; the
names are listed in :data:`EFFECTS` with what each one does.

The defaults are an *independent* world (issue 10, "the real sky"): the simulator does not share the
pipeline's assumptions. The camera's signature (gains, read noise, full well, a non-linearity of another form
than the pipeline's, crosstalk, bias structure, dead pixels) is drawn around the instrument file per camera,
and every night carries the calibration sequences that let the pipeline measure it (photon-transfer pairs and
a linearity series of dome flats); the PSF family is drawn per exposure (Kolmogorov + optics, double Gaussian
or Moffat of beta 2-5) with a field variation that no low-order polynomial follows; stars move (proper
motions from the catalog epoch 2016.0); the camera's passbands are shifted from the nominal ones (a colour
term); the field distortion goes beyond SIP order 3 (5th-order radial and tangential terms) and the header's
plate scale is 1 % wrong. :data:`NOMINAL_WORLD` (:meth:`SimConfig.nominal`, ``upad simulate --nominal-world``)
is the world shaped like the pipeline's assumptions, for the few tests that need an exactly known instrument
(each says why).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from upad.errors import UpadError

#: Switchable effects: name -> what it does. Every one is on by default.
EFFECTS: dict[str, str] = {
    "bias_drift": "bias varies slowly along the readout rows (same in overscan and data), plus per-frame jitter",
    "read_noise": "Gaussian read noise per amplifier",
    "gain_variation": "true gains differ from the header (nominal) gains by ~1 %; off: true gain = nominal",
    "nonlinearity": "per-amplifier cubic non-linearity from the instrument file",
    "dark_current": "uniform dark current (instrument file, e-/s/pixel)",
    "hot_pixels": "fixed hot pixels (fixed per camera and seed)",
    "bad_columns": "fixed partial dead (low-response) and hot columns",
    "prnu": "pixel response non-uniformity (~1 % white + ~0.5 % smooth), fixed per camera",
    "vignetting": "smooth radial fall-off of the illumination (few % at the corners)",
    "illumination": "smooth low-order pattern present in dome flats only (not in the night sky)",
    "fringing": "additive fringe pattern proportional to the sky in fringing filters (science frames)",
    "cosmics": "cosmic-ray hits with short tracks, in every frame (exposure + half the readout time)",
    "satellites": "satellite trails across some science exposures",
    "saturation": "full-well saturation with charge bleeding along columns (the 16-bit ADC clip always applies)",
    "photon_noise": "Poisson noise of the detected electrons (off: expected values, rounded by the ADC)",
    "distortion": "field distortion (TAN-SIP) in the true WCS",
    "pointing_error": "random pointing errors of the telescope (header WCS uses the commanded pointing)",
    "psf_variation": "PSF FWHM and ellipticity vary across the field (off: constant over the frame)",
    "transparency": "sky transparency changes from night to night and exposure to exposure",
    "extinction": "atmospheric extinction with airmass",
    "sky_flat_stars": "a few faint stars in twilight sky flats",
    "crosstalk": "crosstalk between amplifiers (drawn signature only)",
    "bias_structure": "a fixed bias structure (column offsets and a smooth ramp) in the data section (drawn "
                      "signature only)",
    "dead_pixels": "scattered dead pixels of 0-5 % response (drawn signature only)",
}

_DEFAULT_FRINGE = {"iSDSS": 0.008, "J0861": 0.02, "zSDSS": 0.025}

#: Per-instrument defaults for parameters left at ``None``.
_INSTRUMENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "t80cam": {"pointing_error_arcsec": 120.0, "distortion_corner_px": 3.0, "n_bad_columns": 12},
    "mini": {"pointing_error_arcsec": 45.0, "distortion_corner_px": 1.5, "n_bad_columns": 3},
}


#: The nominal world: the values of the fields that make the simulated world independent of the pipeline's
#: assumptions (the defaults of :class:`SimConfig`) set to the pipeline-shaped ones: the instrument file's signature
#: without its calibration sequences, one Moffat PSF family of beta ``psf_beta`` with a smooth field variation,
#: static stars, the nominal passbands, SIP-3 distortion and an exact header plate scale. Only for tests that need an
#: exactly known instrument (:meth:`SimConfig.nominal`).
NOMINAL_WORLD: dict[str, Any] = {
    "draw_signature": False, "n_ptc_pairs": 0, "n_linearity_flats": 0, "psf_family": "moffat",
    "psf_beta_range": None, "psf_field_bump": 0.0, "star_pm_sigma_masyr": 0.0, "passband_shift_fraction": 0.0,
    "distortion_radial5_corner_px": 0.0, "distortion_tangential_corner_px": 0.0, "plate_scale_error": 0.0,
}


@dataclass(frozen=True)
class SimConfig:
    """Parameters of a simulation. Defaults give a realistic J-PLUS-like night in a world independent of the
    pipeline's assumptions (see the module documentation; :meth:`nominal` for the pipeline-shaped world).

    Attributes are grouped: survey plan, calibration plan, sky truth, atmosphere and PSF,
    astrometry, detector, transients, noise, reference catalog, execution.
    """

    # ---- survey plan --------------------------------------------------------------------------
    #: first night (local calendar date at the start of the night, ``YYYY-MM-DD``)
    start_date: str = "2025-03-01"
    #: filters observed each night (J-PLUS names); default includes rSDSS and a fringing filter
    filters: tuple[str, ...] = ("gSDSS", "rSDSS", "J0660", "zSDSS")
    #: dithered exposures per tile and filter
    n_dithers: int = 3
    #: dither step in arcsec (pattern (0,0), (+1,+1), (-1,+1), (+1,-1), (-1,-1) ... times the step)
    dither_step_arcsec: float = 10.0
    #: fractional overlap of neighbouring tiles
    tile_overlap: float = 0.10
    #: the same tiles are observed every night (True) or each night observes new tiles (False)
    revisit: bool = True
    #: id of the first tile (OBJECT='TILE-%05d')
    first_tile_id: int = 1
    #: pointings of the survey's tiling (:mod:`upad.coadd.tiling`, default overlap): the pointing holding the field
    #: centre and the next ones along its declination band, with the tiling's ids (``first_tile_id`` and
    #: ``tile_overlap`` are then unused)
    survey_tiling: bool = False
    #: a tile's dithers are spread over the nights (night ``n`` of ``N`` observes the dithers ``d`` with
    #: ``d % N == n``; needs ``revisit``), as happens when a tile is finished on another night
    spread_nights: bool = False
    #: field centre RA (deg); None: the local sidereal time at the middle of the first night's dark time
    field_ra: float | None = None
    #: field centre Dec (deg)
    field_dec: float = 38.0
    #: exposure time per filter (s); None: from the filter file
    exptimes: dict[str, float] | None = None
    #: seconds between exposures of a dither sequence (readout + offset)
    dither_overhead_s: float = 20.0
    #: seconds to slew to a new tile or change filter
    slew_overhead_s: float = 60.0
    #: readout time (s): T80Cam at 500 kHz with 16 outputs ~ 11 s
    readout_time_s: float = 12.0

    # ---- calibration plan ---------------------------------------------------------------------
    n_bias: int = 11
    bias_interval_s: float = 30.0
    n_dark: int = 3
    dark_exptime: float = 300.0
    n_dome_flats: int = 5
    #: dome-flat level (ADU above bias), per frame scattered by 5 %
    dome_flat_level_adu: float = 20000.0
    n_sky_flats: int = 5
    #: sky-flat target level (ADU above bias); exposure times scale with the twilight sky
    sky_flat_level_adu: float = 25000.0
    #: sky-flat exposure time limits (s)
    sky_flat_exptime_range: tuple[float, float] = (1.0, 90.0)
    #: sun altitude (deg) at the first sky flat (dusk)
    sky_flat_sun_start: float = -3.0
    #: faint stars per deg^2 in sky flats (random, different in every flat)
    sky_flat_star_density: float = 400.0
    #: twilight-flat large-scale gradient, peak to peak over the field (fraction): the first value at a Sun
    #: altitude of -9 deg or lower, the second at -3 deg or higher (linear in between, +-10 % per flat); the
    #: sky brightens towards the Sun's azimuth. (0, 0): uniform twilight flats
    sky_flat_gradient_range: tuple[float, float] = (0.01, 0.06)
    #: curvature of the twilight gradient along the Sun's direction, as a fraction of its peak to peak
    sky_flat_gradient_curvature: float = 0.05

    # ---- sky truth ----------------------------------------------------------------------------
    #: faint limit of the truth catalog (AB mag in rSDSS)
    mag_limit: float = 22.0
    #: stars per deg^2 with r <= 21 (high-latitude-like)
    star_density_r21: float = 3500.0
    #: galaxies per deg^2 with r <= 21
    galaxy_density_r21: float = 5500.0
    #: star counts slope d log N / dm, bright (< star_slope_break) and faint
    star_slope_bright: float = 0.35
    star_slope_faint: float = 0.20
    star_slope_break: float = 17.0
    #: galaxy counts slope d log N / dm
    galaxy_slope: float = 0.45
    star_bright_limit: float = 9.0
    galaxy_bright_limit: float = 14.0
    #: extra bright stars (r 9-11) added near every tile centre so that saturation and bleeding always occur
    bright_stars_per_tile: int = 2
    #: Sersic truncation radius in units of the half-light radius
    sersic_trunc: float = 8.0

    # ---- atmosphere and PSF -------------------------------------------------------------------
    #: Moffat beta of the PSF
    psf_beta: float = 3.0
    #: median zenith seeing FWHM in rSDSS (arcsec); per night lognormal, per exposure +-5 %
    seeing_median_arcsec: float = 1.1
    seeing_night_sigma_dex: float = 0.08
    seeing_exposure_sigma: float = 0.05
    #: survey seeing limits (FWHM is clipped to this range)
    seeing_range_arcsec: tuple[float, float] = (0.8, 2.0)
    #: FWHM increase at the field corner (fraction), plus a random linear gradient of half that size
    psf_fwhm_field_variation: float = 0.08
    #: PSF ellipticity scale (reduced shear) at the centre and the corner
    psf_ellipticity: float = 0.03
    #: PSF zones per axis: the PSF is constant within a zone (sampled at its centre)
    psf_zones: int = 8
    #: PSF family: "moffat" (beta ``psf_beta`` or drawn from ``psf_beta_range``), "double_gaussian" (core + wing),
    #: "kolmogorov_optics" (GalSim Kolmogorov atmosphere x OpticalPSF with field-dependent aberrations), or
    #: "mixed" (one of the three drawn per exposure)
    psf_family: str = "mixed"
    #: Moffat beta drawn per exposure uniformly in this range (None: ``psf_beta``)
    psf_beta_range: tuple[float, float] | None = (2.0, 5.0)
    #: central FWHM (arcsec) of every exposure, replacing the seeing model (None: seeing model)
    psf_seeing_arcsec: float | None = None
    #: central FWHM drawn per exposure log-uniformly in this range (arcsec), replacing the seeing model (None: off)
    psf_seeing_draw_range: tuple[float, float] | None = None
    #: amplitude (fraction of the FWHM) of a Gaussian bump of the FWHM over the field, a variation that no low-order
    #: polynomial follows (0: off)
    psf_field_bump: float = 0.05
    #: sky brightness scatter from exposure to exposure (mag)
    sky_sigma_mag: float = 0.03
    #: night-to-night sky brightness scatter (mag)
    sky_night_sigma_mag: float = 0.08
    #: nightly transparency range (uniform), and per-exposure scatter
    transparency_night_range: tuple[float, float] = (0.93, 1.0)
    transparency_sigma: float = 0.015
    #: moonlit science frames: sky brighter by this many magnitudes (0: dark time)
    moon_brightening_mag: float = 0.0
    #: moonlit science frames: sky gradient peak to peak over the field (fraction), towards the Moon's position
    #: angle (drawn per night), +-10 % per frame; 0: none
    moon_gradient: float = 0.0
    #: scattered light: a fixed smooth glow added to every sky-lit frame (twilight flats and science), as a
    #: fraction of the sky level at its peak (it is light, not pixel response: a flat keeps it); 0: none
    scattered_light_fraction: float = 0.0

    # ---- astrometry ---------------------------------------------------------------------------
    #: pointing error sigma per axis (arcsec); None: instrument default (T80Cam 120", mini 45")
    pointing_error_arcsec: float | None = None
    #: rotation of the detector on the sky, sigma (deg), fixed per camera, plus 0.005 deg per exposure
    rotation_sigma_deg: float = 0.03
    #: radial (cubic) distortion at the field corner (pixels); None: instrument default
    distortion_corner_px: float | None = None
    #: 5th-order radial distortion ``k5 r^4 (u, v)`` at the field corner (pixels), beyond the cubic one; 0: none
    distortion_radial5_corner_px: float = 1.0
    #: tangential (decentering, Brown-Conrady) distortion at the field corner (pixels; direction drawn per camera,
    #: modulated by 1 + r^2/rc^2); 0: none
    distortion_tangential_corner_px: float = 0.3
    #: true plate scale / nominal (header) plate scale - 1 (e.g. 0.01: the header's scale is 1 % wrong)
    plate_scale_error: float = 0.01
    #: the true x axis is mirrored relative to the header's nominal WCS (a parity error of the header)
    parity_flip: bool = False

    # ---- detector -----------------------------------------------------------------------------
    #: true gains scatter around the nominal (header) values by this fraction (fixed per camera)
    gain_scatter: float = 0.01
    #: night-to-night bias offset sigma (ADU), per amplifier
    bias_night_sigma_adu: float = 2.0
    #: frame-to-frame bias jitter sigma (ADU), per amplifier
    bias_frame_sigma_adu: float = 0.5
    #: bias drift amplitude along the readout (ADU, sigma of the polynomial coefficients)
    bias_drift_adu: float = 3.0
    #: dark current (e-/s/pixel); None: instrument value
    dark_current: float | None = None
    #: fraction of hot pixels and their dark-rate range (e-/s, log-uniform)
    hot_pixel_fraction: float = 2e-4
    hot_pixel_rate: tuple[float, float] = (0.05, 20.0)
    #: number of bad columns (about 2/3 dead, 1/3 hot); None: instrument default
    n_bad_columns: int | None = None
    prnu_sigma: float = 0.01
    prnu_smooth: float = 0.005
    #: illumination loss at the field corner due to vignetting (fraction)
    vignetting_corner: float = 0.05
    #: peak-to-peak amplitude of the dome-only illumination term (fraction)
    illumination_amplitude: float = 0.015
    #: fringe RMS amplitude as a fraction of the sky, per filter (fringing filters not listed: 0.015)
    fringe_amplitude: dict[str, float] = field(default_factory=lambda: dict(_DEFAULT_FRINGE))
    #: typical fringe spatial period (pixels)
    fringe_period_px: float = 40.0
    #: frame-to-frame variation of the fringe amplitude relative to the sky (sigma, fraction of the fringe):
    #: an additive fringe component (sky lines vary independently of the continuum); 0: exactly proportional
    fringe_frame_sigma: float = 0.0

    # ---- transients ---------------------------------------------------------------------------
    #: cosmic-ray rate (events per cm^2 per minute); ~ a few at 2000 m altitude
    cosmic_rate: float = 3.0
    #: depleted thickness (um) and mean deposit (e- per um of path)
    depletion_um: float = 40.0
    cosmic_e_per_um: float = 80.0
    #: probability that a science exposure has a satellite trail
    satellite_probability: float = 0.1
    #: make sure every night with science exposures has at least one trail
    ensure_satellite: bool = True
    #: satellite trail brightness range (e- per pixel of trail length, log-uniform)
    satellite_flux_range: tuple[float, float] = (300.0, 30000.0)
    #: Gaussian sigma range of a trail's cross profile (pixels, log-uniform): wide trails are aircraft or defocused
    #: satellites (up to ~15 pixels); None: the exposure's PSF sigma (a focused satellite)
    satellite_sigma_range_px: tuple[float, float] | None = None

    # ---- noise --------------------------------------------------------------------------------
    #: above this expectation (e-) Poisson noise is drawn from its Gaussian approximation (much faster)
    poisson_gaussian_above: float = 1000.0

    # ---- reference catalog --------------------------------------------------------------------
    #: stars brighter than this Gaia-like G magnitude go into the reference catalog
    refcat_mag_limit: float = 20.5
    #: survey-filter magnitudes (synthetic photometry) are given for stars brighter than this G
    refcat_synphot_limit: float = 17.65
    #: magnitude scatter of the reference photometry
    refcat_mag_error: float = 0.015
    #: margin around the tiles covered by the reference catalog (deg)
    refcat_margin_deg: float = 0.05
    #: the reference catalog carries survey-filter magnitudes (mag_<filter>, as Gaia XP synthetic photometry) for
    #: stars brighter than refcat_synphot_limit; False: a plain Gaia extract (G, BP, RP, astrometry) only
    refcat_survey_mags: bool = True
    #: error of the survey-filter reference magnitudes at G = refcat_synphot_limit, in addition to refcat_mag_error
    #: (grows as the flux falls; doubled for filters bluer than 4000 A, as XP synthetic photometry)
    refcat_synphot_error_faint: float = 0.02
    #: proper-motion dispersion of the stars at r = 15 (mas/yr; smaller for fainter stars), plus a mean reflex
    #: motion of (-2, -3) mas/yr; the stars move from the catalog epoch 2016.0 to each frame's. 0: static stars
    star_pm_sigma_masyr: float = 5.0
    #: each filter's real passband is shifted from the nominal one by a drawn N(0, fraction x FWHM) (a colour term
    #: between the camera's natural system and the survey's); 0: the camera has the nominal passbands
    passband_shift_fraction: float = 0.01

    # ---- execution ----------------------------------------------------------------------------
    #: processes generating frames in parallel; None: min(2, CPUs)
    workers: int | None = None
    #: effects switched off (names from EFFECTS)
    disabled: tuple[str, ...] = ()

    # ---- instrument signature drawn around the instrument file (issue 10) ----------------------
    #: draw every detector property around the instrument file per camera (seeded): read noise, full well,
    #: a non-linearity curve of another form than the pipeline's (``lin * (1 - a (lin/L)^p)``), crosstalk between
    #: amplifiers, a fixed bias structure and dead pixels; False: the instrument file's values (nominal world)
    draw_signature: bool = True
    #: fractional scatter of the drawn read noise and full well around the instrument file
    read_noise_scatter: float = 0.05
    full_well_scatter: float = 0.05
    #: fractional scatter of the drawn non-linearity (deviation at 50000 ADU) around the instrument file's
    nonlinearity_scatter: float = 0.3
    #: typical |crosstalk coefficient| amplifier to amplifier (raw layouts with several amplifiers)
    crosstalk_scale: float = 3e-4
    #: rms of the fixed bias structure (columns and a smooth pattern), ADU
    bias_structure_adu: float = 0.8
    #: fraction of dead pixels (response 0-5 %)
    dead_pixel_fraction: float = 2e-5
    #: photon-transfer-curve dome-flat pairs per night (0: none), at log-spaced levels in ``ptc_level_range_adu``
    n_ptc_pairs: int = 6
    ptc_level_range_adu: tuple[float, float] = (300.0, 45000.0)
    #: linearity series: dome flats of rising exposure time per night (0: none), up to ``linearity_max_adu``
    n_linearity_flats: int = 10
    linearity_max_adu: float = 62000.0
    #: dome-lamp rate (ADU/s at the nominal gain) of the signature sequences (level = rate x exposure time)
    signature_lamp_adu_s: float = 2500.0
    #: per-frame column offsets of the bias (rms, ADU, per amplifier), the same in the data and the parallel
    #: overscan rows of a column (0: none)
    bias_column_jitter_adu: float = 0.0

    def __post_init__(self) -> None:
        unknown = [e for e in self.disabled if e not in EFFECTS]
        if unknown:
            raise UpadError(f"unknown simulator effect(s): {', '.join(unknown)}",
                            hint=f"known effects: {', '.join(EFFECTS)}")
        for name in ("n_dithers", "n_bias", "n_dark", "n_dome_flats", "n_sky_flats"):
            if getattr(self, name) < 0:
                raise UpadError(f"{name} must be >= 0, got {getattr(self, name)}", hint="use 0 to skip that kind")
        if self.n_dithers < 1:
            raise UpadError("n_dithers must be >= 1", hint="a tile needs at least one exposure per filter")
        if self.psf_family not in ("moffat", "double_gaussian", "kolmogorov_optics", "mixed"):
            raise UpadError(f"unknown PSF family {self.psf_family!r}",
                            hint="psf_family is one of moffat, double_gaussian, kolmogorov_optics, mixed")

    @classmethod
    def nominal(cls, **overrides: Any) -> "SimConfig":
        """The nominal (pipeline-shaped) world of :data:`NOMINAL_WORLD`, with ``overrides`` applied on top.

        Use it only where a test or a study needs an exactly known instrument (the instrument file's gains, read
        noise and non-linearity, one Moffat PSF, static stars, nominal passbands, SIP-3 distortion), and say why.
        """
        return cls(**{**NOMINAL_WORLD, **overrides})

    def enabled(self, effect: str) -> bool:
        """Whether ``effect`` (a key of :data:`EFFECTS`) is on."""
        if effect not in EFFECTS:
            raise KeyError(effect)
        return effect not in self.disabled

    def resolved(self, instrument_key: str) -> "SimConfig":
        """A copy with every ``None`` parameter replaced by the default for ``instrument_key``."""
        defaults = _INSTRUMENT_DEFAULTS.get(instrument_key, _INSTRUMENT_DEFAULTS["t80cam"])
        changes = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **changes)

    def with_overrides(self, pairs: list[str] | tuple[str, ...]) -> "SimConfig":
        """Apply ``KEY=VALUE`` strings (VALUE parsed as JSON when possible, else taken as text)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for pair in pairs:
            if "=" not in pair:
                raise UpadError(f"bad --set value {pair!r}", hint="write KEY=VALUE, e.g. --set n_bias=5")
            key, text = pair.split("=", 1)
            key = key.strip()
            if key not in fields:
                raise UpadError(f"unknown simulator parameter {key!r}",
                                hint="see docs/simulator.md or upad.sim.SimConfig for the parameter list")
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text
            current = getattr(self, key)
            if isinstance(current, tuple) and isinstance(value, (list, str)):
                value = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
            changes[key] = value
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every parameter."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))
