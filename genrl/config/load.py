"""Load a YAML recipe, apply command-line overrides, and validate it against a schema."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from genrl.config.validate import RecipeError, build, to_dict

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float and rejects duplicate keys.

    PyYAML implements YAML 1.1, whose float pattern needs a dot, so ``lr: 1e-4`` would be
    the *string* "1e-4"; and it silently keeps the last of two equal keys, hiding edits.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            k = self.construct_object(key_node, deep=deep)
            if not isinstance(k, (str, int, float, bool)):
                continue  # complex keys: leave them to the schema check
            if k in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {k!r}", key_node.start_mark)
            seen.add(k)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 booleans: only true/false. YAML 1.1 also reads yes/no/on/off as booleans, which turns
# `mixed_precision: no` (a valid choice) into False.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(  # adds YAML 1.2 exponent floats without a dot: 1e-4, 5E3
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no arbitrary objects


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file into a plain dict; any problem is a :class:`RecipeError`."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise RecipeError(file, "", "file not found") from None
    except OSError as e:
        raise RecipeError(file, "", f"cannot read file: {e.strerror or e}") from None
    try:
        data = _parse(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = e.problem or e.context or "syntax error"
        raise RecipeError(file, "", f"invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as e:
        raise RecipeError(file, "", f"invalid YAML: {e}") from None
    if not isinstance(data, dict):
        got = "an empty document" if data is None else f"a {type(data).__name__}"
        raise RecipeError(file, "", f"expected a mapping of recipe sections at the top level, got {got}")
    return data


def _override_path(segments: list[str]) -> str:
    """``rewards.1.weight`` -> ``rewards[1].weight``, the form used in error key paths."""
    path = ""
    for seg in segments:
        path = f"{path}[{seg}]" if seg.isdigit() else (f"{path}.{seg}" if path else seg)
    return path


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], *,
                    file: str | None) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``dotted.key.path=value`` override applied.

    Values are YAML (``null``, ``2``, ``1e-4``, ``[a, b]``, ``{name: sde}``); an integer
    segment indexes a list. New keys may be created: validation reports them afterwards.
    """
    data = copy.deepcopy(data)
    for ov in overrides:
        key_text, sep, value_text = ov.partition("=")
        segments = key_text.strip().split(".")
        if not sep or not all(segments):
            raise RecipeError(file, "<override>",
                              f"expected 'dotted.key.path=value', got {ov!r}")
        where = f"{file} (override {ov!r})" if file else f"override {ov!r}"
        try:
            value = _parse(value_text)
        except yaml.YAMLError as e:
            raise RecipeError(where, _override_path(segments), f"invalid YAML value: {e}") from None
        node: Any = data
        for i, seg in enumerate(segments):
            last = i == len(segments) - 1
            path = _override_path(segments[: i + 1])
            if isinstance(node, list):
                if not seg.isdigit() or int(seg) >= len(node):
                    raise RecipeError(where, path, f"expected a list index below {len(node)}, got {seg!r}")
                if last:
                    node[int(seg)] = value
                else:
                    node = node[int(seg)]
            elif isinstance(node, dict):
                if last:
                    node[seg] = value
                else:
                    # Create missing sections, so overrides can fill in defaulted ones.
                    if not isinstance(node.get(seg), (dict, list)):
                        node[seg] = {} if node.get(seg) is None else node[seg]
                    node = node[seg]
            else:
                raise RecipeError(where, _override_path(segments[:i]),
                                  f"cannot set {seg!r} inside a {type(node).__name__} value")
    return data


def load_recipe(path: str | Path, schema_cls: type[T],
                overrides: Iterable[str] = ()) -> tuple[T, dict[str, Any]]:
    """Load, override and validate a recipe; return the config and its resolved plain dict."""
    file, overrides = str(path), list(overrides)
    original = load_yaml(path)
    data = apply_overrides(original, overrides, file=file)
    try:
        config = build(schema_cls, data, file=file)
    except RecipeError as e:
        # If the bad key or value came from an override, say so: it is not in the file.
        ov = _culprit(e.key, overrides, original)
        if ov is None:
            raise
        raise RecipeError(f"{file} (override {ov!r})", e.key, e.message) from None
    return config, to_dict(config)


def _culprit(key: str, overrides: list[str], original: dict[str, Any]) -> str | None:
    """The last override that set ``key`` (or something under it), or created it."""
    for ov in reversed(overrides):
        ov_path = _override_path(ov.partition("=")[0].strip().split("."))
        if key == ov_path or key.startswith((ov_path + ".", ov_path + "[")):
            return ov
        if ov_path.startswith((key + ".", key + "[")) and not _exists(original, key):
            return ov  # e.g. `trainer.lrr.x=1` made the unknown section `trainer.lrr`
    return None


def _exists(data: Any, key: str) -> bool:
    for seg in re.findall(r"[^.\[\]]+", key):
        if isinstance(data, dict) and seg in data:
            data = data[seg]
        elif isinstance(data, list) and seg.isdigit() and int(seg) < len(data):
            data = data[int(seg)]
        else:
            return False
    return True


def recipe_hash(resolved: dict[str, Any]) -> str:
    """Short stable digest of a resolved recipe (sha256 of sorted-key JSON, 16 hex chars)."""
    canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
