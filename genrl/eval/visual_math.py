"""MathVista, MathVerse and WeMath as ``genrl eval`` benchmarks over a local copy of their test-mini sets.

    genrl eval RUN_DIR --benchmark mathvista --data /data/MathVista        # folder with testmini.json + images/
    genrl eval RUN_DIR --benchmark wemath --data /data/WeMath --n 4        # pass@1 and pass@4

Questions are read by :mod:`genrl.data.vlm_benchmarks` (rows validated, images checked), answered by the
policy (``n_per_prompt`` samples at ``temperature``; 0 = greedy), and scored with the benchmark's own
rules: accuracy per sample (pass@k from the shared runner), per-group accuracy (MathVista task, MathVerse
problem version, WeMath steps) and WeMath's four-dimensional metric in the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genrl.config.validate import option
from genrl.data.vlm_benchmarks import load_mathverse, load_mathvista, load_wemath, score_questions
from genrl.eval.benchmark import EvalError, MetricSpec, SeedResult
from genrl.eval.math_answers import format_ok
from genrl.registry import BENCHMARKS

DEFAULT_SYSTEM = "Answer the question about the image. Put the final answer in <answer></answer>."


@dataclass
class VisualMathConfig:
    data_dir: str | None = option(default=None, help="Folder of the benchmark's test-mini set (genrl eval --data).")
    n_per_prompt: int = option(default=1, help="Sampled answers per question and seed.")
    temperature: float = option(default=0.0, help="Sampling temperature; 0 = greedy.")
    seed: int = option(default=0, help="Seed of the sampling.")
    limit: int | None = option(default=None, help="Only the first N questions (a quick look).")
    system_prompt: str = option(default=DEFAULT_SYSTEM, help="System message.")
    max_new_tokens: int | None = option(default=None, help="Response length cap; null = the policy's.")
    pass_k: list[int] = option(default_factory=lambda: [1], help="k of pass@k (k <= n_per_prompt).")

    def validate(self) -> None:
        if self.n_per_prompt < 1:
            raise ValueError("n_per_prompt: must be >= 1")
        if any(k < 1 or k > self.n_per_prompt for k in self.pass_k):
            raise ValueError(f"pass_k: expected values in 1..n_per_prompt={self.n_per_prompt}, got {self.pass_k}")


@dataclass(frozen=True)
class _Prompt:
    """What the policy is shown: the image and the full question text (with its options)."""

    index: int
    image: Path | None
    question: str


def prompt_text(q) -> str:
    """MathVista's own ``query`` when given (hint + question + choices); otherwise the question, with the
    options listed as "A. ..." lines when they are not already in its text (WeMath)."""
    query = q.meta.get("query") if isinstance(q.meta, dict) else None
    if query:
        return str(query)
    if q.choices and not all(c in q.question for c in q.choices):
        letters = "ABCDEFGH"
        return q.question + "\nOptions:\n" + "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(q.choices))
    return q.question


class VisualMathBenchmark:
    Config = VisualMathConfig
    policy_types = ("vlm",)
    data_files: tuple[str, ...] = ("testmini.json",)
    metrics = (MetricSpec("accuracy", "sample", binary=True, help="The extracted answer matches (benchmark rules)."),
               MetricSpec("format", "sample", binary=True, help="The answer is given in <answer></answer>."))
    loader = staticmethod(load_mathvista)

    @classmethod
    def check_inputs(cls, config: VisualMathConfig, *, recipe_file: str | None = None) -> None:
        if not config.data_dir:
            raise EvalError(f"{cls.__name__}: needs its data folder (--data DIR)")

    def __init__(self, config: VisualMathConfig, *, recipe_file: str | None = None) -> None:
        self.config = config
        self.questions = self.loader(Path(config.data_dir).expanduser())
        if config.limit:
            self.questions = self.questions[: config.limit]

    @torch.no_grad()
    def run(self, policy, seed: int) -> SeedResult:
        cfg = self.config
        questions = [q for q in self.questions for _ in range(cfg.n_per_prompt)]
        prompts = [_Prompt(i, q.image, prompt_text(q)) for i, q in enumerate(questions)]
        texts = policy.answer(prompts, seed=seed, step=0, sample_ids=torch.arange(len(questions)),
                              temperature=cfg.temperature, system=cfg.system_prompt,
                              max_new_tokens=cfg.max_new_tokens)
        scored = score_questions(questions, texts)
        correct = np.array([q["correct"] for q in scored["questions"]], float)
        return SeedResult(seed=seed, groups=[q.qid for q in questions],
                          per_sample={"accuracy": correct, "format": np.array([format_ok(t) for t in texts], float)},
                          samples=scored)

    def report_sections(self, result, assets_dir: Path) -> list:
        from genrl.eval.report import Section, Table

        scored = result.seed_results[0].samples
        rows = [[g, str(v["n"]), f"{v['accuracy']:.3f}"] for g, v in scored["by_group"].items()]
        sections = [Section("Accuracy per group (first seed)", [Table(["group", "n", "accuracy"], rows)])]
        if "wemath" in scored:
            w = scored["wemath"]
            rows = [[setting, f"{w[setting]['score']:.3f}", f"{w[setting]['IK']:.3f}", f"{w[setting]['IG']:.3f}",
                     f"{w[setting]['CM']:.3f}", f"{w[setting]['RM']:.3f}"] for setting in ("strict", "loose")]
            sections.append(Section("WeMath four-dimensional metric",
                                    [Table(["setting", "score", "IK", "IG", "CM", "RM"], rows)]))
        return sections


@BENCHMARKS.register("mathvista")
class MathVista(VisualMathBenchmark):
    loader = staticmethod(load_mathvista)


@BENCHMARKS.register("mathverse")
class MathVerse(VisualMathBenchmark):
    loader = staticmethod(load_mathverse)


@BENCHMARKS.register("wemath")
class WeMath(VisualMathBenchmark):
    loader = staticmethod(load_wemath)
