"""Electronic crosstalk between amplifiers: removal from a raw frame (:func:`correct_crosstalk`).

Amplifiers read out at the same time couple: the signal of a *source* amplifier leaks into a *target* amplifier at
the same readout position (same row and column counted from each amplifier's output), scaled by a coefficient of a
few 10⁻⁴ (ghosts of bright stars, mirrored between amplifiers read in opposite directions). With ``C[target,
source]`` (dimensionless, measured by :func:`upad.calib.signature.crosstalk_from_frame`) the removal is::

    raw_target -= sum_source C[target, source] * (raw_source - offset_source)   (same readout position)

on the raw values (ADU) before the non-linearity correction; ``offset`` is each source amplifier's bias level
(overscan median, else the master bias median, else none). Saturated source pixels count at their raw value, as the
video chain passes them. Pure functions: arrays in, arrays out.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from upad.instruments import AmpSection

__all__ = ["correct_crosstalk", "reorient"]


def reorient(block: np.ndarray, src: AmpSection, dst: AmpSection) -> np.ndarray:
    """Amplifier ``src``'s block (in the assembled / raw orientation) at the readout positions of ``dst``
    (a view: flipped along the axes whose readout direction differs)."""
    out = block
    if src.read_flip_x != dst.read_flip_x:
        out = out[:, ::-1]
    if src.read_flip_y != dst.read_flip_y:
        out = out[::-1, :]
    return out


def _offsets(raw: np.ndarray, sections: Sequence[AmpSection], bias: np.ndarray | None, skip: int) -> list[float]:
    out = []
    for sec in sections:
        if sec.overscan_x is not None:
            strip = raw[sec.overscan_x]
            ncol = strip.shape[1]
            k = min(skip, max(ncol - 1, 0))
            strip = strip[:, : ncol - k] if sec.read_flip_x else strip[:, k:]
            out.append(float(np.median(strip)))
        elif bias is not None:
            out.append(float(np.median(bias[sec.active])))
        else:
            out.append(0.0)
    return out


def correct_crosstalk(raw: np.ndarray, sections: Sequence[AmpSection], matrix: np.ndarray, *,
                      bias: np.ndarray | None = None, overscan_skip: int = 1,
                      flag_adu: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Remove the crosstalk from a raw frame.

    Parameters
    ----------
    raw : ndarray
        Raw frame (ADU) of the layout of ``sections``.
    sections : sequence of AmpSection
        The amplifiers of the raw layout.
    matrix : ndarray
        ``C[target, source]`` (0-based amplifier indices), dimensionless; the diagonal is ignored.
    bias : ndarray, optional
        Master bias (ADU, assembled shape): the source offsets where the layout has no overscan.
    overscan_skip : int
        Serial-overscan columns next to the data ignored in the offsets.
    flag_adu : float
        Pixels whose correction is at least this (ADU, absolute) are flagged.

    Returns
    -------
    corrected : ndarray
        float32 copy of ``raw`` with the crosstalk removed from every data section.
    flagged : ndarray
        Boolean mask (assembled shape) of the pixels corrected by at least ``flag_adu``.
    """
    matrix = np.asarray(matrix, np.float64)
    n = len(sections)
    if matrix.shape != (n, n):
        raise ValueError(f"crosstalk matrix of shape {matrix.shape} for {n} amplifiers")
    out = np.asarray(raw, np.float32).copy()
    ny = max(s.active[0].stop for s in sections)
    nx = max(s.active[1].stop for s in sections)
    flagged = np.zeros((ny, nx), bool)
    offs = _offsets(raw, sections, bias, overscan_skip)
    src = [np.asarray(raw[sec.data], np.float32) - np.float32(offs[i]) for i, sec in enumerate(sections)]
    for t, tsec in enumerate(sections):
        corr = np.zeros(src[t].shape, np.float32)
        for s, ssec in enumerate(sections):
            c = float(matrix[tsec.index, ssec.index])
            if s == t or c == 0.0:
                continue
            corr += np.float32(c) * reorient(src[s], ssec, tsec)
        out[tsec.data] -= corr
        flagged[tsec.active] = np.abs(corr) >= flag_adu
    return out, flagged
