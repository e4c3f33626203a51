"""Invalidation: flagging a frame (or a product) walks the provenance graph forward.

Every product built from a flagged input, directly or transitively, becomes ``stale`` (no longer current); queued
jobs that would use it are cancelled. The next plan rebuilds the affected units without the bad input: their
provenance differs, so the rebuilt products are new ones and the stale ones are kept (immutable) for the record.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from upad.db.models import Frame, FrameEvent, Job, Product, ProvenanceInput, utcnow
from upad.errors import UpadError

_CHUNK = 500


@dataclass
class CascadeReport:
    stale_products: list[int] = field(default_factory=list)
    cancelled_jobs: list[int] = field(default_factory=list)


def cascade_stale(s: Session, seeds: Iterable[tuple[str, int]], *, reason: str,
                  include_seeds: bool = True) -> CascadeReport:
    """Mark stale every product that depends on ``seeds`` (``("frame", id)`` or ``("product", id)``).

    With ``include_seeds``, product seeds are marked stale themselves too.
    """
    report = CascadeReport()
    now = utcnow()
    frontier = list(seeds)
    seen: set[tuple[str, int]] = set()
    if include_seeds:
        seed_products = [i for k, i in frontier if k == "product"]
        for p in s.scalars(select(Product).where(Product.id.in_(seed_products))) if seed_products else []:
            if p.state != "stale" or p.is_current:
                p.state, p.is_current, p.stale_reason = "stale", False, reason
                report.stale_products.append(p.id)
    while frontier:
        frontier = [x for x in frontier if x not in seen]
        seen.update(frontier)
        if not frontier:
            break
        next_frontier: list[tuple[str, int]] = []
        for kind in ("frame", "product"):
            ids = [i for k, i in frontier if k == kind]
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start:start + _CHUNK]
                provs = [p for (p,) in s.execute(select(ProvenanceInput.provenance_id).distinct().where(
                    ProvenanceInput.input_kind == kind, ProvenanceInput.input_id.in_(chunk)))]
                for pstart in range(0, len(provs), _CHUNK):
                    pchunk = provs[pstart:pstart + _CHUNK]
                    for prod in s.scalars(select(Product).where(Product.provenance_id.in_(pchunk))):
                        if prod.state != "stale" or prod.is_current:
                            prod.state, prod.is_current, prod.stale_reason = "stale", False, reason
                            report.stale_products.append(prod.id)
                        next_frontier.append(("product", prod.id))
                    for job in s.scalars(select(Job).where(Job.provenance_id.in_(pchunk), Job.state == "queued")):
                        job.state, job.error, job.updated_at = "cancelled", f"input invalidated: {reason}", now
                        report.cancelled_jobs.append(job.id)
        frontier = next_frontier
    return report


def find_frame(s: Session, ref: str) -> Frame:
    """A frame by id or by file name."""
    frame = s.get(Frame, int(ref)) if ref.isdigit() else None
    if frame is None:
        frame = s.scalar(select(Frame).where(Frame.filename == ref))
    if frame is None:
        raise UpadError(f"no frame {ref!r}", hint="give a frame id or file name as listed by `upad frames`")
    return frame


def flag_frame(s: Session, ref: str, *, invalid: bool, reason: str, who: str = "cli") -> dict[str, Any]:
    """Flag a frame invalid (cascading to every product built from it) or valid again."""
    frame = find_frame(s, ref)
    if invalid and not reason:
        raise UpadError("flagging a frame invalid needs a reason", hint="add --reason 'TEXT'")
    frame.valid = not invalid
    frame.invalid_reason = reason if invalid else None
    s.add(FrameEvent(frame_id=frame.id, event="flagged-invalid" if invalid else "flagged-valid",
                     detail={"reason": reason, "by": who}))
    report = CascadeReport()
    if invalid:
        report = cascade_stale(s, [("frame", frame.id)], reason=f"frame {frame.filename} flagged invalid: {reason}")
    return {"frame": frame.id, "filename": frame.filename, "valid": frame.valid,
            "stale_products": report.stale_products, "cancelled_jobs": report.cancelled_jobs}


def flag_product(s: Session, product_id: int, *, reason: str) -> dict[str, Any]:
    """Mark a product (e.g. a calibration frame) bad: it and everything built from it become stale."""
    prod = s.get(Product, product_id)
    if prod is None:
        raise UpadError(f"no product {product_id}", hint="see `upad products`")
    prod.is_bad, prod.bad_reason = True, reason
    report = cascade_stale(s, [("product", prod.id)], reason=f"product {prod.id} marked bad: {reason}")
    return {"product": prod.id, "stale_products": report.stale_products, "cancelled_jobs": report.cancelled_jobs}
