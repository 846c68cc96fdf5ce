"""Readers for public benchmark prompt formats, from a folder the user downloaded.

* **GenEval** — ``evaluation_metadata.jsonl``: one JSON object per line with ``tag`` (the task:
  ``single_object``, ``two_object``, ``counting``, ``colors``, ``position``, ``color_attr``),
  ``prompt``, ``include`` (objects that must appear: ``class``, ``count``, optional ``color`` and
  ``position`` = ``[relation, index of another include entry]``) and optional ``exclude``
  (objects that must not appear, e.g. ``{"class": "clock", "count": 3}`` for "two clocks").
* **VBench** — plain-text prompt lists, one prompt per line (``prompts/all_dimension.txt``,
  ``prompts/prompts_per_dimension/<dimension>.txt``), and ``VBench_full_info.json``: a JSON list of
  ``{"prompt_en": ..., "dimension": [...]}``.

Rows are validated as they are read; a bad one is a :class:`BenchmarkFormatError` naming the file,
the line (or list index) and what was expected, because a silently skipped or misread prompt
changes a benchmark score without anyone noticing.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENEVAL_FILE = "evaluation_metadata.jsonl"
VBENCH_ALL = Path("prompts") / "all_dimension.txt"
VBENCH_PER_DIMENSION = Path("prompts") / "prompts_per_dimension"
VBENCH_FULL_INFO = "VBench_full_info.json"


class BenchmarkFormatError(ValueError):
    """A file that does not follow its benchmark's format: where (file, line or index) and what was expected."""

    def __init__(self, file: str | Path, where: str, message: str) -> None:
        super().__init__(str(file), where, message)
        self.file, self.where, self.message = str(file), where, message

    def __str__(self) -> str:
        return f"{self.file}: {self.where}: {self.message}" if self.where else f"{self.file}: {self.message}"


def _got(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return (text[:57] + "...") if len(text) > 60 else text


# ----------------------------------------------------------------------------- GenEval
@dataclass(frozen=True)
class GenEvalObject:
    """An object a GenEval image must (``include``) or must not (``exclude``) contain."""

    cls: str
    count: int
    color: str | None = None
    position: tuple[str, int] | None = None  # (relation such as "left of", index of the reference object)


@dataclass(frozen=True)
class GenEvalPrompt:
    tag: str
    prompt: str
    include: tuple[GenEvalObject, ...]
    exclude: tuple[GenEvalObject, ...] = ()


def _geneval_object(obj: Any, file: Path, where: str, n_include: int | None) -> GenEvalObject:
    expected = '{"class": str, "count": int >= 1, "color"?: str, "position"?: [str, int]}'
    if not isinstance(obj, dict):
        raise BenchmarkFormatError(file, where, f"expected an object {expected}, got {_got(obj)}")
    unknown = sorted(set(obj) - {"class", "count", "color", "position"})
    if unknown:
        raise BenchmarkFormatError(file, where, f"unknown key {unknown[0]!r}; expected {expected}")
    cls, count = obj.get("class"), obj.get("count", 1)
    if not isinstance(cls, str) or not cls.strip():
        raise BenchmarkFormatError(file, f"{where}.class", f"expected a non-empty class name, got {_got(cls)}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise BenchmarkFormatError(file, f"{where}.count", f"expected an integer >= 1, got {_got(count)}")
    color = obj.get("color")
    if color is not None and (not isinstance(color, str) or not color.strip()):
        raise BenchmarkFormatError(file, f"{where}.color", f"expected a colour name, got {_got(color)}")
    position = obj.get("position")
    if position is not None:
        ok = (isinstance(position, list) and len(position) == 2 and isinstance(position[0], str)
              and isinstance(position[1], int) and not isinstance(position[1], bool))
        if not ok:
            raise BenchmarkFormatError(file, f"{where}.position",
                                       f"expected [relation, index of another include entry], got {_got(position)}")
        if n_include is not None and not 0 <= position[1] < n_include:
            raise BenchmarkFormatError(file, f"{where}.position",
                                       f"reference index {position[1]} is outside include[0..{n_include - 1}]")
        position = (position[0], position[1])
    return GenEvalObject(cls, count, color, position)


def load_geneval_metadata(path: str | Path) -> list[GenEvalPrompt]:
    """GenEval prompts from ``evaluation_metadata.jsonl`` (the file, or a folder holding it directly or
    under ``prompts/``). Blank lines are skipped; every other line must be a valid prompt object."""
    path = Path(path).expanduser()
    file = path
    if path.is_dir():
        candidates = [path / GENEVAL_FILE, path / "prompts" / GENEVAL_FILE]
        file = next((c for c in candidates if c.is_file()), candidates[0])
    if not file.is_file():
        raise FileNotFoundError(f"{file}: GenEval metadata not found (expected {GENEVAL_FILE}, "
                                "one JSON object per line)")
    prompts = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkFormatError(file, where, f"expected one JSON object per line: {e.msg} "
                                                    f"(column {e.colno})") from None
        if not isinstance(row, dict):
            raise BenchmarkFormatError(file, where, f"expected a JSON object, got {_got(row)}")
        for key in ("tag", "prompt"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise BenchmarkFormatError(file, f"{where}: {key}", f"expected a non-empty string, got "
                                                                    f"{_got(row.get(key)) if key in row else 'nothing'}")
        include = row.get("include")
        if not isinstance(include, list) or not include:
            raise BenchmarkFormatError(file, f"{where}: include", "expected a non-empty list of objects, got "
                                                                  f"{_got(include) if 'include' in row else 'nothing'}")
        exclude = row.get("exclude", [])
        if not isinstance(exclude, list):
            raise BenchmarkFormatError(file, f"{where}: exclude", f"expected a list of objects, got {_got(exclude)}")
        unknown = sorted(set(row) - {"tag", "prompt", "include", "exclude"})
        if unknown:
            raise BenchmarkFormatError(file, f"{where}: {unknown[0]}",
                                       "unknown key; expected tag, prompt, include and optional exclude")
        prompts.append(GenEvalPrompt(
            row["tag"], row["prompt"],
            tuple(_geneval_object(o, file, f"{where}: include[{i}]", len(include)) for i, o in enumerate(include)),
            tuple(_geneval_object(o, file, f"{where}: exclude[{i}]", None) for i, o in enumerate(exclude)),
        ))
    if not prompts:
        raise BenchmarkFormatError(file, "", "no prompts (expected one JSON object per line)")
    return prompts


# ----------------------------------------------------------------------------- VBench
@dataclass(frozen=True)
class VBenchPrompt:
    prompt: str
    dimensions: tuple[str, ...] = ()


def load_prompt_list(path: str | Path) -> list[str]:
    """Prompts from a plain-text file, one per line. Trailing blank lines are allowed (files end with a
    newline); a blank line between prompts is an error, since it would shift every later prompt index."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{file}: prompt list not found (expected a text file, one prompt per line)")
    lines = file.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise BenchmarkFormatError(file, f"line {number}", "empty line; expected one prompt per line")
    if not lines:
        raise BenchmarkFormatError(file, "", "no prompts (expected one prompt per line)")
    return [line.strip() for line in lines]


def vbench_dimensions(root: str | Path) -> list[str]:
    """Dimension names that have a prompt file under ``prompts/prompts_per_dimension/``."""
    folder = Path(root).expanduser() / VBENCH_PER_DIMENSION
    return sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []


def load_vbench_prompts(root: str | Path, dimension: str | None = None) -> list[VBenchPrompt]:
    """VBench prompts from a downloaded VBench folder: all of them (``prompts/all_dimension.txt``) or one
    dimension's (``prompts/prompts_per_dimension/<dimension>.txt``, tagged with that dimension)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: VBench folder not found (expected a folder with {VBENCH_ALL})")
    if dimension is None:
        return [VBenchPrompt(p) for p in load_prompt_list(root / VBENCH_ALL)]
    file = root / VBENCH_PER_DIMENSION / f"{dimension}.txt"
    if not file.is_file():
        known = vbench_dimensions(root)
        close = difflib.get_close_matches(dimension, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise FileNotFoundError(f"{file}: no prompt file for VBench dimension {dimension!r} "
                                f"(expected one of {known}){hint}")
    return [VBenchPrompt(p, (dimension,)) for p in load_prompt_list(file)]


def load_vbench_full_info(path: str | Path) -> list[VBenchPrompt]:
    """``VBench_full_info.json`` (the file, or a folder holding it): every prompt with its dimensions.
    Extra keys of an entry (e.g. ``auxiliary_info``) are allowed and ignored."""
    path = Path(path).expanduser()
    file = path / VBENCH_FULL_INFO if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found (expected {VBENCH_FULL_INFO}, a JSON list of "
                                '{"prompt_en": str, "dimension": [str, ...]})')
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchmarkFormatError(file, f"line {e.lineno}", f"invalid JSON: {e.msg}") from None
    if not isinstance(data, list) or not data:
        raise BenchmarkFormatError(file, "", f"expected a non-empty JSON list of entries, got {_got(data)}")
    out = []
    for i, entry in enumerate(data):
        where = f"entry [{i}]"
        if not isinstance(entry, dict):
            raise BenchmarkFormatError(file, where, f'expected {{"prompt_en": str, "dimension": [str, ...]}}, got {_got(entry)}')
        prompt = entry.get("prompt_en")
        if not isinstance(prompt, str) or not prompt.strip():
            raise BenchmarkFormatError(file, f"{where}.prompt_en", f"expected a non-empty string, got "
                                                                   f"{_got(prompt) if 'prompt_en' in entry else 'nothing'}")
        dims = entry.get("dimension")
        if not isinstance(dims, list) or not dims or not all(isinstance(d, str) and d for d in dims):
            raise BenchmarkFormatError(file, f"{where}.dimension", "expected a non-empty list of dimension names, got "
                                                                   f"{_got(dims) if 'dimension' in entry else 'nothing'}")
        out.append(VBenchPrompt(prompt.strip(), tuple(dims)))
    return out
