"""The visual arithmetic benchmark: held-out questions (unseen handwriting), k sampled answers each.

pass@1 is the share of correct samples; pass@k (the shared runner's unbiased estimator over the
``n_per_prompt`` samples of a question) says whether exploration still finds the answer — RL that only
sharpens the first guess raises pass@1 and can lower pass@k. The same answer rules as the reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genrl.config.validate import option
from genrl.data.visual_arithmetic import KINDS, SYSTEM_PROMPT, VisualArithmetic
from genrl.eval.benchmark import MetricSpec, SeedResult, before_after_table, save_tagged_result
from genrl.eval.math_answers import answers_match, extract_answer, format_ok
from genrl.registry import BENCHMARKS


@BENCHMARKS.register("visual_arithmetic")
class VisualArithmeticBenchmark:
    @dataclass
    class Config:
        questions: int = option(default=200, help="Held-out questions (the first N of the heldout split).")
        n_per_prompt: int = option(default=4, help="Sampled answers per question and seed.")
        temperature: float = option(default=1.0, help="Sampling temperature (0 = greedy; then use n_per_prompt 1).")
        seed: int = option(default=1234, help="Seed of the sampling; `genrl eval --seeds S` uses seed..seed+S-1.")
        data_seed: int = option(default=0, help="Seed of the question set.")
        kinds: list[str] = option(default_factory=lambda: list(KINDS), help="Question kinds.")
        system_prompt: str = option(default=SYSTEM_PROMPT, help="System message (as in training).")
        pass_k: list[int] = option(default_factory=lambda: [1, 4], help="k of pass@k (k <= n_per_prompt).")

        def validate(self) -> None:
            if self.questions < 1 or self.n_per_prompt < 1:
                raise ValueError("questions: questions and n_per_prompt must be >= 1")
            if any(k < 1 or k > self.n_per_prompt for k in self.pass_k):
                raise ValueError(f"pass_k: expected values in 1..n_per_prompt={self.n_per_prompt}, got {self.pass_k}")

    policy_types = ("vlm",)
    data_files: tuple[str, ...] = ()
    metrics = (
        MetricSpec("accuracy", "sample", binary=True, help="The sampled answer is right (pass@1 per sample)."),
        MetricSpec("format", "sample", binary=True, help="The answer is given in <answer></answer>."),
    )

    @classmethod
    def check_inputs(cls, config: Config, *, recipe_file: str | None = None) -> None:
        return None

    def __init__(self, config: Config, *, recipe_file: str | None = None) -> None:
        self.config = config
        self.questions = VisualArithmetic("heldout", config.questions, config.data_seed, tuple(config.kinds))

    @torch.no_grad()
    def run(self, policy, seed: int) -> SeedResult:
        cfg = self.config
        items = [it for it in self.questions.items(range(cfg.questions)) for _ in range(cfg.n_per_prompt)]
        texts = policy.answer(items, seed=seed, step=0, sample_ids=torch.arange(len(items)),
                              temperature=cfg.temperature, system=cfg.system_prompt)
        correct = np.array([answers_match(extract_answer(t), it.answer) for t, it in zip(texts, items)], float)
        fmt = np.array([format_ok(t) for t in texts], float)
        return SeedResult(seed=seed, groups=[f"q{it.index} ({it.kind})" for it in items],
                          per_sample={"accuracy": correct, "format": fmt}, samples=(items, texts))

    def report_sections(self, result, assets_dir: Path) -> list:
        """Accuracy per question kind and a few answers of the first seed."""
        from genrl.eval.report import Section, Table

        items, texts = result.seed_results[0].samples
        rows = []
        acc = result.seed_results[0].per_sample["accuracy"]
        for kind in self.config.kinds:
            m = np.array([it.kind == kind for it in items])
            if m.any():
                rows.append([kind, str(int(m.sum())), f"{acc[m].mean():.3f}"])
        examples = [[it.question, it.answer, t] for it, t in list(zip(items, texts))[:: self.config.n_per_prompt][:8]]
        return [Section("Per question kind", [Table(["kind", "samples", "accuracy"], rows)]),
                Section("Example answers", [Table(["question", "answer", "response"], examples)])]

    # ------------------------------------------------------------ training loop
    def evaluate(self, trainer, *, tag: str) -> dict:
        with torch.no_grad():
            seed_result = self.run(trainer.policy, self.config.seed)
        result = seed_result.flat()
        correct = seed_result.per_sample["accuracy"].reshape(self.config.questions, self.config.n_per_prompt)
        result[f"pass@{self.config.n_per_prompt}"] = float(correct.max(1).mean())
        return save_tagged_result(trainer, tag, result)

    def report(self, trainer, results: dict) -> dict:
        return {"summary_table": before_after_table(trainer, results)}
