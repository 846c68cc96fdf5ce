"""Loading shared by the policies: a recipe's base model (a folder, or built from a pretraining recipe and
cached) and an RL checkpoint (its recipe's policy config rebuilt on its base, the trained weights applied)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def read_checkpoint_meta(path: Path) -> dict:
    meta_file = Path(path) / "checkpoint.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path}: not a genrl checkpoint directory (expected {meta_file.name} inside it)")
    return json.loads(meta_file.read_text())


def resolve_genrl_base(config, *, recipe_file: str | None, key: str,
                       from_recipe: Callable[..., Path]) -> Path | None:
    """``base_recipe`` built (cached) by ``from_recipe``, or ``base_checkpoint`` checked to be a genrl folder."""
    from genrl.config.validate import RecipeError

    if config.base_recipe:
        return from_recipe(config.base_recipe, referenced_from=recipe_file, key=f"{key}.base_recipe")
    if config.base_checkpoint:
        path = Path(config.base_checkpoint).expanduser()
        if not (path / "checkpoint.json").is_file():
            raise RecipeError(recipe_file, f"{key}.base_checkpoint",
                              f"no checkpoint at {path} (expected a folder with checkpoint.json)")
        return path.resolve()
    return None


def load_rl_checkpoint(cls: type, path: Path, meta: dict, *, use_ema: bool, device: str,
                       base_check: Callable[[Path], bool] = Path.exists):
    """A policy of class ``cls`` from an RL checkpoint folder: the files verified (a planted pickle is
    refused, never opened), the run's policy config rebuilt on its base, the (EMA) trained weights loaded."""
    from genrl.config.validate import build
    from genrl.trainer.checkpoint import load_tensors, verify_checkpoint

    verify_checkpoint(path)
    config = build(cls.Config, meta["policy_config"], file=str(path / "checkpoint.json"), key="policy_config")
    base = Path(meta["base_checkpoint"]) if meta.get("base_checkpoint") else None
    if base is not None and not base_check(base):
        raise FileNotFoundError(f"{path}: its base checkpoint {base} does not exist (or is not a model folder)")
    policy = cls(config, device=device, base_dir=base)
    name = "ema.safetensors" if use_ema and (path / "ema.safetensors").is_file() else "policy.safetensors"
    policy.load_trainable_state_dict(load_tensors(path / name))
    return policy
