"""A preference reward model for videos: a per-frame CNN on the frames and one on the pixel differences
between neighbouring frames (motion), a temporal convolution over both, a context embedding and a
scalar head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genrl.config.validate import option
from genrl.preference.models.base import RewardModel
from genrl.preference.models.image import ConditionedHead, conv_trunk
from genrl.registry import REWARD_MODELS


@REWARD_MODELS.register("video_preference")
class VideoPreferenceModel(RewardModel):
    """Videos ``[B, T, C, H, W]`` in [0, 1], class-id contexts."""

    modality = "video"
    context_kinds = ("class",)

    @dataclass
    class Config:
        channels: int = option(default=16, help="Width of the per-frame conv block.")
        hidden: int = option(default=64, help="Width of the temporal layers and the head.")
        num_classes: int = option(default=10, help="Number of context classes (0 = unconditional).")
        dropout: float = option(default=0.1, help="Dropout in the head (training only).")

    def __init__(self, config: Config, *, sample_shape: tuple[int, ...]) -> None:
        super().__init__(config, sample_shape=sample_shape)
        if len(self.sample_shape) != 4:
            raise ValueError(f"video_preference: samples must be [T, C, H, W], got {list(sample_shape)}")
        self.frames = conv_trunk(self.sample_shape[1], config.channels)
        self.motion = conv_trunk(self.sample_shape[1], config.channels)
        feats = 8 * config.channels
        # Appearance and motion side by side: features of each frame and of its difference to the previous.
        self.temporal = nn.Sequential(nn.Conv1d(2 * feats, config.hidden, 3, padding=1), nn.SiLU(),
                                      nn.Conv1d(config.hidden, config.hidden, 3, padding=1), nn.SiLU())
        self.head = ConditionedHead(2 * config.hidden, config.hidden, config.num_classes, config.dropout)

    def forward(self, samples: torch.Tensor, contexts: torch.Tensor | None = None) -> torch.Tensor:
        self.check_samples(samples)
        b, t = samples.shape[:2]
        x = samples.float()
        f = self.frames(x.flatten(0, 1) * 2 - 1).view(b, t, -1)
        diff = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], 1)
        m = self.motion(diff.flatten(0, 1)).view(b, t, -1)
        h = self.temporal(torch.cat([f, m], -1).transpose(1, 2))  # [B, hidden, T]
        pooled = torch.cat([h.mean(-1), h.amax(-1)], -1)
        return self.head(pooled, contexts)
