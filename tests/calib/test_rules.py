"""The rules of master selection and series completeness, on hand-made candidates (no database)."""
from __future__ import annotations

import datetime as dt

from upad.calib.model import Candidate
from upad.calib.rules import best_valid, in_epoch, nearest_fallback, series_completion, series_state


def cand(pid: int, night: str, *, valid: bool = True) -> Candidate:
    start = dt.datetime.fromisoformat(night) + dt.timedelta(hours=12)
    return Candidate(pid, f"p{pid}", f"u/{night}", night, start if valid else None,
                     start + dt.timedelta(days=1) if valid else None, {}, "ok")


def test_valid_beats_fallback_and_the_closest_in_time_wins():
    when = dt.datetime(2025, 3, 1, 22)
    cands = [cand(1, "2025-02-28"), cand(2, "2025-03-01"), cand(3, "2025-03-02")]
    assert best_valid(cands, when).product_id == 2
    # two masters valid at the same time: the one centred closer to the frame
    late = Candidate(4, "p4", "u/x", "2025-03-01", dt.datetime(2025, 3, 1, 20), dt.datetime(2025, 3, 1, 23), {}, "ok")
    assert best_valid([*cands, late], when).product_id == 4
    assert best_valid([cands[0], cands[2]], when) is None


def test_fallback_within_the_window_earlier_night_first_on_a_tie():
    cands = [cand(1, "2025-02-27"), cand(2, "2025-03-03")]
    assert nearest_fallback(cands, "2025-03-01", 10).product_id == 1  # both 2 nights away: the earlier
    assert nearest_fallback(cands, "2025-03-02", 10).product_id == 2  # nearer
    assert nearest_fallback(cands, "2025-03-15", 5) is None  # outside the window
    newer = cand(5, "2025-02-27")
    assert nearest_fallback([cands[0], newer], "2025-03-01", 10).product_id == 5  # same night: newest product


def test_an_epoch_breakpoint_excludes_masters_across_it():
    bp = dt.datetime(2025, 3, 1, 0)
    assert in_epoch(cand(1, "2025-03-02"), bp, None)
    assert not in_epoch(cand(2, "2025-02-27"), bp, None)
    assert in_epoch(cand(2, "2025-02-27"), None, bp)
    assert in_epoch(cand(3, "2025-02-27", valid=False), bp, None)  # no validity: cannot be placed, kept


def test_series_completion_and_state():
    end = dt.datetime(2025, 3, 2, 12)
    last = dt.datetime(2025, 3, 1, 19)
    kw = dict(night_end=end, series_last=last, series_night="2025-03-01")
    # the night goes on and nothing came after: the series may still grow
    ok, why = series_completion(now=dt.datetime(2025, 3, 1, 20), instrument_last=last,
                                instrument_last_night="2025-03-01", rule="next_frame", **kw)
    assert not ok and "no later frame" in why
    # a later frame of the instrument closes a calibration series, not a science series
    later = dt.datetime(2025, 3, 1, 21)
    assert series_completion(now=dt.datetime(2025, 3, 1, 22), instrument_last=later,
                             instrument_last_night="2025-03-01", rule="next_frame", **kw)[0]
    assert not series_completion(now=dt.datetime(2025, 3, 1, 22), instrument_last=later,
                                 instrument_last_night="2025-03-01", rule="next_night", **kw)[0]
    # a frame of a later night, or the end of the night, closes both
    assert series_completion(now=dt.datetime(2025, 3, 2, 1), instrument_last=later,
                             instrument_last_night="2025-03-02", rule="next_night", **kw)[0]
    assert series_completion(now=end, instrument_last=None, instrument_last_night=None, rule="next_night", **kw)[0]
    assert series_state(complete=False, why="w", n_frames=2, min_frames=3, night="n", label="biases")[0] == \
        "incomplete"
    state, why = series_state(complete=True, why="", n_frames=2, min_frames=3, night="n", label="biases")
    assert state == "insufficient" and "min_frames = 3" in why
    state, why = series_state(complete=True, why="", n_frames=5, min_frames=3, night="n", label="frames",
                              pointings=1, min_pointings=2)
    assert state == "insufficient" and "dithered" in why
    assert series_state(complete=True, why="", n_frames=5, min_frames=3, night="n", label="frames",
                        pointings=3, min_pointings=2) == ("ready", "")
