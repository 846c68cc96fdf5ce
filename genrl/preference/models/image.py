"""A preference reward model for images: a small CNN trunk, a context embedding, a scalar head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genrl.config.validate import option
from genrl.preference.models.base import RewardModel
from genrl.registry import REWARD_MODELS


def conv_trunk(in_channels: int, channels: int) -> nn.Sequential:
    """Two conv blocks and a 2x2 adaptive pool: any image size in, ``4 * 2 * channels`` features out."""
    c = channels
    return nn.Sequential(
        nn.Conv2d(in_channels, c, 3, padding=1), nn.SiLU(),
        nn.Conv2d(c, c, 3, padding=1), nn.SiLU(),
        nn.Conv2d(c, 2 * c, 3, padding=1, stride=2), nn.SiLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
    )


class ConditionedHead(nn.Module):
    """r(x, c) = MLP([f(x), e(c), f(x) * e(c)]): the product term lets the score depend on the context
    (is this image the prompted digit?); ``num_classes = 0`` gives an unconditional head."""

    def __init__(self, features: int, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Linear(features, hidden)
        self.embed = nn.Embedding(num_classes, hidden) if num_classes else None
        width = 3 * hidden if num_classes else hidden
        self.mlp = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Linear(width, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, feats: torch.Tensor, contexts: torch.Tensor | None) -> torch.Tensor:
        h = self.proj(feats)
        if self.embed is not None:
            if contexts is None:
                raise ValueError("this reward model is class-conditional: contexts (class ids) are required")
            e = self.embed(torch.as_tensor(contexts, dtype=torch.long, device=h.device).reshape(-1))
            h = torch.cat([h, e, h * e], -1)
        return self.mlp(h).squeeze(-1)


@REWARD_MODELS.register("image_preference")
class ImagePreferenceModel(RewardModel):
    """Images ``[B, C, H, W]`` (or ``[B, H, W]``) in [0, 1], class-id contexts."""

    modality = "image"
    context_kinds = ("class",)

    @dataclass
    class Config:
        channels: int = option(default=32, help="Width of the first conv block.")
        hidden: int = option(default=64, help="Width of the head.")
        num_classes: int = option(default=10, help="Number of context classes (0 = unconditional).")
        dropout: float = option(default=0.1, help="Dropout in the head (training only).")

    def __init__(self, config: Config, *, sample_shape: tuple[int, ...]) -> None:
        super().__init__(config, sample_shape=sample_shape)
        if len(self.sample_shape) not in (2, 3):
            raise ValueError(f"image_preference: samples must be [C, H, W] or [H, W], got {list(sample_shape)}")
        in_ch = self.sample_shape[0] if len(self.sample_shape) == 3 else 1
        self.trunk = conv_trunk(in_ch, config.channels)
        self.head = ConditionedHead(8 * config.channels, config.hidden, config.num_classes, config.dropout)

    def forward(self, samples: torch.Tensor, contexts: torch.Tensor | None = None) -> torch.Tensor:
        self.check_samples(samples)
        x = samples.float()
        x = x.unsqueeze(1) if x.dim() == 3 else x
        return self.head(self.trunk(x * 2 - 1), contexts)
