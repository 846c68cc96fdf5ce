"""Tiny model configs and recipe helpers shared by the tests (one place, torchtune style)."""

from __future__ import annotations

import os
import subprocess
import sys
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


def reset_accelerate() -> None:
    """Accelerate keeps a process-wide singleton; a second Trainer in one test needs it cleared."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def run_genrl(*args, cwd, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m genrl.cli ARGS`` in a subprocess (1 torch thread); asserts success unless check=False."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "genrl.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def train_end_to_end(recipe: Path, work: Path, cache: str, *overrides: str) -> tuple[Path, dict, dict, str]:
    """``genrl train RECIPE`` in a fresh process, as a user runs it; (run dir, eval before, eval after, stdout)."""
    import json

    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENRL_CACHE": cache}
    run = work / "run"
    proc = subprocess.run([sys.executable, "-m", "genrl.cli", "train", str(recipe), "--run-dir", str(run),
                           *overrides, "logging.progress=false"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    before = json.loads((run / "eval" / "before.json").read_text())
    after = json.loads((run / "eval" / "after.json").read_text())
    return run, before, after, proc.stdout
