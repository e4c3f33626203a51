"""Reviewing masters: listings, and the epoch analysis of master flats and illumination corrections.

Used by ``upad calib list`` and ``upad calib epochs``; reads the database and the masters' binned maps (the ``BIN``
extension of each master file), never writes.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from upad.calib.epochs import (
    Breakpoint,
    Proposal,
    applies,
    map_change,
    propose_breakpoints,
)
from upad.calib.planning import KIND_OF, STEP_OF
from upad.calib.store import load_breakpoints
from upad.db.models import Product

__all__ = ["epoch_analysis", "list_masters", "master_series"]

#: Default thresholds (rms of the ratio of consecutive binned maps) above which a breakpoint is proposed.
DEFAULT_THRESHOLDS = {"flat": 0.005, "illumination": 0.003}


def _row(p: Product) -> dict[str, Any]:
    ctx = p.context or {}
    meta = p.meta or {}
    return {"id": p.id, "kind": KIND_OF.get(p.step, p.step), "step": p.step, "unit": p.unit_key,
            "instrument": ctx.get("instrument"), "read_mode": ctx.get("read_mode"), "layout": ctx.get("layout"),
            "filter": ctx.get("filter"), "flat_type": ctx.get("flat_type"), "night": ctx.get("night"),
            "good_after": p.good_after.isoformat(timespec="seconds") if p.good_after else None,
            "good_until": p.good_until.isoformat(timespec="seconds") if p.good_until else None,
            "state": p.state, "current": p.is_current, "is_bad": p.is_bad, "bad_reason": p.bad_reason,
            "qc_status": p.qc_status, "n_inputs": meta.get("n_inputs"), "n_used": meta.get("n_used"),
            "excluded": meta.get("excluded", []), "qc": meta.get("qc"), "provenance_id": p.provenance_id,
            "files": [f["path"] for f in p.files or []]}


def list_masters(session: Session, *, kind: str | None = None, include_all: bool = False) -> list[dict[str, Any]]:
    """Masters (current ones unless ``include_all``) with validity, QC and exclusions, by night then unit."""
    steps = [STEP_OF[kind]] if kind else list(STEP_OF.values())
    stmt = select(Product).where(Product.step.in_(steps))
    if not include_all:
        stmt = stmt.where(Product.is_current.is_(True))
    rows = [_row(p) for p in session.scalars(stmt)]
    return sorted(rows, key=lambda r: (r["night"] or "", r["kind"], r["unit"], r["id"]))


def _label(row: dict[str, Any]) -> str:
    parts = [row["instrument"], row["read_mode"], row["layout"], row["filter"], row["flat_type"]]
    return "/".join(str(p) for p in parts if p)


def master_series(session: Session, root: Path, kind: str) -> dict[str, list[tuple[dt.datetime, int, np.ndarray,
                                                                                   str]]]:
    """Usable masters of ``kind`` (current, not bad) per configuration, in time order, with their binned maps:
    ``{label: [(good_after, product id, map, night)]}``. Masters whose file has no ``BIN`` map are skipped."""
    from astropy.io import fits

    out: dict[str, list[tuple[dt.datetime, int, np.ndarray, str]]] = defaultdict(list)
    for row in list_masters(session, kind=kind):
        if row["is_bad"] or not row["files"] or not row["good_after"]:
            continue
        path = Path(root) / row["files"][0]
        try:
            with fits.open(path, memmap=False) as hdul:
                if "BIN" not in hdul:
                    continue
                data = np.asarray(hdul["BIN"].data, dtype=np.float64)
        except OSError:
            continue
        out[_label(row)].append((dt.datetime.fromisoformat(row["good_after"]), row["id"], data, row["night"]))
    for v in out.values():
        v.sort(key=lambda t: (t[0], t[1]))
    return dict(out)


def epoch_analysis(session: Session, root: Path, *, thresholds: dict[str, float] | None = None
                   ) -> dict[str, Any]:
    """Compare consecutive master flats and illumination corrections of every configuration.

    Returns ``{"proposals": [Proposal…], "series": [plot series…], "declared": [Breakpoint…]}``; proposals that an
    active declared breakpoint already covers (same time, applicable) are dropped.
    """
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    declared = load_breakpoints(session)
    proposals: list[Proposal] = []
    plot_series: list[dict[str, Any]] = []
    for kind in ("flat", "illumination"):
        for label, items in master_series(session, root, kind).items():
            found, changes = propose_breakpoints([(t, pid, m) for t, pid, m, _ in items],
                                                 threshold=thresholds[kind], label=label, master_kind=kind)
            instrument = label.split("/")[0]
            filt = label.split("/")[3] if len(label.split("/")) > 3 else None
            for pr in found:
                covered = any(b.time == pr.time and applies(b, instrument=instrument, filter_name=filt, kind=kind)
                              for b in declared)
                pr.extra.update({"instrument": instrument, "filter": filt, "already_declared": covered})
                if not covered:
                    proposals.append(pr)
            maps = []
            for pr in found:
                i = next(k for k, it in enumerate(items) if it[1] == pr.after)
                _, ratio = map_change(items[i - 1][2], items[i][2])
                maps.append((f"{pr.kind} {pr.time:%Y-%m-%d}", ratio))
            plot_series.append({"label": f"{kind} {label}", "times": [t for t, *_ in items], "metric": changes,
                                "threshold": thresholds[kind], "maps": maps})
    return {"proposals": proposals, "series": plot_series, "declared": declared}


def breakpoint_from_proposal(p: Proposal) -> Breakpoint:
    """The breakpoint that accepting a step proposal declares."""
    return Breakpoint(time=p.time, instrument=p.extra.get("instrument"), filter=p.extra.get("filter"),
                      kinds=(p.master_kind,) if p.master_kind != "flat" else ("flat", "illumination"),
                      reason=(f"proposed: {p.master_kind} {p.label} changed by {p.change:.2%} rms (> {p.threshold:.2%}) "
                              f"between products {p.before} and {p.after}"), source="proposed")
