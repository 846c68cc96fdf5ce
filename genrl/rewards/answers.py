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


class _PerResponse:
    """A reward computed response by response: ``score(response, question) -> float``."""

    name = ""

    @dataclass
    class Config(RewardConfig):
        pass

    def __init__(self, config: Config, *, device: torch.device | None = None) -> None:
        self.config = config
        self.__name__ = self.name

    def score(self, response: str, question) -> float:  # pragma: no cover - each reward defines it
        raise NotImplementedError

    def __call__(self, responses: list[str], questions: list) -> torch.Tensor:
        return torch.tensor([self.score(r, q) for r, q in zip(responses, questions)])


@REWARDS.register("answer_accuracy")
class AnswerAccuracy(_PerResponse):
    """1 if the extracted final answer matches the question's answer, else 0 (RLVR's verifier)."""

    name = "answer_accuracy"

    def score(self, response: str, question) -> float:
        return float(answers_match(extract_answer(response), str(question.answer),
                                   choices=getattr(question, "choices", None)))


@REWARDS.register("answer_format")
class AnswerFormat(_PerResponse):
    """1 if the response ends with exactly one non-empty ``<answer>...</answer>``, else 0."""

    name = "answer_format"

    def score(self, response: str, question) -> float:
        return float(format_ok(response))
