"""Content hashes: of files, of folders (model weights, checkpoints) and of tensors (data sets).

A folder's hash covers every file's relative path and bytes, in sorted order, so renaming,
adding, removing or changing any file changes it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def folder_files(root: Path, *, exclude: tuple[str, ...] = ()) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.name not in exclude
                  and not p.name.startswith("."))


def folder_sha256(root: Path, *, exclude: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    for p in folder_files(root, exclude=exclude):
        h.update(str(p.relative_to(root)).encode() + b"\0" + file_sha256(p).encode() + b"\n")
    return h.hexdigest()


def path_sha256(path: Path) -> str:
    path = Path(path)
    return folder_sha256(path) if path.is_dir() else file_sha256(path)


def tensors_sha256(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
