"""Configurable parameters, declared once each.

A step's configuration is a frozen dataclass whose fields are declared with :func:`param`: type (the annotation),
default, documentation, bounds or choices, and whether the parameter is *critical* (changes the science result and
therefore the product's provenance) or not (e.g. a number of threads). The critical part is hashed into every
product's provenance.

Users override defaults in ``<root>/upad.toml``::

    [steps.master_bias]
    clip_sigma = 3.5

``upad config show`` lists every parameter with its default, bounds and documentation.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from upad.errors import UpadError

__all__ = ["StepConfig", "param", "config_hash", "load_user_config", "describe"]

C = TypeVar("C", bound="StepConfig")


def param(default: Any, *, doc: str, bounds: tuple[float | None, float | None] | None = None,
          choices: tuple[Any, ...] | None = None, critical: bool = True, unit: str | None = None) -> Any:
    """Declare a configuration parameter.

    Parameters
    ----------
    default
        The default value (lists are stored as tuples to keep configs immutable and hashable).
    doc
        What the parameter does, for users.
    bounds
        Inclusive ``(low, high)`` limits for numbers; ``None`` on a side means unbounded.
    choices
        The allowed values, for enumerations.
    critical
        Whether the value changes the products (and so enters the provenance hash).
    unit
        Physical unit of the value, for the documentation.
    """
    if isinstance(default, list):
        default = tuple(default)
    meta = {"doc": doc, "bounds": bounds, "choices": choices, "critical": critical, "unit": unit}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class StepConfig:
    """Base class of step configurations: validated on creation, hashable, overridable from TOML."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
                value = tuple(value)
            _check_type(type(self).__name__, f.name, value, hints.get(f.name))
            meta = f.metadata
            bounds = meta.get("bounds")
            if bounds is not None and value is not None:
                lo, hi = bounds
                if (lo is not None and value < lo) or (hi is not None and value > hi):
                    raise UpadError(f"{type(self).__name__}.{f.name} = {value!r} is outside its bounds "
                                    f"[{lo}, {hi}]", hint=f"{f.name}: {meta.get('doc', '')}")
            choices = meta.get("choices")
            if choices is not None and value not in choices:
                raise UpadError(f"{type(self).__name__}.{f.name} = {value!r} is not one of {list(choices)}",
                                hint=f"{f.name}: {meta.get('doc', '')}")

    def critical(self) -> dict[str, Any]:
        """The parameters that change the products, as a JSON-safe dict."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if f.metadata.get("critical", True)}

    def as_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    def hash(self) -> str:
        """SHA-256 of the critical parameters (hex)."""
        return config_hash(self.critical())

    @classmethod
    def from_mapping(cls: type[C], values: dict[str, Any] | None, *, where: str = "") -> C:
        """Build from a mapping of overrides; unknown keys are an error that lists the known ones."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UpadError(f"unknown parameter(s) {unknown} for {cls.__name__}{' in ' + where if where else ''}",
                            hint=f"known parameters: {sorted(known)} (see `upad config show`)")
        return cls(**values)


def _check_type(owner: str, name: str, value: Any, hint: Any) -> None:
    if hint is None or hint is Any:
        return
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return
        hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
    expected: tuple[type, ...]
    if origin is tuple or hint is tuple:
        expected = (tuple,)
    elif origin is typing.Literal:
        return
    elif hint is float:
        expected = (int, float)
    elif isinstance(hint, type):
        expected = (hint,)
    else:
        return
    if isinstance(value, bool) and bool not in expected:
        raise UpadError(f"{owner}.{name} must be {hint.__name__}, got a boolean {value!r}")
    if not isinstance(value, expected):
        raise UpadError(f"{owner}.{name} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    return value


def config_hash(values: dict[str, Any]) -> str:
    """SHA-256 (hex) of a JSON-safe dict, independent of key order."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_user_config(root: Path) -> dict[str, dict[str, Any]]:
    """Read ``<root>/upad.toml`` → ``{step name: {param: value}}`` (empty if the file does not exist)."""
    path = Path(root) / "upad.toml"
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UpadError(f"{path} is not valid TOML: {exc}", hint="fix the file or remove it to use defaults") from None
    steps = data.get("steps", {})
    if not isinstance(steps, dict):
        raise UpadError(f"{path}: [steps] must be a table of tables", hint="e.g. [steps.master_bias] clip_sigma = 3")
    return steps


def describe(cls: type[StepConfig]) -> list[dict[str, Any]]:
    """Documentation rows of a configuration class: name, type, default, bounds, unit, critical, doc."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else None
        rows.append({"name": f.name, "type": getattr(hints.get(f.name), "__name__", str(hints.get(f.name))),
                     "default": _jsonable(default), "bounds": f.metadata.get("bounds"),
                     "choices": f.metadata.get("choices"), "unit": f.metadata.get("unit"),
                     "critical": f.metadata.get("critical", True), "doc": f.metadata.get("doc", "")})
    return rows
