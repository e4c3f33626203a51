"""Calibration epochs: breakpoints in time across which calibrations must not be shared, and their proposal.

An *epoch* is the interval between two consecutive breakpoints that apply to an instrumental configuration and a
kind of master (e.g. a change of the baffling affects flats and illumination corrections, not biases). The lookup
(:mod:`upad.calib.lookup`) never falls back to a master of another epoch.

Breakpoints are declared by operators, and proposed by :func:`propose_breakpoints` where consecutive masters of the
same configuration differ by more than a threshold (rms of the ratio of their binned, median-normalised maps). A
single master that differs from both neighbours while the neighbours agree is reported as an *outlier* (a master to
inspect and perhaps flag bad), not as a breakpoint.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Breakpoint", "Proposal", "applies", "epoch_bounds", "map_change", "propose_breakpoints"]


@dataclass(frozen=True)
class Breakpoint:
    """A declared epoch boundary.

    Attributes
    ----------
    time : datetime
        UTC (naive); frames at or after it belong to the next epoch.
    instrument : str or None
        Instrument key it applies to (``None``: every instrument).
    filter : str or None
        Filter it applies to (``None``: every filter).
    kinds : tuple of str
        Master kinds it applies to (``bias``, ``dark``, ``flat``, ``fringe``, ``illumination``, ``bpm``); empty:
        every kind.
    reason : str
        Why (shown by ``upad calib epochs`` and recorded in lookups).
    id : int or None
        Database id.
    source : str
        ``operator`` or ``proposed``.
    """

    time: dt.datetime
    instrument: str | None = None
    filter: str | None = None
    kinds: tuple[str, ...] = ()
    reason: str = ""
    id: int | None = None
    source: str = "operator"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "time": self.time.isoformat(), "instrument": self.instrument, "filter": self.filter,
                "kinds": list(self.kinds), "reason": self.reason, "source": self.source}


def applies(bp: Breakpoint, *, instrument: str, filter_name: str | None, kind: str) -> bool:
    """Whether breakpoint ``bp`` applies to a master of ``kind`` for this instrument and filter."""
    if bp.instrument and bp.instrument.lower() != instrument.lower():
        return False
    if bp.filter and filter_name and bp.filter != filter_name:
        return False
    if bp.filter and not filter_name:
        return False
    return not bp.kinds or kind in bp.kinds


def epoch_bounds(when: dt.datetime, breakpoints: Sequence[Breakpoint]) -> tuple[dt.datetime | None,
                                                                                 dt.datetime | None]:
    """``(start, end)`` of the epoch containing ``when`` (``None``: unbounded) among applicable ``breakpoints``."""
    start = end = None
    for bp in breakpoints:
        if bp.time <= when and (start is None or bp.time > start):
            start = bp.time
        if bp.time > when and (end is None or bp.time < end):
            end = bp.time
    return start, end


def map_change(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """How much map ``b`` differs from map ``a``: both are divided by their median, and the rms (about its mean)
    of the finite values of ``b / a`` is returned with the ratio map."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ra = a / np.nanmedian(a)
        rb = b / np.nanmedian(b)
        ratio = rb / ra
    v = ratio[np.isfinite(ratio)]
    if v.size == 0:
        return float("nan"), ratio
    return float(np.sqrt(np.mean((v - v.mean()) ** 2))), ratio


@dataclass
class Proposal:
    """A proposed breakpoint (``kind='step'``) or an outlier master (``kind='outlier'``).

    Attributes
    ----------
    time : datetime
        Proposed breakpoint time (the start of the validity of the first master of the new epoch), or the time of
        the outlier master.
    label : str
        The configuration (e.g. ``mini/MODE_5/readout/rSDSS/dome``).
    master_kind : str
        ``flat`` or ``illumination``.
    before, after : int
        Product ids of the two masters compared.
    change : float
        rms of the ratio of their maps.
    threshold : float
    kind : str
        ``step`` or ``outlier``.
    """

    time: dt.datetime
    label: str
    master_kind: str
    before: int
    after: int
    change: float
    threshold: float
    kind: str = "step"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time.isoformat(), "configuration": self.label, "master_kind": self.master_kind,
                "before": self.before, "after": self.after, "change": round(self.change, 6),
                "threshold": self.threshold, "kind": self.kind, **self.extra}


def propose_breakpoints(series: Sequence[tuple[dt.datetime, int, np.ndarray]], *, threshold: float,
                        label: str = "", master_kind: str = "flat") -> tuple[list[Proposal], list[float]]:
    """Breakpoints where consecutive masters of one configuration change by more than ``threshold``.

    Parameters
    ----------
    series : sequence of (time, product id, binned map)
        The masters in time order (``time`` = start of each master's validity).
    threshold : float
        Largest rms of the ratio of two consecutive maps that is not a change of epoch.
    label, master_kind : describe the series in the proposals.

    Returns
    -------
    proposals : list of Proposal
        Steps (breakpoint at the start of the first master after the step) and outliers.
    changes : list of float
        Change of every master with respect to the previous one (NaN for the first).
    """
    n = len(series)
    changes = [float("nan")] + [map_change(series[i - 1][2], series[i][2])[0] for i in range(1, n)]
    out: list[Proposal] = []
    i = 1
    while i < n:
        if not changes[i] > threshold:
            i += 1
            continue
        # an outlier: i differs from i-1 and from i+1, while i-1 and i+1 agree
        if i + 1 < n and changes[i + 1] > threshold:
            back, _ = map_change(series[i - 1][2], series[i + 1][2])
            if back <= threshold:
                out.append(Proposal(series[i][0], label, master_kind, series[i - 1][1], series[i][1], changes[i],
                                    threshold, "outlier", {"agrees_with_next": series[i + 1][1],
                                                           "change_prev_next": round(back, 6)}))
                i += 2
                continue
        out.append(Proposal(series[i][0], label, master_kind, series[i - 1][1], series[i][1], changes[i], threshold))
        i += 1
    return out, changes
