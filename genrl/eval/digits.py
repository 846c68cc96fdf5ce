"""The digits benchmark: prompt accuracy judged by an independent classifier, per-prompt diversity,
a Fréchet distance in the judge's feature space, and the mean of every reward component.

The judge is trained on the ``judge`` split, which neither the generator nor the reward model saw,
so reward hacking of the reward classifier does not show up as accuracy.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import torch

from genrl.config.validate import option
from genrl.data.digits import digit_split
from genrl.eval.image_metrics import frechet_distance, per_prompt_diversity, prompt_accuracy
from genrl.registry import BENCHMARKS
from genrl.rng import Purpose


@BENCHMARKS.register("digits")
class DigitsBenchmark:
    @dataclass
    class Config:
        n_per_prompt: int = option(default=100, help="ODE samples per prompt (judged on n x prompts samples).")
        prompts: list[int] = option(default_factory=lambda: list(range(10)), help="Held-out prompt set.")
        seed: int = option(default=1234, help="Seed of the evaluation noise (same for every checkpoint).")
        judge_recipe: str = option(default="recipes/eval/digit_judge.yaml", help="Recipe of the judge classifier.")
        grid_per_prompt: int = option(default=8, help="Samples per prompt shown in the before/after grid.")

    def __init__(self, config: Config, *, recipe_file: str | None = None) -> None:
        from genrl.models.digit_classifier import load_classifier
        from genrl.pretrain.classifier import classifier_from_recipe

        self.config = config
        self.judge_dir = classifier_from_recipe(config.judge_recipe, referenced_from=recipe_file, key="eval.judge_recipe")
        self.judge = load_classifier(self.judge_dir).eval()
        self.input_files = {"judge": self.judge_dir}

    def samples(self, policy) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        prompts = torch.tensor(cfg.prompts).repeat_interleave(cfg.n_per_prompt)
        images = policy.sample_ode(prompts, torch.arange(len(prompts)), seed=cfg.seed, purpose=Purpose.EVAL)
        return images.cpu(), prompts

    def metrics(self, images: torch.Tensor, prompts: torch.Tensor, rewards=None) -> dict[str, float]:
        real, _ = digit_split("judge")
        with torch.no_grad():
            fd = frechet_distance(self.judge.features(images), self.judge.features(real))
        out = {"judge_accuracy": prompt_accuracy(self.judge, images, prompts),
               "diversity": per_prompt_diversity(images, prompts), "frechet_judge_features": fd}
        if rewards is not None:
            scored = rewards.score(images, prompts)
            for c, name in enumerate(scored.names):
                out[f"reward/{name}"] = float(scored.values[:, c].nanmean())
        return out

    def evaluate(self, trainer, *, tag: str) -> dict:
        ema = trainer.ema.applied() if trainer.ema is not None else contextlib.nullcontext()
        with ema, torch.no_grad():
            images, prompts = self.samples(trainer.policy)
        result = self.metrics(images, prompts, trainer.rewards)
        out = trainer.run_dir / "eval"
        out.mkdir(exist_ok=True)
        (out / f"{tag}.json").write_text(json.dumps(result, indent=2))
        self._last_images = getattr(self, "_last_images", {})
        self._last_images[tag] = (images, prompts)
        return result

    def report(self, trainer, results: dict) -> dict:
        """Print the before/after table; write the sample grid and the reward curve as PNGs."""
        from genrl.eval.plots import save_curve_png, save_grid_png

        before, after = results["before"], results["after"]
        lines = [f"{'metric':<34}{'before':>10}{'after':>10}", "-" * 54]
        for k in before:
            lines.append(f"{k:<34}{before[k]:>10.4f}{after[k]:>10.4f}")
        err_b, err_a = 1 - before["judge_accuracy"], 1 - after["judge_accuracy"]
        lines.append(f"{'error-rate cut (x)':<34}{'':>10}{err_b / max(err_a, 1e-9):>10.2f}")
        lines.append(f"{'diversity kept':<34}{'':>10}{after['diversity'] / before['diversity']:>10.1%}")
        table = "\n".join(lines)
        print("\n" + table + "\n")
        (trainer.run_dir / "eval" / "summary.txt").write_text(table + "\n")
        k = self.config.grid_per_prompt
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

