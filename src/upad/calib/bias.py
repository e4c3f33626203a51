"""Master bias: per-frame statistics, screening of anomalous frames, and the master's statistics.

A bias frame is overscan-corrected and assembled (:func:`upad.isr.assemble`; no linearisation, no gain:
the master bias is in ADU). Each frame is then described per amplifier by its level (median) and its read noise,
measured on differences of neighbouring pixels along the serial direction (``std(x[i+1] - x[i]) / sqrt(2)``): a bias
varies along the readout rows, not along a row, so this measures the read noise alone, in both raw layouts.

Screening (:func:`screen_series`) compares every frame with the series: a frame whose level or noise in any
amplifier departs from the series median by more than the tolerance (a light leak, a wrong frame type, an electronic
problem) or that has saturated pixels is excluded, with the reason recorded. The survivors are combined with a
sigma-clipped mean whose rejection uses each frame's measured read noise (:mod:`upad.calib.combine`).

Without an overscan (the ``archived`` layout) the frames keep their bias level and its drift along the readout,
which differ from frame to frame by a few ADU: combined as they are, the rejection would cut into that spread. Each
frame's row profile is therefore measured on its own data (a polynomial fitted to the row-wise medians of every
amplifier, :func:`subtract_row_profiles`) and subtracted before combining, and the mean profile of the frames used
is added back to the master (:func:`add_row_profiles`): the master is the mean bias pattern, with the 2-D structure
and noise combined with outlier rejection.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from upad.calib.qc import clipped_std

__all__ = [
    "FrameStats",
    "add_row_profiles",
    "amp_slices",
    "frame_stats",
    "master_stats",
    "screen_series",
    "subtract_row_profiles",
]

Slice2D = tuple[slice, slice]


def amp_slices(sections: Sequence) -> list[Slice2D]:
    """The ``active`` region of each amplifier section (assembled-image slices)."""
    return [s.active for s in sections]


@dataclass
class FrameStats:
    """Per-amplifier statistics of one assembled calibration frame (units of the image).

    Attributes
    ----------
    level : list of float
        Median per amplifier.
    noise : list of float
        Pixel-to-pixel noise per amplifier: robust std of serial neighbour differences / sqrt(2).
    saturated_fraction : float
        Fraction of pixels at the ADC saturation level.
    """

    level: list[float]
    noise: list[float]
    saturated_fraction: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"level": [round(v, 4) for v in self.level], "noise": [round(v, 4) for v in self.noise],
                "saturated_fraction": self.saturated_fraction, **self.extra}


def frame_stats(image: np.ndarray, amps: Sequence[Slice2D], *, saturated: np.ndarray | None = None,
                step: int = 3) -> FrameStats:
    """Level and noise of every amplifier of ``image`` (every ``step``-th row is used for speed)."""
    level, noise = [], []
    for sl in amps:
        a = image[sl][::step]
        level.append(float(np.nanmedian(a)))
        d = np.diff(a, axis=1)
        noise.append(clipped_std(d) / np.sqrt(2.0))
    sat = float(saturated.mean()) if saturated is not None and saturated.size else 0.0
    return FrameStats(level=level, noise=noise, saturated_fraction=sat)


def screen_series(stats: Sequence[FrameStats], *, level_tol: float, level_nsigma: float = 5.0,
                  noise_ratio: float = 1.5, max_saturated: float = 0.0, unit: str = "ADU",
                  names: Sequence[str] | None = None) -> list[str | None]:
    """Reasons to exclude frames of a calibration series (``None`` for a frame that is kept).

    A frame is excluded when, in any amplifier, its level departs from the series median by more than
    ``max(level_tol, level_nsigma x robust spread of the levels)``; or its noise exceeds ``noise_ratio`` x the
    series median noise; or more than ``max_saturated`` of its pixels are saturated.

    Parameters
    ----------
    stats : per-frame statistics (:func:`frame_stats`).
    level_tol : float
        Absolute level tolerance, in ``unit``.
    level_nsigma : float
        Tolerance in units of the robust spread of the levels across the series.
    noise_ratio : float
        Largest allowed noise relative to the series median.
    max_saturated : float
        Largest allowed fraction of saturated pixels.
    unit : str
        Unit named in the reasons.
    names : optional frame names (unused in the reasons, which are per frame already).
    """
    n = len(stats)
    if n == 0:
        return []
    levels = np.array([s.level for s in stats], np.float64)  # (n, amps)
    noises = np.array([s.noise for s in stats], np.float64)
    med_level = np.median(levels, axis=0)
    spread = 1.482602218505602 * np.median(np.abs(levels - med_level), axis=0) if n >= 3 else np.zeros_like(med_level)
    tol = np.maximum(level_tol, level_nsigma * spread)
    med_noise = np.median(noises, axis=0)
    reasons: list[str | None] = []
    for i, s in enumerate(stats):
        why = []
        if s.saturated_fraction > max_saturated:
            why.append(f"{s.saturated_fraction:.2%} of the pixels are saturated (limit {max_saturated:.2%})")
        if n >= 3:
            dev = levels[i] - med_level
            k = int(np.argmax(np.abs(dev) - tol))
            if abs(dev[k]) > tol[k]:
                why.append(f"level of amplifier {k + 1} is {dev[k]:+.1f} {unit} from the series median "
                           f"(tolerance {tol[k]:.1f} {unit}): light leak, wrong frame type or electronics")
            ratio = noises[i] / np.where(med_noise > 0, med_noise, np.nan)
            k = int(np.nanargmax(ratio)) if np.isfinite(ratio).any() else 0
            if np.isfinite(ratio[k]) and ratio[k] > noise_ratio:
                why.append(f"noise of amplifier {k + 1} is {ratio[k]:.2f}x the series median (limit {noise_ratio})")
        reasons.append("; ".join(why) or None)
    return reasons


def master_stats(master: np.ndarray, amps: Sequence[Slice2D], *, read_noise_adu: Sequence[float], gains:
                 Sequence[float], n_used: int) -> dict[str, object]:
    """Statistics of a master bias (ADU): per amplifier mean, robust std, the read noise of the frames (ADU and
    e-) and the noise expected in the master (read noise / sqrt(n))."""
    out: dict[str, object] = {"amplifiers": []}
    rows = []
    for k, sl in enumerate(amps):
        a = master[sl]
        rn = float(read_noise_adu[k])
        rows.append({"amp": k + 1, "mean_adu": round(float(np.nanmean(a)), 4),
                     "std_adu": round(clipped_std(a[::2, ::2]), 4),
                     "read_noise_adu": round(rn, 4), "read_noise_e": round(rn * float(gains[k]), 4),
                     "expected_std_adu": round(rn / np.sqrt(max(n_used, 1)), 4)})
    out["amplifiers"] = rows
    out["mean_adu"] = round(float(np.nanmean(master)), 4)
    return out


def subtract_row_profiles(image: np.ndarray, amps: Sequence[Slice2D], *, order: int = 3) -> list[np.ndarray]:
    """Subtract from every amplifier of a bias frame its row profile (Legendre polynomial of ``order`` fitted to
    the row-wise medians), in place; return the profiles (ADU, one array of rows per amplifier)."""
    from upad.isr import overscan_profile

    out = []
    for sl in amps:
        region = image[sl]
        prof = overscan_profile(region, method="poly", order=order)
        region -= prof.astype(np.float32)[:, None]
        out.append(prof)
    return out


def add_row_profiles(master: np.ndarray, amps: Sequence[Slice2D], profiles: Sequence[Sequence[np.ndarray]]) -> None:
    """Add the mean over frames of the row profiles removed by :func:`subtract_row_profiles`, in place."""
    for k, sl in enumerate(amps):
        mean = np.mean([p[k] for p in profiles], axis=0)
        master[sl] += mean.astype(np.float32)[:, None]
