"""Configuration of the calibration steps and of the master lookup (``[steps.<name>]`` in ``<root>/upad.toml``).

:class:`LookupConfig` is what :func:`upad.calib.lookup.select_masters` needs; a step that reduces science frames
makes its configuration a subclass of it, so that the same parameters drive ``upad calib lookup`` and the step.

The ISR parameters of every master step are one nested :class:`~upad.isr.config.IsrConfig` (field ``isr``), the same
class as the reduction step's: science frames are processed as the masters are.
"""
from __future__ import annotations

from dataclasses import dataclass

from upad.config import StepConfig, param
from upad.isr.config import IsrConfig

__all__ = [
    "FLAT_TYPES",
    "KINDS",
    "BadPixelConfig",
    "CalibLookupBase",
    "LookupConfig",
    "MasterBiasConfig",
    "MasterConfigBase",
    "MasterDarkConfig",
    "MasterFlatConfig",
    "MasterFringeConfig",
    "MasterIllumConfig",
    "SignatureConfig",
]

#: Kinds of masters, in the order they are looked up.
KINDS = ("bias", "dark", "flat", "fringe", "illumination", "bpm", "signature")

#: Flat types: dome (screen) and sky (twilight) flats.
FLAT_TYPES = ("dome", "sky")


@dataclass(frozen=True)
class CalibLookupBase(StepConfig):
    """Parameters of the lookup of masters (shared by every step that uses masters)."""

    fallback_nights: int = param(10, doc="When no master is valid at the frame's time, use the nearest valid master "
                                         "within this many nights (same configuration and epoch)",
                                 bounds=(0, 3650), unit="night", critical=False)
    flat_types: tuple = param(("dome", "sky"), doc="Flat types in order of preference (dome, sky)",
                              critical=False)
    wait_for_expected: bool = param(True, doc="Wait for a master of the frame's own night that is being built or "
                                              "will be (its series is still being taken) instead of falling back "
                                              "to another night's", critical=False)

    def validate(self) -> None:
        super().validate()
        bad = [t for t in self.flat_types if t not in FLAT_TYPES]
        self.require(not bad and bool(self.flat_types), "flat_types",
                     f"= {list(self.flat_types)!r} is not a non-empty list of {list(FLAT_TYPES)}",
                     hint="e.g. flat_types = [\"dome\", \"sky\"]")


@dataclass(frozen=True)
class LookupConfig(CalibLookupBase):
    """What a science frame needs (the reduction step's configuration derives from this class)."""

    kinds: tuple = param(KINDS, doc="Kinds of masters looked up for a science frame", critical=False)
    required: tuple = param(("bias", "flat"), doc="Kinds without which a science frame waits (the others are "
                                                  "applied when available); 'fringe' only counts for fringing "
                                                  "filters", critical=False)

    def validate(self) -> None:
        super().validate()
        for name in ("kinds", "required"):
            bad = [k for k in getattr(self, name) if k not in KINDS]
            self.require(not bad, name, f"has unknown master kind(s) {bad}", hint=f"known kinds: {list(KINDS)}")
        missing = [k for k in self.required if k not in self.kinds]
        self.require(not missing, "required", f"= {list(self.required)} names kind(s) {missing} that are not "
                                              f"looked up (kinds = {list(self.kinds)})",
                     hint="a required kind must also be in kinds: add it to kinds or remove it from required")


@dataclass(frozen=True)
class MasterConfigBase(CalibLookupBase):
    """Parameters shared by every master step: series, ISR (``isr``, nested) and combination."""

    min_frames: int = param(3, doc="Fewest usable input frames for a master", bounds=(1, 1000), critical=False)
    isr: IsrConfig = param(IsrConfig(), doc="Instrument-signature removal (overscan, non-linearity, saturation): "
                                            "one nested table, the same for every step")
    clip_low: float = param(3.0, doc="Lower rejection threshold of the combination", bounds=(0.5, 100),
                            unit="sigma")
    clip_high: float = param(3.0, doc="Upper rejection threshold of the combination", bounds=(0.5, 100),
                             unit="sigma")
    clip_iters: int = param(5, doc="Rejection passes of the combination", bounds=(1, 50))
    memory_mb: float = param(512.0, doc="Memory for the stack buffers of the block-wise combination",
                             bounds=(16, 65536), unit="MB", critical=False)
    threads: int = param(0, doc="Threads of the combination kernel (0: all the worker's CPUs)", bounds=(0, 256),
                         critical=False)


@dataclass(frozen=True)
class MasterBiasConfig(MasterConfigBase):
    level_tol: float = param(5.0, doc="A bias whose level departs from the series median by more than this (or 5 "
                                      "robust sigma of the series) is excluded", bounds=(0, None), unit="ADU")
    noise_ratio: float = param(1.5, doc="A bias noisier than this times the series median is excluded",
                               bounds=(1, None))
    max_saturated: float = param(0.0, doc="Largest fraction of saturated pixels in a usable bias", bounds=(0, 1))


@dataclass(frozen=True)
class MasterDarkConfig(MasterConfigBase):
    level_tol: float = param(0.05, doc="A dark whose dark current departs from the series median by more than this "
                                       "(or 5 robust sigma) is excluded (light leak)", bounds=(0, None),
                             unit="electron/s")
    noise_ratio: float = param(1.5, doc="A dark noisier than this times the series median is excluded",
                               bounds=(1, None))
    max_saturated: float = param(1e-4, doc="Largest fraction of saturated pixels in a usable dark", bounds=(0, 1))
    hot_nsigma: float = param(5.0, doc="Hot pixel: dark current above the median by this many sigma",
                              bounds=(1, None), unit="sigma")
    hot_min_excess: float = param(0.0, doc="Hot pixel: and by at least this much", bounds=(0, None),
                                  unit="electron/s")


@dataclass(frozen=True)
class MasterFlatConfig(MasterConfigBase):
    min_level: float = param(3000.0, doc="Flats fainter than this (median, bias-subtracted) are excluded",
                             bounds=(0, None), unit="ADU")
    max_level: float = param(50000.0, doc="Flats brighter than this (median, bias-subtracted) are excluded",
                             bounds=(0, None), unit="ADU")
    max_saturated: float = param(1e-3, doc="Flats with a larger fraction of saturated pixels are excluded",
                                 bounds=(0, 1))
    use_dark: bool = param(True, doc="Subtract the master dark when one is available")
    star_nsigma: float = param(4.0, doc="Twilight flats: stars are found this many sigma above the median flat",
                               bounds=(1, None), unit="sigma")
    star_grow: int = param(4, doc="Twilight flats: star masks are grown by this many pixels", bounds=(0, 100),
                           unit="pixel")
    qc_rms_max: float = param(0.03, doc="A flat whose rms residual against the master exceeds this is excluded",
                              bounds=(0, None))
    qc_gradient_max: float = param(0.01, doc="A flat whose large-scale residual gradient (peak to peak over the "
                                             "field) exceeds this is excluded", bounds=(0, None))
    qc_cells: int = param(32, doc="Cells along the long axis of the binned residual maps", bounds=(4, 512),
                          critical=False)
    qc_plots: bool = param(True, doc="Write the residual map and histogram PNG of every flat", critical=False)
    gradient_flat_types: tuple = param(("sky",), doc="Flat types whose large-scale gradient (the twilight sky's, "
                                                     "towards the Sun) is fitted and divided out of every flat "
                                                     "before the flats are combined and judged")
    gradient_order: int = param(1, doc="Total degree of the 2-D Legendre polynomial of the per-flat gradient (1: a "
                                       "plane; higher degrees also remove the vignetting, which the illumination "
                                       "correction must then restore)", bounds=(0, 3))
    gradient_model_order: int = param(4, doc="Total degree of the smooth model fitted with the gradient (the "
                                             "vignetting: only real outliers are rejected); only its terms up to "
                                             "gradient_order are removed", bounds=(0, 8))
    gradient_max: float = param(0.15, doc="A flat whose fitted gradient (peak to peak over the field) exceeds this "
                                          "is excluded: its sky was not smooth (clouds, the Moon)",
                                bounds=(0, None))

    def validate(self) -> None:
        super().validate()
        bad = [t for t in self.gradient_flat_types if t not in FLAT_TYPES]
        self.require(not bad, "gradient_flat_types", f"= {list(self.gradient_flat_types)!r} is not a list of "
                                                     f"{list(FLAT_TYPES)}", hint="e.g. gradient_flat_types = [\"sky\"]")
        self.require(self.min_level < self.max_level, "min_level",
                     f"= {self.min_level:g} ADU is not below max_level = {self.max_level:g} ADU",
                     hint="flats between min_level and max_level are used: lower min_level or raise max_level")


@dataclass(frozen=True)
class MasterFringeConfig(MasterConfigBase):
    filters: tuple = param((), doc="Filters to make fringe maps for (empty: every filter with fringing = true in "
                                   "the filter file)", critical=False)
    min_pointings: int = param(2, doc="Fewest distinct pointings (dithers) among the input frames",
                               bounds=(1, 1000), critical=False)
    background_box: int = param(128, doc="Mesh of the sky background (several fringe periods)", bounds=(8, 4096),
                                unit="pixel")
    source_nsigma: float = param(3.0, doc="Sources are masked above this many sigma of the background noise",
                                 bounds=(0.5, None), unit="sigma")
    source_grow: int = param(3, doc="Source masks are grown by this many pixels", bounds=(0, 100), unit="pixel")
    smooth_px: float = param(2.0, doc="Gaussian smoothing of the fringe map (well below the fringe period)",
                             bounds=(0, 100), unit="pixel")


@dataclass(frozen=True)
class MasterIllumConfig(MasterConfigBase):
    build_flat_types: tuple = param(("dome", "sky"), doc="Make an illumination correction for each of these flat "
                                                          "types (the one chosen for a frame must match its flat)",
                                    critical=False)
    min_pointings: int = param(2, doc="Fewest distinct pointings (dithers) among the input frames",
                               bounds=(1, 1000), critical=False)
    background_box: int = param(64, doc="Mesh of the sky background", bounds=(8, 4096), unit="pixel")
    cells: int = param(32, doc="Cells along the long axis of the binned background maps", bounds=(4, 1024))
    order: int = param(3, doc="Total degree of the 2-D Legendre polynomial fitted to the background",
                       bounds=(0, 8))
    max_sky_gradient: float = param(0.05, doc="A frame whose sky has a larger plane (peak to peak over the field) "
                                              "is excluded: moonlight or twilight, not a reference of the response "
                                              "(the airmass alone gives ~3.5 % over a T80Cam field at airmass 1.5)",
                                    bounds=(0, None))
    source_nsigma: float = param(3.0, doc="Sources are masked above this many sigma of the background noise",
                                 bounds=(0.5, None), unit="sigma")
    source_grow: int = param(3, doc="Source masks are grown by this many pixels", bounds=(0, 100), unit="pixel")
    halo_radius_px: int = param(160, doc="Radius of the disc masked around every saturated star: its wings "
                                         "(undetectable per pixel) would enter the sky as a bump of 0.3-0.8 % "
                                         "(160 px: 88\" at 0.55\"/px; 0: off)", bounds=(0, 5000), unit="pixel")


@dataclass(frozen=True)
class BadPixelConfig(CalibLookupBase):
    hot_nsigma: float = param(5.0, doc="Hot pixel: dark current above the median by this many sigma",
                              bounds=(1, None), unit="sigma")
    hot_min_excess: float = param(0.0, doc="Hot pixel: and by at least this much", bounds=(0, None),
                                  unit="electron/s")
    dead_below: float = param(0.2, doc="Dead pixel: response below this fraction of its surroundings",
                              bounds=(0, 1))
    low_below: float = param(0.85, doc="Low-response pixel: response below this fraction of its surroundings",
                             bounds=(0, 1))
    response_box: int = param(32, doc="Mesh of the local flat level the response is measured against",
                              bounds=(4, 4096), unit="pixel")
    column_min_run: int = param(20, doc="Bad column: a vertical run of at least this many flagged pixels",
                                bounds=(2, 100000), unit="pixel")
    column_max_gap: int = param(2, doc="Gaps up to this long inside a bad column are filled", bounds=(0, 100),
                                unit="pixel")

    def validate(self) -> None:
        super().validate()
        self.require(self.dead_below <= self.low_below, "dead_below",
                     f"= {self.dead_below:g} is above low_below = {self.low_below:g}",
                     hint="a dead pixel responds less than a low-response one: dead_below must not exceed "
                          "low_below")


@dataclass(frozen=True)
class SignatureConfig(MasterConfigBase):
    """The instrument signature (:mod:`upad.calib.signature`): gain, read noise, non-linearity, crosstalk and
    saturation level per amplifier, from the night's bias frames, dome flats and science frames."""

    min_exptimes: int = param(6, doc="Fewest distinct exposure times among one filter's dome flats of a night for "
                                     "a signature to be planned (a photon-transfer / linearity sequence)",
                              bounds=(2, 1000), critical=False)
    min_pairs: int = param(3, doc="Fewest flat pairs (two flats of one exposure time) for the photon-transfer gain",
                           bounds=(2, 1000))
    min_linearity: int = param(6, doc="Fewest flats of distinct exposure time for the non-linearity fit",
                               bounds=(5, 1000))
    max_saturated: float = param(1e-3, doc="Dome flats with a larger fraction of saturated pixels are excluded "
                                           "from the photon-transfer pairs and the linearity series (the master "
                                           "flat's screen, :func:`upad.calib.flat.saturation_problem`)",
                                 bounds=(0, 1))
    min_source_adu: float = param(20000.0, doc="Crosstalk sources: pixels at or above this level (bias-subtracted)",
                                  bounds=(100, None), unit="ADU")
    min_crosstalk_weight: float = param(1e11, doc="Least weight (sum of squared source levels over the pixel "
                                                  "variance) behind a crosstalk coefficient", bounds=(0, None),
                                        unit="ADU2")
