"""The instrument signature measured from the data: gain and read noise (photon-transfer curve), non-linearity,
crosstalk and saturation level per amplifier. Pure functions (arrays in, results out; no I/O, no database).

Inputs are assembled images in **ADU** after the overscan (and master-bias) subtraction, as
``run_isr(..., options=IsrOptions(to_electrons=False, linearize=False))`` gives them; ``amps`` are the amplifiers'
``(slice_y, slice_x)`` in the assembled image (:func:`upad.calib.bias.amp_slices`).

* **read noise** (:func:`read_noise_from_bias_pairs`): ``var(b1 - b2) / 2`` per amplifier with outliers (cosmic
  rays) clipped and a smooth row trend removed, less the ADC quantisation ``1/12 ADU²`` (Sheppard): the analogue
  noise in ADU;
* **non-linearity** (:func:`fit_linearity`): the per-amplifier median signal ``m`` of a flat series of rising
  exposure time ``t`` fitted by ``m (1 + a1 m + a2 m² + a3 m³) = k t + c`` (linear least squares in
  ``k, c, a1..a3``); the correction ``lin = m (1 + a1 m + a2 m² + a3 m³)`` has unit slope at zero signal;
* **gain** (:func:`ptc_gain`): photon-transfer curve of flat pairs (linearised): per pair the variance of the
  difference (the second flat scaled to the first's level, outliers clipped) against the mean level, fitted by
  ``var = mean / g + n²``;
* **crosstalk** (:func:`crosstalk_from_frame`): every bright (saturated) source region of one amplifier against the
  same readout positions of every other amplifier, fitted locally by ``C s + quadratic background`` with outlier
  clipping (overlapping windows merged, so no target pixel counts twice); combined (inverse-variance weights) over
  sources and frames with :func:`combine_crosstalk`; :func:`night_crosstalk_sums` runs the night twice, the
  target's own sources found the second time on the target less the first round's ghosts (no truncation bias);
* **saturation** (:func:`saturation_level`): the level where the raw values of an amplifier pile up (the ADC
  maximum or the full well, whichever comes first).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from typing import Any

import numpy as np

from upad.instruments import AmpSection
from upad.isr.core import linearize_poly
from upad.isr.crosstalk import reorient

__all__ = ["LinearityFit", "PtcFit", "Signature", "combine_crosstalk", "measure_signature", "night_crosstalk_sums", "signature_from_raw", "crosstalk_from_frame", "fit_linearity", "ptc_gain",
           "read_noise_from_bias_pairs", "robust_var", "saturation_level"]

Slice2D = tuple[slice, slice]

#: raw values within this many ADU of an amplifier's maximum count as its pile-up (:func:`saturation_level`)
SATURATION_TOLERANCE_ADU = 2.0


def _load(item: Any) -> Any:
    """An input given either as itself or as a zero-argument callable that makes it (a frame read, or read and
    processed, only when it is used: the adapters pass callables so that one full-size frame at a time is held)."""
    return item() if callable(item) else item


def robust_var(values: np.ndarray, *, nsigma: float = 5.0, iters: int = 3) -> tuple[float, float, int]:
    """Mean, variance and count of ``values`` with outliers beyond ``nsigma`` robust sigmas removed."""
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    keep = v
    for _ in range(iters):
        med = np.median(keep)
        mad = 1.4826 * np.median(np.abs(keep - med))
        if not mad > 0:
            break
        new = v[np.abs(v - med) < nsigma * mad]
        if new.size == keep.size:
            break
        keep = new
    return float(keep.mean()), float(keep.var(ddof=1)), int(keep.size)


# ------------------------------------------------------------------------------------------------------ read noise
def _row_trend(d: np.ndarray, order: int = 3) -> np.ndarray:
    """A Legendre polynomial of ``order`` fitted to the row medians of ``d`` (one value per row)."""
    med = np.median(d, axis=1)
    x = np.linspace(-1, 1, med.size)
    return np.polynomial.legendre.legval(x, np.polynomial.legendre.legfit(x, med, order))


def read_noise_from_bias_pairs(biases: Sequence[np.ndarray], amps: Sequence[Slice2D], *,
                               nsigma: float = 5.0, max_excess: float = 0.2) -> tuple[np.ndarray, int]:
    """Read noise per amplifier (ADU, analogue: quantisation removed) from consecutive pairs of bias frames.

    A pair whose difference variance exceeds the smallest pair's by more than ``max_excess`` (a fraction; the
    variance of >= 10^4 pixels is known to ~1 %) holds a bad frame — a light leak, a glow — and is left out: one
    such bias made the read noise 37 ADU instead of 4.2, and the photon-transfer gain (its noise term fixed to it)
    2.1 e-/ADU instead of 0.93.

    Returns ``(read_noise_adu, n_pairs)``; ``n_pairs = 0`` (and NaN noise) with fewer than two frames.
    """
    n_pairs = len(biases) // 2
    out = np.full(len(amps), np.nan)
    if n_pairs == 0:
        return out, 0
    for k, sl in enumerate(amps):
        vs = []
        for i in range(n_pairs):
            d = np.asarray(biases[2 * i][sl], np.float64) - np.asarray(biases[2 * i + 1][sl], np.float64)
            d -= _row_trend(d)[:, None]  # bias drifts along the readout that no overscan removed (archived layout)
            vs.append(robust_var(d, nsigma=nsigma)[1] / 2.0)
        v = np.asarray(vs)
        v = v[v <= (1.0 + max_excess) * np.min(v)]
        out[k] = np.sqrt(max(float(np.mean(v)) - 1.0 / 12.0, 0.0))
    return out, n_pairs


# ------------------------------------------------------------------------------------------------------ linearity
@dataclass
class LinearityFit:
    """The non-linearity of every amplifier: ``coefficients[k] = (a1, a2, a3)`` of ``lin = m (1 + a1 m + …)``."""

    coefficients: np.ndarray
    rate: np.ndarray  # k (ADU/s, linear) per amplifier
    offset: np.ndarray  # c (ADU) per amplifier
    residual_max: np.ndarray  # max |corrected / (k t + c) - 1| over the used frames, per amplifier
    max_level: np.ndarray  # highest measured level used (ADU), per amplifier
    n_used: np.ndarray
    points: list[dict] = field(default_factory=list)

    def correct(self, amp: int, m: np.ndarray | float) -> np.ndarray:
        a = self.coefficients[amp]
        m = np.asarray(m, np.float64)
        return m * (1 + m * (a[0] + m * (a[1] + m * a[2])))


def fit_linearity(levels: np.ndarray, exptimes: np.ndarray, *, saturated_fraction: np.ndarray | None = None,
                  order: int = 3, max_saturated: float = 0.02, min_frames: int = 5) -> LinearityFit:
    """Fit the correction polynomial of every amplifier to a flat series of rising exposure time.

    Parameters
    ----------
    levels : ndarray
        ``(n_frames, n_amps)`` median bias-subtracted signal (ADU) of each amplifier in each flat.
    exptimes : ndarray
        ``(n_frames,)`` exposure times (s).
    saturated_fraction : ndarray, optional
        ``(n_frames, n_amps)``: frames with more than ``max_saturated`` saturated pixels in an amplifier are not used
        for it.
    order : int
        Order of the correction ``lin = m (1 + a1 m + … + a_order m^order)``.
    min_frames : int
        Fewer usable frames for an amplifier raise ``ValueError`` (the caller records the QC outcome).
    """
    levels = np.asarray(levels, np.float64)
    t = np.asarray(exptimes, np.float64)
    nf, na = levels.shape
    coefs = np.zeros((na, max(order, 3)))
    rate, off, resid, top, nused = (np.zeros(na) for _ in range(5))
    points = []
    for k in range(na):
        ok = np.isfinite(levels[:, k]) & (t > 0) & (levels[:, k] > 0)
        if saturated_fraction is not None:
            ok &= np.asarray(saturated_fraction)[:, k] <= max_saturated
        if ok.sum() < max(min_frames, order + 2):
            raise ValueError(f"amplifier {k + 1}: only {int(ok.sum())} usable flats of the linearity series "
                             f"(at least {max(min_frames, order + 2)} needed)")
        m, tt = levels[ok, k], t[ok]
        # m = k t + c - a1 m^2 - ... - a_order m^(order+1), weights 1/sqrt(m) (shot noise of the medians)
        A = np.column_stack([tt, np.ones_like(tt)] + [-m ** (j + 2) for j in range(order)])
        w = 1.0 / np.sqrt(np.maximum(m, 1.0))
        scale = np.abs(A).max(axis=0)
        sol, *_ = np.linalg.lstsq(A * w[:, None] / scale, m * w, rcond=None)
        sol /= scale
        rate[k], off[k] = sol[0], sol[1]
        coefs[k, :order] = sol[2:]
        corr = m * (1 + sum(coefs[k, j] * m ** (j + 1) for j in range(order)))
        model = rate[k] * tt + off[k]
        r = corr / model - 1
        resid[k] = float(np.max(np.abs(r)))
        top[k] = float(m.max())
        nused[k] = int(ok.sum())
        points.append({"amp": k + 1, "exptime": tt.tolist(), "level_adu": m.tolist(), "residual": r.tolist()})
    return LinearityFit(coefs[:, :3] if order <= 3 else coefs, rate, off, resid, top, nused, points)


# ------------------------------------------------------------------------------------------------------ PTC
@dataclass
class PtcFit:
    """Gain (e-/ADU) and the noise intercept (ADU) of every amplifier from the photon-transfer curve."""

    gain: np.ndarray
    gain_err: np.ndarray
    noise_adu: np.ndarray  # sqrt of the intercept (read noise + quantisation), ADU
    n_pairs: int
    points: list[dict] = field(default_factory=list)


def ptc_gain(pairs: Iterable[Any], amps: Sequence[Slice2D], *,
             saturated: Sequence[np.ndarray | None] | None = None, read_noise_adu: np.ndarray | None = None,
             max_level: np.ndarray | float | None = None, nsigma: float = 5.0, min_pairs: int = 3) -> PtcFit:
    """Gain per amplifier from flat pairs (linearised, bias-subtracted ADU).

    For every pair and amplifier the second flat is scaled to the first's median, ``d = a - r b`` (outliers beyond
    ``nsigma`` clipped), the level is the mean of ``(a + r b) / 2`` over the same pixels, and
    ``var(d) = level (1 + r) / g + n² (1 + r²)`` is fitted (relative weights ``1 / var``; pairs of unequal level
    are fine); with ``read_noise_adu`` the noise ``n²`` is fixed to ``read_noise_adu² + 1/12``. Pairs above ``max_level`` (ADU) are not used.
    Fewer than ``min_pairs`` usable pairs raise ``ValueError``.

    ``pairs`` is any iterable of ``(a, b)`` or ``(a, b, saturated)`` (or of zero-argument callables returning one):
    each pair is reduced to its levels and variances as it comes, so that a generator holds one pair at a time.
    """
    na = len(amps)
    lv_rows, var_rows, r_rows = [], [], []
    for i, item in enumerate(pairs):
        item = _load(item)
        a, b = item[0], item[1]
        sat = item[2] if len(item) > 2 else (None if saturated is None else saturated[i])
        lv_i, var_i, r_i = np.full(na, np.nan), np.full(na, np.nan), np.ones(na)
        for k, sl in enumerate(amps):
            aa = np.asarray(a[sl], np.float64)
            bb = np.asarray(b[sl], np.float64)
            good = np.isfinite(aa) & np.isfinite(bb)
            if sat is not None:
                good &= ~sat[sl]
            if good.mean() < 0.5:
                continue
            aa, bb = aa[good], bb[good]
            r = float(np.median(aa) / np.median(bb))
            d = aa - r * bb
            mu_d, v_d, _ = robust_var(d, nsigma=nsigma)
            keep = np.abs(d - np.median(d)) < nsigma * np.sqrt(v_d)
            lv_i[k] = 0.5 * (aa[keep].mean() + r * bb[keep].mean())
            var_i[k] = v_d
            r_i[k] = r
        lv_rows.append(lv_i)
        var_rows.append(var_i)
        r_rows.append(r_i)
        del item, a, b, sat
    n_pairs = len(lv_rows)
    lv = np.array(lv_rows).reshape(n_pairs, na)
    var = np.array(var_rows).reshape(n_pairs, na)
    rr = np.array(r_rows).reshape(n_pairs, na)
    gain, gerr, noise = (np.full(na, np.nan) for _ in range(3))
    points = []
    if max_level is not None:
        ml = np.broadcast_to(np.asarray(max_level, np.float64), (na,))
    for k in range(na):
        ok = np.isfinite(lv[:, k]) & np.isfinite(var[:, k]) & (lv[:, k] > 0)
        if max_level is not None:
            ok &= lv[:, k] <= ml[k]
        if ok.sum() < min_pairs:
            raise ValueError(f"amplifier {k + 1}: only {int(ok.sum())} usable flat pairs for the photon-transfer "
                             f"curve (at least {min_pairs} needed)")
        # var(a - r b) = level (1 + r) / g + n² (1 + r²): the shot noise of b (level / r) scaled by r²
        r = rr[ok, k]
        x, y = lv[ok, k] * (1 + r), var[ok, k]
        q = 1 + r * r
        w = 1.0 / y  # sigma(var) ~ var * sqrt(2 / N): relative weights 1 / var
        if read_noise_adu is not None and np.isfinite(read_noise_adu[k]):
            n2 = float(read_noise_adu[k]) ** 2 + 1.0 / 12.0
            yy = y - n2 * q
            inv_g = float(np.sum(w * w * x * yy) / np.sum(w * w * x * x))
            noise[k] = np.sqrt(n2)
            res = yy - inv_g * x
            dof = max(len(x) - 1, 1)
            err = np.sqrt(np.sum((w * res) ** 2) / dof / np.sum(w * w * x * x))
        else:
            A = np.column_stack([x, q])
            sol, *_ = np.linalg.lstsq(A * w[:, None], y * w, rcond=None)
            inv_g = float(sol[0])
            noise[k] = np.sqrt(max(float(sol[1]), 0.0))
            res = y - A @ sol
            dof = max(len(x) - 2, 1)
            cov = np.linalg.inv((A * w[:, None]).T @ (A * w[:, None])) * np.sum((w * res) ** 2) / dof
            err = np.sqrt(cov[0, 0])
        gain[k] = 1.0 / inv_g
        gerr[k] = float(err) / inv_g ** 2
        points.append({"amp": k + 1, "level_adu": lv[ok, k].tolist(), "variance_adu2": (y / (1 + r)).tolist()})
    return PtcFit(gain, gerr, noise, n_pairs, points)


# ------------------------------------------------------------------------------------------------------ crosstalk
def _local_fit(tv: np.ndarray, sv: np.ndarray, yy: np.ndarray, xx: np.ndarray, use: np.ndarray, *,
               nsigma: float) -> tuple[float, float] | None:
    """Fit ``t = c s + quadratic(x, y)`` over the pixels ``use`` of a window with ``nsigma`` clipping (normal
    equations, the source column scaled); ``(c, var(c))`` or ``None`` when it cannot be fitted."""
    keep = use.copy()
    if keep.sum() < 30:
        return None
    u = (xx - xx.mean()) / max(np.ptp(xx), 1.0)
    v = (yy - yy.mean()) / max(np.ptp(yy), 1.0)
    scale = max(float(sv.max()), 1.0)
    A = np.column_stack([sv / scale, np.ones_like(u), u, v, u * u, u * v, v * v])

    def solve(k: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        Ak = A[k]
        try:
            inv = np.linalg.inv(Ak.T @ Ak)
        except np.linalg.LinAlgError:
            return None
        return inv @ (Ak.T @ tv[k]), inv

    for _ in range(6):
        got = solve(keep)
        if got is None:
            return None
        r = tv - A @ got[0]
        sig = 1.4826 * np.median(np.abs(r[keep] - np.median(r[keep])))
        new = use & (np.abs(r) < nsigma * max(sig, 1e-6))
        if new.sum() < 30 or (new == keep).all():
            break
        keep = new
    got = solve(keep)
    if got is None:
        return None
    sol, inv = got
    r = tv[keep] - A[keep] @ sol
    s2 = float(np.sum(r * r) / max(keep.sum() - A.shape[1], 1))
    var = inv[0, 0] * s2 / scale ** 2
    c = sol[0] / scale
    if not (var > 0 and np.isfinite(c)):
        return None
    return float(c), float(var)


def _merged_windows(regions: Sequence[Slice2D], margin: int, ny: int, nx: int) -> list[tuple[int, int, int, int]]:
    """The fit windows ``(y0, y1, x0, x1)`` of the source ``regions``: each region's box grown by ``margin`` (clipped
    to ``ny, nx``), boxes that overlap merged into their common bounding box until none overlap, so that every target
    pixel enters at most one fit of a frame (overlapping windows would count the same pixels' noise several times as
    independent measurements)."""
    boxes = [[max(sl[0].start - margin, 0), min(sl[0].stop + margin, ny), max(sl[1].start - margin, 0),
              min(sl[1].stop + margin, nx)] for sl in regions]
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]:
                    boxes[i] = [min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])]
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return [tuple(b) for b in boxes]


def crosstalk_from_frame(image: np.ndarray, sections: Sequence[AmpSection], *, min_source_adu: float = 20000.0,
                         margin_px: int = 24, nsigma: float = 4.0, own_nsigma: float = 5.0, own_grow: int = 3,
                         exclusion_px: float = 12.0, pilot: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Crosstalk sums of one frame: ``(Σ c_k w_k, Σ w_k)`` for every (target, source) pair.

    ``image`` is the assembled frame in ADU (overscan-subtracted, *not* linearised, crosstalk not corrected).
    Every bright source of a source amplifier (a connected region at or above ``min_source_adu``: a saturated star
    core with its bleed trail) is looked at in every other amplifier, at the same readout positions: in a window
    ``margin_px`` wider than the region (windows that overlap are merged, so that no target pixel enters two fits
    of the frame), the target is fitted by ``c s + quadratic(x, y)`` (``s``: the source amplifier's values there,
    clipped at 0; the quadratic absorbs the sky and the smooth wings of stars nearby, e.g. of the source star
    itself when its ghost lands close to it across an amplifier boundary), with ``nsigma`` clipping; target pixels
    above ``own_nsigma`` robust sigmas (its own sources, grown by ``own_grow`` pixels) and pixels closer than
    ``exclusion_px`` to any source region are left out. With ``pilot`` (a first estimate ``C[target, source]``, e.g.
    of the night's frames) the own sources are found on the target *less the pilot's ghosts*: on the raw target a
    strong ghost plus an upward noise excursion crosses the threshold and is masked while a downward one is kept,
    which biases ``c`` low by a few per cent (a pilot from this frame alone would correlate the mask with the
    frame's noise again).
    ``w_k = Σ s² / var_pixel`` scaled back to ADU² (the weight of a pure ghost regression, ``1 / var(c_k)`` times the
    pixel variance), so that ``C = Σ c w / Σ w``; combine frames with :func:`combine_crosstalk`.
    """
    from scipy.ndimage import binary_dilation, distance_transform_edt, find_objects, label

    n = len(sections)
    num = np.zeros((n, n))
    den = np.zeros((n, n))
    blocks = [np.asarray(image[sec.active], np.float32) for sec in sections]
    srcmask = [b >= min_source_adu for b in blocks]
    if not any(m.any() for m in srcmask):
        return num, den
    allsrc = np.zeros(image.shape, bool)
    for sec, m in zip(sections, srcmask):
        allsrc[sec.active] = m
    near = distance_transform_edt(~allsrc) < exclusion_px if exclusion_px > 0 else np.zeros(image.shape, bool)
    windows = []
    for s in range(n):
        ny, nx = srcmask[s].shape
        lab, _ = label(srcmask[s])
        windows.append(_merged_windows([sl for sl in find_objects(lab) if sl is not None], margin_px, ny, nx)
                       if srcmask[s].any() else [])
    positive = [np.maximum(b, 0.0) for b in blocks]
    C = np.zeros((n, n)) if pilot is None else np.nan_to_num(np.asarray(pilot, np.float64))
    np.fill_diagonal(C, 0.0)
    own, noise = [], []
    for t, tsec in enumerate(sections):
        tb = blocks[t]
        if C.any():  # the target less the pilot's ghosts
            tb = tb - sum(np.float32(C[t, s]) * reorient(positive[s], sections[s], tsec)
                          for s in range(n) if s != t and C[t, s] != 0.0)
        med = float(np.median(tb))
        mad = 1.4826 * float(np.median(np.abs(tb - med)))
        o = tb > med + own_nsigma * mad
        if own_grow > 0 and o.any():
            o = binary_dilation(o, iterations=own_grow)
        own.append(o | near[tsec.active])
        noise.append(mad)
    num = np.zeros((n, n))
    den = np.zeros((n, n))
    for s, ssec in enumerate(sections):
        ny, nx = srcmask[s].shape
        for y0, y1, x0, x1 in windows[s]:
            for t, tsec in enumerate(sections):
                if t == s:
                    continue
                # the window in the source block seen at the target's readout positions
                sv2 = blocks[s][y0:y1, x0:x1]
                sm2 = srcmask[s][y0:y1, x0:x1]
                ty0, ty1, tx0, tx1 = y0, y1, x0, x1
                if ssec.read_flip_x != tsec.read_flip_x:
                    sv2, sm2, tx0, tx1 = sv2[:, ::-1], sm2[:, ::-1], nx - x1, nx - x0
                if ssec.read_flip_y != tsec.read_flip_y:
                    sv2, sm2, ty0, ty1 = sv2[::-1, :], sm2[::-1, :], ny - y1, ny - y0
                yy, xx = np.mgrid[ty0:ty1, tx0:tx1]
                yy, xx = yy.ravel(), xx.ravel()
                sv = np.maximum(sv2.ravel().astype(np.float64), 0.0)
                tv = blocks[t][ty0:ty1, tx0:tx1].ravel().astype(np.float64)
                use = ~own[t][ty0:ty1, tx0:tx1].ravel()
                bright = sm2.ravel() & use
                if bright.sum() < 5:
                    continue
                fit = _local_fit(tv, sv, yy.astype(np.float64), xx.astype(np.float64), use, nsigma=nsigma)
                if fit is None:
                    continue
                c, var_c = fit
                w = noise[t] ** 2 / var_c
                num[t, s] += c * w
                den[t, s] += w
    return num, den


def combine_crosstalk(sums: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """``(C, sigma_weight)``: the crosstalk matrix from the per-frame sums (NaN where no source pixel was seen) and
    ``Σ s²`` (the weight of each coefficient)."""
    num = sum(n for n, _ in sums)
    den = sum(d for _, d in sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(den > 0, num / den, np.nan)
    np.fill_diagonal(c, 0.0)
    return c, den


def night_crosstalk_sums(frames: Sequence[np.ndarray], sections: Sequence[AmpSection], *, rounds: int = 2,
                   **kwargs) -> list[tuple[np.ndarray, np.ndarray]]:
    """The per-frame sums of :func:`crosstalk_from_frame` over a night's ``frames`` (images, or zero-argument
    callables that make one: each round then makes each frame again, one at a time), in ``rounds``: the first
    without a pilot, each further one with the night's matrix of the previous round as the ``pilot`` of the own-source
    masks (no frame's mask then follows its own noise at the ghosts). ``kwargs`` go to :func:`crosstalk_from_frame`."""
    pilot = None
    sums: list[tuple[np.ndarray, np.ndarray]] = []
    if not frames:
        return sums
    for _ in range(max(int(rounds), 1)):
        sums = [crosstalk_from_frame(_load(f), sections, pilot=pilot, **kwargs) for f in frames]
        C, _ = combine_crosstalk(sums)
        pilot = np.nan_to_num(C)
    return sums


# ------------------------------------------------------------------------------------------------------ saturation
def _pile_up(data: np.ndarray, tolerance_adu: float = SATURATION_TOLERANCE_ADU) -> np.ndarray:
    """The values of one amplifier's raw data within ``tolerance_adu`` of its maximum: all that
    :func:`saturation_level` reads of a frame (a full-size frame is not kept for it)."""
    v = np.asarray(data).ravel()
    return v[v >= float(v.max()) - tolerance_adu].copy() if v.size else v.copy()


def saturation_level(raw_data: Sequence[np.ndarray], offsets: Sequence[float], *, min_pixels: int = 20,
                     tolerance_adu: float = SATURATION_TOLERANCE_ADU) -> float | None:
    """The saturation level (bias-subtracted ADU) of one amplifier: the highest raw value reached by at least
    ``min_pixels`` pixels (the pile-up at the ADC maximum or at the full well), less the frame's bias ``offsets``;
    ``None`` when no frame shows a pile-up."""
    best = []
    for d, off in zip(raw_data, offsets):
        v = np.asarray(d).ravel()
        top = float(v.max())
        n_top = int(np.count_nonzero(v >= top - tolerance_adu))
        if n_top >= min_pixels:
            best.append(top - tolerance_adu - float(off))
    return float(np.median(best)) if best else None


# ------------------------------------------------------------------------------------------------------ the product
@dataclass
class Signature:
    """The instrument signature of one camera configuration, measured or (per quantity) the instrument file's first
    guess, with the QC outcome of every quantity.

    Attributes
    ----------
    gain : ndarray
        e-/ADU per amplifier.
    read_noise_adu, read_noise_e : ndarray
        Read noise per amplifier.
    linearity : ndarray or None
        ``(n_amp, 3)`` coefficients ``a1..a3`` of ``lin = m (1 + a1 m + a2 m² + a3 m³)`` (measured), or ``None``
        (the ISR then uses the instrument file's cubic).
    crosstalk : ndarray or None
        ``C[target, source]``, or ``None`` (no correction).
    saturation_adu : ndarray or None
        Bias-subtracted raw level per amplifier at which pixels saturate, or ``None`` (the ADC maximum).
    qc : dict
        Per quantity (``gain``, ``read_noise``, ``linearity``, ``crosstalk``, ``saturation``): ``{"status":
        "measured" | "fallback", "reason": …, figures}``.
    """

    gain: np.ndarray
    read_noise_adu: np.ndarray
    read_noise_e: np.ndarray
    linearity: np.ndarray | None
    crosstalk: np.ndarray | None
    saturation_adu: np.ndarray | None
    qc: dict = field(default_factory=dict)

    @property
    def qc_status(self) -> str:
        """``ok`` when every quantity was measured, ``warn`` when any fell back to the first guess."""
        return "ok" if all(q.get("status") == "measured" for q in self.qc.values()) else "warn"

    @property
    def warnings(self) -> list[str]:
        return [f"{k}: {q['reason']}" for k, q in self.qc.items() if q.get("status") != "measured"]

    def isr_kwargs(self) -> dict:
        """The :func:`upad.isr.run_isr` keywords of the measured quantities (``gains``, ``linearity``, ``crosstalk``,
        ``saturation``); quantities that fell back are left to the ISR's defaults (the instrument file)."""
        out: dict = {}
        if self.qc.get("gain", {}).get("status") == "measured":
            out["gains"] = [float(g) for g in self.gain]
        if self.linearity is not None:
            out["linearity"] = [tuple(float(v) for v in row) for row in self.linearity]
        if self.crosstalk is not None:
            out["crosstalk"] = np.asarray(self.crosstalk, np.float64)
        if self.saturation_adu is not None:
            out["saturation"] = [float(v) for v in self.saturation_adu]
        return out


def measure_signature(*, amps: Sequence[Slice2D], sections: Sequence[AmpSection], first_gain: Sequence[float],
                      first_read_noise_e: Sequence[float], bias_frames: Sequence[np.ndarray] = (),
                      linearity_frames: Sequence[tuple[np.ndarray, float, np.ndarray]] = (),
                      ptc_pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]] = (),
                      crosstalk_frames: Sequence[np.ndarray] = (),
                      saturation_frames: Sequence[tuple[Sequence[np.ndarray], Sequence[float]]] = (),
                      min_pairs: int = 3, min_linearity: int = 6, min_source_adu: float = 20000.0,
                      min_crosstalk_weight: float = 1e11,
                      crosstalk_sums: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> Signature:
    """Measure every quantity of the signature that the inputs allow; each one that cannot be measured falls back to
    the instrument file's first guess with its reason recorded (never an exception for bad input).

    Parameters
    ----------
    bias_frames : overscan-subtracted bias frames (ADU), read noise from consecutive pairs.
    linearity_frames : ``(image ADU bias-subtracted, exposure time s, saturated mask)`` of the rising series.
    ptc_pairs : ``(image a, image b, saturated)`` flat pairs, bias-subtracted ADU, *not* linearised: the measured
        linearity (:func:`upad.isr.linearize_poly`, in place) is applied first when available.
    crosstalk_frames : science frames (ADU, overscan-subtracted, not linearised).
    Each item of ``linearity_frames``, ``ptc_pairs`` and ``crosstalk_frames`` may also be a zero-argument callable
    that makes it: it is then made when used and dropped after, so that memory holds one full-size frame (or pair) at
    a time whatever the length of the series.
    saturation_frames : per frame, the raw data of every amplifier and the frame's bias offset per amplifier.
    min_crosstalk_weight : minimum ``Σ s²`` (ADU²) of source pixels behind a coefficient.
    crosstalk_sums : the per-frame sums of :func:`crosstalk_from_frame` when already computed (instead of
        ``crosstalk_frames``).
    """
    na = len(amps)
    qc: dict = {}
    # read noise (ADU)
    rn_adu, n_pairs = read_noise_from_bias_pairs(bias_frames, amps)
    fg_gain = np.asarray(first_gain, np.float64)
    fg_rn = np.asarray(first_read_noise_e, np.float64)
    if n_pairs >= 1 and np.all(np.isfinite(rn_adu)):
        qc["read_noise"] = {"status": "measured", "reason": "", "n_pairs": n_pairs,
                            "read_noise_adu": [round(float(v), 4) for v in rn_adu]}
        rn_ok = True
    else:
        rn_adu = fg_rn / fg_gain
        qc["read_noise"] = {"status": "fallback", "reason": f"{len(bias_frames)} bias frame(s): at least 2 needed "
                                                            "for a pair; the instrument file's read noise is used"}
        rn_ok = False
    # linearity
    lin = None
    if len(linearity_frames) >= min_linearity:
        rows, ts, satf = [], [], []
        for item in linearity_frames:  # one frame at a time (an item may be a callable that makes it)
            img, t, sat = _load(item)
            rows.append([float(np.median(img[sl])) for sl in amps])
            satf.append([float(np.mean(sat[sl])) for sl in amps])
            ts.append(float(t))
            del img, sat
        levels = np.array(rows)
        try:
            fit = fit_linearity(levels, np.array(ts), saturated_fraction=np.array(satf),
                                min_frames=min_linearity)
            lin = fit.coefficients
            qc["linearity"] = {"status": "measured", "reason": "", "n_frames": len(linearity_frames),
                               "residual_max": [float(v) for v in fit.residual_max],
                               "max_level_adu": [float(v) for v in fit.max_level], "points": fit.points}
        except ValueError as exc:
            qc["linearity"] = {"status": "fallback", "reason": f"{exc}; the instrument file's non-linearity is used"}
    else:
        qc["linearity"] = {"status": "fallback",
                           "reason": f"{len(linearity_frames)} flat(s) of rising exposure time (at least "
                                     f"{min_linearity}); the instrument file's non-linearity is used"}
    # gain
    gain = fg_gain.copy()
    if len(ptc_pairs) >= min_pairs:
        def linearised_pairs():  # one pair at a time (an item may be a callable that makes it)
            for item in ptc_pairs:
                a, b, sat = _load(item)
                if lin is not None:
                    linearize_poly(a, sections, lin)
                    linearize_poly(b, sections, lin)
                yield a, b, sat

        try:
            fit = ptc_gain(linearised_pairs(), amps, read_noise_adu=rn_adu if rn_ok else None, min_pairs=min_pairs)
            gain = fit.gain
            qc["gain"] = {"status": "measured", "reason": "", "n_pairs": fit.n_pairs,
                          "gain_err": [float(v) for v in fit.gain_err], "points": fit.points}
        except ValueError as exc:
            qc["gain"] = {"status": "fallback", "reason": f"{exc}; the instrument file's gain is used"}
    else:
        qc["gain"] = {"status": "fallback", "reason": f"{len(ptc_pairs)} flat pair(s) (at least {min_pairs}); the "
                                                      "instrument file's gain is used"}
    # crosstalk
    xt = None
    if na < 2:
        qc["crosstalk"] = {"status": "measured", "reason": "", "note": "one amplifier: no crosstalk"}
    elif crosstalk_frames or crosstalk_sums:
        sums = list(crosstalk_sums or []) + night_crosstalk_sums(list(crosstalk_frames), sections,
                                                                 min_source_adu=min_source_adu)
        C, w = combine_crosstalk(sums)
        off = ~np.eye(na, dtype=bool)
        weak = off & ~(w >= min_crosstalk_weight)
        if weak[off].all() or not np.isfinite(C[off & ~weak]).all():
            qc["crosstalk"] = {"status": "fallback", "reason": "no saturated or bright stars in the frames: crosstalk "
                                                               "not measured, not corrected"}
        else:
            C = np.where(weak, 0.0, C)
            xt = C
            st = "measured" if not weak.any() else "fallback"
            qc["crosstalk"] = {"status": st, "reason": "" if st == "measured" else
                               f"{int(weak.sum())} amplifier pair(s) without bright sources: set to 0",
                               "weight_adu2": w.tolist()}
    else:
        qc["crosstalk"] = {"status": "fallback", "reason": "no science frames with saturated stars: crosstalk not "
                                                           "measured, not corrected"}
    if na > 1 and qc.get("gain", {}).get("status") == "measured" and qc["crosstalk"]["status"] != "measured":
        # a uniform flat leaks into every amplifier a pedestal sum_s c[t, s] x level from the others: where the
        # crosstalk is not removed the photon-transfer curve takes it for signal and the gain comes out high by that
        # sum (a few 0.1 % for coefficients of a few 1e-4; every flux with it)
        qc["gain"]["note"] = ("crosstalk not measured for every amplifier pair: the photon-transfer flats keep those "
                              "pairs' crosstalk pedestal and the gain may be high by their sum of coefficients "
                              "(more science frames with saturated stars measure it)")
    # saturation
    sat_lv = None
    if saturation_frames:
        lv = [saturation_level([fr[0][k] for fr in saturation_frames], [fr[1][k] for fr in saturation_frames])
              for k in range(na)]
        if all(v is not None for v in lv):
            sat_lv = np.array(lv, np.float64)
            qc["saturation"] = {"status": "measured", "reason": "", "saturation_adu": sat_lv.tolist()}
        else:
            qc["saturation"] = {"status": "fallback", "reason": "no pile-up of saturated pixels in some amplifier; "
                                                                "the ADC maximum is used"}
    else:
        qc["saturation"] = {"status": "fallback", "reason": "no frames with saturated pixels; the ADC maximum is used"}
    return Signature(gain=np.asarray(gain, np.float64), read_noise_adu=np.asarray(rn_adu, np.float64),
                     read_noise_e=np.asarray(rn_adu, np.float64) * np.asarray(gain, np.float64), linearity=lin,
                     crosstalk=xt, saturation_adu=sat_lv, qc=qc)


def signature_from_raw(inst, layout: str, *, biases: Sequence[np.ndarray] = (),
                       linearity: Sequence[tuple[np.ndarray, float]] = (),
                       ptc: Sequence[tuple[np.ndarray, np.ndarray]] = (), science: Sequence[np.ndarray] = (),
                       master_bias: np.ndarray | None = None, options=None, detector: int = 1,
                       **kwargs) -> Signature:
    """The instrument signature from raw frames (the adapter of :func:`measure_signature`: every frame through the
    ISR in ADU, without non-linearity or gain, then measured).

    Every raw frame may be given as an array or as a zero-argument callable that reads it (what the step passes):
    the flats and the science frames are then read and processed one at a time (a science frame once per round of
    the crosstalk measurement), so that memory holds the biases and one or two full-size frames whatever the length
    of the night — a full-size T80Cam night of 22 photon-transfer and linearity flats peaked at 17 GB before.

    Parameters
    ----------
    inst : Instrument
    layout : raw layout of the frames.
    biases : raw bias frames (read noise from consecutive pairs; their median is the master bias when
        ``master_bias`` is not given: a light-leak bias in a mean lifted it by ~30 ADU, and the photon-transfer
        gain, from levels of 300-2000 ADU, was 1.3 % low).
    linearity : ``(raw, exposure time s)`` of the rising flat series.
    ptc : ``(raw a, raw b)`` flat pairs.
    science : raw science frames (crosstalk from their bright stars, saturation level from their pile-ups).
    master_bias : master bias (ADU), optional.
    options : :class:`upad.isr.IsrOptions` of the overscan (``to_electrons`` and ``linearize`` are switched off).
    kwargs : passed to :func:`measure_signature` (``min_pairs``, ``min_linearity`` …).
    """
    import dataclasses

    from upad.isr.core import IsrOptions, run_isr

    opt = dataclasses.replace(options or IsrOptions(), to_electrons=False, linearize=False)
    sections = inst.amp_sections(layout, detector)
    amps = [sec.active for sec in sections]
    amp_list = inst.detector(detector).amplifiers
    bias_imgs = [run_isr(_load(r), inst, layout=layout, options=opt).image for r in biases]
    if master_bias is None and bias_imgs:  # the median: one bad bias (a light leak) must not shift the flats' levels
        master_bias = np.median(bias_imgs, axis=0).astype(np.float32)

    # crosstalk first (from the science frames, uncorrected): the flats are then corrected for it. Each science
    # frame is made (read if a callable, through the ISR) when a round of the crosstalk measurement uses it; the
    # first time, its pile-up (the values within the saturation tolerance of its maximum, per amplifier: all that
    # saturation_level reads) and its bias offsets are kept
    sat_frames: list[tuple[list[np.ndarray], list[float]]] = []
    seen: set[int] = set()

    def science_image(i: int, src: Any) -> np.ndarray:
        raw = _load(src)
        res = run_isr(raw, inst, layout=layout, options=opt, bias=master_bias)
        if i not in seen:
            seen.add(i)
            offs = res.overscan_level or [float(np.median(master_bias[s.active])) if master_bias is not None else 0.0
                                          for s in sections]
            sat_frames.append(([_pile_up(raw[s.data]) for s in sections], offs))
        return res.image

    frames = [(lambda i=i, src=src: science_image(i, src)) for i, src in enumerate(science)]
    xt_sums = night_crosstalk_sums(frames, sections, min_source_adu=kwargs.get("min_source_adu", 20000.0))
    xt = None
    if xt_sums and len(sections) > 1:
        C, w = combine_crosstalk(xt_sums)
        good = ~np.eye(len(sections), dtype=bool) & (w >= kwargs.get("min_crosstalk_weight", 1e11))
        if good.any() and np.isfinite(C[good]).all():
            xt = np.where(good, np.nan_to_num(C), 0.0)

    def isr(raw):
        return run_isr(_load(raw), inst, layout=layout, options=opt, bias=master_bias, crosstalk=xt)

    def lin_frame(raw, t):
        res = isr(raw)
        return res.image, float(t), res.saturated

    def pair(a, b):
        ra = isr(a)
        rb = isr(b)
        return ra.image, rb.image, ra.saturated | rb.saturated

    # the flats as callables: measure_signature makes each one (read, ISR) when it uses it, one at a time
    return measure_signature(amps=amps, sections=sections, first_gain=[a.gain for a in amp_list],
                             first_read_noise_e=[a.read_noise for a in amp_list], bias_frames=bias_imgs,
                             linearity_frames=[(lambda r=r, t=t: lin_frame(r, t)) for r, t in linearity],
                             ptc_pairs=[(lambda a=a, b=b: pair(a, b)) for a, b in ptc], crosstalk_sums=xt_sums,
                             saturation_frames=sat_frames, **kwargs)
