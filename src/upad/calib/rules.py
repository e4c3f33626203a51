"""The rules of calibration selection and series completeness, as pure functions over plain data.

No database and no I/O: :mod:`upad.calib.queries` fetches, these functions decide, and :mod:`upad.calib.lookup` /
:mod:`upad.calib.planning` put the two together. The rules (docs/calibration.md):

- a master is usable for a frame when it is in the frame's **epoch** (no breakpoint between them): :func:`in_epoch`;
- among the masters **valid** at the frame's time (``good_after <= t < good_until``), the one closest in time wins:
  :func:`best_valid`;
- otherwise the **nearest** within the fallback window, the earlier on a tie, then the newest product:
  :func:`nearest_fallback`;
- a series of calibration frames is **complete** once its night is over or a later frame of the instrument (for
  science series: a frame of a later night) has been ingested: :func:`series_completion`; a complete series is
  **ready** with enough frames (and enough dithered pointings): :func:`series_state`.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from upad.calib.model import Candidate, night_distance

__all__ = ["best_valid", "in_epoch", "nearest_fallback", "series_completion", "series_state"]


def in_epoch(c: Candidate, start: dt.datetime | None, end: dt.datetime | None) -> bool:
    """Whether master ``c`` lies in the epoch ``[start, end)`` (``None``: open)."""
    t = c.good_after or c.reference_time
    if t is None:
        return True
    return (start is None or t >= start) and (end is None or t < end)


def best_valid(cands: Iterable[Candidate], when: dt.datetime) -> Candidate | None:
    """The master valid at ``when`` whose validity is centred closest to it, or ``None``."""
    valid = [c for c in cands if c.good_after is not None and c.good_until is not None
             and c.good_after <= when < c.good_until]
    if not valid:
        return None
    return min(valid, key=lambda c: abs((c.reference_time - when).total_seconds()))


def nearest_fallback(cands: Iterable[Candidate], night: str, window: int) -> Candidate | None:
    """The master of the nearest night within ``window`` nights of ``night``: the earlier night on a tie, then the
    newest product; ``None`` when there is none."""
    near = [c for c in cands if abs(night_distance(night, c.night)) <= window]
    if not near:
        return None
    return min(near, key=lambda c: (abs(night_distance(night, c.night)), night_distance(night, c.night) > 0,
                                    -c.product_id))


def series_completion(*, now: dt.datetime, night_end: dt.datetime, series_last: dt.datetime, series_night: str,
                      instrument_last: dt.datetime | None, instrument_last_night: str | None,
                      rule: str) -> tuple[bool, str]:
    """Whether a series may still grow: complete once its night is over, or (``rule='next_frame'``, calibration
    series) a later frame of the instrument exists, or (both rules) a frame of a later night; the reason if not."""
    if now >= night_end:
        return True, ""
    if rule == "next_frame" and instrument_last is not None and instrument_last > series_last:
        return True, ""
    if instrument_last_night is not None and instrument_last_night > series_night:
        return True, ""
    what = ("no later frame of this instrument has been ingested" if rule == "next_frame"
            else "no frame of a later night has been ingested")
    return False, f"{what} and the night ends {night_end.isoformat(timespec='minutes')} UTC"


def series_state(*, complete: bool, why: str, n_frames: int, min_frames: int, night: str, label: str,
                 pointings: int = 1, min_pointings: int = 1) -> tuple[str, str]:
    """``(state, reason)`` of a master unit from its series: ``incomplete`` (may still grow), ``insufficient``
    (too few frames or pointings) or ``ready``."""
    if not complete:
        return "incomplete", f"{why} ({n_frames} {label} so far)"
    if n_frames < min_frames:
        return "insufficient", f"only {n_frames} valid {label} on night {night} (min_frames = {min_frames})"
    if min_pointings > 1 and pointings < min_pointings:
        return "insufficient", (f"the {n_frames} {label} of night {night} have {pointings} distinct pointing(s); "
                                f"at least {min_pointings} dithered pointings are needed")
    return "ready", ""


def sorted_by_night(cands: Sequence[Candidate]) -> list[Candidate]:
    """Masters sorted by night, then product id (the order of the window searches)."""
    return sorted(cands, key=lambda c: (c.night, c.product_id))
