"""Keyed randomness: every random draw is a pure function of (seed, purpose, keys...).

The noise of sample ``i`` at training step ``s`` and denoising step ``t`` comes from a generator
seeded by ``(seed, purpose, s, i, t)``. Results therefore do not depend on the number of
processes, on batch order, or on where a run was resumed — the property that makes multi-process
runs equal single-process ones and resumed runs equal uninterrupted ones.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from enum import IntEnum

import torch


class Purpose(IntEnum):
    """Separate streams so that e.g. prompt choice never shares a key with noise."""

    PROMPTS = 1
    INIT_NOISE = 2
    STEP_NOISE = 3
    SHUFFLE = 4
    WINDOW = 5
    EVAL = 6
    DATA = 7
    IMAGE_NOISE = 8  # VLM noisy image branches
    BRANCH = 9  # which rows/groups see the noisy branch


def key_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from integer keys (stable across platforms and Python runs)."""
    packed = struct.pack(f"<{len(keys) + 1}q", int(seed), *(int(k) for k in keys))
    return int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def keyed_generator(seed: int, *keys: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(key_seed(seed, *keys))
    return gen


def keyed_normal(
    shape: Sequence[int], seed: int, purpose: Purpose, step: int, sample_ids: Sequence[int], *extra: int,
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of shape ``[len(sample_ids), *shape]``, one keyed draw per sample.

    Drawn on the CPU in fp32 and then moved, so a GPU run sees the same numbers as a CPU run.
    """
    rows = [
        torch.randn(tuple(shape), generator=keyed_generator(seed, purpose, step, int(i), *extra))
        for i in sample_ids
    ]
    out = torch.stack(rows) if rows else torch.empty((0, *shape))
    return out.to(device=device, dtype=dtype)


def keyed_permutation(n: int, seed: int, purpose: Purpose, *keys: int) -> torch.Tensor:
    return torch.randperm(n, generator=keyed_generator(seed, purpose, *keys))


def keyed_randint(high: int, size: int, seed: int, purpose: Purpose, *keys: int) -> torch.Tensor:
    return torch.randint(high, (size,), generator=keyed_generator(seed, purpose, *keys))
