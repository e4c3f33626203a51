"""Instrument-signature removal (ISR): the pure array operations applied to every raw frame (:mod:`upad.isr`).

Order of operations (:func:`run_isr`), each also available on its own:

1. **overscan** — per amplifier, the bias level of every data row is estimated from the serial overscan
   (:func:`overscan_profile`: a fitted low-order Legendre polynomial along the rows, the row-wise clipped mean
   smoothed over a few rows, or one constant) and subtracted while the amplifier is copied into the assembled image;
2. **trim and assemble** (:func:`assemble`) — the data section of every amplifier goes to its place in the active
   image (float32); prescan and overscans are dropped. The ``archived`` raw layout is already trimmed and has no
   overscan: its bias level must come from a master bias;
3. **master bias** subtraction (ADU, assembled image);
4. **non-linearity** (:func:`linearize`) — per amplifier, the instrument file's ``[c2, c3]`` with
   ``measured = linear + c2 linear² + c3 linear³`` (bias-subtracted ADU) is inverted by Newton iterations;
5. **gain** (:func:`apply_gain`) — ADU → electrons with each amplifier's gain (e-/ADU);
6. **dark** (:func:`subtract_dark`) — a dark-current map (e-/s) times the exposure time;
7. **flat** (:func:`divide_flat`) — division by a normalised flat field;
8. **illumination** (optional, :func:`divide_flat` again) — division by an illumination-correction map.

Pixels at or above the ADC saturation level in the raw frame are reported in a boolean mask
(:func:`saturation_mask`), computed from the raw values. Everything works in float32 and in place: with the numba
engine the assembled image (and the boolean saturation mask) are the only full-size allocations; the numpy
primitives also make image-sized float32/boolean temporaries (:func:`subtract_dark`, :func:`divide_flat`, one
amplifier at a time in :func:`linearize`). No function here reads files or touches a database.

Two engines run the chain (``IsrOptions.engine``):

* ``'numpy'`` — the primitives above, one after the other (a pass over the image each). They are the reference
  implementation;
* ``'numba'`` — steps 1-8 and the saturation mask in one compiled pass, parallel over the rows (only the overscan
  profiles, from the narrow overscan strips, come from numpy): every amplifier's data is read from the raw frame
  and each output pixel is computed once, with the same float32 operations in the same order as the primitives
  (no fast-math), so both engines agree to float32 rounding (bit for bit in practice). ``'auto'`` (the default)
  uses numba when it is installed, numpy otherwise. The kernel is compiled on first use and cached on disk
  (numba's ``cache=True``), once per combination of input dtypes.

Units: raw and overscan in ADU; after :func:`apply_gain` electrons; dark maps in electrons per second.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from upad.instruments import AmpSection, Instrument

try:  # pragma: no cover - exercised where numba is installed
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

__all__ = [
    "ENGINES",
    "HAVE_NUMBA",
    "LINEARIZE_ITERATIONS",
    "OVERSCAN_METHODS",
    "IsrOptions",
    "IsrResult",
    "amp_grid",
    "amp_index_map",
    "apply_gain",
    "assemble",
    "divide_flat",
    "linearize",
    "linearize_poly",
    "overscan_profile",
    "overscan_row_levels",
    "parallel_overscan_correct",
    "raw_shape_problem",
    "run_isr",
    "saturation_mask",
    "serial_overscan",
    "subtract_dark",
]

#: Overscan estimators: a Legendre polynomial fitted along the rows, the row levels smoothed over
#: ``smooth_rows`` rows, one constant (the median of the overscan), or no overscan correction.
OVERSCAN_METHODS = ("poly", "rows", "mean", "none")

#: Pixel-arithmetic engines of :func:`run_isr`: numba when installed (``'auto'``), the compiled single pass, or the
#: numpy primitives one after the other.
ENGINES = ("auto", "numba", "numpy")

#: Newton iterations of the non-linearity inversion (from ``linear = measured``; float32 precision after 3 for
#: corrections of a few per cent).
LINEARIZE_ITERATIONS = 3


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
    engine : str
        One of :data:`ENGINES`: ``'numba'`` runs assembly and pixel arithmetic as one compiled pass, ``'numpy'``
        the reference primitives; ``'auto'`` picks numba when it is installed.
    crosstalk_flag_adu : float
        Pixels whose crosstalk correction is at least this (ADU) are reported (``IsrResult.crosstalk``).
    overscan_parallel : bool
        Also subtract the column profile of the parallel overscan (where the raw layout has one):
        :func:`parallel_overscan_correct`.
    """

    overscan: str = "poly"
    overscan_order: int = 3
    overscan_smooth: int = 31
    overscan_skip: int = 1
    linearize: bool = True
    to_electrons: bool = True
    saturation_adu: float | None = None
    engine: str = "auto"
    crosstalk_flag_adu: float = 2.0
    overscan_parallel: bool = False

    def __post_init__(self) -> None:
        if self.overscan not in OVERSCAN_METHODS:
            raise ValueError(f"unknown overscan method {self.overscan!r}; expected one of {OVERSCAN_METHODS}")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown ISR engine {self.engine!r}; expected one of {ENGINES}")
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
    #: pixels whose crosstalk correction was significant (``CROSSTALK`` mask bit); ``None`` without correction
    crosstalk: np.ndarray | None = None


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


def raw_shape_problem(raw: np.ndarray, inst: Instrument, layout: str) -> str | None:
    """What is wrong with the shape of a raw frame for ``layout`` of ``inst``, or ``None`` when it fits."""
    expected = inst.raw_shape(layout)
    if raw.shape != expected:
        return f"raw frame of shape {raw.shape} does not match the {layout} layout of {inst.name} ({expected})"
    return None


def _check_shape(raw: np.ndarray, inst: Instrument, layout: str) -> None:
    why = raw_shape_problem(raw, inst, layout)
    if why:
        raise ValueError(f"{why}; check the frame's layout and instrument")


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


def overscan_row_levels(strip: np.ndarray, *, clip_sigma: float = 5.0) -> np.ndarray:
    """The bias level (ADU) of every row of an overscan strip: the mean of the row's pixels within ``clip_sigma``
    robust standard deviations (of the whole strip) of the row's median.

    A clipped mean, not the median: with a narrow overscan (a few columns) and read noise of a few ADU the row
    median is ~1.2 x noisier than the mean and quantised, and its noise goes into every row of every frame (through
    the fitted profile and the master bias); on a dark sky of ~45 e- the median's 0.18 ADU rms per 32 rows was a
    0.4 % row pattern (the mean: 0.15 ADU). The clipping keeps only gross outliers (cosmic rays, hot pixels) out:
    a tighter one pulls the mean back towards the noisy median (3 sigma: 0.17 ADU).

    Parameters
    ----------
    strip : ndarray
        Overscan pixels, shape ``(n_rows, n_columns)`` (ADU).
    clip_sigma : float
        Pixels farther than this many robust standard deviations from their row's median are left out.

    Returns
    -------
    ndarray
        float64, shape ``(n_rows,)``.
    """
    strip = np.asarray(strip, np.float64)
    med = np.median(strip, axis=1)
    dev = np.abs(strip - med[:, None])
    sig = 1.4826 * float(np.median(dev))
    keep = dev <= clip_sigma * sig
    return np.where(keep, strip, 0.0).sum(axis=1) / np.maximum(keep.sum(axis=1), 1)


def overscan_profile(strip: np.ndarray, *, method: str = "poly", order: int = 3, smooth_rows: int = 31,
                     clip_sigma: float = 3.0) -> np.ndarray:
    """Bias level (ADU) of every row of an overscan strip.

    Parameters
    ----------
    strip : ndarray
        Overscan pixels, shape ``(n_rows, n_columns)`` (ADU).
    method : {'poly', 'rows', 'mean'}
        ``'poly'``: Legendre polynomial of ``order`` fitted to the row levels (:func:`overscan_row_levels`) with
        ``clip_sigma`` rejection;
        ``'rows'``: row levels smoothed by a running mean over ``smooth_rows`` rows;
        ``'mean'``: the median of the row levels, the same for every row.
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
    row_med = overscan_row_levels(strip)
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


def _overscan_profiles(raw: np.ndarray, sections: Sequence[AmpSection],
                       options: IsrOptions) -> tuple[list[np.ndarray | None], list[float] | None]:
    """The overscan profile (float64, one value per data row, ``None``: nothing to subtract) of every amplifier
    and the mean levels reported by :func:`assemble`."""
    profiles: list[np.ndarray | None] = []
    levels: list[float] | None = [] if options.overscan != "none" else None
    for sec in sections:
        if options.overscan == "none":
            profiles.append(None)
            continue
        strip = serial_overscan(raw, sec, skip=options.overscan_skip)
        if strip is None:
            levels = None
            profiles.append(None)
            continue
        prof = overscan_profile(strip, method=options.overscan, order=options.overscan_order,
                                smooth_rows=options.overscan_smooth)
        profiles.append(prof)
        if levels is not None:
            levels.append(float(prof.mean()))
    return profiles, levels


def _active_shape(sections: Sequence[AmpSection]) -> tuple[int, int]:
    return max(s.active[0].stop for s in sections), max(s.active[1].stop for s in sections)


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
    ny, nx = _active_shape(sections)
    if out is None:
        out = np.empty((ny, nx), np.float32)
    elif out.shape != (ny, nx) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {(ny, nx)}, got {out.dtype} {out.shape}")
    profiles, levels = _overscan_profiles(raw, sections, options)
    for sec, prof in zip(sections, profiles):
        dst = out[sec.active]
        dst[...] = raw[sec.data]
        if prof is not None:
            dst -= prof.astype(np.float32)[:, None]
    return out, levels


def parallel_overscan_correct(raw: np.ndarray, sections: Sequence[AmpSection]) -> np.ndarray:
    """A float32 copy of ``raw`` with the column profile of each amplifier's parallel overscan removed from its data.

    The parallel-overscan rows (read after the data rows) hold the bias of every column; the row-wise median is
    removed first (the serial overscan gives the level of every row), then the column-wise median over the rows is
    subtracted from the data columns. Amplifiers without a parallel overscan are copied as they are.
    """
    out = np.asarray(raw, np.float32).copy()
    for sec in sections:
        if sec.overscan_y is None:
            continue
        strip = np.asarray(raw[sec.overscan_y], np.float64)
        strip = strip - np.median(strip, axis=1, keepdims=True)
        prof = np.median(strip, axis=0)
        prof -= np.median(prof)
        out[sec.data] -= prof.astype(np.float32)[None, :]
    return out


def saturation_mask(raw: np.ndarray, sections: Sequence[AmpSection], *, level: float) -> np.ndarray:
    """Boolean mask (assembled shape) of the pixels whose raw value is at or above ``level`` ADU."""
    mask = np.zeros(_active_shape(sections), bool)
    for sec in sections:
        np.greater_equal(raw[sec.data], level, out=mask[sec.active])
    return mask


# ------------------------------------------------------------------------------------------------------ pixels
def linearize(image: np.ndarray, sections: Sequence[AmpSection], coefficients: Sequence[Sequence[float]], *,
              iterations: int = LINEARIZE_ITERATIONS) -> None:
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


def linearize_poly(image: np.ndarray, sections: Sequence[AmpSection], coefficients: Sequence[Sequence[float]]) -> None:
    """Apply a measured per-amplifier linearity correction in place (no inversion needed).

    ``image`` holds *bias-subtracted* ADU; for amplifier ``k`` with ``(a1, a2, a3[, a4]) = coefficients[k]`` the
    linear value is ``l = m (1 + a1 m + a2 m² + a3 m³ + a4 m⁴)`` of the measured one ``m`` (the form fitted by
    :func:`upad.calib.signature.fit_linearity`).
    """
    for sec in sections:
        a = [np.float32(float(v)) for v in (tuple(coefficients[sec.index]) + (0.0,) * 4)[:4]]
        if not any(a):
            continue
        m = image[sec.active]
        f = m * a[3]
        f += a[2]
        f *= m
        f += a[1]
        f *= m
        f += a[0]
        f *= m
        f += np.float32(1.0)
        m *= f


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


# ------------------------------------------------------------------------------------------------------ fused pass
if HAVE_NUMBA:

    @njit(parallel=True, nogil=True, cache=True, error_model="numpy")
    def _fused_kernel(src, image, rects, prof, saturated, do_sat, sat_level, bias, dark, flat, illum, coef,
                      lin_on, do_bias, do_lin, do_gain, do_dark, dark_t, do_flat, do_illum,
                      iterations, lin_direct):  # pragma: no cover - compiled
        """Steps 1-8 of the module documentation for every pixel, one image row per parallel task.

        ``rects[k] = (src_y0, src_x0, dst_y0, dst_x0, ny, nx)`` places amplifier ``k`` (``src`` may be ``image``
        itself, already assembled); ``prof[k, row]`` is its float32 overscan level; ``coef[k]`` holds float32
        ``(c2, c3, 2 c2, 3 c3, gain)``. With ``do_sat`` the saturation mask (``src >= sat_level``) is written to
        ``saturated`` on the way. Within a row segment (one amplifier, a few KB: it stays in the L1 cache)
        each step is its own loop, so that every loop is branch-free and vectorises, while the image is read and
        written once. The float32 operations are those of the numpy primitives, in the same order.
        """
        n_amp = rects.shape[0]
        one = np.float32(1.0)
        nan = np.float32(np.nan)
        inf = np.float32(np.inf)
        max_nx = 1
        for k in range(n_amp):
            max_nx = max(max_nx, rects[k, 5])
        for y in prange(image.shape[0]):
            measured = np.empty(max_nx, np.float32)  # the values before linearisation, one row segment
            for k in range(n_amp):
                dy = y - rects[k, 2]
                if dy < 0 or dy >= rects[k, 4]:
                    continue
                x0 = rects[k, 3]
                nx = rects[k, 5]
                sy = rects[k, 0] + dy
                sx0 = rects[k, 1]
                srow = src[sy, sx0:sx0 + nx]
                row = image[y, x0:x0 + nx]
                p = prof[k, dy]
                if do_sat:
                    mrow = saturated[y, x0:x0 + nx]
                    for j in range(nx):
                        mrow[j] = np.float64(srow[j]) >= sat_level
                for j in range(nx):  # trim + overscan (p = 0 when there is none)
                    row[j] = np.float32(srow[j]) - p
                if do_bias:
                    brow = bias[y, x0:x0 + nx]
                    for j in range(nx):
                        row[j] = row[j] - np.float32(brow[j])
                if do_lin and lin_on[k] and lin_direct:
                    a1 = coef[k, 0]
                    a2 = coef[k, 1]
                    a3 = coef[k, 2]
                    a4 = coef[k, 3]
                    for j in range(nx):
                        mv = row[j]
                        f = mv * a4
                        f = f + a3
                        f = f * mv
                        f = f + a2
                        f = f * mv
                        f = f + a1
                        f = f * mv
                        f = f + one
                        row[j] = mv * f
                elif do_lin and lin_on[k]:
                    c2 = coef[k, 0]
                    c3 = coef[k, 1]
                    c2x2 = coef[k, 2]
                    c3x3 = coef[k, 3]
                    m = measured[:nx]
                    for j in range(nx):
                        m[j] = row[j]
                    for _ in range(iterations):  # iterations outside: the pixel loop vectorises
                        for j in range(nx):
                            lin = row[j]
                            f = lin * (one + lin * (c2 + c3 * lin))
                            f = f - m[j]
                            df = one + lin * (c2x2 + c3x3 * lin)
                            f = f / df
                            row[j] = lin - f
                if do_gain:
                    g = coef[k, 4]
                    for j in range(nx):
                        row[j] = row[j] * g
                if do_dark:
                    drow = dark[y, x0:x0 + nx]
                    for j in range(nx):
                        row[j] = row[j] - np.float32(drow[j]) * dark_t
                if do_flat:
                    frow = flat[y, x0:x0 + nx]
                    for j in range(nx):
                        f = np.float32(frow[j])
                        row[j] = row[j] / f if (f > 0 and f < inf) else nan
                if do_illum:
                    irow = illum[y, x0:x0 + nx]
                    for j in range(nx):
                        f = np.float32(irow[j])
                        row[j] = row[j] / f if (f > 0 and f < inf) else nan


#: Stand in for an absent calibration map / saturation mask in the compiled pass (same numba types as the real
#: arrays: no extra compilation).
_ABSENT = np.zeros((1, 1), np.float32)
_NO_MASK = np.zeros((1, 1), np.bool_)


def _use_numba(engine: str) -> bool:
    if engine == "numpy":
        return False
    if engine == "numba" and not HAVE_NUMBA:
        raise RuntimeError("IsrOptions(engine='numba') requested but numba is not installed; use engine='numpy'")
    return HAVE_NUMBA


def _kernel_map(a: np.ndarray | None) -> np.ndarray:
    """A calibration map as the compiled pass reads it: native float32/float64 as is (no copy), anything else
    (integers, non-native byte order) converted to float32 as the numpy primitives do; ``None`` → a 1x1 dummy."""
    if a is None:
        return _ABSENT
    a = np.asarray(a)
    if a.dtype in (np.float32, np.float64) and a.dtype.isnative:
        return a
    return np.asarray(a, np.float32)


def _raw_readable(raw: np.ndarray, sections: Sequence[AmpSection]) -> bool:
    """Whether the compiled pass can read the amplifiers straight from ``raw`` (native integer/float dtype,
    unit-step data sections of the active size)."""
    if not (raw.dtype.isnative and raw.dtype.kind in "uif" and raw.dtype != np.float16):
        return False
    for sec in sections:
        sl = (*sec.data, *sec.active)
        if any(s.step not in (None, 1) or s.stop is None for s in sl):
            return False
        if [s.stop - (s.start or 0) for s in sec.data] != [s.stop - (s.start or 0) for s in sec.active]:
            return False
    return True


def _run_fused(raw: np.ndarray, sections: Sequence[AmpSection], options: IsrOptions, *, sat_level: float,
               bias: np.ndarray | None, dark: np.ndarray | None, exptime: float, flat: np.ndarray | None,
               illumination: np.ndarray | None, gains: Sequence[float] | None,
               coefficients: Sequence[Sequence[float]] | None,
               lin_direct: bool = False) -> tuple[np.ndarray, np.ndarray, list[float] | None]:
    """Assemble and correct ``raw`` in one compiled pass (see :func:`run_isr`; inputs already validated).

    ``gains`` / ``coefficients`` ``None`` switch the gain / the linearisation off. Returns the image, the
    saturation mask (as :func:`saturation_mask`) and the overscan levels (as :func:`assemble`).
    """
    raw = np.asarray(raw)
    n = len(sections)
    if _raw_readable(raw, sections):
        profiles, levels = _overscan_profiles(raw, sections, options)
        image = np.empty(_active_shape(sections), np.float32)
        # pixels outside every amplifier (none in a regular layout) stay unsaturated, as in saturation_mask
        saturated = np.zeros(image.shape, np.bool_)
        # the threshold as numpy compares it (in the raw's float type, in float64 for integer raw values)
        sat_cmp = float(np.asarray(sat_level, np.result_type(raw.dtype, sat_level)))
        src = raw
        src_origin = [(sec.data[0].start or 0, sec.data[1].start or 0) for sec in sections]
    else:  # e.g. a big-endian raw frame: numpy assembles, the compiled pass does the rest in place
        saturated = saturation_mask(raw, sections, level=sat_level)
        sat_cmp = 0.0
        image, levels = assemble(raw, sections, options=options)
        profiles = [None] * n
        src = image
        src_origin = [(sec.active[0].start or 0, sec.active[1].start or 0) for sec in sections]
    rects = np.zeros((n, 6), np.int64)
    max_rows = 1
    for k, sec in enumerate(sections):
        ay0, ax0 = sec.active[0].start or 0, sec.active[1].start or 0
        rects[k] = (*src_origin[k], ay0, ax0, sec.active[0].stop - ay0, sec.active[1].stop - ax0)
        max_rows = max(max_rows, int(rects[k, 4]))
    prof = np.zeros((n, max_rows), np.float32)
    for k, pr in enumerate(profiles):
        if pr is not None:
            prof[k, : len(pr)] = pr.astype(np.float32)
    coef = np.zeros((n, 5), np.float32)
    lin_on = np.zeros(n, np.bool_)
    for k, sec in enumerate(sections):
        if coefficients is not None and lin_direct:
            aa = [float(v) for v in (tuple(coefficients[sec.index]) + (0.0,) * 4)[:4]]
            lin_on[k] = any(aa)
            coef[k, :4] = [np.float32(v) for v in aa]
        elif coefficients is not None:
            cc = tuple(coefficients[sec.index]) + (0.0, 0.0)
            c2f, c3f = np.float32(float(cc[0])), np.float32(float(cc[1]))
            lin_on[k] = not (float(cc[0]) == 0.0 and float(cc[1]) == 0.0)
            coef[k, :4] = (c2f, c3f, np.float32(2.0) * c2f, np.float32(3.0) * c3f)
        if gains is not None:
            coef[k, 4] = np.float32(gains[sec.index])
    do_dark = dark is not None and exptime > 0
    do_sat = src is raw
    _fused_kernel(src, image, rects, prof, saturated if do_sat else _NO_MASK, do_sat, sat_cmp, _kernel_map(bias),
                  _kernel_map(dark if do_dark else None), _kernel_map(flat), _kernel_map(illumination), coef, lin_on,
                  bias is not None, coefficients is not None, gains is not None, do_dark, np.float32(exptime),
                  flat is not None, illumination is not None, LINEARIZE_ITERATIONS, lin_direct)
    return image, saturated, levels


def run_isr(raw: np.ndarray, inst: Instrument, *, layout: str, options: IsrOptions = IsrOptions(),
            bias: np.ndarray | None = None, dark: np.ndarray | None = None, exptime: float = 0.0,
            flat: np.ndarray | None = None, gains: Sequence[float] | None = None,
            nonlinearity: Sequence[Sequence[float]] | None = None, detector: int = 1,
            illumination: np.ndarray | None = None, linearity: Sequence[Sequence[float]] | None = None,
            crosstalk: np.ndarray | None = None, saturation: Sequence[float] | None = None,
            crosstalk_flag_adu: float | None = None) -> IsrResult:
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
        Overscan, non-linearity, gain, saturation and engine options.
    bias : ndarray, optional
        Master bias (ADU, assembled shape), subtracted after the overscan. Required for an ``archived`` frame to
        remove its bias level.
    dark : ndarray, optional
        Dark-current map (e-/s, assembled shape), subtracted times ``exptime`` (needs ``to_electrons``).
    exptime : float
        Exposure time in seconds (for the dark).
    flat : ndarray, optional
        Normalised flat field (assembled shape); pixels where it is not positive and finite become NaN.
    gains : sequence of float, optional
        e-/ADU per amplifier; default the instrument file's.
    nonlinearity : sequence of (c2, c3), optional
        Per-amplifier coefficients; default the instrument file's.
    detector : int
        Detector id (multi-detector cameras).
    illumination : ndarray, optional
        Illumination-correction map (assembled shape, near 1), divided out right after the flat; pixels where it
        is not positive and finite become NaN, as for the flat.
    linearity : sequence of (a1, a2, a3[, a4]), optional
        A *measured* per-amplifier linearity correction (:func:`linearize_poly`, from the instrument-signature
        product); replaces ``nonlinearity`` and the instrument file's coefficients.
    crosstalk : ndarray, optional
        Measured crosstalk matrix ``C[target, source]``, removed from the raw values first
        (:func:`upad.isr.crosstalk.correct_crosstalk`); the corrected pixels are returned in
        ``IsrResult.crosstalk``.
    saturation : sequence of float, optional
        Measured saturation level per amplifier (bias-subtracted raw ADU); a pixel is saturated at or above
        its amplifier's level plus the overscan level of the frame (or the ADC maximum, whichever is lower).
        Default: ``options.saturation_adu`` or the ADC maximum for every amplifier.
    crosstalk_flag_adu : float, optional
        Corrections of at least this many ADU are flagged in ``IsrResult.crosstalk``; default
        ``options.crosstalk_flag_adu``.

    Returns
    -------
    IsrResult

    Notes
    -----
    With ``options.engine`` ``'numba'`` (or ``'auto'`` where numba is installed) the assembly and the pixel
    arithmetic run as one compiled pass over the image, equal to the ``'numpy'`` chain of primitives to float32
    rounding. Calibration maps are read as they are (float32 or float64, no full-size copy); other dtypes are
    converted to float32 first, as the primitives do.
    """
    _check_shape(raw, inst, layout)
    sections = inst.amp_sections(layout, detector)
    notes: list[str] = []
    sat_level = options.saturation_adu if options.saturation_adu is not None else float(inst.adc_max)
    active = _active_shape(sections)
    if bias is not None and bias.shape != active:
        raise ValueError(f"master bias of shape {bias.shape} does not match the image {active}")
    unit = "electron" if options.to_electrons else "adu"
    if dark is not None:
        if unit != "electron":
            raise ValueError("a dark (e-/s) can only be subtracted from an image in electrons (to_electrons=True)")
        if exptime > 0 and dark.shape != active:
            raise ValueError(f"dark of shape {dark.shape} does not match the image {active}")
    if flat is not None and flat.shape != active:
        raise ValueError(f"flat of shape {flat.shape} does not match the image {active}")
    if illumination is not None and illumination.shape != active:
        raise ValueError(f"illumination map of shape {illumination.shape} does not match the image {active}")
    amps = inst.detector(detector).amplifiers
    xt_mask = None
    raw_in = raw
    if options.overscan_parallel and options.overscan != "none":
        if any(sec.overscan_y is not None for sec in sections):
            raw = parallel_overscan_correct(raw, sections)
            notes.append("parallel-overscan column profile subtracted")
        else:
            notes.append(f"no parallel overscan in the {layout} layout")
    if crosstalk is not None and len(sections) > 1:
        from upad.isr.crosstalk import correct_crosstalk

        raw, xt_mask = correct_crosstalk(raw, sections, crosstalk, bias=bias, overscan_skip=options.overscan_skip,
                                         flag_adu=options.crosstalk_flag_adu if crosstalk_flag_adu is None
                                         else crosstalk_flag_adu)
        notes.append("crosstalk corrected with the measured matrix")
    coeffs = None
    lin_direct = False
    if options.linearize:
        if linearity is not None:
            coeffs, lin_direct = linearity, True
        else:
            coeffs = nonlinearity if nonlinearity is not None else [a.nonlinearity for a in amps]
    gain_list = None
    if options.to_electrons:
        gain_list = gains if gains is not None else [a.gain for a in amps]

    if _use_numba(options.engine):
        image, saturated, levels = _run_fused(raw, sections, options, sat_level=sat_level, bias=bias, dark=dark,
                                              exptime=exptime, flat=flat, illumination=illumination,
                                              gains=gain_list, coefficients=coeffs, lin_direct=lin_direct)
    else:
        saturated = saturation_mask(raw, sections, level=sat_level)
        image, levels = assemble(raw, sections, options=options)
        if bias is not None:
            image -= np.asarray(bias, np.float32)
        if coeffs is not None and lin_direct:
            linearize_poly(image, sections, coeffs)
        elif coeffs is not None:
            linearize(image, sections, coeffs)
        if gain_list is not None:
            apply_gain(image, sections, gain_list)
        if dark is not None:
            subtract_dark(image, dark, exptime)
        if flat is not None:
            divide_flat(image, flat)
        if illumination is not None:
            divide_flat(image, illumination)
    if raw is not raw_in or saturation is not None:
        saturated = _saturation_per_amp(raw_in, sections, sat_level, saturation, levels, bias)
    if options.overscan != "none" and levels is None:
        notes.append(f"no overscan in the {layout} layout: the bias level comes from the master bias only")
    if bias is None and levels is None:
        notes.append("no bias subtracted: values include the electronic offset")
    return IsrResult(image=image, saturated=saturated, overscan_level=levels, unit=unit, notes=notes,
                     crosstalk=xt_mask)


def _saturation_per_amp(raw: np.ndarray, sections: Sequence[AmpSection], adc_level: float,
                        saturation: Sequence[float] | None, levels: list[float] | None,
                        bias: np.ndarray | None) -> np.ndarray:
    """The saturation mask of the original raw values: each amplifier at its measured level (bias-subtracted ADU
    plus the frame's overscan level, else the master bias median) or ``adc_level``, whichever is lower."""
    mask = np.zeros(_active_shape(sections), bool)
    for i, sec in enumerate(sections):
        lv = adc_level
        if saturation is not None:
            off = levels[i] if levels is not None else (float(np.median(bias[sec.active])) if bias is not None
                                                        else 0.0)
            lv = min(adc_level, float(saturation[sec.index]) + off)
        np.greater_equal(raw[sec.data], lv, out=mask[sec.active])
    return mask
