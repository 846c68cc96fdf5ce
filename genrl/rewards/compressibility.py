"""DDPO's JPEG compressibility: a reward that needs no model, for any RGB image or video.

The reward is minus the JPEG file size in kilobytes (at ``quality``); give the component a negative
weight for *in*compressibility. Videos ([B, F, 3, H, W]) score the mean over their frames.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from genrl.config.validate import option
from genrl.registry import REWARDS
from genrl.rewards.base import RewardConfig


def jpeg_kilobytes(image: torch.Tensor, quality: int) -> float:
    """Size in kB of one image ([3, H, W] or [H, W] in [0, 1]) saved as a JPEG."""
    from PIL import Image

    arr = (image.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    arr = np.ascontiguousarray(arr.transpose(1, 2, 0) if arr.ndim == 3 else arr)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.tell() / 1000.0


@REWARDS.register("jpeg_compressibility")
class JpegCompressibilityReward:
    """-(JPEG size in kB): higher for simpler, smoother images (DDPO's compressibility task)."""

    @dataclass
    class Config(RewardConfig):
        quality: int = option(default=95, help="JPEG quality the size is measured at (DDPO: 95).")

        def validate(self) -> None:
            if not 1 <= self.quality <= 100:
                raise ValueError("quality: expected 1 to 100")

    def __init__(self, config: Config, **_: object) -> None:
        self.config = config
        self.__name__ = "jpeg_compressibility"

    def __call__(self, images: torch.Tensor, prompts=None) -> torch.Tensor:
        if images.dim() not in (3, 4, 5):
            raise ValueError(f"jpeg_compressibility: expected images [B, H, W], [B, 3, H, W] or videos "
                             f"[B, F, 3, H, W], got shape {tuple(images.shape)}")
        q = self.config.quality
        if images.dim() == 5:
            return torch.tensor([-np.mean([jpeg_kilobytes(f, q) for f in video]) for video in images])
        return torch.tensor([-jpeg_kilobytes(im, q) for im in images])
