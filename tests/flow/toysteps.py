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

from sqlalchemy import select

from upad.config import StepConfig, param
from upad.db.models import Frame, Product
from upad.flow.step import (
    DataError,
    InputRef,
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


def _write(task, value: int, step: Step) -> StepOutput:
    cfg = task.config
    if cfg["sleep"]:
        time.sleep(cfg["sleep"])
    if task.unit_key in cfg["fail_keys"]:
        raise DataError(f"toy failure for {task.unit_key}")
    if task.unit_key in cfg["flaky_keys"]:
        marker = Path(task.root) / "tmp" / f"flaky-{task.step}-{task.unit_key.replace('/', '_')}"
        if not marker.exists():
            marker.write_text("failed once")
            raise TransientError(f"toy transient failure for {task.unit_key}")
    name = "value.json"
    staged = task.stage(name)
    staged.write_text(json.dumps({"value": value * cfg["scale"], "unit": task.unit_key}))
    return StepOutput(files=[OutputFile("value", str(staged), step.final_path(task, name))],
                      meta={"value": value * cfg["scale"]})


def _read_value(path: str) -> int:
    return json.loads(Path(path).read_text())["value"]


@register_step
class ToyA(Step):
    name = "toy_a"
    product_kind = "toy"
    area = "reduced"
    config_class = ToyConfig
    order = 20
    description = "one product per frame"

    def plan(self, session, config):
        for fid, night in session.execute(select(Frame.id, Frame.night).where(Frame.valid.is_(True))):
            yield Unit(key=f"{night}/frame{fid}", inputs=[InputRef("frame", fid, "raw")],
                       context={"night": night, "frame": fid})

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
    order = 30
    description = "combines a night's toy_a products"

    def plan(self, session, config):
        frames_per_night = defaultdict(int)
        for (night,) in session.execute(select(Frame.night).where(Frame.valid.is_(True))):
            frames_per_night[night] += 1
        nights = list(frames_per_night)
        by_night = defaultdict(list)
        for pid, ctx in session.execute(select(Product.id, Product.context).where(
                Product.step == "toy_a", Product.is_current.is_(True), Product.state == "complete")):
            by_night[ctx["night"]].append(pid)
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
    order = 40
    description = "a frame with its night's toy_b"

    def plan(self, session, config):
        masters = {ctx["night"]: pid for pid, ctx in session.execute(select(Product.id, Product.context).where(
            Product.step == "toy_b", Product.is_current.is_(True), Product.state == "complete"))}
        for fid, night in session.execute(select(Frame.id, Frame.night).where(Frame.valid.is_(True))):
            if night not in masters:
                yield Unit(key=f"{night}/frame{fid}", ready=False, context={"night": night},
                           reason=f"no current toy_b for night {night}")
                continue
            yield Unit(key=f"{night}/frame{fid}", context={"night": night, "frame": fid},
                       inputs=[InputRef("frame", fid, "raw"), InputRef("product", masters[night], "master")])

    def run(self, task):
        master = task.input("master")
        return _write(task, _read_value(master.paths[0]) + task.input("raw").id, self)
