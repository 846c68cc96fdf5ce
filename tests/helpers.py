"""Tiny model configs and recipe helpers shared by the tests (one place, torchtune style)."""

from __future__ import annotations

from pathlib import Path

from genrl.config.load import load_recipe
from genrl.recipe import TrainRecipe

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "recipes" / "smoke" / "flow_grpo_tiny.yaml"

# The smallest flow transformer that still has every part (patchify, joint attention, adaLN).
TINY_FLOW = {"sample_size": 8, "patch_size": 2, "num_layers": 1, "num_heads": 2, "head_dim": 8, "cond_dim": 16}


def smoke_recipe(*overrides: str, path: Path = SMOKE) -> TrainRecipe:
    recipe, _ = load_recipe(path, TrainRecipe, list(overrides))
    return recipe


def make_trainer(run_dir: Path, *overrides: str):
    from genrl.trainer.loop import Trainer

    return Trainer(smoke_recipe(*overrides), recipe_file=str(SMOKE), run_dir=str(run_dir))
