"""The order prompts are drawn in, shared by the prompt sources that index a fixed set of items."""

from __future__ import annotations

import torch

from genrl.rng import Purpose, keyed_generator


def epoch_slice(seed: int, step: int, n: int, size: int, *, round: int = 0) -> torch.Tensor:
    """Indices of step ``step``: consecutive slices of a keyed permutation of ``range(size)`` per epoch, so every
    item is used once per epoch and a step's draw depends on (seed, step) only. ``round`` > 0 (a dynamic-sampling
    refill): ``n`` independent keyed draws from the whole set."""
    if round:
        return torch.randint(size, (n,), generator=keyed_generator(seed, Purpose.PROMPTS, step, round))
    first, last = (step * n) // size, (step * n + n - 1) // size
    order = torch.cat([torch.randperm(size, generator=keyed_generator(seed, Purpose.PROMPTS, epoch))
                       for epoch in range(first, last + 1)])  # the epochs this step's slice spans
    start = step * n - first * size
    return order[start:start + n]
