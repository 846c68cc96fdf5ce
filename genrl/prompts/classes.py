"""Class-label prompts (the digits task): each step draws prompts keyed by (seed, step)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genrl.config.validate import option
from genrl.registry import PROMPTS
from genrl.rng import Purpose, keyed_generator


@PROMPTS.register("digit_classes")
class ClassPrompts:
    """Prompts are class ids. ``balanced`` cycles through a keyed permutation of the classes so every
    class is trained equally often; otherwise classes are drawn uniformly with replacement."""

    @dataclass
    class Config:
        classes: list[int] = option(default_factory=lambda: list(range(10)), help="Class ids to prompt with.")
        balanced: bool = option(default=True, help="Draw classes round-robin over keyed permutations.")

        def validate(self) -> None:
            if not self.classes:
                raise ValueError("classes: must not be empty")

    def __init__(self, config: Config, *, seed: int) -> None:
        self.config = config
        self.seed = seed

    def sample(self, step: int, n: int, *, round: int = 0) -> torch.Tensor:
        """``round`` > 0: the prompts of a dynamic-sampling refill (an independent keyed draw)."""
        classes = torch.tensor(self.config.classes)
        g = keyed_generator(self.seed, Purpose.PROMPTS, step, *([round] if round else []))
        if not self.config.balanced:
            return classes[torch.randint(len(classes), (n,), generator=g)]
        reps = -(-n // len(classes))
        return torch.cat([classes[torch.randperm(len(classes), generator=g)] for _ in range(reps)])[:n]
