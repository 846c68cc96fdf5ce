"""Pairwise preference data on Hugging Face ``datasets``.

One row is one labelled comparison::

    chosen        media array (image [C,H,W], video [T,C,H,W], scene [A,T,D], ...)   required
    rejected      media array of the same shape                                     required
    context       what both were generated for: an int (class id), a str (a prompt) required
                  or an array (a scene, an image for image+text models)
    margin        float >= 0, how much more chosen is preferred (BT margin)         optional, 0
    label_source  the labelling stage that decided the pair                         optional
    group         id of the sampling group the two samples came from                optional

Media live *in* the dataset (fixed-shape ``ArrayND`` features in Arrow/Parquet, nested lists in
JSONL), never as loose files beside it. Reading checks every row: a row with a missing field, a
wrong shape or a non-finite value is reported by its index (all of them, not the first only) and
nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REQUIRED = ("chosen", "rejected", "context")
OPTIONAL = ("margin", "label_source", "group")
FORMATS = ("jsonl", "parquet", "arrow")
MAX_LISTED = 10


class PreferenceDataError(ValueError):
    """Rows of a preference data set that cannot be used, with their indices."""


@dataclass
class PreferencePairs:
    """A validated preference data set, as tensors (kept in memory: reward data sets are small)."""

    chosen: torch.Tensor  # [N, *sample_shape] float32
    rejected: torch.Tensor  # [N, *sample_shape] float32
    contexts: torch.Tensor | list[str]  # [N] long, [N, *context_shape] float32, or N strings
    margin: torch.Tensor  # [N] float32
    group: torch.Tensor  # [N] long (row index when the data has no groups)
    label_source: list[str]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # further array columns (auxiliary targets)
    source: str = ""

    def __len__(self) -> int:
        return len(self.chosen)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.chosen.shape[1:])

    @property
    def context_kind(self) -> str:
        if isinstance(self.contexts, list):
            return "text"
        return "class" if self.contexts.dtype == torch.long else "array"

    def select(self, index: torch.Tensor | Sequence[int]) -> PreferencePairs:
        index = torch.as_tensor(index, dtype=torch.long)
        ctx = [self.contexts[i] for i in index.tolist()] if isinstance(self.contexts, list) else self.contexts[index]
        return PreferencePairs(self.chosen[index], self.rejected[index], ctx, self.margin[index], self.group[index],
                               [self.label_source[i] for i in index.tolist()],
                               {k: v[index] for k, v in self.extra.items()}, self.source)


# ------------------------------------------------------------------ writing
def _array_feature(shape: tuple[int, ...]):
    from datasets import Array2D, Array3D, Array4D, Array5D, Sequence, Value

    kinds = {2: Array2D, 3: Array3D, 4: Array4D, 5: Array5D}
    if len(shape) in kinds:
        return kinds[len(shape)](shape=shape, dtype="float32")
    return Sequence(Value("float32"), length=shape[0]) if len(shape) == 1 else None


def to_dataset(pairs: PreferencePairs):
    """A ``datasets.Dataset`` with fixed-shape array features for the media."""
    from datasets import Dataset, Features, Value

    n = len(pairs)
    columns: dict[str, Any] = {"chosen": pairs.chosen.numpy(), "rejected": pairs.rejected.numpy()}
    features = {"chosen": _array_feature(pairs.sample_shape), "rejected": _array_feature(pairs.sample_shape)}
    if pairs.context_kind == "text":
        columns["context"], features["context"] = list(pairs.contexts), Value("string")
    elif pairs.context_kind == "class":
        columns["context"], features["context"] = pairs.contexts.numpy(), Value("int64")
    else:
        columns["context"], features["context"] = pairs.contexts.numpy(), _array_feature(tuple(pairs.contexts.shape[1:]))
    columns.update(margin=pairs.margin.numpy(), group=pairs.group.numpy(), label_source=list(pairs.label_source))
    features.update(margin=Value("float32"), group=Value("int64"), label_source=Value("string"))
    for k, v in pairs.extra.items():
        columns[k], features[k] = v.numpy(), _array_feature(tuple(v.shape[1:])) or Value("float32")
    if any(f is None for f in features.values()):
        bad = [k for k, f in features.items() if f is None]
        raise ValueError(f"columns {bad}: arrays of more than 5 dimensions cannot be stored as fixed-shape features")
    assert all(len(v) == n for v in columns.values())
    return Dataset.from_dict(columns, features=Features(features))


def save_pairs(pairs: PreferencePairs, out: Path, fmt: str = "arrow") -> Path:
    """Write pairs as an Arrow folder (``save_to_disk``), one Parquet file or one JSONL file."""
    out = Path(out)
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {list(FORMATS)}, got {fmt!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":  # written row by row: datasets' JSON writer flattens fixed-shape array features
        ctx = pairs.contexts if isinstance(pairs.contexts, list) else pairs.contexts.tolist()
        with out.open("w") as f:
            for i in range(len(pairs)):
                row = {"chosen": pairs.chosen[i].tolist(), "rejected": pairs.rejected[i].tolist(), "context": ctx[i],
                       "margin": float(pairs.margin[i]), "group": int(pairs.group[i]),
                       "label_source": pairs.label_source[i], **{k: v[i].tolist() for k, v in pairs.extra.items()}}
                f.write(json.dumps(row) + "\n")
        return out
    ds = to_dataset(pairs)
    if fmt == "arrow":
        ds.save_to_disk(str(out))
    else:
        ds.to_parquet(str(out))
    return out


# ------------------------------------------------------------------ reading
def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return "arrow"
        for fmt, suffixes in (("parquet", (".parquet",)), ("jsonl", (".jsonl", ".json")), ("arrow", (".arrow",))):
            if any(p.suffix in suffixes for p in path.iterdir()):
                return fmt
        raise PreferenceDataError(f"{path}: no save_to_disk folder, .parquet, .jsonl or .arrow files in it")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".arrow"):
        return suffix[1:]
    raise PreferenceDataError(f"{path}: cannot tell the format from the name; set data.format to one of {list(FORMATS)}")


def load_dataset_any(path: str | Path, fmt: str = "auto"):
    """A ``datasets.Dataset`` from a JSONL file/folder, Parquet file/folder or Arrow folder/file."""
    import datasets

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"preference data {path} does not exist")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "arrow" and path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
        return datasets.load_from_disk(str(path))
    suffix = {"jsonl": (".jsonl", ".json"), "parquet": (".parquet",), "arrow": (".arrow",)}[fmt]
    files = sorted(str(p) for p in path.iterdir() if p.suffix in suffix) if path.is_dir() else [str(path)]
    if fmt == "arrow":
        return datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in files])
    builder = "json" if fmt == "jsonl" else "parquet"
    return datasets.load_dataset(builder, data_files=files, split="train", keep_in_memory=True)


def _report(source: str, problems: list[tuple[int, str]], n: int) -> PreferenceDataError:
    listed = "; ".join(f"row {i}: {msg}" for i, msg in problems[:MAX_LISTED])
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return PreferenceDataError(f"{source}: {len(problems)} of {n} rows are unusable ({listed}{more}); "
                               "fix or remove them (no row is dropped silently)")


def _as_array(value: Any) -> np.ndarray | None:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    return arr


def pairs_from_dataset(ds, *, source: str, sample_shape: Sequence[int] | None = None,
                       extra_columns: Sequence[str] = ()) -> PreferencePairs:
    """Validate every row of ``ds`` and return tensors; raise naming the bad rows' indices."""
    n = len(ds)
    if n == 0:
        raise PreferenceDataError(f"{source}: no rows")
    missing_cols = [c for c in (*REQUIRED, *extra_columns) if c not in ds.column_names]
    if missing_cols:
        raise PreferenceDataError(f"{source}: missing column(s) {missing_cols}; a preference row needs "
                                  f"{list(REQUIRED)} (optional: {list(OPTIONAL)})")
    rows = ds.with_format("numpy")
    # Scalar columns as plain Python values: numpy formatting would turn a missing margin into NaN.
    plain = {c: ds.with_format(None)[c] if c in ds.column_names else [None] * n for c in ("margin", "group",
                                                                                      "label_source")}
    expected = tuple(sample_shape) if sample_shape is not None else None
    problems: list[tuple[int, str]] = []
    chosen, rejected, contexts, extra = [], [], [], {c: [] for c in extra_columns}
    margins, groups, sources = [], [], []
    ctx_kind = None
    for i in range(n):
        row = rows[i]
        bad = []
        media = {}
        for col in ("chosen", "rejected", *extra_columns):
            arr = None if row.get(col) is None else _as_array(row[col])
            if arr is None or arr.dtype == object:
                bad.append(f"{col} is missing or not a numeric array")
                continue
            media[col] = arr
        if "chosen" in media and expected is None:
            expected = media["chosen"].shape
        for col in ("chosen", "rejected"):
            if col in media:
                if media[col].shape != expected:
                    bad.append(f"{col} has shape {list(media[col].shape)}, expected {list(expected)}")
                elif not np.isfinite(media[col]).all():
                    bad.append(f"{col} has non-finite values")
        ctx = row.get("context")
        kind = ("text" if isinstance(ctx, str) else "class" if isinstance(ctx, (int, np.integer))
                else None if ctx is None else "array")
        if kind is None:
            bad.append("context is missing")
        elif ctx_kind is None:
            ctx_kind = kind
        elif kind != ctx_kind:
            bad.append(f"context is a {kind}, earlier rows have a {ctx_kind}")
        margin = plain["margin"][i]
        margin = 0.0 if margin is None else float(margin)
        if not np.isfinite(margin) or margin < 0:
            bad.append(f"margin {margin} is not a finite number >= 0")
        if bad:
            problems.append((i, ", ".join(bad)))
            continue
        chosen.append(media["chosen"])
        rejected.append(media["rejected"])
        contexts.append(ctx)
        for c in extra_columns:
            extra[c].append(media[c])
        margins.append(margin)
        g = plain["group"][i]
        groups.append(i if g is None else int(g))
        src = plain["label_source"][i]
        sources.append("" if src is None else str(src))
    if problems:
        raise _report(source, problems, n)
    if ctx_kind == "array":
        shapes = {np.asarray(c).shape for c in contexts}
        if len(shapes) > 1:
            raise PreferenceDataError(f"{source}: array contexts have different shapes {sorted(shapes)}")
        ctx_t: torch.Tensor | list[str] = torch.as_tensor(np.stack(contexts), dtype=torch.float32)
    elif ctx_kind == "class":
        ctx_t = torch.as_tensor(np.asarray(contexts, dtype=np.int64))
    else:
        ctx_t = [str(c) for c in contexts]
    return PreferencePairs(
        chosen=torch.as_tensor(np.stack(chosen)), rejected=torch.as_tensor(np.stack(rejected)), contexts=ctx_t,
        margin=torch.tensor(margins, dtype=torch.float32), group=torch.tensor(groups, dtype=torch.long),
        label_source=sources, extra={c: torch.as_tensor(np.stack(v)) for c, v in extra.items()}, source=source)


def read_pairs(path: str | Path, fmt: str = "auto", *, sample_shape: Sequence[int] | None = None,
               extra_columns: Sequence[str] = ()) -> PreferencePairs:
    """Read and validate a preference data set from disk."""
    ds = load_dataset_any(path, fmt)
    return pairs_from_dataset(ds, source=str(path), sample_shape=sample_shape, extra_columns=extra_columns)


def write_label_report(out_dir: Path, report: dict) -> None:
    (Path(out_dir) / "labels.json").write_text(json.dumps(report, indent=2) + "\n")
