"""A minimal reduction step for the tests: its readiness is exactly :func:`upad.calib.lookup.select_masters`, as the
real reduction step's must be (it uses the answer as its inputs and its waiting reason)."""
from __future__ import annotations

from dataclasses import dataclass

from upad.calib.config import LookupConfig
from upad.calib.lookup import select_masters
from upad.flow.step import FRAME, Input, InputRef, PrerequisiteInput, Step, StepOutput, Unit


@dataclass(frozen=True)
class ToyReduceConfig(LookupConfig):
    pass


class ToyReduce(Step):
    name = "toy_reduce"
    product_kind = "toy_reduced"
    area = "reduced"
    config_class = ToyReduceConfig
    inputs = (Input("raw", FRAME), *(PrerequisiteInput(k, f"master_{k}" if k not in ("bpm",) else "bad_pixel_mask",
                                                       minimum=0) for k in ("bias", "dark", "flat", "fringe",
                                                                            "illumination", "bpm")))

    def plan(self, ctx, config):
        for f in ctx.frames("science"):
            sel = select_masters(ctx.session, f, config)
            yield Unit(key=f"{f.night}/{f.filename}", inputs=[InputRef("frame", f.id, "raw"), *sel.inputs()],
                       ready=sel.ready, reason=sel.reason, context={"night": f.night, "masters": sel.record()})

    def run(self, task):  # pragma: no cover - only planned in the tests
        return StepOutput()
