"""Verifiable rewards for question answering: the final answer is right, and it is written in the format.

Both read the response text and the question (``contexts``: items with ``answer`` and, for multiple
choice, ``choices``); answer extraction and matching are :mod:`genrl.eval.math_answers`, the same rules
the benchmark scorers use, so the training signal and the evaluation agree on what "correct" means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genrl.eval.math_answers import answers_match, extract_answer, format_ok
from genrl.registry import REWARDS
from genrl.rewards.base import RewardConfig


@REWARDS.register("answer_accuracy")
class AnswerAccuracy:
    """1 if the extracted final answer matches the question's answer, else 0 (RLVR's verifier)."""

    @dataclass
    class Config(RewardConfig):
        pass

    def __init__(self, config: Config, *, device: torch.device | None = None) -> None:
        self.config = config
        self.__name__ = "answer_accuracy"

    def __call__(self, responses: list[str], questions: list) -> torch.Tensor:
        return torch.tensor([float(answers_match(extract_answer(r), str(q.answer), choices=getattr(q, "choices", None)))
                             for r, q in zip(responses, questions)])


@REWARDS.register("answer_format")
class AnswerFormat:
    """1 if the response ends with exactly one non-empty ``<answer>...</answer>``, else 0."""

    @dataclass
    class Config(RewardConfig):
        pass

    def __init__(self, config: Config, *, device: torch.device | None = None) -> None:
        self.config = config
        self.__name__ = "answer_format"

    def __call__(self, responses: list[str], questions: list) -> torch.Tensor:
        return torch.tensor([float(format_ok(r)) for r in responses])
