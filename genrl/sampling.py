"""Load any checkpoint (a run directory, an RL checkpoint, a pretrained base) for sampling."""

from __future__ import annotations

from pathlib import Path

from genrl.registry import POLICIES
from genrl.trainer.checkpoint import latest_checkpoint, read_json


def resolve_checkpoint(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run directory or checkpoint")
    if (path / "checkpoint.json").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"{path}: neither a checkpoint (checkpoint.json) nor a run directory with checkpoints/")
    return latest


def load_policy_for_sampling(path: Path, *, use_ema: bool = True):
    import genrl.recipe  # noqa: F401  (fills the registries)

    ckpt = resolve_checkpoint(path)
    meta = read_json(ckpt / "checkpoint.json")
    policy_cls = POLICIES.get(meta.get("policy", "?"))
    return policy_cls.from_checkpoint(ckpt, use_ema=use_ema), ckpt
