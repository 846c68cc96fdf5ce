"""Prompt data sets from local files, for text-conditioned recipes (GenEval-style or free text).

Formats, chosen by the path:

* ``.txt``: one prompt per line, whitespace stripped; blank lines and lines starting with ``#`` are skipped
  (a prompt cannot start with ``#``).
* ``.jsonl``: one JSON object per line (blank lines skipped); ``text_key`` holds the prompt, every other
  field is kept as metadata — GenEval's ``evaluation_metadata.jsonl`` (``tag``, ``include``, ``prompt``) loads as is.
* ``.json``: a list of such objects, or a list of strings.
* a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (a DatasetDict needs ``split``).

Every row is checked; a bad one is reported with the file and its line (or item), never silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from genrl.cache import PROJECT_ROOT, lookup_candidates

SUFFIXES = (".txt", ".jsonl", ".json")
_EXPECTED = "a .txt, .jsonl or .json file, or a folder written by datasets' save_to_disk"


class PromptFileError(ValueError):
    """A prompt file that cannot be read as prompts: the message names the file and the line or key."""


class TextPrompt(str):
    """A prompt that is a plain ``str`` (so rewards and encoders take it as text) and also carries its
    record's other fields (``metadata``, e.g. GenEval's ``tag`` / ``include``) and its row ``index``.

    Equality and hashing are those of the text; string methods return plain ``str``.
    """

    __slots__ = ("metadata", "index")
    metadata: dict[str, Any]
    index: int

    def __new__(cls, text: str, metadata: dict[str, Any] | None = None, index: int = -1) -> TextPrompt:
        self = super().__new__(cls, text)
        self.metadata = dict(metadata or {})
        self.index = int(index)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # A str subclass with slots would otherwise lose its fields when a reward process unpickles it.
        return (type(self), (str(self), self.metadata, self.index))

    def __getnewargs__(self) -> tuple[str, dict[str, Any], int]:
        return (str(self), self.metadata, self.index)


def resolve_data_path(path: str | Path) -> Path:
    """A data path as written in a recipe: absolute, relative to the working directory, or relative to the
    project root (as recipe paths are, see :func:`genrl.cache.resolve_recipe_path`), so ``data/prompts/...``
    works from any directory of a source checkout."""
    for cand in lookup_candidates(path):
        if cand.exists():
            return cand.resolve()
    where = "" if Path(path).expanduser().is_absolute() else f" (looked in {Path.cwd()} and {PROJECT_ROOT})"
    raise FileNotFoundError(f"prompt file {str(path)!r} not found{where}; expected {_EXPECTED}")


def load_prompt_records(path: str | Path, *, text_key: str = "prompt", split: str | None = None) -> list[TextPrompt]:
    """The prompts of ``path`` in file order, ``index`` = position among them. A relative ``path`` is read from
    the working directory (use :func:`resolve_data_path` for recipe paths). Raises :class:`PromptFileError`
    (or ``FileNotFoundError``) naming the file and the offending line, item or key."""
    path = Path(path)
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise FileNotFoundError(f"{path}: prompt file not found{where}; expected {_EXPECTED}")
    if path.is_dir():
        records = _dataset_records(path, text_key, split)
    else:
        if split is not None:
            raise PromptFileError(f"{path}: split {split!r} given, but only a DatasetDict folder has splits")
        if path.suffix == ".txt":
            records = _txt_records(path)
        elif path.suffix == ".jsonl":
            records = _jsonl_records(path, text_key)
        elif path.suffix == ".json":
            records = _json_records(path, text_key)
        else:
            raise PromptFileError(f"{path}: unknown prompt file type {path.suffix or '(no suffix)'!r}; expected {_EXPECTED}")
    if not records:
        raise PromptFileError(f"{path}: no prompts in the file (empty, or only blank/comment lines)")
    return records


# ----------------------------------------------------------------------------- formats


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PromptFileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _txt_records(path: Path) -> list[TextPrompt]:
    out: list[TextPrompt] = []
    for line in _read_text(path).splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            out.append(TextPrompt(text, {}, len(out)))
    return out


def _record(row: Any, text_key: str, where: str, index: int, *, allow_str: bool = False) -> TextPrompt:
    """One record (an object with ``text_key``, or a bare string where allowed) as a checked prompt."""
    if allow_str and isinstance(row, str):
        row = {text_key: row}
    if not isinstance(row, dict):
        kind = "a JSON object or a string" if allow_str else "a JSON object"
        raise PromptFileError(f"{where}: expected {kind} with a {text_key!r} field, got {type(row).__name__} {_short(row)}")
    if text_key not in row:
        raise PromptFileError(f"{where}: no {text_key!r} field (text_key); the record has keys {sorted(row)}")
    text = row[text_key]
    if not isinstance(text, str):
        raise PromptFileError(f"{where}: {text_key!r} is {type(text).__name__} {_short(text)}, expected a string")
    if not text.strip():
        raise PromptFileError(f"{where}: {text_key!r} is an empty prompt")
    return TextPrompt(text, {k: v for k, v in row.items() if k != text_key}, index)


def _jsonl_records(path: Path, text_key: str) -> list[TextPrompt]:
    out: list[TextPrompt] = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{path}: line {number}: not valid JSON ({e.msg} at column {e.colno})") from None
        out.append(_record(row, text_key, f"{path}: line {number}", len(out)))
    return out


def _json_records(path: Path, text_key: str) -> list[TextPrompt]:
    try:
        rows = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(rows, list):
        raise PromptFileError(f"{path}: expected a JSON list of objects or strings, got {type(rows).__name__}")
    return [_record(row, text_key, f"{path}: item {i}", i, allow_str=True) for i, row in enumerate(rows)]


def _dataset_records(path: Path, text_key: str, split: str | None) -> list[TextPrompt]:
    import datasets  # heavy; only folders need it

    try:
        data = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise PromptFileError(f"{path}: a folder, but not one written by Dataset/DatasetDict.save_to_disk; "
                              f"expected {_EXPECTED}") from None
    if isinstance(data, datasets.DatasetDict):
        splits = sorted(data)
        if split is None:
            raise PromptFileError(f"{path}: a DatasetDict; set split to one of {splits}")
        if split not in data:
            raise PromptFileError(f"{path}: no split {split!r}; available splits: {splits}")
        data = data[split]
    elif split is not None and (data.split is None or str(data.split) != split):
        # A single Dataset has no splits; its own split name (load_dataset(..., split=...)) may be named.
        own = "no split name" if data.split is None else f"split {str(data.split)!r}"
        raise PromptFileError(f"{path}: a single Dataset ({own}), not a DatasetDict; remove split {split!r}")
    if text_key not in data.column_names:
        raise PromptFileError(f"{path}: no column {text_key!r} (text_key); columns: {sorted(data.column_names)}")
    where = f"{path}" + (f" [{split}]" if split else "")
    rows: Iterable[dict[str, Any]] = data.to_list()
    return [_record(row, text_key, f"{where}: row {i}", i) for i, row in enumerate(rows)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
