"""Configurable parameters, declared once each.

A configuration is a frozen dataclass whose fields are declared with :func:`param`: type (the annotation),
default, documentation, bounds or choices, whether the value must be odd (filter and kernel sizes), and whether the
parameter is *critical* (changes the science result and therefore the product's provenance) or not (e.g. a number
of threads). The critical part is hashed into every product's provenance.

A field whose type is itself a :class:`StepConfig` subclass is a *nested configuration* (the reduction's
``cosmics``, ``detect`` …): it is given as a nested table, its parameters are named with dots
(``steps.reduce.detect.threads``), and only its critical leaves enter the hash.

After the per-parameter checks, :meth:`StepConfig.validate` refuses inconsistent combinations (a subclass
overrides it). Every refusal is a :class:`ConfigError` (a :class:`~upad.errors.UpadError`) whose message starts with
the dotted name of the parameter, e.g. ``steps.reduce.background.filter_meshes must be odd, got 4``.

Users override defaults in ``<root>/upad.toml``::

    [steps.master_bias]
    clip_sigma = 3.5

    [steps.reduce.detect]          # a nested configuration
    threads = 8

    [ingest.translation]           # data handling (ingest), see upad.ingest.service.IngestConfig
    tile_regex = 'field (\\d+)'

``upad config show`` lists every parameter by its dotted name with its default, bounds and documentation.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from upad.errors import UpadError

__all__ = [
    "ConfigError",
    "StepConfig",
    "config_hash",
    "describe",
    "flatten",
    "load_config_document",
    "load_user_config",
    "nested_configs",
    "param",
]

C = TypeVar("C", bound="StepConfig")

#: Top-level tables of ``upad.toml``.
SECTIONS = ("steps", "ingest")


def param(default: Any, *, doc: str, bounds: tuple[float | None, float | None] | None = None,
          choices: tuple[Any, ...] | None = None, critical: bool = True, unit: str | None = None,
          odd: bool = False) -> Any:
    """Declare a configuration parameter.

    Parameters
    ----------
    default
        The default value (lists are stored as tuples to keep configs immutable and hashable). A nested
        configuration's default is an instance of its class.
    doc
        What the parameter does, for users.
    bounds
        Inclusive ``(low, high)`` limits for numbers; ``None`` on a side means unbounded.
    choices
        The allowed values, for enumerations.
    critical
        Whether the value changes the products (and so enters the provenance hash). On a nested configuration:
        ``False`` makes every parameter in it non-critical.
    unit
        Physical unit of the value, for the documentation.
    odd
        The value must be an odd integer (sizes of median filters and kernels that have a central pixel); an even
        value is refused, never rounded.
    """
    if isinstance(default, list):
        default = tuple(default)
    meta = {"doc": doc, "bounds": bounds, "choices": choices, "critical": critical, "unit": unit, "odd": odd}
    return field(default=default, metadata=meta)


class ConfigError(UpadError):
    """A refused configuration value.

    ``name`` is the dotted name of the parameter below ``owner`` (``cosmics.sigclip``); ``owner`` is where the
    configuration came from (``steps.reduce``) or, for a configuration built directly, its class name. The message
    is ``<owner>.<name> <problem>``.
    """

    def __init__(self, name: str, problem: str, *, hint: str | None = None, owner: str = "") -> None:
        self.name = name
        self.problem = problem
        self.owner = owner
        super().__init__(f"{owner + '.' if owner else ''}{name} {problem}", hint=hint)

    @property
    def dotted(self) -> str:
        """The full dotted name of the parameter (``steps.reduce.cosmics.sigclip``)."""
        return f"{self.owner + '.' if self.owner else ''}{self.name}"

    def rebase(self, old: str, new: str) -> ConfigError:
        """The same error with the owner prefix ``old`` (``ReductionConfig``, or empty) replaced by ``new``."""
        if not new or old == new:
            return self
        full = self.dotted
        if not old:
            return ConfigError(full, self.problem, hint=self.hint, owner=new)
        if full.startswith(old + "."):
            return ConfigError(full[len(old) + 1:], self.problem, hint=self.hint, owner=new)
        return self


@functools.cache
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a configuration class (cached: resolving them costs ~0.3 ms per class)."""
    return typing.get_type_hints(cls)


def _nested_class(hint: Any) -> type[StepConfig] | None:
    return hint if isinstance(hint, type) and issubclass(hint, StepConfig) else None


def nested_configs(cls: type[StepConfig]) -> dict[str, type[StepConfig]]:
    """The nested configurations of ``cls``: field name → configuration class (from the field types)."""
    hints = _hints(cls)
    return {f.name: sub for f in fields(cls) if (sub := _nested_class(hints.get(f.name))) is not None}


def _nested_default(f: dataclasses.Field, sub: type[StepConfig]) -> StepConfig | None:
    """The default instance of a nested-configuration field (``None`` when it has none of that class)."""
    return f.default if isinstance(f.default, sub) else None


def _path(where: str) -> str:
    """``'[steps.reduce]'`` or ``'steps.reduce'`` → ``'steps.reduce'``."""
    return where.strip().strip("[]").strip()


@dataclass(frozen=True)
class StepConfig:
    """Base class of configurations: validated on creation, hashable, overridable from TOML."""

    def __post_init__(self) -> None:
        cls = type(self)
        hints = _hints(cls)
        owner = cls.__name__
        for f in fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            doc = f"{f.name}: {meta.get('doc', '')}"
            sub = _nested_class(hints.get(f.name))
            if sub is not None:
                if isinstance(value, Mapping):  # a nested table, over the field's default
                    value = sub.from_mapping(value, where=f"{owner}.{f.name}", base=_nested_default(f, sub))
                    object.__setattr__(self, f.name, value)
                if not isinstance(value, sub):
                    raise ConfigError(f.name, f"must be a table of {sub.__name__} parameters, got {value!r}",
                                      owner=owner, hint=f"e.g. [<section>.{f.name}] followed by its parameters")
                continue
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
                value = tuple(value)
            _check_type(owner, f.name, value, hints.get(f.name), doc)
            bounds = meta.get("bounds")
            if bounds is not None and value is not None:
                lo, hi = bounds
                if (lo is not None and value < lo) or (hi is not None and value > hi):
                    raise ConfigError(f.name, f"= {value!r} is outside its bounds [{lo}, {hi}]", hint=doc,
                                      owner=owner)
            choices = meta.get("choices")
            if choices is not None and value not in choices:
                raise ConfigError(f.name, f"= {value!r} is not one of {list(choices)}", hint=doc, owner=owner)
            if meta.get("odd") and value is not None and value % 2 == 0:
                raise ConfigError(f.name, f"must be odd, got {value!r}",
                                  hint=f"{doc} (a size with a central pixel: use {value - 1} or {value + 1})",
                                  owner=owner)
        try:
            self.validate()
        except ConfigError as exc:
            raise exc.rebase("", owner) from None

    def validate(self) -> None:
        """Refuse inconsistent combinations of parameters (called after the per-parameter checks).

        Subclasses override it (calling ``super().validate()``) and raise :class:`ConfigError` with the dotted
        name of the offending parameter, what is wrong and a hint on what to do (see :meth:`require`).
        """

    def require(self, ok: bool, name: str, problem: str, hint: str) -> None:
        """Raise :class:`ConfigError` on parameter ``name`` (dotted below this configuration) unless ``ok``."""
        if not ok:
            raise ConfigError(name, problem, hint=hint)

    def critical(self) -> dict[str, Any]:
        """The parameters that change the products, as a JSON-safe dict: nested configurations recurse and keep
        only their critical parameters (a nested configuration without any is left out)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if not f.metadata.get("critical", True):
                continue
            value = getattr(self, f.name)
            if isinstance(value, StepConfig):
                sub = value.critical()
                if sub:
                    out[f.name] = sub
            else:
                out[f.name] = _jsonable(value)
        return out

    def as_dict(self) -> dict[str, Any]:
        """Every parameter, as a JSON-safe dict (nested configurations as nested dicts)."""
        return {f.name: (getattr(self, f.name).as_dict() if isinstance(getattr(self, f.name), StepConfig)
                         else _jsonable(getattr(self, f.name))) for f in fields(self)}

    def hash(self) -> str:
        """SHA-256 of the critical parameters (hex)."""
        return config_hash(self.critical())

    @classmethod
    def from_mapping(cls: type[C], values: Mapping[str, Any] | None, *, where: str = "",
                     base: StepConfig | None = None) -> C:
        """Build from a mapping of overrides; nested configurations are given as nested mappings.

        What the mapping does not name keeps its value in ``base`` (default: the class defaults; a nested table
        starts from the containing field's default). Unknown keys are an error that lists the known ones; every
        error names the parameter by its dotted name below ``where`` (``'steps.reduce'`` or ``'[steps.reduce]'``).
        """
        path = _path(where)
        owner = path or cls.__name__
        values = dict(values or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            also = f" (also unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
            raise ConfigError(unknown[0], f"is an unknown parameter{also}", owner=owner,
                              hint=f"known parameters of {owner}: {', '.join(known)} (see `upad config show`)")
        subs = nested_configs(cls)
        by_name = {f.name: f for f in fields(cls)}
        for name, value in values.items():
            if name in subs and isinstance(value, Mapping):
                sub_base = getattr(base, name) if base is not None else _nested_default(by_name[name], subs[name])
                values[name] = subs[name].from_mapping(value, where=f"{owner}.{name}", base=sub_base)
            elif name not in subs and isinstance(value, Mapping):
                raise ConfigError(name, "is a parameter, not a table", owner=owner,
                                  hint=f"write `{name} = <value>` under [{owner}]")
        if base is not None:
            values = {**{f.name: getattr(base, f.name) for f in fields(cls) if f.init}, **values}
        try:
            return cls(**values)
        except ConfigError as exc:
            raise exc.rebase(cls.__name__, owner) from None


def _check_type(owner: str, name: str, value: Any, hint: Any, doc: str | None = None) -> None:
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
        raise ConfigError(name, f"must be {hint.__name__}, got a boolean {value!r}", owner=owner, hint=doc)
    if not isinstance(value, expected):
        raise ConfigError(name, f"must be {getattr(hint, '__name__', hint)}, got {value!r}", owner=owner, hint=doc)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, StepConfig):
        return value.as_dict()
    if dataclasses.is_dataclass(value):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    return value


def config_hash(values: dict[str, Any]) -> str:
    """SHA-256 (hex) of a JSON-safe dict, independent of key order."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_config_document(root: Path) -> dict[str, Any]:
    """Read the whole ``<root>/upad.toml`` (empty if the file does not exist); ``[steps]`` and ``[ingest]`` must
    be tables."""
    path = Path(root) / "upad.toml"
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UpadError(f"{path} is not valid TOML: {exc}", hint="fix the file or remove it to use defaults") from None
    for section, example in (("steps", "[steps.master_bias] clip_sigma = 3"),
                             ("ingest", "[ingest.translation] tile_regex = '(\\d+)$'"),
                             ("isr", "[isr] overscan = 'rows'")):
        if not isinstance(data.get(section, {}), dict):
            raise UpadError(f"{path}: [{section}] must be a table", hint=f"e.g. {example}")
    unknown = sorted(set(data) - {"steps", "ingest", *SHARED_TABLES})
    if unknown:
        raise UpadError(f"{path}: unknown table(s) {unknown}",
                        hint="upad.toml has [steps.<step>], [ingest.translation], [ingest.quicklook] and "
                             f"{', '.join(f'[{t}]' for t in SHARED_TABLES)} (see `upad config show`)")
    return data


def load_user_config(root: Path) -> dict[str, dict[str, Any]]:
    """Read ``<root>/upad.toml`` → ``{step name: {param: value}}`` (the ``[steps]`` table; empty if the file does not
    exist). :func:`load_config_document` gives the whole document (``[ingest]`` too)."""
    path = Path(root) / "upad.toml"
    steps = load_config_document(root).get("steps", {})
    bad = sorted(k for k, v in steps.items() if not isinstance(v, dict))
    if bad:
        raise UpadError(f"{path}: [steps] must be a table of tables; {bad} are values",
                        hint="e.g. [steps.master_bias] clip_sigma = 3")
    return steps


#: Nested configurations shared by every step that has them: one table at the top of ``upad.toml`` (``[isr]``), so
#: that science frames are processed exactly like the masters they are calibrated with.
SHARED_TABLES = ("isr",)


def step_values(document: Mapping[str, Any], name: str, config_class: type[StepConfig]) -> dict[str, Any]:
    """The ``upad.toml`` values of step ``name``: its ``[steps.<name>]`` table, plus the shared tables
    (:data:`SHARED_TABLES`) its configuration has. A shared table set inside a step's table is refused: it would
    make that step differ from the others."""
    steps = document.get("steps") or {}
    values = dict(steps.get(name) or {})
    field_names = {f.name for f in fields(config_class)}
    for shared in SHARED_TABLES:
        if shared in values:
            raise UpadError(f"[steps.{name}.{shared}] is not allowed: the {shared} parameters are shared by every "
                            "step", hint=f"set them once in an [{shared}] table at the top of upad.toml")
        if shared in field_names and isinstance(document.get(shared), Mapping):
            values[shared] = dict(document[shared])
    return values


def describe(cls: type[StepConfig], *, prefix: str = "", defaults: StepConfig | None = None,
             critical: bool = True) -> list[dict[str, Any]]:
    """Documentation rows of a configuration class, one per leaf parameter: dotted name (``detect.threads``),
    type, default, bounds, choices, unit, odd, critical, doc. ``prefix`` is put before every name."""
    hints = _hints(cls)
    rows = []
    for f in fields(cls):
        if defaults is not None:
            default = getattr(defaults, f.name)
        else:
            default = f.default if f.default is not MISSING else None
        crit = critical and f.metadata.get("critical", True)
        sub = _nested_class(hints.get(f.name))
        if sub is not None:
            rows.extend(describe(sub, prefix=f"{prefix}{f.name}.", defaults=default if isinstance(default, sub)
                                 else None, critical=crit))
            continue
        hint = hints.get(f.name)
        rows.append({"name": f"{prefix}{f.name}", "type": getattr(hint, "__name__", str(hint)),
                     "default": _jsonable(default), "bounds": f.metadata.get("bounds"),
                     "choices": f.metadata.get("choices"), "unit": f.metadata.get("unit"),
                     "odd": bool(f.metadata.get("odd", False)), "critical": crit, "doc": f.metadata.get("doc", "")})
    return rows


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict (:meth:`StepConfig.as_dict`) → ``{dotted name: value}``."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
