"""Exploration of the scene diffusion policy (Gen-Drive): the DDPM chain's own Gaussian steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genrl.config.validate import option
from genrl.explorers.sde import ExplorationPlan
from genrl.registry import EXPLORERS
from genrl.rng import Purpose, keyed_generator


@EXPLORERS.register("ddpm")
class DDPMExplorer:
    """The DDPM chain's own noise is the exploration; this picks the trained steps (a keyed window, or all).

    The last step (k = 1 -> 0) is deterministic (std 0, no density) and never trained."""

    policies = ("scene_diffusion",)

    @dataclass
    class Config:
        window_size: int | None = option(
            default=None, help="Consecutive denoising steps trained per training step; null = every stochastic step "
                               "(K - 1; Gen-Drive trains all).")

        def validate(self) -> None:
            if self.window_size is not None and self.window_size < 1:
                raise ValueError("window_size: must be >= 1 or null")

    def __init__(self, config: Config, *, seed: int) -> None:
        self.config, self.seed = config, seed

    def plan(self, step: int, num_steps: int) -> ExplorationPlan:
        usable = max(1, num_steps - 1)
        size = usable if self.config.window_size is None else min(self.config.window_size, usable)
        start = int(torch.randint(usable - size + 1, (1,), generator=keyed_generator(self.seed, Purpose.WINDOW, step)))
        return ExplorationPlan(stochastic=[t < num_steps - 1 for t in range(num_steps)],
                               train_steps=list(range(start, start + size)))
