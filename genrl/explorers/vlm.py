"""Exploration for vision-language policies: sampling temperature, and noisy image branches.

* ``sampling``     — plain GRPO: the diversity of a group comes from token sampling alone.
* ``noisy_image``  — NoisyRollout (Liu et al., 2025): part of the rollouts see the image with Gaussian
  pixel noise whose strength is annealed; no uncertainty bonus. By default half of each group is
  noisy and the update conditions on the clean image, as NoisyRollout does.
* ``vogue``        — VOGUE (arXiv 2510.01444): each *group* is drawn from the noisy branch T(I) with
  probability p(s), annealed linearly from ``p_start`` to ``p_end`` over ``anneal_steps``; the policy
  also measures its visual uncertainty D_t (symmetric KL between raw- and noisy-image token
  distributions on the sampled response, no gradient) for the ``vogue`` objective's advantage shaping.

The noisy image of a group is keyed by (seed, step, group): the same seed gives the same noisy image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from genrl.config.validate import option
from genrl.data.visual_arithmetic import noisy_image
from genrl.registry import EXPLORERS
from genrl.rng import Purpose, keyed_generator


def linear_schedule(start: float, end: float, step: int, steps: int) -> float:
    """start -> end linearly over ``steps`` training steps, then constant at ``end``."""
    if steps <= 0:
        return end
    return start + (end - start) * min(1.0, step / steps)


@dataclass
class VLMPlan:
    """What the VLM policy needs from the explorer for one training step."""

    temperature: float
    top_p: float
    noisy_prob: float = 0.0
    sigma: float = 0.0
    unit: Literal["group", "sample"] = "group"
    update_image: Literal["branch", "raw"] = "branch"
    uncertainty: bool = False
    seed: int = 0

    def noisy_rows(self, step: int, groups: torch.Tensor, sample_ids: torch.Tensor) -> torch.Tensor:
        """[B] bool: which rows are generated from the noisy image (keyed per group or per sample)."""
        if self.noisy_prob <= 0:
            return torch.zeros(len(groups), dtype=torch.bool)
        keys = groups if self.unit == "group" else sample_ids
        draws = [float(torch.rand(1, generator=keyed_generator(self.seed, Purpose.BRANCH, step, int(k)))) for k in keys.tolist()]
        return torch.tensor(draws) < self.noisy_prob

    def noisy_image(self, image: np.ndarray, step: int, group: int) -> np.ndarray:
        return noisy_image(image, self.sigma, self.seed, Purpose.IMAGE_NOISE, step, group)


@dataclass
class SamplingOptions:
    temperature: float = option(default=1.0, help="Sampling temperature of rollouts (0 = greedy: no exploration).")
    top_p: float = option(default=1.0, help="Nucleus sampling mass.")

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p: must be in (0, 1]")


@EXPLORERS.register("sampling")
class SamplingExplorer:
    policies = ("vlm",)
    Config = SamplingOptions

    def __init__(self, config, *, seed: int) -> None:
        self.config, self.seed = config, seed

    def plan(self, step: int, num_steps: int | None = None) -> VLMPlan:
        return VLMPlan(self.config.temperature, self.config.top_p, seed=self.seed)


@EXPLORERS.register("noisy_image")
class NoisyImageExplorer(SamplingExplorer):
    @dataclass
    class Config(SamplingOptions):
        sigma_start: float = option(default=0.4, help="Std of the Gaussian pixel noise (images in [0, 1]) at step 0.")
        sigma_end: float = option(default=0.0, help="Noise std at the end of annealing (NoisyRollout anneals it to 0).")
        p_start: float = option(default=0.5, help="Share of rows (or groups, see unit) drawn from the noisy image at step 0.")
        p_end: float = option(default=0.5, help="That share at the end of annealing.")
        anneal_steps: int = option(default=100, help="Training steps over which p and sigma go from start to end.")
        unit: Literal["group", "sample"] = option(
            default="sample", help="Draw the branch per sample (a group mixes both) or per group (VOGUE).")
        update_image: Literal["branch", "raw"] = option(
            default="raw", help="Image the update conditions on: the one the row was sampled from, or the clean one "
                                "(NoisyRollout). Old log-probs use the same image, so the first ratio is 1 either way.")
        uncertainty: bool = option(default=False, help="Measure the visual uncertainty D_t (needed by objective vogue).")

        def validate(self) -> None:
            super().validate()
            for name in ("p_start", "p_end"):
                if not 0 <= getattr(self, name) <= 1:
                    raise ValueError(f"{name}: must be in [0, 1]")
            for name in ("sigma_start", "sigma_end"):
                if getattr(self, name) < 0:
                    raise ValueError(f"{name}: must be >= 0")
            if self.anneal_steps < 0:
                raise ValueError("anneal_steps: must be >= 0")

    def plan(self, step: int, num_steps: int | None = None) -> VLMPlan:
        c = self.config
        return VLMPlan(c.temperature, c.top_p,
                       noisy_prob=linear_schedule(c.p_start, c.p_end, step, c.anneal_steps),
                       sigma=linear_schedule(c.sigma_start, c.sigma_end, step, c.anneal_steps),
                       unit=c.unit, update_image=c.update_image, uncertainty=c.uncertainty, seed=self.seed)


@EXPLORERS.register("vogue")
class VogueExplorer(NoisyImageExplorer):
    @dataclass
    class Config(NoisyImageExplorer.Config):
        sigma_start: float = option(default=0.4, help="Std of T(I)'s Gaussian pixel noise (VOGUE: 0.4), images in [0, 1].")
        sigma_end: float = option(default=0.4, help="VOGUE keeps the noise strength fixed; anneal it here if wanted.")
        p_start: float = option(default=0.5, help="Probability that a group is sampled from the noisy branch at step 0.")
        p_end: float = option(default=0.1, help="That probability after anneal_steps (annealed linearly).")
        unit: Literal["group", "sample"] = option(default="group", help="VOGUE draws the branch per rollout group.")
        update_image: Literal["branch", "raw"] = option(
            default="branch", help="The update conditions on the image each group was sampled from (on-policy).")
        uncertainty: bool = option(default=True, help="Measure D_t for the vogue objective (one no-grad forward).")
