"""The objective seam: ``objective(policy, minibatch) -> LossOutput``.

Nothing here assumes likelihoods: an objective may ask the policy for per-step log-probs (GRPO),
for a flow-matching loss on fresh noise (DiffusionNFT) or for branch energies (KVPO).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, mean over the minibatch's samples
    metrics: dict[str, float] = field(default_factory=dict)  # averaged over minibatches by the loop
    # Optional per-denoising-step importance ratios {step index: ratios [B]} (GRPO-Guard's view of drift).
    step_ratios: dict[int, torch.Tensor] = field(default_factory=dict)
