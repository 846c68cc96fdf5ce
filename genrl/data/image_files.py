"""User image data sets for pretraining: ``.npz`` (arrays ``images`` [N, H, W], ``labels`` [N]) or
``.jsonl`` (one ``{"image": [[...], ...], "label": k}`` per line).

Every row is checked; a bad one is reported by its index (and line), never silently dropped.
Pickled ``.npz`` object arrays are refused (``allow_pickle=False``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


class DataRowError(ValueError):
    pass


def _check_row(path: Path, index: int, image: np.ndarray, label: object, size: int, num_classes: int) -> None:
    where = f"{path}: row {index}"
    if image.shape != (size, size):
        raise DataRowError(f"{where}: image has shape {list(image.shape)}, expected [{size}, {size}]")
    if not np.isfinite(image).all():
        raise DataRowError(f"{where}: image has non-finite values")
    if not isinstance(label, (int, np.integer)) or isinstance(label, bool) or not 0 <= int(label) < num_classes:
        raise DataRowError(f"{where}: label {label!r} is not an integer in [0, {num_classes})")


def load_image_dataset(path: str | Path, *, size: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 [N, size, size] in [0, 1] (uint8 data is divided by 255), labels int64 [N]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found (expected a .npz or .jsonl file)")
    images, labels = [], []
    if path.suffix == ".npz":
        try:
            data = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise DataRowError(f"{path}: {exc} (object arrays / pickles are not loaded)") from None
        for key in ("images", "labels"):
            if key not in data:
                raise DataRowError(f"{path}: missing array {key!r} (expected 'images' [N, H, W] and 'labels' [N])")
        raw_images, raw_labels = data["images"], data["labels"]
        if raw_images.ndim != 3:
            raise DataRowError(f"{path}: 'images' has shape {list(raw_images.shape)}, expected [N, {size}, {size}]")
        if len(raw_images) != len(raw_labels):
            raise DataRowError(f"{path}: {len(raw_images)} images but {len(raw_labels)} labels")
        for i, (img, lab) in enumerate(zip(raw_images, raw_labels)):
            _check_row(path, i, np.asarray(img, dtype=np.float64), lab.item(), size, num_classes)
        scale = 255.0 if raw_images.dtype == np.uint8 else 1.0
        images = torch.from_numpy(raw_images.astype(np.float32) / scale)
        labels = torch.from_numpy(raw_labels.astype(np.int64))
    elif path.suffix == ".jsonl":
        for i, line in enumerate(path.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataRowError(f"{path}: row {len(images)} (line {i + 1}): not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "image" not in row or "label" not in row:
                raise DataRowError(f"{path}: row {len(images)} (line {i + 1}): expected an object with 'image' and 'label'")
            try:
                img = np.asarray(row["image"], dtype=np.float64)
            except (TypeError, ValueError):
                raise DataRowError(f"{path}: row {len(images)} (line {i + 1}): 'image' is not a rectangular "
                                   f"array of numbers, expected [{size}, {size}]") from None
            _check_row(path, len(images), img, row["label"], size, num_classes)
            images.append(img)
            labels.append(int(row["label"]))
        if not images:
            raise DataRowError(f"{path}: no rows")
        images = torch.tensor(np.stack(images), dtype=torch.float32)
        labels = torch.tensor(labels, dtype=torch.int64)
    else:
        raise DataRowError(f"{path}: unsupported data file type {path.suffix!r}, expected .npz or .jsonl")
    if images.min() < 0 or images.max() > 1:
        raise DataRowError(f"{path}: pixel values must lie in [0, 1] (or be uint8 in an .npz)")
    return images, labels
