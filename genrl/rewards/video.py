"""Rewards of the moving-digit videos (the autoregressive video task, KVPO): text, motion and quality.

Contract: ``samples`` are videos ``[B, F, H, W]`` in [0, 1]; ``contexts`` is a LongTensor ``[B, F, 3]``
holding, per frame, the prompted digit, the prompted direction (an index into
:data:`~genrl.data.moving_digits.DIRECTIONS`) and a scope flag: :data:`PREFIX` (before the explored
chunk), :data:`LOCAL` (inside it) or :data:`AFTER` (after it). KVPO scores the explored chunk alone
(local) and the whole post-fork video (global), so every reward has a ``scope``:

* ``all`` — every frame; ``local`` — frames flagged LOCAL; ``global`` — frames flagged LOCAL or AFTER.

A reward averages its per-frame scores over the frames in scope. A video with no frame in scope gets
NaN, which the loop counts as an invalid reward (and stops past a share): a misconfigured scope fails
loudly instead of scoring zeros.

Frames are read through :func:`locate_digit`: the intensity centroid says where the digit is (for
motion) and an 8x8 crop around it is what the digit classifier sees (for text and quality).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from genrl.config.validate import option
from genrl.data.moving_digits import DIGIT, MotionPrompt, direction_steps
from genrl.eval.image_metrics import stroke_crispness
from genrl.registry import REWARDS
from genrl.rewards.base import RewardConfig
from genrl.rewards.image import DigitClassifierReward

PREFIX, LOCAL, AFTER = 0, 1, 2  # scope flags of contexts[..., 2]
Scope = Literal["all", "local", "global"]
_SCOPE_HELP = ("Frames scored: all, local (the explored chunk: flag 1) or global (the chunk and after: "
               "flags >= 1); a video with no frame in scope gets NaN.")


def video_contexts(prompts: Sequence[MotionPrompt], flags: torch.Tensor | int = AFTER) -> torch.Tensor:
    """Reward contexts ``[B, F, 3]`` of ``prompts``: their per-frame conditions and scope ``flags``
    (one flag for every frame, or a ``[B, F]`` / ``[F]`` tensor)."""
    cond = torch.stack([p.conditions() for p in prompts])
    flag = torch.as_tensor(flags, dtype=torch.long).expand(cond.shape[:2])
    return torch.cat([cond, flag.unsqueeze(-1)], -1)


def locate_digit(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intensity centroids ``[N, 2]`` (y, x; float) of frames ``[N, H, W]`` and the 8x8 crops ``[N, 8, 8]``
    centred on them (clamped inside the canvas). A blank frame's centroid is the canvas centre."""
    n, h, w = frames.shape
    if h < DIGIT or w < DIGIT:
        raise ValueError(f"locate_digit: frames of {h}x{w} are smaller than a {DIGIT}x{DIGIT} digit")
    x = frames.float().clamp(0.0, 1.0)
    mass = x.sum((1, 2))
    ys = torch.arange(h, dtype=torch.float32)
    xs = torch.arange(w, dtype=torch.float32)
    safe = mass.clamp_min(1e-8)
    cy = torch.where(mass > 1e-8, (x.sum(2) * ys).sum(1) / safe, torch.full_like(mass, (h - 1) / 2))
    cx = torch.where(mass > 1e-8, (x.sum(1) * xs).sum(1) / safe, torch.full_like(mass, (w - 1) / 2))
    centroids = torch.stack([cy, cx], 1)
    top = (cy - (DIGIT - 1) / 2).round().long().clamp(0, h - DIGIT)
    left = (cx - (DIGIT - 1) / 2).round().long().clamp(0, w - DIGIT)
    ar = torch.arange(DIGIT)
    rows = (top[:, None] + ar)[:, :, None]
    cols = (left[:, None] + ar)[:, None, :]
    crops = x[torch.arange(n)[:, None, None], rows, cols]
    return centroids, crops


def _check(samples: torch.Tensor, contexts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if samples.dim() != 4:
        raise ValueError(f"video reward: expected videos [B, F, H, W], got {list(samples.shape)}")
    contexts = torch.as_tensor(contexts)
    if contexts.shape != (*samples.shape[:2], 3) or contexts.is_floating_point():
        raise ValueError(f"video reward: expected integer contexts [B, F, 3] = {[*samples.shape[:2], 3]} "
                         f"(digit, direction, scope flag per frame), got {contexts.dtype} {list(contexts.shape)}")
    return samples.detach().float().cpu(), contexts.long().cpu()


def in_scope(contexts: torch.Tensor, scope: Scope) -> torch.Tensor:
    """Bool ``[B, F]``: the frames ``scope`` scores."""
    flags = contexts[..., 2]
    if scope == "all":
        return torch.ones_like(flags, dtype=torch.bool)
    if scope == "local":
        return flags == LOCAL
    if scope == "global":
        return flags >= LOCAL
    raise ValueError(f"scope: expected one of ['all', 'local', 'global'], got {scope!r}")


def scope_mean(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-video mean of ``scores [B, F]`` over ``mask``; NaN where no frame is in scope."""
    count = mask.sum(1)
    total = torch.where(mask, scores, torch.zeros_like(scores)).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


@REWARDS.register("video_motion_alignment")
class VideoMotionAlignmentReward:
    """Does the digit move the prompted way? Per frame ``t`` (with its predecessor): ``d`` = centroid
    shift from ``t - 1`` to ``t``, ``u`` = unit step of ``t``'s direction, score ``d.u / max(|d|, 1)``:
    1 for the prompted 1 px/frame, 0 standing still, -1 the opposite way. Frame 0 has no predecessor."""

    best_value = 1.0

    @dataclass
    class Config(RewardConfig):
        scope: Scope = option(default="all", help=_SCOPE_HELP)

    def __init__(self, config: Config, **_: object) -> None:
        self.config = config
        self.__name__ = "video_motion_alignment"

    def __call__(self, samples: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        videos, contexts = _check(samples, contexts)
        b, f, h, w = videos.shape
        centroids = locate_digit(videos.reshape(b * f, h, w))[0].view(b, f, 2)
        d = centroids[:, 1:] - centroids[:, :-1]
        u = direction_steps()[contexts[:, 1:, 1]].float()
        scores = (d * u).sum(-1) / d.norm(dim=-1).clamp_min(1.0)
        return scope_mean(scores, in_scope(contexts, self.config.scope)[:, 1:])


class _ClassifierVideoReward(DigitClassifierReward):
    """Shared by the classifier-based video rewards: the digit classifier (config, resolve, loading) of
    ``digit_classifier``, applied to the 8x8 crop around each frame's digit."""

    name = ""

    @dataclass
    class Config(DigitClassifierReward.Config):
        scope: Scope = option(default="all", help=_SCOPE_HELP)

    def __init__(self, config: Config, *, device: torch.device | str = "cpu", model_dir: Path) -> None:
        super().__init__(config, device=torch.device(device), model_dir=model_dir)
        self.__name__ = self.name

    @torch.no_grad()
    def frame_probs(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities ``[B, F, 10]`` of every frame's crop, and the crops ``[B, F, 8, 8]``."""
        b, f, h, w = videos.shape
        crops = locate_digit(videos.reshape(b * f, h, w))[1]
        device = next(self.model.parameters()).device
        probs = torch.cat([self.model(c.to(device)).softmax(-1).cpu() for c in crops.split(4096)])
        return probs.view(b, f, -1), crops.view(b, f, DIGIT, DIGIT)

    def frame_scores(self, videos: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, samples: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        videos, contexts = _check(samples, contexts)
        return scope_mean(self.frame_scores(videos, contexts), in_scope(contexts, self.config.scope))


@REWARDS.register("video_text_alignment")
class VideoTextAlignmentReward(_ClassifierVideoReward):
    """Is it the prompted digit? Per frame, p(prompted digit) under the digit classifier on the crop
    around the frame's digit (the quick start's reward model, trained on the reward split)."""

    name = "video_text_alignment"
    best_value = 1.0

    def frame_scores(self, videos: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        probs, _ = self.frame_probs(videos)
        return probs.gather(-1, contexts[..., :1]).squeeze(-1)


@REWARDS.register("video_quality")
class VideoQualityReward(_ClassifierVideoReward):
    """Does every frame show a clear, crisp digit? Per frame, the mean of the classifier's top probability
    (clearly *some* digit: blur, smears and half-formed glyphs lower it) and the crop's stroke crispness
    (mean |2x - 1|), scaled down when the crop holds less ink than ``min_ink``. Without that scale an
    empty frame would score best: all-black is perfectly crisp, and the classifier (never shown blanks)
    is confidently wrong about it."""

    name = "video_quality"
    best_value = 1.0

    @dataclass
    class Config(_ClassifierVideoReward.Config):
        measure: Literal["both", "confidence", "crispness"] = option(
            default="both", help="Per-frame score: both (their mean), confidence (top class probability) "
                                 "or crispness (mean |2x - 1| over the 8x8 crop).")
        min_ink: float = option(
            default=8.0, help="Total intensity of the 8x8 crop below which a frame's score is scaled by "
                              "ink / min_ink (real digits hold 14-27; 0 = off).")

        def validate(self) -> None:
            super().validate()
            if self.min_ink < 0:
                raise ValueError(f"min_ink: must be >= 0, got {self.min_ink}")

    def frame_scores(self, videos: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        probs, crops = self.frame_probs(videos)
        confidence = probs.max(-1).values
        crisp = stroke_crispness(crops.flatten(0, 1)).view(confidence.shape)
        score = {"both": (confidence + crisp) / 2, "confidence": confidence, "crispness": crisp}[self.config.measure]
        if self.config.min_ink > 0:
            score = score * (crops.sum((-1, -2)) / self.config.min_ink).clamp(max=1.0)
        return score
