"""Losses of preference reward modelling, each as its equation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor,
                       margin: torch.Tensor | None = None) -> torch.Tensor:
    """-log sigma(r_chosen - r_rejected - margin), averaged over pairs.

    Bradley–Terry: P(chosen > rejected) = sigma(r_c - r_r); a margin m >= 0 asks for r_c - r_r > m
    on pairs labelled as clearly different (Llama-2's margin loss).
    """
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def centering_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """mean((r_c + r_r)^2): pulls the rewards towards zero mean (BT is blind to a shared offset),
    so rewards from different runs and models live on comparable scales (Eisenstein et al., 2023)."""
    return ((r_chosen + r_rejected) ** 2).mean()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Share of pairs ranked correctly; an exact tie counts one half."""
    return ((r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()).mean()
