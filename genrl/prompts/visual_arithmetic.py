"""Questions of the visual arithmetic task (:mod:`genrl.data.visual_arithmetic`) as a prompt source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from genrl.config.validate import option
from genrl.data.visual_arithmetic import KINDS, SYSTEM_PROMPT, ArithmeticItem, VisualArithmetic
from genrl.prompts.order import epoch_slice
from genrl.registry import PROMPTS


@dataclass(frozen=True)
class ArithmeticQuestion(ArithmeticItem):
    system_prompt: str = SYSTEM_PROMPT


@PROMPTS.register("visual_arithmetic")
class VisualArithmeticPrompts:
    """Each step draws question indices (keyed by seed and step, without replacement within an epoch);
    ``items`` turns indices into the questions themselves (image, text, answer) for the policy."""

    @dataclass
    class Config:
        split: Literal["train", "heldout"] = option(default="train", help="Question split (train or heldout handwriting).")
        size: int = option(default=2000, help="Number of distinct questions.")
        data_seed: int = option(default=0, help="Seed of the question set (not the run seed).")
        kinds: list[str] = option(default_factory=lambda: list(KINDS), help=f"Question kinds, a subset of {list(KINDS)}.")

        def validate(self) -> None:
            if self.size < 1:
                raise ValueError("size: must be >= 1")
            unknown = [k for k in self.kinds if k not in KINDS]
            if unknown or not self.kinds:
                raise ValueError(f"kinds: expected a non-empty subset of {list(KINDS)}, got {self.kinds}")

    def __init__(self, config: Config, *, seed: int) -> None:
        self.config, self.seed = config, seed
        self.data = VisualArithmetic(config.split, config.size, config.data_seed, tuple(config.kinds))

    def sample(self, step: int, n: int, *, round: int = 0) -> torch.Tensor:
        """Indices of step ``step``: consecutive slices of a keyed permutation per epoch of the question set.
        ``round`` > 0 (a dynamic-sampling refill): ``n`` keyed draws from the whole set."""
        return epoch_slice(self.seed, step, n, self.config.size, round=round)

    def items(self, indices: torch.Tensor) -> list[ArithmeticQuestion]:
        return [ArithmeticQuestion(**vars(self.data[int(i)])) for i in indices.tolist()]
