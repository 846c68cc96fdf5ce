"""Visual arithmetic on scikit-learn's real handwritten digits: a VLM task that needs the image.

Each question shows two or three handwritten digits side by side on a 56 x 168 canvas (three
56-pixel cells; a digit is drawn 40 pixels tall at a random offset inside a random cell) and asks
one of four things whose answer depends on what the digits are:

* ``sum``        — "What is the sum of the digits?" (2 or 3 digits; answers 0..27)
* ``difference`` — "What is the left digit minus the right digit?" (2 digits; -9..9)
* ``larger``     — "Which digit is the larger one? Answer with the digit." (2 different digits)
* ``count``      — "How many digits are greater than T?" (2 or 3 digits, T in 2..6; 0..3)

The text alone does not give the answer: the best text-only guess (the most frequent answer of a
kind, measured on 2,000 train questions) is right for 10 % of ``sum``, 10 % of ``difference``,
21 % of ``larger`` and 41 % of ``count`` questions — about 19 % over the mix.

Items are a pure function of ``(split, seed, index)``: the digit images come from the fixed
splits of :mod:`genrl.data.digits` — ``train`` questions use the ``generator`` split, ``heldout``
questions the ``judge`` split, so held-out questions show handwriting no model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from genrl.data.digits import digit_split
from genrl.rng import Purpose, keyed_generator

KINDS = ("sum", "difference", "larger", "count")
Split = Literal["train", "heldout"]
_DIGIT_SPLIT = {"train": "generator", "heldout": "judge"}
CELL, DIGIT, SLOTS = 56, 40, 3
HEIGHT, WIDTH = CELL, CELL * SLOTS
SYSTEM_PROMPT = "Read the digits in the image. Put the final answer in <answer></answer>."


@dataclass(frozen=True)
class ArithmeticItem:
    index: int
    image: np.ndarray  # uint8 [HEIGHT, WIDTH], white digits on black
    question: str
    answer: str
    kind: str
    digits: tuple[int, ...] = field(default_factory=tuple)
    slots: tuple[int, ...] = field(default_factory=tuple)  # the cell (0..SLOTS-1) of each digit, left to right

    def solution(self) -> str:
        """The supervised response: read the digits, compute, answer (the SFT target)."""
        d = self.digits
        seen = "I see " + ", ".join(str(x) for x in d) + "."
        if self.kind == "sum":
            work = " + ".join(str(x) for x in d) + f" = {self.answer}."
        elif self.kind == "difference":
            work = f"{d[0]} - {d[1]} = {self.answer}."
        elif self.kind == "larger":
            work = f"The larger is {self.answer}."
        else:
            work = f"{self.answer} of them."
        return f"{seen} {work} <answer>{self.answer}</answer>"


@dataclass
class VisualArithmetic:
    """An indexable, deterministic set of ``size`` questions of the chosen ``kinds``."""

    split: Split = "train"
    size: int = 2000
    seed: int = 0
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        if self.split not in _DIGIT_SPLIT:
            raise ValueError(f"split: expected one of {sorted(_DIGIT_SPLIT)}, got {self.split!r}")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"kinds: expected a non-empty subset of {list(KINDS)}, got {list(self.kinds)}")
        images, labels = digit_split(_DIGIT_SPLIT[self.split])
        # 8x8 digits (0..1) drawn DIGIT pixels tall, bilinear: smooth strokes, like a real scan upscaled.
        self._glyphs = F.interpolate(images.unsqueeze(1).float(), size=(DIGIT, DIGIT), mode="bilinear",
                                     align_corners=False).squeeze(1).clamp(0, 1)
        self._labels = labels.long()
        self._by_class = [torch.nonzero(self._labels == c).flatten() for c in range(10)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> ArithmeticItem:
        if not 0 <= index < self.size:
            raise IndexError(f"question {index} is outside 0..{self.size - 1}")
        g = keyed_generator(self.seed, Purpose.DATA, index, 0 if self.split == "train" else 1)
        kind = self.kinds[int(torch.randint(len(self.kinds), (1,), generator=g))]
        n = 2 if kind in ("difference", "larger") else 2 + int(torch.randint(2, (1,), generator=g))
        while True:
            digits = torch.randint(10, (n,), generator=g).tolist()
            if kind != "larger" or digits[0] != digits[1]:
                break
        slots = sorted(torch.randperm(SLOTS, generator=g)[:n].tolist())  # reading order = left to right
        canvas = torch.zeros(HEIGHT, WIDTH)
        for d, slot in zip(digits, slots):
            pool = self._by_class[d]
            glyph = self._glyphs[pool[int(torch.randint(len(pool), (1,), generator=g))]]
            dy, dx = (int(v) for v in torch.randint(CELL - DIGIT + 1, (2,), generator=g))
            x0 = slot * CELL + dx
            canvas[dy:dy + DIGIT, x0:x0 + DIGIT] = torch.maximum(canvas[dy:dy + DIGIT, x0:x0 + DIGIT], glyph)
        if kind == "sum":
            question, answer = "What is the sum of the digits?", sum(digits)
        elif kind == "difference":
            question, answer = "What is the left digit minus the right digit?", digits[0] - digits[1]
        elif kind == "larger":
            question, answer = "Which digit is the larger one? Answer with the digit.", max(digits)
        else:
            t = 2 + int(torch.randint(5, (1,), generator=g))
            question, answer = f"How many digits are greater than {t}?", sum(d > t for d in digits)
        image = (canvas * 255).round().to(torch.uint8).numpy()
        return ArithmeticItem(index, image, question, str(answer), kind, tuple(digits), tuple(slots))

    def items(self, indices) -> list[ArithmeticItem]:
        return [self[int(i)] for i in indices]


def noisy_image(image: np.ndarray, sigma: float, seed: int, *keys: int) -> np.ndarray:
    """VOGUE's noisy branch T(I): Gaussian pixel noise of std ``sigma`` (images scaled to [0, 1]),
    clipped; keyed, so the same (seed, keys) always gives the same noisy image."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    noise = torch.randn(x.shape, generator=keyed_generator(seed, *keys))
    return ((x + sigma * noise).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
