"""Motion prompts of the autoregressive video task (:mod:`genrl.data.moving_digits`) as a prompt source.

The prompt set is ``size`` prompts drawn by :func:`~genrl.data.moving_digits.motion_prompts` from a
data seed: ``data_seed`` itself for the ``train`` split, ``data_seed + HELDOUT_SEED_OFFSET`` for
``heldout`` (the benchmark's prompts), so the two are independent draws. There are only
10 digits x 4 directions = 40 single-segment prompt texts, so with ``segments: 1`` the two sets
share texts and differ only in order and mix; with 3 segments there are ~280 texts and most differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from genrl.config.validate import option
from genrl.data.moving_digits import MotionPrompt, check_motion_layout, motion_prompts
from genrl.prompts.order import epoch_slice
from genrl.registry import PROMPTS

# Added to data_seed for the heldout split; far from any data seed a recipe would use.
HELDOUT_SEED_OFFSET = 1_000_000

Split = Literal["train", "heldout"]


def prompt_set(split: Split, size: int, *, segments: int, segment_frames: int, canvas: int = 16,
               data_seed: int = 0) -> list[MotionPrompt]:
    """The ``size`` prompts of ``split`` (the first ``k`` of them do not depend on ``size``)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split: expected 'train' or 'heldout', got {split!r}")
    seed = data_seed + (HELDOUT_SEED_OFFSET if split == "heldout" else 0)
    return motion_prompts(size, segments=segments, segment_frames=segment_frames, size=canvas, seed=seed)


@PROMPTS.register("moving_digits")
class MovingDigitPrompts:
    """Each step draws prompt indices (keyed by seed and step, without replacement within an epoch);
    ``items`` turns indices into the :class:`MotionPrompt` s the video policy conditions on."""

    @dataclass
    class Config:
        split: Split = option(default="train", help="Prompt split: train, or heldout (data_seed + 1,000,000).")
        size: int = option(default=512, help="Number of prompts in the set (drawn independently; "
                                             "single-segment prompts have only 40 distinct texts).")
        segments: int = option(default=1, help="Segments per prompt (one direction each; >1 = multi-prompt video).")
        segment_frames: int = option(default=16, help="Frames per segment (the digit moves 1 px per frame).")
        data_seed: int = option(default=0, help="Seed of the prompt set (not the run seed).")
        canvas: int = option(default=24, help="Side of the square canvas, in pixels (>= 8; the video model's: 24).")

        def validate(self) -> None:
            if self.size < 1:
                raise ValueError(f"size: must be >= 1, got {self.size}")
            check_motion_layout(self.segments, self.segment_frames, self.canvas)

    def __init__(self, config: Config, *, seed: int) -> None:
        self.config, self.seed = config, seed
        self.prompts = prompt_set(config.split, config.size, segments=config.segments,
                                  segment_frames=config.segment_frames, canvas=config.canvas,
                                  data_seed=config.data_seed)

    def sample(self, step: int, n: int, *, round: int = 0) -> torch.Tensor:
        """Indices of step ``step``: consecutive slices of a keyed permutation per epoch of the prompt set.
        ``round`` > 0 (a dynamic-sampling refill): ``n`` keyed draws from the whole set."""
        return epoch_slice(self.seed, step, n, self.config.size, round=round)

    def items(self, indices: torch.Tensor) -> list[MotionPrompt]:
        return [self.prompts[int(i)] for i in indices.tolist()]
