"""Small real steps for testing the flow machinery (loaded with UPAD_PLUGINS=toysteps).

``toy_a`` makes one product per frame (like a per-frame QC), ``toy_b`` combines every current ``toy_a`` product of
a night (like a master calibration) and ``toy_c`` uses a frame and its night's ``toy_b`` (like a reduction). Their
outputs are simple text files whose content can be checked: the flow, not the science, is under test here.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from upad.config import StepConfig, param
from upad.flow.step import (
    FRAME,
    DataError,
    Input,
    InputRef,
    Output,
    OutputFile,
    Step,
    StepOutput,
    TransientError,
    Unit,
    register_step,
)


@dataclass(frozen=True)
class ToyConfig(StepConfig):
    sleep: float = param(0.0, doc="Seconds each job sleeps", bounds=(0, 60), critical=False)
    fail_keys: tuple = param((), doc="Unit keys that fail deterministically", critical=False)
    flaky_keys: tuple = param((), doc="Unit keys that fail transiently on their first attempt", critical=False)
    scale: int = param(1, doc="Multiplies the value (a critical parameter)", bounds=(1, 1000))
    env_fault: str = param("", doc="Environment fault raised while <root>/tmp/env-fault exists (the cause): "
                                   "enospc | short_write | erofs", critical=False)


def _write(task, value: int, step: Step) -> StepOutput:
    cfg = task.config
    assert isinstance(cfg, ToyConfig), "run() receives its typed configuration"
    if cfg.sleep:
        time.sleep(cfg.sleep)
    if cfg.env_fault and (Path(task.root) / "tmp" / "env-fault").exists():
        import errno

        if cfg.env_fault == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device", task.stage("value.json"))
        if cfg.env_fault == "short_write":  # what numpy/astropy say when a write is cut short by a full disk
            raise OSError("2880 requested and 1024 written")
        if cfg.env_fault == "erofs":
            raise OSError(errno.EROFS, "Read-only file system", task.stage("value.json"))
        raise ValueError(f"unknown env_fault {cfg.env_fault!r}")
    if task.unit_key in cfg.fail_keys:
        raise DataError(f"toy failure for {task.unit_key}")
    if task.unit_key in cfg.flaky_keys:
        marker = Path(task.root) / "tmp" / f"flaky-{task.step}-{task.unit_key.replace('/', '_')}"
        if not marker.exists():
            marker.write_text("failed once")
            raise TransientError(f"toy transient failure for {task.unit_key}")
    name = "value.json"
    staged = task.stage(name)
    staged.write_text(json.dumps({"value": value * cfg.scale, "unit": task.unit_key}))
    return StepOutput(files=[OutputFile("value", str(staged), step.final_path(task, name))],
                      meta={"value": value * cfg.scale})


def _read_value(path: str) -> int:
    return json.loads(Path(path).read_text())["value"]


@register_step
class ToyA(Step):
    name = "toy_a"
    product_kind = "toy"
    area = "reduced"
    config_class = ToyConfig
    description = "one product per frame"
    inputs = (Input("raw", FRAME, doc="any valid frame"),)
    outputs = (Output("value", doc="JSON with the value"),)

    def plan(self, ctx, config):
        for f in ctx.frames():
            yield Unit(key=f"{f.night}/frame{f.id}", inputs=[InputRef("frame", f.id, "raw")],
                       context={"night": f.night, "frame": f.id})

    def run(self, task):
        raw = task.input("raw")
        Path(raw.paths[0]).read_bytes()  # the input file must exist
        return _write(task, raw.id, self)


@register_step
class ToyB(Step):
    name = "toy_b"
    product_kind = "toy_master"
    area = "calibration"
    config_class = ToyConfig
    description = "combines a night's toy_a products"
    inputs = (Input("part", "toy", minimum=2, maximum=None, doc="the night's toy_a products"),)
    outputs = (Output("value", doc="JSON with the sum"),)

    def plan(self, ctx, config):
        frames_per_night = defaultdict(int)
        for f in ctx.frames():
            frames_per_night[f.night] += 1
        nights = list(frames_per_night)
        by_night = defaultdict(list)
        for p in ctx.current_products("toy"):
            by_night[p.context["night"]].append(p.id)
        for night in sorted(nights):
            ids = sorted(by_night.get(night, []))
            if len(ids) < 2:
                yield Unit(key=night, ready=False, context={"night": night},
                           reason=f"needs at least 2 toy_a products for night {night} (has {len(ids)})")
                continue
            if len(ids) < frames_per_night[night]:
                yield Unit(key=night, ready=False, context={"night": night},
                           reason=f"waiting for toy_a of {frames_per_night[night] - len(ids)} more frame(s)")
                continue
            yield Unit(key=night, inputs=[InputRef("product", i, "part") for i in ids], context={"night": night})

    def run(self, task):
        return _write(task, sum(_read_value(i.paths[0]) for i in task.inputs), self)


@register_step
class ToyC(Step):
    name = "toy_c"
    product_kind = "toy_reduced"
    area = "reduced"
    config_class = ToyConfig
    description = "a frame with its night's toy_b"
    inputs = (Input("raw", FRAME), Input("master", "toy_master", doc="the night's toy_b"))
    outputs = (Output("value", doc="JSON with the value"),)

    def plan(self, ctx, config):
        masters = {p.context["night"]: p.id for p in ctx.current_products("toy_master")}
        for f in ctx.frames():
            fid, night = f.id, f.night
            if night not in masters:
                yield Unit(key=f"{night}/frame{fid}", ready=False, context={"night": night},
                           reason=f"no current toy_b for night {night}")
                continue
            yield Unit(key=f"{night}/frame{fid}", context={"night": night, "frame": fid},
                       inputs=[InputRef("frame", fid, "raw"), InputRef("product", masters[night], "master")])

    def run(self, task):
        master = task.input("master")
        return _write(task, _read_value(master.paths[0]) + task.input("raw").id, self)
