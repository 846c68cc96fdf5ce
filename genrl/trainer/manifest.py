"""The run manifest: how a run came to be (recipe, seed, code, versions, inputs, checkpoints).

Small, readable JSON (``RUN_DIR/manifest.json``), written atomically and updated as checkpoints are
written; its shape is fixed by ``genrl/schemas/manifest.schema.json``. ``genrl replay`` re-executes a
run from it and checks every logged metric and checkpoint hash against it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from genrl.cache import PROJECT_ROOT
from genrl.config.load import recipe_hash
from genrl.hashing import folder_sha256, path_sha256
from genrl.trainer.checkpoint import list_checkpoints, write_json_atomic

# Recipe fields that cannot change a run's numbers: they are left out of its identity hash.
NON_SEMANTIC_KEYS = ("run_dir", "logging", "description", "tags")
SLURM_FIELDS = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST",
                "SLURM_NNODES", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_RESTART_COUNT", "SLURM_CLUSTER_NAME",
                "SLURM_JOB_PARTITION")

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


def run_hash(resolved: dict) -> str:
    """Identity of a run's recipe: the resolved recipe without the fields that cannot change results."""
    return recipe_hash({k: v for k, v in resolved.items() if k not in NON_SEMANTIC_KEYS})


def slurm_fields() -> dict[str, str]:
    return {k: os.environ[k] for k in SLURM_FIELDS if k in os.environ}


def describe_inputs(inputs: dict[str, Path | None]) -> dict[str, dict[str, str]]:
    """Content hashes of everything a run reads: base model, reward models, judges, data, user code."""
    return {name: {"path": str(p), "sha256": path_sha256(p)} for name, p in inputs.items() if p is not None}


def determinism_statement(*, deterministic: bool, device: str, world_size: int, mixed_precision: str,
                          remote_rewards: list[str]) -> dict[str, Any]:
    """What this run's numbers can be trusted to repeat, and what not — stated, not hidden."""
    caveats = []
    if not deterministic:
        caveats.append("deterministic mode is off: kernels may pick non-deterministic algorithms "
                       "(cuBLAS/cuDNN autotuning, atomics)")
    if device == "cpu":
        caveats.append("CPU GEMM results can differ between CPU models (vector width); bitwise repeats are "
                       "expected on the same machine type and package versions")
    else:
        caveats.append("GPU results can differ between GPU models, drivers and CUDA versions")
    if world_size > 1:
        caveats.append(f"{world_size} processes: the gradient all-reduce sums in a backend-defined order, so a "
                       "run matches a different process count within float rounding (samples are identical)")
    if mixed_precision != "no":
        caveats.append(f"{mixed_precision} autocast: repeats bitwise on the same setup, not across setups")
    caveats.extend(f"remote reward {name!r}: its determinism is outside genrl" for name in remote_rewards)
    return {"deterministic_mode": deterministic, "keyed_randomness": True,
            "same_setup_bitwise": deterministic and not remote_rewards, "caveats": caveats}


def new_manifest(*, engine: str, recipe_file: str, resolved: dict, seed: int, world_size: int, base_checkpoint: str | None,
                 inputs: dict[str, Path | None], determinism: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {
        "format": "genrl-manifest/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": sys.argv,
        "recipe_file": recipe_file,
        "recipe_hash": run_hash(resolved),
        "seed": seed,
        "base_checkpoint": base_checkpoint,
        "inputs": describe_inputs(inputs),
        "git": git_state(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "hardware": {"device": "cuda" if torch.cuda.is_available() else "cpu",
                     "cuda_devices": torch.cuda.device_count(), "world_size": world_size, "engine": engine},
        "slurm": slurm_fields(),
        "determinism": determinism,
        "recipe": resolved,
        "sessions": [],
        "checkpoints": [],
    }


def record_checkpoint(manifest: dict, run_dir: Path, path: Path, step: int) -> None:
    """Add a checkpoint with its content hash; checkpoints pruned from disk stay listed (for replay)."""
    entries = [c for c in manifest["checkpoints"] if c["step"] != step]
    entries.append({"step": step, "path": str(path.relative_to(run_dir)), "sha256": folder_sha256(path)})
    on_disk = {p.name for p in list_checkpoints(run_dir)}
    for c in entries:
        c["on_disk"] = Path(c["path"]).name in on_disk
    manifest["checkpoints"] = sorted(entries, key=lambda c: c["step"])


def save_manifest(run_dir: Path, manifest: dict) -> None:
    write_json_atomic(Path(run_dir) / "manifest.json", manifest)


def open_session(run_dir: Path, resolved: dict, *, resumed: bool, step: int, world_size: int,
                 make_manifest, write: bool, notes: list[str] | None = None) -> dict:
    """Start (or continue, on resume) a run's manifest and append this session to it.

    A resumed run must have been started with the same recipe (same identity hash); anything else
    would silently mix two experiments in one run directory.
    """
    import json

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest_file = run_dir / "manifest.json"
    if resumed and manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("recipe_hash") != run_hash(resolved):
            raise ValueError(f"{run_dir}: resuming with a different recipe than the run was started with "
                             f"(hash {run_hash(resolved)} vs {manifest.get('recipe_hash')})")
    else:
        manifest = make_manifest()
    manifest["sessions"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "resumed_from_step": step, "world_size": world_size, "notes": list(notes or [])})
    if write:
        save_manifest(run_dir, manifest)
    return manifest
