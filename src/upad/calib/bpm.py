"""Bad-pixel mask from a master dark and master flats: hot, dead and low-response pixels, and bad columns.

Bits (uint8, combined with OR):

======  ===============  ==========================================================================
bit     name             meaning
======  ===============  ==========================================================================
1       ``HOT``          dark current above the median by ``nsigma`` x its uncertainty (master dark)
2       ``DEAD``         response below ``dead_below`` of its surroundings (master flat)
4       ``LOW``          response below ``low_below`` of its surroundings (master flat)
8       ``BAD_COLUMN``   part of a vertical run of at least ``min_run`` flagged pixels (a trap, a hot or
                         dead column segment), gaps of up to ``max_gap`` pixels filled
======  ===============  ==========================================================================

The response of a pixel is the master flat divided by its local smooth level (sep background over meshes of
``box`` pixels), so that vignetting and illumination do not count as defects.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "BAD_COLUMN",
    "BITS",
    "DEAD",
    "HOT",
    "LOW",
    "bpm_stats",
    "column_defects",
    "combine_mask",
    "flat_defects",
    "local_response",
]

HOT = 1
DEAD = 2
LOW = 4
BAD_COLUMN = 8

#: Name → bit of the bad-pixel mask (published with the data).
BITS = {"hot": HOT, "dead": DEAD, "low_response": LOW, "bad_column": BAD_COLUMN}


def local_response(flat: np.ndarray, *, box: int = 32) -> np.ndarray:
    """Flat divided by its local smooth level (sep background over ``box``-pixel meshes)."""
    from upad.calib.fringe import sky_background

    bkg, _ = sky_background(flat, None, box=box, filter_size=3)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.asarray(flat, np.float32) / bkg).astype(np.float32)


def flat_defects(flats: Sequence[np.ndarray], *, box: int = 32, dead_below: float = 0.2,
                 low_below: float = 0.85) -> tuple[np.ndarray, np.ndarray]:
    """Dead and low-response pixels: the median over ``flats`` of the local response below ``dead_below`` or
    ``low_below``. Non-finite flat pixels count as dead."""
    import warnings

    resp = [local_response(f, box=box) for f in flats]
    if len(resp) == 1:
        r = resp[0]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = np.nanmedian(np.stack(resp), axis=0)
    dead = ~np.isfinite(r) | (r < dead_below)
    with np.errstate(invalid="ignore"):
        low = np.isfinite(r) & (r >= dead_below) & (r < low_below)
    return dead, low


def column_defects(mask: np.ndarray, *, min_run: int = 20, max_gap: int = 2) -> np.ndarray:
    """Pixels of vertical runs of at least ``min_run`` flagged pixels in ``mask`` (gaps up to ``max_gap`` filled)."""
    from scipy import ndimage

    m = mask.astype(bool)
    if max_gap > 0:
        m = ndimage.binary_closing(m, structure=np.ones((2 * max_gap + 1, 1), bool)) | m
    labels, n = ndimage.label(m, structure=np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], bool))
    if n == 0:
        return np.zeros(mask.shape, bool)
    sizes = np.bincount(labels.ravel())
    long = sizes >= min_run
    long[0] = False
    return long[labels]


def combine_mask(*, hot: np.ndarray | None = None, dead: np.ndarray | None = None, low: np.ndarray | None = None,
                 min_run: int = 20, max_gap: int = 2, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The bad-pixel mask (uint8 bits) from the individual defect maps; bad columns from their union."""
    ref = next((m for m in (hot, dead, low) if m is not None), None)
    if ref is None:
        if shape is None:
            raise ValueError("no defect map given")
        return np.zeros(shape, np.uint8)
    bpm = np.zeros(ref.shape, np.uint8)
    for m, bit in ((hot, HOT), (dead, DEAD), (low, LOW)):
        if m is not None:
            bpm[m] |= np.uint8(bit)
    cols = column_defects(bpm > 0, min_run=min_run, max_gap=max_gap)
    bpm[cols] |= np.uint8(BAD_COLUMN)
    return bpm


def bpm_stats(bpm: np.ndarray) -> dict[str, object]:
    """Number of flagged pixels, per bit and in total."""
    out: dict[str, object] = {name: int(((bpm & bit) > 0).sum()) for name, bit in BITS.items()}
    out["total"] = int((bpm > 0).sum())
    out["fraction"] = float((bpm > 0).mean())
    return out
