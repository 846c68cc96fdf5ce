"""Typed recipe configs: build dataclass schemas from plain YAML data, strictly.

Every mistake in a recipe is reported before any work starts, as a :class:`RecipeError`
naming the file, the dotted key path (``rewards[1].weight``) and what was expected, with a
close-match suggestion for typos. Schemas are ordinary dataclasses whose fields are made
with :func:`option` (a plain value with a help string) or :func:`component` (a reference
to a component registered in a :class:`~genrl.registry.Registry`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
from dataclasses import MISSING, dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from genrl.registry import Registry

T = TypeVar("T")

# Field metadata keys.
_HELP = "help"
_REGISTRY = "genrl.registry"
_COMPONENT_DEFAULT = "genrl.component_default"

# What a validate() message may start with to be read as "<field path>: <message>".
_FIELD_PREFIX = re.compile(r"^[A-Za-z_][\w.\[\]]*$")


class RecipeError(ValueError):
    """A mistake in a recipe: where it is (file, key path) and what was expected."""

    def __init__(self, file: str | None, key: str, message: str) -> None:
        # Passing all three to ValueError keeps the exception picklable (args rebuild it).
        super().__init__(file, key, message)
        self.file = file
        self.key = key or "<root>"
        self.message = message

    def __str__(self) -> str:
        where = f"{self.key}: {self.message}"
        return f"{self.file}: {where}" if self.file else where


@dataclass(frozen=True)
class ComponentSpec:
    """A registered component, by name, with its validated ``Config`` instance."""

    name: str
    config: Any


def option(*, default: Any = MISSING, default_factory: Any = MISSING, help: str) -> Any:
    """A schema field carrying a help string (shown by :func:`describe`)."""
    if default is not MISSING and isinstance(default, (list, dict, set)):
        # dataclasses rejects mutable defaults; copying per instance is what is meant.
        default_factory, default = (lambda d=default: copy.deepcopy(d)), MISSING
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_HELP: help})


def component(registry: Registry, *, default: Any = MISSING, help: str = "") -> Any:
    """A field naming a component of ``registry``, annotated ``ComponentSpec`` (or a list).

    ``default`` is given as it would be written in YAML (``{"name": "group_relative"}``,
    ``"sde"``, a list of those, or ``None``); it is validated like recipe data, lazily,
    because registries are filled by imports that may come after the schema is defined.
    """
    metadata = {_HELP: help, _REGISTRY: registry, _COMPONENT_DEFAULT: default}
    if default is MISSING or default is None:
        return dataclasses.field(default=default, metadata=metadata)

    def factory() -> Any:
        raw = copy.deepcopy(default)
        if isinstance(raw, list):
            return [_component(registry, item, None, f"[{i}]") for i, item in enumerate(raw)]
        return _component(registry, raw, None, "")

    return dataclasses.field(default_factory=factory, metadata=metadata)


def build(cls: type[T], data: Any, *, file: str | None = None, key: str = "") -> T:
    """Build and validate an instance of ``cls`` (usually a dataclass) from plain data."""
    return _convert(cls, data, file, key, None)


def to_dict(obj: Any) -> Any:
    """Inverse of :func:`build`: plain dicts/lists/scalars that rebuild to an equal object."""
    if isinstance(obj, ComponentSpec):
        fields = to_dict(obj.config) if obj.config is not None else {}
        return {"name": obj.name, **fields}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def describe(cls: type, indent: str = "") -> str:
    """A short listing of a schema's fields: ``name: type = default  # help``."""
    lines = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, registry = hints[f.name], f.metadata.get(_REGISTRY)
        if registry is not None:
            default = f.metadata.get(_COMPONENT_DEFAULT, MISSING)
            type_name = f"{_type_name(tp)} of {registry.kind} {registry.names()}"
        else:
            default = f.default
            if f.default_factory is not MISSING:
                default = to_dict(f.default_factory())
            type_name = _type_name(tp)
        nested = _dataclass_in(tp) if registry is None else None
        if nested is not None and default is not MISSING and default is not None:
            shown = ""  # the nested listing below shows the defaults
        else:
            shown = " (required)" if default is MISSING else f" = {default!r}"
        help_ = f.metadata.get(_HELP, "")
        lines.append(f"{indent}{f.name}: {type_name}{shown}" + (f"  # {help_}" if help_ else ""))
        if nested is not None:
            lines.append(describe(nested, indent + "  "))
        if registry is not None:  # each registered component's own settings
            for name in registry.names():
                config_cls = getattr(registry.get(name), "Config", None)
                lines.append(f"{indent}  [name: {name}]")
                if config_cls is not None and dataclasses.is_dataclass(config_cls):
                    lines.append(describe(config_cls, indent + "    "))
    return "\n".join(line for line in lines if line)


# ----------------------------------------------------------------------------- internals


def _join(prefix: str, name: object) -> str:
    if isinstance(name, int):
        return f"{prefix}[{name}]"
    return f"{prefix}.{name}" if prefix else str(name)


def _got(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"got {text} ({type(value).__name__})"


def _suggest(value: object, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(value), choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass in ``X`` or ``X | None``, if any (for nested listings)."""
    if _is_union(tp):
        inner = [a for a in get_args(tp) if a is not type(None)]
        tp = inner[0] if len(inner) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in get_args(tp))
    origin = get_origin(tp)
    if origin is Literal:
        return "Literal[" + ", ".join(repr(a) for a in get_args(tp)) + "]"
    if origin is not None:
        return f"{origin.__name__}[" + ", ".join(
            "..." if a is Ellipsis else _type_name(a) for a in get_args(tp)) + "]"
    return getattr(tp, "__name__", str(tp))


def _expected(tp: Any) -> str:
    """Human wording of what a value of type ``tp`` looks like in YAML."""
    simple = {bool: "a boolean (true/false)", int: "an integer", float: "a float",
              str: "a string", type(None): "null"}
    if tp in simple:
        return simple[tp]
    if _is_union(tp):
        return " or ".join(_expected(a) for a in get_args(tp))
    origin = get_origin(tp) or tp
    if origin is Literal:
        return f"one of {list(get_args(tp))}"
    if origin in (list, tuple):
        return "a list"
    if origin is dict or (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
        return "a mapping"
    return _type_name(tp)


def _error(file: str | None, key: str, tp: Any, value: Any) -> RecipeError:
    return RecipeError(file, key, f"expected {_expected(tp)}, {_got(value)}")


def _convert(tp: Any, value: Any, file: str | None, key: str, registry: Registry | None) -> Any:
    """Check ``value`` against annotation ``tp`` and return it converted."""
    if tp is Any:
        return value
    if tp is type(None):
        if value is not None:
            raise _error(file, key, tp, value)
        return None
    if _is_union(tp):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, file, key, registry)
        for arg in inner:  # general unions: first member that accepts the value wins
            try:
                return _convert(arg, value, file, key, registry)
            except RecipeError:
                pass
        raise _error(file, key, tp, value)
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        # `True == 1`, so compare types too: Literal[1] must not accept `true`.
        if any(value == a and type(value) is type(a) for a in args):
            return value
        hint = _suggest(value, [str(a) for a in args]) if isinstance(value, str) else ""
        raise RecipeError(file, key, f"expected one of {list(args)}, {_got(value)}{hint}")
    if tp is ComponentSpec:
        if registry is None:
            raise TypeError(f"{key}: ComponentSpec fields must be declared with component(...)")
        return _component(registry, value, file, key)
    if tp is bool:
        if not isinstance(value, bool):  # YAML 1.1 `yes`/`on` are already bools; 0/1 are not
            raise _error(file, key, tp, value)
        return value
    if tp is int:
        # A float, even 2.0, usually means a mistyped field (lr given for steps): reject.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _error(file, key, tp, value)
        return value
    if tp is float:
        if isinstance(value, bool):
            raise _error(file, key, tp, value)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads `1e-4` (no dot) as a string; that is surely meant as a float.
            try:
                return float(value)
            except ValueError:
                pass
        raise _error(file, key, tp, value)
    if tp is str:
        if not isinstance(value, str):
            raise _error(file, key, tp, value)
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _error(file, key, tp, value)
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed-length tuple
            if len(value) != len(args):
                raise RecipeError(file, key, f"expected a list of {len(args)} items, {_got(value)}")
            return tuple(_convert(a, v, file, _join(key, i), registry)
                         for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item = args[0] if args else Any
        items = [_convert(item, v, file, _join(key, i), registry) for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _error(file, key, tp, value)
        k_tp, v_tp = args if args else (Any, Any)
        return {_convert(k_tp, k, file, _join(key, k), None):
                _convert(v_tp, v, file, _join(key, k), registry) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, file, key)
    raise TypeError(f"{key or '<root>'}: unsupported annotation {tp!r} in a recipe schema")


def _component(registry: Registry, value: Any, file: str | None, key: str) -> ComponentSpec:
    if isinstance(value, str):  # shorthand `explorer: sde`
        value = {"name": value}
    if not isinstance(value, dict):
        raise RecipeError(file, key, f"expected a {registry.kind} (a name, or a mapping with "
                                     f"'name:' and its fields), {_got(value)}")
    if "name" not in value:
        raise RecipeError(file, _join(key, "name"),
                          f"missing required field; expected one of {registry.names()}")
    name = value["name"]
    if not isinstance(name, str) or name not in registry:
        raise RecipeError(file, _join(key, "name"), registry.unknown_message(name))
    fields = {k: v for k, v in value.items() if k != "name"}
    config_cls = getattr(registry.get(name), "Config", None)
    if config_cls is None:  # a component without options
        if fields:
            raise RecipeError(file, _join(key, next(iter(fields))),
                              f"unknown key; {registry.kind} {name!r} takes no options")
        return ComponentSpec(name, None)
    return ComponentSpec(name, _dataclass(config_cls, fields, file, key, extra=("name",)))


def _dataclass(cls: type, value: Any, file: str | None, key: str,
               extra: tuple[str, ...] = ()) -> Any:
    if not isinstance(value, dict):
        raise RecipeError(file, key, f"expected a mapping of {cls.__name__} fields, {_got(value)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for k in value:
        if k not in fields:
            valid = sorted(extra + tuple(fields))
            raise RecipeError(file, _join(key, k),
                              f"unknown key; expected one of {valid}{_suggest(k, valid)}")
    kwargs = {}
    for name, f in fields.items():
        path, registry = _join(key, name), f.metadata.get(_REGISTRY)
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], file, path, registry)
        elif registry is not None and f.metadata[_COMPONENT_DEFAULT] not in (MISSING, None):
            # Validate the declared default like recipe data, so a bad default names its path.
            raw = copy.deepcopy(f.metadata[_COMPONENT_DEFAULT])
            kwargs[name] = _convert(hints[name], raw, file, path, registry)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise RecipeError(file, path, f"missing required field; expected {_expected(hints[name])}")
    try:
        obj = cls(**kwargs)
        check = getattr(obj, "validate", None)
        if callable(check):
            check()
    except RecipeError:
        raise
    except ValueError as e:
        # Cross-field checks raise ValueError("field: message"); point at that field.
        head, sep, rest = str(e).partition(": ")
        if sep and _FIELD_PREFIX.match(head):
            raise RecipeError(file, _join(key, head), rest) from e
        raise RecipeError(file, key, str(e)) from e
    return obj
