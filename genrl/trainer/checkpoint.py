"""Checkpoints: tensors as safetensors, everything else as JSON; no pickle anywhere.

Each folder also carries ``checksums.json`` (sha256 of every other file), written last. On load
the folder must hold exactly those files with exactly those hashes: a truncated or corrupted file
is detected (resume then falls back to the previous checkpoint and says so), and a planted file —
say a pickle named ``optimizer.pt`` — is refused without ever being opened.

A checkpoint folder holds ``checkpoint.json`` first (policy type and config, so a loader knows what
it holds before touching tensors), ``policy.safetensors`` (trainable weights: the adapter or the full
model), ``ema.safetensors`` (optional), ``optimizer.safetensors`` + the optimizer's non-tensor state
in ``trainer_state.json`` with the step, data position, scheduler, RNG and advantage statistics.

Folders are written under a temporary name and renamed into place, so a crash while saving never
destroys the previous checkpoint; the newest ``keep_last`` are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from genrl.hashing import file_sha256, folder_files, folder_sha256

STEP_DIR = re.compile(r"^step_(\d{8})$")
CHECKSUMS = "checksums.json"
ALLOWED_SUFFIXES = (".json", ".safetensors")


class CheckpointError(RuntimeError):
    """A checkpoint folder that must not be loaded (corrupted, incomplete or with foreign files)."""


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: checkpoint file missing")
    return load_file(str(path))


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


# ------------------------------------------------------------------ optimizer state
def optimizer_state_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (safetensors) and plain JSON."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# ------------------------------------------------------------------ folders
def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / "checkpoint.json").is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def write_checkpoint(run_dir: Path, step: int, files: dict[str, dict[str, torch.Tensor]], meta: dict,
                     trainer_state: dict, *, keep_last: int = 2) -> Path:
    """Write ``checkpoints/step_XXXXXXXX`` atomically; prune all but the newest ``keep_last``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=2, default=str))
        for name, tensors in files.items():
            save_tensors(tmp / name, tensors)
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2, default=str))
        (tmp / CHECKSUMS).write_text(json.dumps({p.name: file_sha256(p) for p in folder_files(tmp)}, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write (disk full, I/O error) leaves nothing behind
        raise
    if final.exists():  # re-saving the same step (e.g. after a resume): replace as a unit
        old = root / f".old_step_{step:08d}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    for stale in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(stale)
    return final


def read_json(path: Path) -> Any:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: missing")
    return json.loads(Path(path).read_text())


def verify_checkpoint(path: Path) -> str:
    """Check a checkpoint folder against its checksums; return the folder's content hash.

    Raises ``CheckpointError`` naming the offending file. Only JSON and safetensors files are ever
    accepted, so no file in a checkpoint is unpickled or executed.
    """
    path = Path(path)
    sums_file = path / CHECKSUMS
    if not sums_file.is_file():
        raise CheckpointError(f"{path}: no {CHECKSUMS} (incomplete or not written by genrl)")
    try:
        sums = json.loads(sums_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}/{CHECKSUMS}: not valid JSON ({exc})") from None
    present = {p.name for p in folder_files(path, exclude=(CHECKSUMS,))}
    foreign = sorted(present - set(sums))
    if foreign:
        raise CheckpointError(f"{path}: unexpected file(s) {foreign} not listed in {CHECKSUMS}; refusing to load")
    for name, digest in sums.items():
        if not name.endswith(ALLOWED_SUFFIXES):
            raise CheckpointError(f"{path}/{name}: only .json and .safetensors files are loaded from checkpoints")
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}/{name}: listed in {CHECKSUMS} but missing")
        actual = file_sha256(file)
        if actual != digest:
            raise CheckpointError(f"{path}/{name}: content hash {actual[:16]} does not match the recorded {digest[:16]}")
    return folder_sha256(path)
