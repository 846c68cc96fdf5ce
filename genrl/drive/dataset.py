"""Driving scenes on Hugging Face ``datasets``: one row per scene, fixed-shape array columns.

A scene data set is a ``DatasetDict`` saved with ``save_to_disk`` (splits ``train``, ``validation`` and
``test``; ``test`` holds the held-out simulator seeds) plus ``scene_spec.json`` beside it, the
:class:`SceneSpec` every row was written with. Columns: the scene fields of ``genrl.drive.scene``
(float32 arrays; masks as 0/1) and ``family`` (str), ``seed`` (int, the simulator seed), ``episode_step``
(int, the policy step of the episode the scene was cut at) and ``agent_id`` (int, the simulator index of
the vehicle the scene is centred on; 0 = the ego).

Reading checks the spec and every column's shape, and names the folder, split and column on a mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from genrl.drive.scene import SCENE_KEYS, SceneSpec

SPEC_FILE = "scene_spec.json"
META_COLUMNS = {"family": "string", "seed": "int64", "episode_step": "int64", "agent_id": "int64"}
SPLITS = ("train", "validation", "test")


class SceneDataError(ValueError):
    """A scene data set that does not match what genrl expects."""


def _features(spec: SceneSpec):
    from datasets import Array2D, Array3D, Features, Sequence, Value

    feats = {}
    for k, shape in spec.shapes().items():
        if len(shape) == 1:
            feats[k] = Sequence(Value("float32"), length=shape[0])
        else:
            feats[k] = {2: Array2D, 3: Array3D}[len(shape)](shape=shape, dtype="float32")
    feats.update({k: Value(v) for k, v in META_COLUMNS.items()})
    return Features(feats)


def rows_to_dataset(spec: SceneSpec, rows: dict[str, np.ndarray | list]):
    """A ``datasets.Dataset`` from column arrays (leading dim = scenes)."""
    from datasets import Dataset

    shapes = spec.shapes()
    n = len(rows["family"])
    columns = {}
    for k in SCENE_KEYS:
        v = np.asarray(rows[k], dtype=np.float32)
        if v.shape != (n, *shapes[k]):
            raise SceneDataError(f"column {k!r}: expected shape {[n, *shapes[k]]}, got {list(v.shape)}")
        columns[k] = v
    for k in META_COLUMNS:
        columns[k] = list(rows[k])
    return Dataset.from_dict(columns, features=_features(spec))


def save_scenes(spec: SceneSpec, splits: dict[str, object], out: Path) -> Path:
    """Write a ``DatasetDict`` of ``splits`` (name -> Dataset) and the spec, atomically (tmp folder, rename)."""
    import os
    import shutil

    from datasets import DatasetDict

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    DatasetDict(splits).save_to_disk(str(tmp))
    (tmp / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def read_spec(path: str | Path) -> SceneSpec:
    path = Path(path).expanduser()
    f = path / SPEC_FILE
    if not f.is_file():
        raise SceneDataError(f"{path}: not a genrl scene data set (no {SPEC_FILE}; write one with `genrl drive collect`)")
    raw = json.loads(f.read_text())
    unknown = set(raw) - set(SceneSpec.__dataclass_fields__)
    if unknown:
        raise SceneDataError(f"{f}: unknown keys {sorted(unknown)}")
    spec = SceneSpec(**raw)
    spec.validate()
    return spec


def load_scenes(path: str | Path, split: str, *, spec: SceneSpec | None = None,
                limit: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, list]]:
    """(scene tensors, meta columns) of one split. Masks come back as bool, arrays as float32.

    ``spec``: what the caller's model was built for; a data set written with another spec is refused.
    """
    from datasets import load_from_disk

    path = Path(path).expanduser()
    found = read_spec(path)
    if spec is not None and found.to_dict() != spec.to_dict():
        diff = {k: (v, found.to_dict()[k]) for k, v in spec.to_dict().items() if found.to_dict()[k] != v}
        raise SceneDataError(f"{path}: written with another scene spec than expected ({{key: (expected, found)}}: {diff})")
    dd = load_from_disk(str(path))
    if split not in dd:
        raise SceneDataError(f"{path}: no split {split!r} (has {sorted(dd)})")
    ds = dd[split]
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    missing = [k for k in (*SCENE_KEYS, *META_COLUMNS) if k not in ds.column_names]
    if missing:
        raise SceneDataError(f"{path} [{split}]: missing columns {missing}")
    batch = ds.with_format("numpy")[0:len(ds)]  # one batched read (row iteration is ~1000x slower)
    shapes = found.shapes()
    scene = {}
    for k in SCENE_KEYS:
        v = torch.from_numpy(np.asarray(batch[k], dtype=np.float32).reshape(len(ds), *shapes[k]))
        if not torch.isfinite(v).all():
            bad = torch.nonzero(~torch.isfinite(v.reshape(len(v), -1)).all(1)).flatten()[:10].tolist()
            raise SceneDataError(f"{path} [{split}]: column {k!r} has non-finite values in rows {bad}")
        scene[k] = v > 0.5 if k.endswith("mask") else v
    meta = {k: [x.item() if hasattr(x, "item") else x for x in batch[k]] for k in META_COLUMNS}
    return scene, meta


def scene_data_folder(path: str | None, collect_recipe: str | None, *, referenced_from: str | None = None,
                      key: str = "data", relative_to: Path | None = None) -> Path:
    """The scene data set a config names: the (cached) output of a collection recipe, or a folder looked up
    like recipe paths (``genrl.cache.lookup_candidates``), then in ``relative_to`` (a recipe's own folder)."""
    where = f"{key}." if key else ""
    if collect_recipe:
        from genrl.drive.collect import scenes_from_recipe

        return scenes_from_recipe(collect_recipe, referenced_from=referenced_from, key=f"{where}collect_recipe")
    from genrl.cache import PROJECT_ROOT, lookup_candidates

    p = Path(path).expanduser()
    extra = [relative_to / p] if relative_to is not None and not p.is_absolute() else []
    for cand in lookup_candidates(p) + extra:
        if cand.is_dir():
            return cand.resolve()
    looked = ", ".join(str(d) for d in [Path.cwd(), PROJECT_ROOT, *([relative_to] if extra else [])])
    raise SceneDataError(f"{where}path: scene data set {path!r} not found (looked in {looked}); "
                         "write one with `genrl drive collect`")


def select(scene: dict[str, torch.Tensor], index) -> dict[str, torch.Tensor]:
    index = torch.as_tensor(index, dtype=torch.long)
    return {k: v[index] for k, v in scene.items()}
