"""Step ``night_summary``: the quality summary of a night's reduced frames (the worked example of
docs/processing-flow.md, "How to add a step").

One unit per night: ready when every valid science frame of the night has a current reduced frame (or its
reduction failed for good); its inputs are those reduced frames. The worker reads nothing but the inputs' recorded QC
figures, calls :func:`upad.reduce.nightqc.summarise_night` and writes the table with
:func:`upad.io.products.write_night_summary` (read back by :func:`~upad.io.products.read_night_summary`).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from upad.config import StepConfig, param
from upad.flow.queries import PlanContext
from upad.flow.step import Input, InputRef, Output, OutputFile, Step, StepOutput, Task, Unit, register_step
from upad.io.products import write_night_summary
from upad.reduce.nightqc import summarise_night
from upad.reduce.steps import unit_key

__all__ = ["NightSummaryConfig", "NightSummaryStep"]


@dataclass(frozen=True)
class NightSummaryConfig(StepConfig):
    """Parameters of the night summary."""

    include_failed: bool = param(True, doc="List the frames whose QC failed (with their reasons) in the table")


@register_step
class NightSummaryStep(Step):
    """The quality summary of one night."""

    name = "night_summary"
    product_kind = "night_summary"
    area = "reduced"
    memory_class = "tiny"
    config_class = NightSummaryConfig
    version = "1.0"
    description = "per-night table of the reduced frames' QC figures and per-filter statistics"
    inputs = (Input("reduced", "reduced_frame", minimum=1, maximum=None,
                    doc="every current reduced frame of the night"),)
    outputs = (Output("summary", doc="FITS table NIGHTQC (one row per frame) and per-filter header cards"),)

    def plan(self, ctx: PlanContext, config: NightSummaryConfig) -> Iterable[Unit]:
        science: dict[str, dict[int, Any]] = defaultdict(dict)
        for f in ctx.frames("science"):
            science[f.night][f.id] = f
        reduced: dict[str, list[int]] = defaultdict(list)
        seen: dict[str, set[int]] = defaultdict(set)
        for p in ctx.current_products("reduced_frame", nights=science):
            reduced[p.night].append(p.id)
            seen[p.night].add(int((p.context or {}).get("frame_id", -1)))
        failed = ctx.failed_units("reduce")  # frames whose reduction failed for good do not hold the night back
        for night in sorted(science):
            ctx_ = {"night": night, "n_frames": len(science[night])}
            pending = [f for f in science[night].values() if f.id not in seen[night] and unit_key(f) not in failed]
            if pending:
                yield Unit(key=night, ready=False, context=ctx_,
                           reason=f"{len(pending)} of {len(science[night])} science frames of night {night} are "
                                  "not reduced yet")
                continue
            yield Unit(key=night, inputs=[InputRef("product", i, "reduced") for i in sorted(reduced[night])],
                       context=ctx_, priority=150)

    def run(self, task: Task) -> StepOutput:
        cfg = task.config
        rows = []
        for r in task.inputs_by_role("reduced"):
            values = {**(r.meta.get("stats") or {}), **(r.meta.get("qc_values") or {})}
            status = r.meta.get("qc_status") or {"good": "ok", "bad": "warn"}.get(r.meta.get("qc"), "fail")
            if status == "fail" and not cfg.include_failed:
                continue
            rows.append({"frame": str(r.meta.get("unit_key", "")).rsplit("/", 1)[-1],
                         "filter": (r.meta.get("context") or {}).get("filter"),
                         "qc_status": status, "reasons": r.meta.get("qc_reasons") or [], **values})
        summary = summarise_night(task.context["night"], rows)
        name = f"night_summary_{task.context['night']}.fits"
        staged = task.stage(name)
        write_night_summary(staged, summary, provenance=task.provenance_id[:12])
        return StepOutput(files=[OutputFile("summary", str(staged), self.final_path(task, name))],
                          meta={"n_frames": summary.n_frames, "filters": summary.filters},
                          qc_status="ok" if summary.n_frames else "warn")
