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


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a sharded one (FSDP2 keeps parameters and optimizer state as DTensors).
    A collective for a DTensor: under FSDP every rank must call it, in the same order."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(value: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """``value`` (a full tensor from a checkpoint) laid out like the live tensor it replaces."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(live, DTensor) and not isinstance(value, DTensor):
        return distribute_tensor(value.to(live.device, live.dtype), live.device_mesh, live.placements)
    return value


def reshard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After loading full tensors into an optimizer over sharded (DTensor) parameters, lay each
    per-parameter state tensor (Adam's moments) out like its parameter."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for k, v in state.items():
                if torch.is_tensor(v) and v.dim() > 0:
                    state[k] = shard_like(v, p)


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
def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split any nested state (dicts, lists, tensors, numbers, strings) into tensors for safetensors
    and a JSON skeleton that points at them. Works for torch optimizers and DeepSpeed's ZeRO optimizer
    state alike, without pickle."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if torch.is_tensor(node):
            tensors[path] = full_tensor(node.detach()).cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(node, dict):
            keys = list(node)
            if all(isinstance(k, str) for k in keys):
                return {"__dict__": {k: walk(v, f"{path}.{k}") for k, v in node.items()}}
            return {"__items__": [[walk(k, f"{path}.k{i}"), walk(v, f"{path}.v{i}")] for i, (k, v) in enumerate(node.items())]}
        if isinstance(node, (list, tuple)):
            return {"__list__" if isinstance(node, list) else "__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(node)]}
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, torch.Size):
            return {"__tuple__": list(node)}
        if hasattr(node, "__dict__"):  # e.g. DeepSpeed's LossScaler: its attributes, never its class
            return {"__object__": type(node).__name__, "attrs": walk(vars(node), f"{path}.attrs")}
        raise TypeError(f"cannot store {type(node).__name__} at {path or '<root>'} without pickle")

    return tensors, walk(obj, prefix or "s")


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any, template: Any = None) -> Any:
    """Inverse of ``flatten_state``. Objects are not re-created from a checkpoint (that would mean
    importing a class it names): their attributes are set on the live object at the same place in
    ``template`` (the current state dict), which must be of the same type."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            value = tensors[skeleton["__tensor__"]]
            return shard_like(value, template) if torch.is_tensor(template) else value
        if "__dict__" in skeleton:
            sub = template if isinstance(template, dict) else {}
            return {k: unflatten_state(tensors, v, sub.get(k)) for k, v in skeleton["__dict__"].items()}
        if "__items__" in skeleton:
            return {unflatten_state(tensors, k): unflatten_state(tensors, v) for k, v in skeleton["__items__"]}
        if "__list__" in skeleton or "__tuple__" in skeleton:
            items = skeleton.get("__list__", skeleton.get("__tuple__"))
            subs = list(template) if isinstance(template, (list, tuple)) and len(template) == len(items) else [None] * len(items)
            out = [unflatten_state(tensors, v, t) for v, t in zip(items, subs)]
            return out if "__list__" in skeleton else tuple(out)
        if "__object__" in skeleton:
            if template is None or type(template).__name__ != skeleton["__object__"]:
                raise CheckpointError(f"checkpoint holds a {skeleton['__object__']} where the live state has "
                                      f"{type(template).__name__}")
            for k, v in unflatten_state(tensors, skeleton["attrs"], vars(template)).items():
                setattr(template, k, v)
            return template
    return skeleton


def optimizer_state_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state dict as (tensors for safetensors, JSON skeleton)."""
    tensors, skeleton = flatten_state(opt.state_dict())
    return tensors, {"skeleton": skeleton}


def optimizer_state_from_flat(tensors: dict[str, torch.Tensor], meta: dict, template: Any = None) -> dict:
    return unflatten_state(tensors, meta["skeleton"], template)


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


def resume_newest(run_dir: Path, load) -> tuple[Path | None, list[str]]:
    """Call ``load(path)`` on the newest checkpoint that verifies; report (and skip) corrupted ones.

    Returns (the loaded checkpoint or None if the run has none, notes on the skipped ones). A run whose
    checkpoints are all unusable raises: starting it afresh would silently overwrite it."""
    notes = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            load(path)
        except CheckpointError as exc:
            note = f"checkpoint {path.name} is unusable ({exc}); falling back to the previous one"
            print(f"[genrl] {note}")
            notes.append(note)
            continue
        return path, notes
    if notes:
        raise CheckpointError(f"{run_dir}: no usable checkpoint: " + "; ".join(notes))
    return None, notes


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's (or DeepSpeed's) wrapper, whose state dict is saved."""
    return optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer


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
