"""scikit-learn's 8x8 handwritten digits, and a fixed three-way split of them.

The quick start trains a generator, a reward model and an independent judge on the same
tiny dataset. If the judge (the classifier used to *score* the fine-tuned generator) saw
the images the reward model was trained on, reward hacking that exploits the reward
model's quirks would look like genuine improvement. The split below therefore gives each
role its own images, and nothing in genrl ever trains on the ``judge`` split.

The split is a stratified, disjoint partition of all 1,797 digits, seeded by a constant of
this module (it does not depend on any global RNG, recipe or run seed). Within each class
the images are shuffled and dealt in the repeating pattern generator, reward, generator,
judge, continuing the pattern across classes, which gives exactly:

============  =====  ===========================================
split         count  per class (digits 0..9)
============  =====  ===========================================
generator       899  89 91 89 91 91 91 90 90 87 90
reward          449  45 45 44 46 45 46 45 45 43 45
judge           449  44 46 44 46 45 45 46 44 44 45
============  =====  ===========================================

(1,797 = 4 x 449 + 1, so the generator gets the one extra image.) Every class appears in
every split, with per-class shares within one image of 50 % / 25 % / 25 %.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

SPLITS = ("generator", "reward", "judge")

# Fixed so that the partition is a property of the data, not of a run.
_SPLIT_SEED = 20240817
# Dealing order within a class: two generator images, one reward, one judge per cycle.
_PATTERN = ("generator", "reward", "generator", "judge")


@functools.lru_cache(maxsize=1)
def _load_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0).reshape(-1, 8, 8)
    labels = digits.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: images float32 ``[N, 8, 8]`` in ``[0, 1]`` and labels int64 ``[N]``.

    sklearn stores pixel intensities as integers 0..16, so they are divided by 16. Fresh
    tensors are returned on every call, so callers may modify them freely.
    """
    images, labels = _load_arrays()
    return torch.tensor(images), torch.tensor(labels)


@functools.lru_cache(maxsize=1)
def _split_index_arrays() -> dict[str, np.ndarray]:
    _, labels = _load_arrays()
    rng = np.random.default_rng(_SPLIT_SEED)
    assigned: dict[str, list[int]] = {name: [] for name in SPLITS}
    position = 0
    for cls in range(10):
        members = np.flatnonzero(labels == cls)
        for index in rng.permutation(members):
            assigned[_PATTERN[position % len(_PATTERN)]].append(int(index))
            position += 1
    return {name: np.sort(np.asarray(idx, dtype=np.int64)) for name, idx in assigned.items()}


def _check_name(name: str) -> None:
    if name not in SPLITS:
        raise ValueError(f"unknown digits split {name!r}: expected one of {list(SPLITS)}")


def digit_split_indices(name: str) -> torch.Tensor:
    """Indices (into :func:`load_digit_images`, ascending) of the images in split ``name``.

    Exposed so that callers and tests can check that the splits are disjoint.
    """
    _check_name(name)
    return torch.tensor(_split_index_arrays()[name])


def digit_split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[n, 8, 8]`` and labels ``[n]`` of one of :data:`SPLITS`, in dataset order.

    Raises ``ValueError`` naming the valid splits for an unknown ``name``.
    """
    indices = digit_split_indices(name)
    images, labels = load_digit_images()
    return images[indices], labels[indices]


def split_fingerprint(name: str) -> str:
    """sha256 of a split's images and labels: recorded by every model trained on it."""
    from genrl.hashing import tensors_sha256

    images, labels = digit_split(name)
    return tensors_sha256(images, labels)
