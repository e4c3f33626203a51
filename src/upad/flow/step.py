"""Steps of the processing flow: one declaration each.

A step says *what makes it ready* (:meth:`Step.plan`, run by the scheduler against the database), *what it
produces* (``product_kind``, files in an archive ``area``), its resources (``memory_class``), its configuration
(a :class:`~upad.config.StepConfig`) and its code version. :meth:`Step.run` executes on a worker — a local process,
a Dask worker, a batch node — and never touches the database: it receives resolved inputs (paths and metadata),
calls the pure algorithm, writes outputs into a staging directory and returns what the scheduler records.

Adding a step is one subclass decorated with :func:`register_step`, plus its algorithm::

    @register_step
    class MasterBias(Step):
        name = "master_bias"
        product_kind = "master_bias"
        area = "calibration"
        config_class = MasterBiasConfig
        version = "1.0"

        def plan(self, session, config): ...
        def run(self, task): ...

Steps from other packages are loaded from the ``upad.steps`` entry-point group or from the modules listed in the
``UPAD_PLUGINS`` environment variable (comma-separated).
"""
from __future__ import annotations

import datetime as dt
import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Literal

from upad.config import StepConfig
from upad.errors import DataError, TransientError

__all__ = [
    "InputRef", "OutputFile", "ResolvedInput", "Step", "StepOutput", "Task", "Unit", "DataError", "TransientError",
    "register_step", "unregister_step", "get_step", "all_steps", "load_plugins", "MEMORY_CLASSES",
]

#: Memory classes and the memory (GB) a job of that class may use; executors use this to bound concurrency.
MEMORY_CLASSES: dict[str, float] = {"tiny": 0.25, "small": 1.0, "medium": 4.0, "large": 8.0}


@dataclass(frozen=True, order=True)
class InputRef:
    """An input of a unit: a raw frame or a product, with the role it plays."""

    kind: Literal["frame", "product"]
    id: int
    role: str


@dataclass
class Unit:
    """One thing a step could make: its key, its inputs and whether it is ready (and why not)."""

    key: str
    inputs: list[InputRef] = field(default_factory=list)
    ready: bool = True
    reason: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    priority: int = 100


@dataclass(frozen=True)
class ResolvedInput:
    """An input as a worker sees it: absolute file paths and metadata (no database needed)."""

    kind: str
    id: int
    role: str
    paths: tuple[str, ...]
    meta: dict[str, Any]


@dataclass(frozen=True)
class Task:
    """Everything a worker needs to run one job."""

    step: str
    job_id: int
    attempt_id: int
    provenance_id: str
    unit_key: str
    context: dict[str, Any]
    config: dict[str, Any]
    inputs: tuple[ResolvedInput, ...]
    root: str
    staging: str

    def inputs_by_role(self, role: str) -> list[ResolvedInput]:
        return [i for i in self.inputs if i.role == role]

    def input(self, role: str) -> ResolvedInput:
        found = self.inputs_by_role(role)
        if len(found) != 1:
            raise DataError(f"expected exactly one input with role {role!r}, got {len(found)}")
        return found[0]

    def stage(self, name: str) -> Path:
        """Path of an output file in this attempt's staging directory."""
        p = Path(self.staging) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


@dataclass
class OutputFile:
    """A file written by a step: where it was staged and where it goes in the archive (relative to the root)."""

    role: str
    staged: str
    final: str


@dataclass
class StepOutput:
    """What a step returns to the scheduler."""

    files: list[OutputFile] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    qc_status: str | None = None
    good_after: dt.datetime | None = None
    good_until: dt.datetime | None = None


class Step(ABC):
    """A step of the processing flow (see the module documentation)."""

    name: ClassVar[str]
    product_kind: ClassVar[str]
    area: ClassVar[str] = "tmp"
    memory_class: ClassVar[str] = "small"
    config_class: ClassVar[type[StepConfig]] = StepConfig
    version: ClassVar[str] = "1.0"
    #: Steps of an earlier stage are planned first (the order of the data flow).
    order: ClassVar[int] = 100
    description: ClassVar[str] = ""

    def make_config(self, overrides: dict[str, Any] | None = None) -> StepConfig:
        return self.config_class.from_mapping(overrides, where=f"[steps.{self.name}]")

    @abstractmethod
    def plan(self, session: Any, config: StepConfig) -> Iterable[Unit]:
        """Every unit this step could make now, ready or waiting (with a reason). Runs on the scheduler."""

    @abstractmethod
    def run(self, task: Task) -> StepOutput:
        """Make the product of one unit. Runs on a worker: no database access."""

    def final_path(self, task: Task, filename: str) -> str:
        """Archive path (relative to the root) of an output: ``<area>/<step>/<unit key>/<short provenance>/<file>``.

        The provenance directory keeps every version of a product apart: a new version never overwrites an old one.
        """
        safe_key = "/".join(part for part in task.unit_key.split("/") if part not in ("", ".", ".."))
        return f"{self.area}/{self.name}/{safe_key}/{task.provenance_id[:12]}/{filename}"


_REGISTRY: dict[str, Step] = {}
_PLUGINS_LOADED = False


def register_step(cls: type[Step]) -> type[Step]:
    """Class decorator: register a step (its ``name`` must be unique)."""
    existing = _REGISTRY.get(cls.name)
    if existing is not None and type(existing).__qualname__ != cls.__qualname__:
        raise ValueError(f"a step named {cls.name!r} is already registered ({type(existing).__qualname__})")
    if cls.memory_class not in MEMORY_CLASSES:
        raise ValueError(f"step {cls.name!r}: unknown memory class {cls.memory_class!r}")
    _REGISTRY[cls.name] = cls()
    return cls


def unregister_step(name: str) -> None:
    """Remove a step from the registry (tests, interactive use)."""
    _REGISTRY.pop(name, None)


def load_plugins() -> None:
    """Import the built-in steps, entry-point plugins and ``UPAD_PLUGINS`` modules (once)."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    importlib.import_module("upad.flow.builtin")
    for ep in entry_points(group="upad.steps"):
        ep.load()
    for mod in filter(None, (m.strip() for m in os.environ.get("UPAD_PLUGINS", "").split(","))):
        importlib.import_module(mod)
    _PLUGINS_LOADED = True


def all_steps() -> list[Step]:
    """Registered steps in data-flow order."""
    load_plugins()
    return sorted(_REGISTRY.values(), key=lambda s: (s.order, s.name))


def get_step(name: str) -> Step:
    load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown step {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
