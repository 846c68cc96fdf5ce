"""The digits benchmark: prompt accuracy judged by an independent classifier, per-prompt diversity,
a Fréchet distance in the judge's feature space, and stroke crispness.

The judge is trained on the ``judge`` split, which neither the generator nor the reward model saw,
so reward hacking of the reward classifier does not show up as accuracy.

It implements the benchmark protocol (:mod:`genrl.eval.benchmark`): ``run(policy, seed)`` is used by
``genrl eval`` and by the training loop's before/after evaluation (:meth:`evaluate`, :meth:`report`).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from genrl.config.validate import option
from genrl.data.digits import digit_split
from genrl.eval.benchmark import MetricSpec, SeedResult, before_after_table, save_tagged_result
from genrl.eval.image_metrics import frechet_distance, per_prompt_diversity, prompt_correct, stroke_crispness
from genrl.registry import BENCHMARKS
from genrl.rng import Purpose


@BENCHMARKS.register("digits")
class DigitsBenchmark:
    @dataclass
    class Config:
        n_per_prompt: int = option(default=100, help="ODE samples per prompt and seed (judged on n x prompts samples).")
        prompts: list[int] = option(default_factory=lambda: list(range(10)), help="Held-out prompt set.")
        seed: int = option(default=1234, help="Seed of the evaluation noise (same for every checkpoint); "
                                              "`genrl eval --seeds S` uses seed, seed+1, ..., seed+S-1.")
        judge_recipe: str = option(default="recipes/eval/digit_judge.yaml", help="Recipe of the judge classifier.")
        grid_per_prompt: int = option(default=8, help="Samples per prompt shown in sample grids.")
        pass_k: list[int] = option(default_factory=lambda: [1, 10],
                                   help="k of the pass@k of judge accuracy (genrl eval; k <= samples per prompt).")

        def validate(self) -> None:
            if self.n_per_prompt < 2:
                raise ValueError("n_per_prompt: must be >= 2 (diversity needs pairs of samples per prompt)")
            if not self.prompts or any(not 0 <= p <= 9 for p in self.prompts):
                raise ValueError(f"prompts: expected a non-empty list of digits 0..9, got {self.prompts}")
            if self.grid_per_prompt < 1:
                raise ValueError("grid_per_prompt: must be >= 1")
            if any(k < 1 for k in self.pass_k):
                raise ValueError(f"pass_k: expected positive integers, got {self.pass_k}")

    policy_types = ("flow_image",)
    data_files: tuple[str, ...] = ()
    metrics = (
        MetricSpec("judge_accuracy", "sample", binary=True,
                   help="The independent judge classifies the sample as the prompted digit."),
        MetricSpec("stroke_crispness", "sample", help="Mean |2x - 1| over pixels (1 = black-and-white strokes)."),
        MetricSpec("diversity", "seed", help="Mean pairwise L2 distance between samples of the same prompt."),
        MetricSpec("frechet_judge_features", "seed", higher_is_better=False,
                   help="Fréchet distance to the held-out judge split, in the judge's feature space."),
    )

    @classmethod
    def check_inputs(cls, config: Config, *, recipe_file: str | None = None) -> None:
        """The judge recipe must exist; it is trained (and cached) only when the benchmark is built."""
        from genrl.cache import resolve_recipe_path

        resolve_recipe_path(config.judge_recipe, referenced_from=recipe_file, key="judge_recipe")

    def __init__(self, config: Config, *, recipe_file: str | None = None) -> None:
        from genrl.models.digit_classifier import load_classifier
        from genrl.pretrain.classifier import classifier_from_recipe

        self.config = config
        self.judge_dir = classifier_from_recipe(config.judge_recipe, referenced_from=recipe_file, key="eval.judge_recipe")
        self.judge = load_classifier(self.judge_dir).eval()
        self.input_files = {"judge": self.judge_dir}  # hashed into the run manifest
        self._real_features: torch.Tensor | None = None
        self._last_images: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ protocol
    def samples(self, policy, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_per_prompt`` ODE samples of every prompt, keyed by ``seed`` (default: the config's)."""
        cfg = self.config
        prompts = torch.tensor(cfg.prompts).repeat_interleave(cfg.n_per_prompt)
        images = policy.sample_ode(prompts, torch.arange(len(prompts)),
                                   seed=cfg.seed if seed is None else seed, purpose=Purpose.EVAL)
        return images.cpu(), prompts

    def real_features(self) -> torch.Tensor:
        if self._real_features is None:
            real, _ = digit_split("judge")
            with torch.no_grad():
                self._real_features = self.judge.features(real)
        return self._real_features

    @torch.no_grad()
    def run(self, policy, seed: int) -> SeedResult:
        images, prompts = self.samples(policy, seed)
        return SeedResult(
            seed=seed,
            groups=[f"digit {int(p)}" for p in prompts],
            per_sample={"judge_accuracy": prompt_correct(self.judge, images, prompts).double().numpy(),
                        "stroke_crispness": stroke_crispness(images).double().numpy()},
            per_seed={"diversity": per_prompt_diversity(images, prompts),
                      "frechet_judge_features": frechet_distance(self.judge.features(images), self.real_features())},
            samples=(images, prompts),
        )

    def report_sections(self, result, assets_dir: Path) -> list:
        """A sample grid (one row per prompt) of the first seed and judge accuracy per prompt."""
        from genrl.eval.plots import save_bar_png, save_grid_png
        from genrl.eval.report import Image, Section
        from genrl.eval.stats import wilson_interval

        first = result.seed_results[0]
        images, prompts = first.samples
        k = min(self.config.grid_per_prompt, self.config.n_per_prompt)
        pick = torch.cat([torch.nonzero(prompts == p).flatten()[:k] for p in self.config.prompts])
        grid = save_grid_png(Path(assets_dir) / f"samples_seed{first.seed}.png",
                             [(f"seed {first.seed}", images[pick])], ncols=k)
        labels, values, lows, highs = [], [], [], []
        for group, entry in result.per_group.items():
            n = entry["n"]
            c = int(round(entry["judge_accuracy"] * n))
            lo, hi = wilson_interval(c, n)
            labels.append(group.replace("digit ", ""))
            values.append(entry["judge_accuracy"])
            lows.append(lo)
            highs.append(hi)
        bars = save_bar_png(Path(assets_dir) / "judge_accuracy_per_prompt.png", labels, values, lows, highs,
                            title="judge accuracy per prompt (95% Wilson intervals)", xlabel="prompted digit",
                            ylabel="judge accuracy")
        return [Section("Samples", [
            Image(str(grid.resolve()), alt=f"sample grid, seed {first.seed}",
                  caption=f"{k} ODE samples per prompt (seed {first.seed}); rows: prompts {self.config.prompts}"),
            Image(str(bars.resolve()), alt="judge accuracy per prompt",
                  caption="share of samples the independent judge reads as the prompted digit"),
        ])]

    # ------------------------------------------------------------ training loop
    def evaluate(self, trainer, *, tag: str) -> dict:
        """Before/after evaluation of the training run (one seed: the config's), as flat numbers."""
        ema = trainer.ema.applied() if trainer.ema is not None else contextlib.nullcontext()
        with ema, torch.no_grad():
            seed_result = self.run(trainer.policy, self.config.seed)
        images, prompts = seed_result.samples
        result = seed_result.flat()
        if trainer.rewards is not None:
            scored = trainer.rewards.score(images, prompts)
            for c, name in enumerate(scored.names):
                result[f"reward/{name}"] = float(scored.values[:, c].nanmean())
        self._last_images[tag] = (images, prompts)
        return save_tagged_result(trainer, tag, result)

    def report(self, trainer, results: dict) -> dict:
        """Print the before/after table; write the sample grid and the reward curve as PNGs."""
        from genrl.eval.plots import save_curve_png, save_grid_png

        before, after = results["before"], results["after"]
        err_b, err_a = 1 - before["judge_accuracy"], 1 - after["judge_accuracy"]
        table = before_after_table(trainer, results, width=34, extra=[
            f"{'error-rate cut (x)':<34}{'':>10}{err_b / max(err_a, 1e-9):>10.2f}",
            f"{'diversity kept':<34}{'':>10}{after['diversity'] / before['diversity']:>10.1%}"])
        k = min(self.config.grid_per_prompt, self.config.n_per_prompt)
        rows = []
        for tag in ("before", "after"):
            images, prompts = self._last_images[tag]
            pick = torch.cat([torch.nonzero(prompts == p).flatten()[:k] for p in self.config.prompts])
            rows.append((f"{tag} RL (rows: prompts {self.config.prompts[0]}..{self.config.prompts[-1]})", images[pick]))
        grid = save_grid_png(trainer.run_dir / "samples_before_after.png", rows, ncols=k)
        series = {k2.split("/")[1]: [(h["step"], h[k2]) for h in trainer.history]
                  for k2 in trainer.history[0] if k2.startswith("reward/") and k2.endswith("/mean")} if trainer.history else {}
        curve = save_curve_png(trainer.run_dir / "reward_curve.png", series, title="reward during training",
                               xlabel="step", ylabel="mean reward")
        summary = {"summary_table": table, "grid_png": str(grid), "curve_png": str(curve)}
        (trainer.run_dir / "eval" / "results.json").write_text(json.dumps({**results, **summary}, indent=2, default=str))
        return summary
