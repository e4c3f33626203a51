"""Step ``raw_preview``: a rendered quick-look image of every ingested raw frame (for the reduction portal)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from upad.config import StepConfig, param
from upad.flow.queries import PlanContext
from upad.flow.step import (
    FRAME,
    Input,
    InputRef,
    Output,
    OutputFile,
    Step,
    StepOutput,
    Task,
    Unit,
    register_step,
)
from upad.instruments import get_instrument
from upad.io.raw import read_raw
from upad.io.preview import render_preview, write_png


@dataclass(frozen=True)
class RawPreviewConfig(StepConfig):
    max_size: int = param(1024, doc="Long side of the preview image", bounds=(64, 8192), unit="pixel")



def quicklook_image(data: np.ndarray, instrument: str | None, layout: str | None) -> np.ndarray:
    """The trimmed image with each amplifier's serial-overscan level removed, when the geometry is known;
    otherwise the data as they are. A display aid only: the reduction does the real corrections."""
    try:
        inst = get_instrument(instrument or "")
        sections = inst.amp_sections(layout)
    except (KeyError, ValueError):
        return data
    if data.shape != inst.raw_shape(layout):
        return data
    out = np.empty(inst.layout.active_shape, dtype=np.float32)
    for sec in sections:
        block = data[sec.data].astype(np.float32)
        if sec.overscan_x is not None:
            block -= np.median(data[sec.overscan_x])
        out[sec.active] = block
    return out


@register_step
class RawPreview(Step):
    """Render a PNG quick-look of each valid ingested raw frame."""

    name = "raw_preview"
    product_kind = "preview"
    area = "previews"
    memory_class = "small"
    config_class = RawPreviewConfig
    version = "1.1"
    description = "PNG quick-look of every ingested raw frame"
    inputs = (Input("raw", FRAME, doc="a valid ingested raw frame"),)
    outputs = (Output("preview", doc="PNG quick-look"),)

    def plan(self, ctx: PlanContext, config: StepConfig) -> Iterable[Unit]:
        for f in ctx.frames():
            yield Unit(key=f"{f.night}/{f.filename.split('.')[0]}", inputs=[InputRef("frame", f.id, "raw")],
                       context={"night": f.night, "obs_type": f.obs_type, "filter": f.filter, "frame_id": f.id},
                       priority=200)

    def run(self, task: Task) -> StepOutput:
        raw = task.input("raw")
        _, data = read_raw(raw.paths[0])
        data = quicklook_image(data, raw.meta.get("instrument"), raw.meta.get("layout"))
        image = render_preview(data, max_size=int(task.config.max_size))
        name = f"{raw.meta['filename'].split('.')[0]}.png"
        staged = task.stage(name)
        write_png(staged, image)
        finite = data[np.isfinite(data)] if data.dtype.kind == "f" else data
        meta = {"shape": list(data.shape), "median": float(np.median(finite[::7])),
                "preview_shape": list(image.shape)}
        return StepOutput(files=[OutputFile("preview", str(staged), self.final_path(task, name))], meta=meta)
