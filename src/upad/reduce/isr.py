"""Instrument-signature removal (ISR): the pure array operations applied to every raw frame.

Order of operations (:func:`run_isr`), each also available on its own:

1. **overscan** — per amplifier, the bias level of every data row is estimated from the serial overscan
   (:func:`overscan_profile`: a fitted low-order Legendre polynomial along the rows, the row-wise median smoothed
   over a few rows, or one constant) and subtracted while the amplifier is copied into the assembled image;
2. **trim and assemble** (:func:`assemble`) — the data section of every amplifier goes to its place in the active
   image (float32); prescan and overscans are dropped. The ``archived`` raw layout is already trimmed and has no
   overscan: its bias level must come from a master bias;
3. **master bias** subtraction (ADU, assembled image);
4. **non-linearity** (:func:`linearize`) — per amplifier, the instrument file's ``[c2, c3]`` with
   ``measured = linear + c2 linear² + c3 linear³`` (bias-subtracted ADU) is inverted by Newton iterations;
5. **gain** (:func:`apply_gain`) — ADU → electrons with each amplifier's gain (e-/ADU);
6. **dark** (:func:`subtract_dark`) — a dark-current map (e-/s) times the exposure time;
7. **flat** (:func:`divide_flat`) — division by a normalised flat field.

Pixels at or above the ADC saturation level in the raw frame are reported in a boolean mask
(:func:`saturation_mask`), computed before any arithmetic. Everything works in float32 and in place where possible:
the assembled image is the only full-size allocation. No function here reads files or touches a database.

Units: raw and overscan in ADU; after :func:`apply_gain` electrons; dark maps in electrons per second.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from upad.instruments import AmpSection, Instrument

__all__ = [
    "OVERSCAN_METHODS",
    "IsrOptions",
    "IsrResult",
    "amp_grid",
    "amp_index_map",
    "apply_gain",
    "assemble",
    "divide_flat",
    "linearize",
    "overscan_profile",
    "run_isr",
    "saturation_mask",
    "serial_overscan",
    "subtract_dark",
]

#: Overscan estimators: a Legendre polynomial fitted along the rows, the row-wise median smoothed over
#: ``smooth_rows`` rows, one constant (the median of the overscan), or no overscan correction.
OVERSCAN_METHODS = ("poly", "rows", "mean", "none")


@dataclass(frozen=True)
class IsrOptions:
    """How the ISR primitives are applied.

    Attributes
    ----------
    overscan : str
        One of :data:`OVERSCAN_METHODS`.
    overscan_order : int
        Order of the Legendre polynomial fitted along the rows (``overscan='poly'``).
    overscan_smooth : int
        Running-mean window (rows) applied to the row-wise overscan median (``overscan='rows'``); 1 = no smoothing.
    overscan_skip : int
        Serial-overscan columns nearest to the data that are ignored (charge-transfer trailing).
    linearize : bool
        Correct the non-linearity with the instrument file's coefficients.
    to_electrons : bool
        Multiply by the gain of each amplifier (ADU → e-).
    saturation_adu : float or None
        Raw level (ADU) at or above which a pixel is saturated; ``None``: the instrument's ADC maximum.
    """

    overscan: str = "poly"
    overscan_order: int = 3
    overscan_smooth: int = 31
    overscan_skip: int = 1
    linearize: bool = True
    to_electrons: bool = True
    saturation_adu: float | None = None

    def __post_init__(self) -> None:
        if self.overscan not in OVERSCAN_METHODS:
            raise ValueError(f"unknown overscan method {self.overscan!r}; expected one of {OVERSCAN_METHODS}")
        if self.overscan_order < 0 or self.overscan_smooth < 1 or self.overscan_skip < 0:
            raise ValueError("overscan_order must be >= 0, overscan_smooth >= 1 and overscan_skip >= 0")


@dataclass
class IsrResult:
    """The output of :func:`run_isr`.

    Attributes
    ----------
    image : ndarray
        Assembled active image, float32 (electrons when ``to_electrons``, otherwise ADU).
    saturated : ndarray
        Boolean mask (active shape) of pixels at the ADC saturation level in the raw frame.
    overscan_level : list of float or None
        Mean overscan level per amplifier (ADU), ``None`` when no overscan was subtracted.
    unit : str
        ``'electron'`` or ``'adu'``.
    notes : list of str
        What was (not) done, e.g. ``'no overscan in the archived layout'``.
    """

    image: np.ndarray
    saturated: np.ndarray
    overscan_level: list[float] | None
    unit: str
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------ geometry
def amp_grid(inst: Instrument) -> tuple[int, int, int]:
    """``(amp_ny, amp_nx, n_amp_x)``: amplifiers tile the assembled image as a regular grid, row by row."""
    lay = inst.layout
    return lay.amp_ny, lay.amp_nx, lay.n_amp_x


def amp_index_map(inst: Instrument) -> np.ndarray:
    """0-based amplifier index of every pixel of the assembled image (int16)."""
    lay = inst.layout
    iy = np.arange(lay.active_shape[0]) // lay.amp_ny
    ix = np.arange(lay.active_shape[1]) // lay.amp_nx
    return (iy[:, None] * lay.n_amp_x + ix[None, :]).astype(np.int16)


def _check_shape(raw: np.ndarray, inst: Instrument, layout: str) -> None:
    expected = inst.raw_shape(layout)
    if raw.shape != expected:
        raise ValueError(f"raw frame of shape {raw.shape} does not match the {layout} layout of {inst.name} "
                         f"({expected}); check the frame's layout and instrument")


# ------------------------------------------------------------------------------------------------------ overscan
def serial_overscan(raw: np.ndarray, sec: AmpSection, *, skip: int = 1) -> np.ndarray | None:
    """The serial-overscan columns of amplifier ``sec`` (data rows only), without the ``skip`` columns nearest to
    the data; ``None`` when the raw layout has no overscan."""
    if sec.overscan_x is None:
        return None
    strip = raw[sec.overscan_x]
    ncol = strip.shape[1]
    skip = min(skip, max(ncol - 1, 0))
    # read from the right (flipped): the overscan lies left of the data, its last column touches the data
    return strip[:, : ncol - skip] if sec.read_flip_x else strip[:, skip:]


def overscan_profile(strip: np.ndarray, *, method: str = "poly", order: int = 3, smooth_rows: int = 31,
                     clip_sigma: float = 3.0) -> np.ndarray:
    """Bias level (ADU) of every row of an overscan strip.

    Parameters
    ----------
    strip : ndarray
        Overscan pixels, shape ``(n_rows, n_columns)`` (ADU).
    method : {'poly', 'rows', 'mean'}
        ``'poly'``: Legendre polynomial of ``order`` fitted to the row-wise medians with ``clip_sigma`` rejection;
        ``'rows'``: row-wise median smoothed by a running mean over ``smooth_rows`` rows;
        ``'mean'``: the median of the whole strip, the same for every row.
    order : int
        Polynomial order (``'poly'``).
    smooth_rows : int
        Running-mean window in rows (``'rows'``).
    clip_sigma : float
        Rejection threshold of the polynomial fit (robust sigma of the residuals).

    Returns
    -------
    ndarray
        float64, shape ``(n_rows,)``.
    """
    strip = np.asarray(strip)
    n = strip.shape[0]
    row_med = np.median(strip, axis=1).astype(np.float64)
    if method == "mean":
        return np.full(n, float(np.median(row_med)))
    if method == "rows":
        if smooth_rows <= 1 or n < 3:
            return row_med
        w = min(int(smooth_rows), n)
        pad = w // 2
        padded = np.pad(row_med, (pad, w - 1 - pad), mode="edge")
        c = np.cumsum(np.concatenate([[0.0], padded]))
        return (c[w:] - c[:-w]) / w
    if method == "poly":
        x = np.linspace(-1.0, 1.0, n)
        keep = np.ones(n, bool)
        coef = np.zeros(order + 1)
        for _ in range(3):
            coef = np.polynomial.legendre.legfit(x[keep], row_med[keep], order)
            resid = row_med - np.polynomial.legendre.legval(x, coef)
            sig = 1.4826 * np.median(np.abs(resid[keep] - np.median(resid[keep])))
            if not np.isfinite(sig) or sig == 0:
                break
            new = np.abs(resid) <= clip_sigma * sig
            if new.sum() < order + 2 or np.array_equal(new, keep):
                break
            keep = new
        return np.polynomial.legendre.legval(x, coef)
    raise ValueError(f"unknown overscan method {method!r}; expected one of {OVERSCAN_METHODS}")


def assemble(raw: np.ndarray, sections: Sequence[AmpSection], *, options: IsrOptions = IsrOptions(),
             out: np.ndarray | None = None) -> tuple[np.ndarray, list[float] | None]:
    """Trim every amplifier's data into the assembled image, subtracting its overscan profile on the way.

    Parameters
    ----------
    raw : ndarray
        Raw frame (any numeric dtype, ADU).
    sections : sequence of AmpSection
        ``Instrument.amp_sections(layout)`` for the frame's raw layout.
    options : IsrOptions
        Overscan method and parameters (``overscan='none'`` only trims).
    out : ndarray, optional
        float32 array of the active shape to fill (allocated when omitted).

    Returns
    -------
    image : ndarray
        float32 assembled image in ADU (overscan-subtracted when the layout has an overscan).
    levels : list of float or None
        Mean subtracted overscan level per amplifier, ``None`` when nothing was subtracted.
    """
    ny = max(s.active[0].stop for s in sections)
    nx = max(s.active[1].stop for s in sections)
    if out is None:
        out = np.empty((ny, nx), np.float32)
    elif out.shape != (ny, nx) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {(ny, nx)}, got {out.dtype} {out.shape}")
    levels: list[float] | None = [] if options.overscan != "none" else None
    for sec in sections:
        dst = out[sec.active]
        dst[...] = raw[sec.data]
        if options.overscan == "none":
            continue
        strip = serial_overscan(raw, sec, skip=options.overscan_skip)
        if strip is None:
            levels = None
            continue
        prof = overscan_profile(strip, method=options.overscan, order=options.overscan_order,
                                smooth_rows=options.overscan_smooth)
        dst -= prof.astype(np.float32)[:, None]
        if levels is not None:
            levels.append(float(prof.mean()))
    return out, levels


def saturation_mask(raw: np.ndarray, sections: Sequence[AmpSection], *, level: float) -> np.ndarray:
    """Boolean mask (assembled shape) of the pixels whose raw value is at or above ``level`` ADU."""
    ny = max(s.active[0].stop for s in sections)
    nx = max(s.active[1].stop for s in sections)
    mask = np.zeros((ny, nx), bool)
    for sec in sections:
        np.greater_equal(raw[sec.data], level, out=mask[sec.active])
    return mask


# ------------------------------------------------------------------------------------------------------ pixels
def linearize(image: np.ndarray, sections: Sequence[AmpSection], coefficients: Sequence[Sequence[float]], *,
              iterations: int = 3) -> None:
    """Invert the per-amplifier non-linearity in place.

    ``image`` holds *bias-subtracted* ADU; for amplifier ``k`` with ``(c2, c3) = coefficients[k]`` the measured
    value ``m`` relates to the linear one ``l`` by ``m = l + c2 l² + c3 l³``. ``l`` is found by Newton iterations
    from ``l = m`` (3 iterations reach float32 precision for corrections of a few per cent).
    """
    for sec in sections:
        coeffs = tuple(coefficients[sec.index]) + (0.0, 0.0)
        c2, c3 = float(coeffs[0]), float(coeffs[1])
        if c2 == 0.0 and c3 == 0.0:
            continue
        m = image[sec.active]
        c2f, c3f = np.float32(c2), np.float32(c3)
        lin = m.copy()
        for _ in range(iterations):
            f = lin * (np.float32(1.0) + lin * (c2f + c3f * lin))
            f -= m
            df = np.float32(1.0) + lin * (np.float32(2.0) * c2f + np.float32(3.0) * c3f * lin)
            f /= df
            lin -= f
        m[...] = lin


def apply_gain(image: np.ndarray, sections: Sequence[AmpSection], gains: Sequence[float]) -> None:
    """Multiply every amplifier's pixels by its gain (e-/ADU), in place: ADU → electrons."""
    for sec in sections:
        image[sec.active] *= np.float32(gains[sec.index])


def subtract_dark(image: np.ndarray, dark_rate: np.ndarray, exptime: float) -> None:
    """Subtract ``dark_rate`` (e-/s, assembled shape) times ``exptime`` (s) in place."""
    if exptime <= 0:
        return
    if dark_rate.shape != image.shape:
        raise ValueError(f"dark of shape {dark_rate.shape} does not match the image {image.shape}")
    image -= np.asarray(dark_rate, np.float32) * np.float32(exptime)


def divide_flat(image: np.ndarray, flat: np.ndarray) -> None:
    """Divide by a normalised flat in place; pixels where the flat is not positive and finite become NaN."""
    if flat.shape != image.shape:
        raise ValueError(f"flat of shape {flat.shape} does not match the image {image.shape}")
    flat = np.asarray(flat, np.float32)
    good = np.isfinite(flat) & (flat > 0)
    np.divide(image, flat, out=image, where=good)
    image[~good] = np.nan


def run_isr(raw: np.ndarray, inst: Instrument, *, layout: str, options: IsrOptions = IsrOptions(),
            bias: np.ndarray | None = None, dark: np.ndarray | None = None, exptime: float = 0.0,
            flat: np.ndarray | None = None, gains: Sequence[float] | None = None,
            nonlinearity: Sequence[Sequence[float]] | None = None, detector: int = 1) -> IsrResult:
    """Apply the whole ISR chain to one raw frame (see the module documentation for the order).

    Parameters
    ----------
    raw : ndarray
        Raw frame of ``layout`` (ADU, typically uint16).
    inst : Instrument
        The camera (geometry, gains, non-linearity, ADC maximum).
    layout : {'readout', 'archived'}
        Raw layout of ``raw``.
    options : IsrOptions
        Overscan, non-linearity, gain and saturation options.
    bias : ndarray, optional
        Master bias (ADU, assembled shape), subtracted after the overscan. Required for an ``archived`` frame to
        remove its bias level.
    dark : ndarray, optional
        Dark-current map (e-/s, assembled shape), subtracted times ``exptime`` (needs ``to_electrons``).
    exptime : float
        Exposure time in seconds (for the dark).
    flat : ndarray, optional
        Normalised flat field (assembled shape).
    gains : sequence of float, optional
        e-/ADU per amplifier; default the instrument file's.
    nonlinearity : sequence of (c2, c3), optional
        Per-amplifier coefficients; default the instrument file's.
    detector : int
        Detector id (multi-detector cameras).

    Returns
    -------
    IsrResult
    """
    _check_shape(raw, inst, layout)
    sections = inst.amp_sections(layout, detector)
    notes: list[str] = []
    sat_level = options.saturation_adu if options.saturation_adu is not None else float(inst.adc_max)
    saturated = saturation_mask(raw, sections, level=sat_level)
    image, levels = assemble(raw, sections, options=options)
    if options.overscan != "none" and levels is None:
        notes.append(f"no overscan in the {layout} layout: the bias level comes from the master bias only")
    if bias is not None:
        if bias.shape != image.shape:
            raise ValueError(f"master bias of shape {bias.shape} does not match the image {image.shape}")
        image -= np.asarray(bias, np.float32)
    elif levels is None:
        notes.append("no bias subtracted: values include the electronic offset")
    amps = inst.detector(detector).amplifiers
    if options.linearize:
        coeffs = nonlinearity if nonlinearity is not None else [a.nonlinearity for a in amps]
        linearize(image, sections, coeffs)
    unit = "adu"
    if options.to_electrons:
        apply_gain(image, sections, gains if gains is not None else [a.gain for a in amps])
        unit = "electron"
    if dark is not None:
        if unit != "electron":
            raise ValueError("a dark (e-/s) can only be subtracted from an image in electrons (to_electrons=True)")
        subtract_dark(image, dark, exptime)
    if flat is not None:
        divide_flat(image, flat)
    return IsrResult(image=image, saturated=saturated, overscan_level=levels, unit=unit, notes=notes)
