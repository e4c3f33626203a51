"""Steps of the processing flow: one declaration each.

A step declares, as data, *what it reads* (:attr:`Step.inputs`: :func:`Input` and :func:`PrerequisiteInput`
connections, each with a role, the kind of product — or :data:`FRAME` for raw frames —, whether it is a calibration
found by a validity lookup, and how many it takes), *what it writes* (:attr:`Step.outputs`, the files of its product
of kind ``product_kind`` in an archive ``area``), its resources (``memory_class``), its configuration (a
:class:`~upad.config.StepConfig`) and its code version. The scheduler derives the order of the steps from these
declarations (a step runs after the steps whose product kinds it reads) and checks every unit against them (roles,
kinds, counts, usable inputs) before it is ready.

:meth:`Step.plan` only *groups*: it lists the units the step could make, with their inputs, through the query helpers
of the :class:`~upad.flow.queries.PlanContext` it receives (``ctx.frames(...)``, ``ctx.current_products(...)``),
restricted to the nights that changed since the last pass. :meth:`Step.run` executes on a worker — a local process,
a Dask worker, a batch node — and never touches the database: it receives its typed configuration (the one recorded
with the job's provenance) and resolved inputs (paths and metadata), calls the pure algorithm, writes outputs into a
staging directory and returns what the scheduler records.

Adding a step is one subclass decorated with :func:`register_step`, plus its algorithm (see "How to add a step" in
docs/processing-flow.md)::

    @register_step
    class MasterBias(Step):
        name = "master_bias"
        product_kind = "master_bias"
        area = "calibration"
        config_class = MasterBiasConfig
        version = "1.0"
        inputs = (Input("raw", FRAME, minimum="min_frames", maximum=None, doc="the night's bias frames"),)
        outputs = (Output("master", doc="master bias FITS"), Output("qc_plot", doc="PNG"))

        def plan(self, ctx, config): ...
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
    "FRAME", "Connection", "Input", "PrerequisiteInput", "Output", "OutputDecl",
    "InputRef", "OutputFile", "ResolvedInput", "Step", "StepOutput", "Task", "Unit", "DataError", "TransientError",
    "register_step", "unregister_step", "get_step", "all_steps", "load_plugins", "step_order", "MEMORY_CLASSES",
]

#: Memory classes and the memory (GB) a job of that class may use; executors use this to bound concurrency.
MEMORY_CLASSES: dict[str, float] = {"tiny": 0.25, "small": 1.0, "medium": 4.0, "large": 8.0}


#: The input kind of raw frames (every other input kind is a product kind).
FRAME = "raw_frame"


@dataclass(frozen=True)
class Connection:
    """A declared input of a step (in the spirit of the Rubin pipelines' ``PipelineTaskConnections``).

    Attributes
    ----------
    name : str
        The role of the input in a unit (``raw``, ``bias``, ``flat`` …): the ``role`` of its :class:`InputRef`.
    kind : str
        :data:`FRAME` for raw frames, else the ``product_kind`` of the step that makes it.
    calibration : bool
        A calibration found by a validity lookup (``PrerequisiteInput``) rather than grouped by the unit.
    minimum, maximum : int, str or None
        How many inputs of this role a ready unit has; a string names a configuration parameter (e.g.
        ``"min_frames"``); ``maximum=None`` is unbounded.
    enabled_by : str or None
        A (dotted) boolean configuration parameter: when it is false the connection is off and inputs of this role
        are dropped from the units (so they do not enter the provenance).
    doc : str
        What the input is, for users.
    """

    name: str
    kind: str
    calibration: bool = False
    minimum: int | str = 1
    maximum: int | str | None = 1
    enabled_by: str | None = None
    doc: str = ""

    def enabled(self, config: StepConfig) -> bool:
        return self.enabled_by is None or bool(_config_value(config, self.enabled_by))

    def bounds(self, config: StepConfig) -> tuple[int, int | None]:
        lo = self.minimum if isinstance(self.minimum, int) else int(_config_value(config, self.minimum))
        hi = self.maximum if self.maximum is None or isinstance(self.maximum, int) else int(
            _config_value(config, self.maximum))
        return lo, hi


def Input(name: str, kind: str, *, minimum: int | str = 1, maximum: int | str | None = 1,
          enabled_by: str | None = None, doc: str = "") -> Connection:
    """An input grouped by the step's ``plan`` (raw frames of a series, the products of a tile …)."""
    return Connection(name, kind, False, minimum, maximum, enabled_by, doc)


def PrerequisiteInput(name: str, kind: str, *, minimum: int | str = 1, maximum: int | str | None = 1,
                      enabled_by: str | None = None, doc: str = "") -> Connection:
    """A calibration input looked up by validity (``minimum=0``: optional, used when one applies)."""
    return Connection(name, kind, True, minimum, maximum, enabled_by, doc)


@dataclass(frozen=True)
class OutputDecl:
    """A declared output file of a step's product: its role in the product's file list."""

    role: str
    doc: str = ""
    optional: bool = False


def Output(role: str, *, doc: str = "", optional: bool = False) -> OutputDecl:
    """A file of the step's product (``optional``: not every product has it, e.g. a failed-QC frame)."""
    return OutputDecl(role, doc, optional)


def _config_value(config: StepConfig, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


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
    config: Any  # the step's typed configuration (a StepConfig), as recorded with the job's provenance
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
    description: ClassVar[str] = ""
    #: What the step reads (see :class:`Connection`); the order of the steps follows from these.
    inputs: ClassVar[tuple[Connection, ...]] = ()
    #: The files of the step's product (see :func:`Output`).
    outputs: ClassVar[tuple[OutputDecl, ...]] = ()
    #: A unit whose inputs changed under the same configuration and code version is rebuilt although it has a current
    #: product (a tile coadd that gets a new exposure); otherwise only ``upad reprocess`` rebuilds such a unit.
    rebuild_on_new_inputs: ClassVar[bool] = False

    def make_config(self, overrides: dict[str, Any] | None = None) -> StepConfig:
        return self.config_class.from_mapping(overrides, where=f"steps.{self.name}")

    def connection(self, role: str) -> Connection | None:
        return next((c for c in self.inputs if c.name == role), None)

    @abstractmethod
    def plan(self, ctx: Any, config: StepConfig) -> Iterable[Unit]:
        """Every unit this step could make now among the changed nights, ready or waiting (with a reason).

        Runs on the scheduler; ``ctx`` is a :class:`~upad.flow.queries.PlanContext` (query helpers, the scope of
        the pass and ``ctx.session`` for the rules of a domain module)."""

    @abstractmethod
    def run(self, task: Task) -> StepOutput:
        """Make the product of one unit. Runs on a worker: no database access."""

    def after_recorded(self, *, db: Any, settings: Any, config: StepConfig, product_ids: list[int],
                       final: bool = False) -> None:
        """Called by the scheduler after products of this step were recorded (committed), and once more with
        ``final`` at the end of a run that recorded some (e.g. to refresh a summary: the survey progress of the
        tile coadds). Runs on the scheduler; it must be cheap, and a failure is logged, never fails the run or the
        products. The default does nothing."""

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
    roles = [c.name for c in cls.inputs]
    if len(set(roles)) != len(roles):
        raise ValueError(f"step {cls.name!r}: input roles must be unique, got {roles}")
    for c in cls.inputs:
        if not isinstance(c, Connection):
            raise ValueError(f"step {cls.name!r}: inputs must be Input(...)/PrerequisiteInput(...), got {c!r}")
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


def step_order(steps: Iterable[Step]) -> list[Step]:
    """Steps in data-flow order, derived from their declarations: a step comes after every step whose product kind
    it reads (ties by name). A cycle is a declaration error."""
    steps = sorted(steps, key=lambda st: st.name)
    makers: dict[str, list[str]] = {}
    for st in steps:
        makers.setdefault(st.product_kind, []).append(st.name)
    after = {st.name: {m for c in st.inputs for m in makers.get(c.kind, ()) if m != st.name} for st in steps}
    order: list[Step] = []
    done: set[str] = set()
    pending = list(steps)
    while pending:
        ready = [st for st in pending if after[st.name] <= done]
        if not ready:
            raise ValueError("the step declarations form a cycle: "
                             + ", ".join(f"{st.name} reads {sorted(after[st.name] - done)}" for st in pending))
        for st in ready:
            order.append(st)
            done.add(st.name)
        pending = [st for st in pending if st.name not in done]
    return order


def all_steps() -> list[Step]:
    """Registered steps in data-flow order (see :func:`step_order`)."""
    load_plugins()
    return step_order(_REGISTRY.values())


def step_configs(document: dict[str, Any]) -> dict[str, StepConfig]:
    """Every registered step's typed configuration from a configuration document (``upad.toml`` as read by
    :func:`upad.config.load_config_document`); an error names the parameter."""
    from upad.config import step_values

    return {s.name: s.make_config(step_values(document, s.name, s.config_class)) for s in all_steps()}


def get_step(name: str) -> Step:
    load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown step {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
