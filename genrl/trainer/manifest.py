"""The run manifest: how a run came to be (recipe, seed, code, versions, inputs, checkpoints)."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from genrl.cache import PROJECT_ROOT
from genrl.trainer.checkpoint import write_json_atomic

PACKAGES = ["torch", "diffusers", "transformers", "accelerate", "trl", "deepspeed", "datasets", "peft",
            "safetensors", "scikit-learn", "numpy"]


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                                  check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    diff = run("diff", "HEAD") or ""
    return {"commit": commit.strip(), "dirty": bool(diff.strip()),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff.strip() else None}


def new_manifest(*, recipe_file: str, recipe_hash: str, resolved: dict, seed: int, world_size: int,
                 base_checkpoint: str | None, inputs: dict[str, str]) -> dict[str, Any]:
    import torch

    return {
        "format": "genrl-manifest/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": sys.argv,
        "recipe_file": recipe_file,
        "recipe_hash": recipe_hash,
        "seed": seed,
        "base_checkpoint": base_checkpoint,
        "inputs": inputs,
        "git": git_state(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "hardware": {"device": "cuda" if torch.cuda.is_available() else "cpu",
                     "cuda_devices": torch.cuda.device_count(), "world_size": world_size},
        "recipe": resolved,
        "sessions": [],
        "checkpoints": [],
    }


def save_manifest(run_dir: Path, manifest: dict) -> None:
    write_json_atomic(Path(run_dir) / "manifest.json", manifest)
