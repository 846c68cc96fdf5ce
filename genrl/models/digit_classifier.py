"""A small CNN classifier of 8x8 digits, used both as a reward model and as a judge.

The same architecture serves two roles, trained on disjoint data splits (see
:mod:`genrl.data.digits`): a *reward* classifier whose confidence in the prompted class is
optimised by RL, and an independent *judge* that measures whether the improvement is real.
:meth:`DigitClassifier.features` exposes the penultimate layer so that a Fréchet distance
between generated and real digits can be computed in a space that knows about digits.

Training is deterministic on CPU for a given seed and leaves the global torch RNG untouched,
so that training a classifier inside a larger program does not change that program's
random stream. Checkpoints are ``config.json`` + ``model.safetensors`` (no pickle), so they
can be inspected and loaded without executing code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

_TYPE_NAME = "DigitClassifier"
_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.safetensors"


@dataclass
class DigitClassifierConfig:
    """Sizes of the CNN; the defaults are enough for ~98 % accuracy on 8x8 digits."""

    channels: int = 32  # width of the first conv block; the second block uses twice this
    hidden: int = 64  # width of the penultimate (feature) layer
    dropout: float = 0.1  # before the output layer, only active in training


class DigitClassifier(nn.Module):
    """CNN over ``[B, 8, 8]`` or ``[B, 1, 8, 8]`` images in ``[0, 1]`` → logits ``[B, 10]``.

    Two conv blocks (8x8 → 4x4 → 2x2), then a ``hidden``-wide ReLU feature layer and a linear
    head. No batch norm, so outputs do not depend on batch composition or on running
    statistics, which matters when scoring small batches of generated samples.
    """

    def __init__(self, config: DigitClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else DigitClassifierConfig()
        c, h = self.config.channels, self.config.hidden
        self.conv = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 2x2
        )
        self.fc = nn.Linear(2 * c * 4, h)
        self.dropout = nn.Dropout(self.config.dropout)
        self.head = nn.Linear(h, 10)

    @staticmethod
    def _as_batch(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1:] != (1, 8, 8):
            raise ValueError(f"expected images of shape [B, 8, 8] or [B, 1, 8, 8], got {list(x.shape)}")
        # Centre the inputs around 0; the network never sees the raw [0, 1] scale.
        return x.float() * 2.0 - 1.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``[B, hidden]`` (after ReLU, before dropout)."""
        return F.relu(self.fc(self.conv(self._as_batch(x)).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def augment_digits(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Randomly shift each ``[B, 8, 8]`` image by up to ±1 pixel and scale its intensity.

    Generated digits are rarely exactly centred or exactly as bright as the data; training
    on such perturbations keeps the classifier's verdict from hinging on them. Shifts pad
    with zeros (background), and scaled intensities are clamped back into ``[0, 1]``.
    """
    b = images.shape[0]
    padded = F.pad(images, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (b,), generator=generator)
    dx = torch.randint(0, 3, (b,), generator=generator)
    ar = torch.arange(8)
    rows = (dy[:, None] + ar)[:, :, None]
    cols = (dx[:, None] + ar)[:, None, :]
    shifted = padded[torch.arange(b)[:, None, None], rows, cols]
    scale = torch.empty(b, 1, 1).uniform_(0.8, 1.2, generator=generator)
    return (shifted * scale).clamp_(0.0, 1.0)


@torch.no_grad()
def _accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        return float("nan")
    predictions = torch.cat([model(chunk).argmax(-1) for chunk in images.split(512)])
    return (predictions == labels).float().mean().item()


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    config: DigitClassifierConfig | None = None,
    *,
    epochs: int = 80,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    augment: bool = True,
    val_fraction: float = 0.1,
    progress: bool = False,
) -> tuple[DigitClassifier, dict[str, Any]]:
    """Train a :class:`DigitClassifier` on ``images`` ``[N, 8, 8]`` and ``labels`` ``[N]``.

    A random ``val_fraction`` of the given images is held out (never trained on) to report
    validation accuracy; pass the reward split here and keep the judge split for judging.
    Adam with a cosine-decayed learning rate; deterministic on CPU given ``seed``, and the
    global torch RNG is left as it was.

    Returns the model in eval mode and metrics: ``train_accuracy`` (on the un-augmented
    training images), ``val_accuracy`` (NaN when ``val_fraction`` is 0), ``n_train``,
    ``n_val``, ``epochs``, ``seed`` and ``train_seconds``.
    """
    from genrl.progress import progress as progress_bar

    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    images = images.reshape(-1, 8, 8).float()
    labels = labels.long()
    gen = torch.Generator().manual_seed(seed)

    order = torch.randperm(len(labels), generator=gen)
    n_val = int(round(val_fraction * len(labels)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    x_train, y_train = images[train_idx], labels[train_idx]
    x_val, y_val = images[val_idx], labels[val_idx]

    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # parameter init and dropout masks
        model = DigitClassifier(config)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        steps_per_epoch = math.ceil(len(y_train) / batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
        model.train()
        bar = progress_bar(range(epochs), desc="train classifier", disable=not progress)
        for _ in bar:
            perm = torch.randperm(len(y_train), generator=gen)
            total_loss = 0.0
            for batch in perm.split(batch_size):
                x = x_train[batch]
                if augment:
                    x = augment_digits(x, gen)
                loss = F.cross_entropy(model(x), y_train[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total_loss += loss.item() * len(batch)
            bar.set_postfix(loss=f"{total_loss / len(y_train):.3f}", refresh=False)
        model.eval()

    metrics: dict[str, Any] = {
        "train_accuracy": _accuracy(model, x_train, y_train),
        "val_accuracy": _accuracy(model, x_val, y_val),
        "n_train": len(y_train),
        "n_val": len(y_val),
        "epochs": epochs,
        "seed": seed,
        "train_seconds": round(time.perf_counter() - start, 3),
    }
    return model, metrics


def save_classifier(
    model: DigitClassifier, path_dir: str | Path, metrics: dict[str, Any] | None = None
) -> Path:
    """Write ``config.json`` (type, config, then metrics) and ``model.safetensors``.

    Returns the directory. ``metrics`` must be JSON-serialisable (NaN is written as ``NaN``).
    """
    path = Path(path_dir)
    path.mkdir(parents=True, exist_ok=True)
    payload = {"type": _TYPE_NAME, "config": dataclasses.asdict(model.config), "metrics": dict(metrics or {})}
    (path / _CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(path / _WEIGHTS_FILE))
    return path


def load_classifier(path_dir: str | Path) -> DigitClassifier:
    """Load a classifier written by :func:`save_classifier`, in eval mode.

    Raises ``FileNotFoundError`` naming the path and the expected files when the directory
    or one of its files is missing, and ``ValueError`` when ``config.json`` describes
    something other than a :class:`DigitClassifier`.
    """
    path = Path(path_dir)
    expected = f"a directory with {_CONFIG_FILE} and {_WEIGHTS_FILE} written by save_classifier"
    if not path.is_dir():
        raise FileNotFoundError(
            f"digit classifier directory {str(path)!r} does not exist: expected {expected}"
        )
    for name in (_CONFIG_FILE, _WEIGHTS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{str(path / name)!r} is missing: expected {expected}")
    payload = json.loads((path / _CONFIG_FILE).read_text())
    if payload.get("type") != _TYPE_NAME:
        raise ValueError(
            f"{str(path / _CONFIG_FILE)!r} has type {payload.get('type')!r}, expected {_TYPE_NAME!r}"
        )
    fields = {f.name for f in dataclasses.fields(DigitClassifierConfig)}
    unknown = sorted(set(payload.get("config", {})) - fields)
    if unknown:
        raise ValueError(
            f"{str(path / _CONFIG_FILE)!r}: unknown config fields {unknown}; expected {sorted(fields)}"
        )
    model = DigitClassifier(DigitClassifierConfig(**payload.get("config", {})))
    model.load_state_dict(load_file(str(path / _WEIGHTS_FILE)))
    return model.eval()
