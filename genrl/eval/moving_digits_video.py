"""The moving-digits video benchmark: held-out motion prompts, whole videos scored for text alignment,
motion alignment and visual quality (the three claims KVPO makes for autoregressive video generators).

The scorers are the video rewards (:mod:`genrl.rewards.video`) with scope ``all``, but their digit
classifier defaults to the independent *judge* (judge split, as in the digits benchmark), so that
hacking the reward classifier during RL does not show up here as text alignment or quality.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from genrl.config.validate import option
from genrl.data.moving_digits import check_motion_layout
from genrl.eval.benchmark import EvalError, MetricSpec, SeedResult, before_after_table, save_tagged_result
from genrl.prompts.moving_digits import prompt_set
from genrl.registry import BENCHMARKS
from genrl.rewards.video import (
    AFTER,
    VideoMotionAlignmentReward,
    VideoQualityReward,
    VideoTextAlignmentReward,
    video_contexts,
)


@BENCHMARKS.register("moving_digits_video")
class MovingDigitsVideoBenchmark:
    @dataclass
    class Config:
        prompts: int = option(default=64, help="Held-out prompts (the first N of the heldout prompt split).")
        segments: int = option(default=1, help="Segments per prompt (1 = short single-prompt videos; "
                                               "3 = long multi-prompt videos).")
        segment_frames: int = option(default=16, help="Frames per segment (the project's single-prompt videos: 16).")
        canvas: int = option(default=24, help="Side of the square canvas, in pixels (the video model's: 24).")
        n_per_prompt: int = option(default=1, help="Videos per prompt and seed.")
        seed: int = option(default=1234, help="Seed of the generation; `genrl eval --seeds S` uses seed..seed+S-1.")
        data_seed: int = option(default=0, help="Seed of the prompt set (its heldout split is used).")
        classifier_recipe: str | None = option(
            default="recipes/eval/digit_judge.yaml",
            help="Recipe of the digit classifier behind text alignment and quality (built and cached); "
                 "default: the independent judge.")
        classifier_checkpoint: str | None = option(
            default=None, help="Folder of a trained digit classifier (instead of classifier_recipe).")
        strip_videos: int = option(default=4, help="Videos shown as frame strips in the report.")

        def validate(self) -> None:
            if self.prompts < 1 or self.n_per_prompt < 1:
                raise ValueError("prompts: prompts and n_per_prompt must be >= 1")
            check_motion_layout(self.segments, self.segment_frames, self.canvas)
            if self.strip_videos < 1:
                raise ValueError(f"strip_videos: must be >= 1, got {self.strip_videos}")
            if not self.classifier_recipe and not self.classifier_checkpoint:
                raise ValueError("classifier_recipe: give a classifier recipe or classifier_checkpoint")

    policy_types = ("ar_video",)
    data_files: tuple[str, ...] = ()
    metrics = (
        MetricSpec("text_alignment", "sample",
                   help="Mean over frames of p(prompted digit) on the crop around the digit (classifier)."),
        MetricSpec("motion_alignment", "sample",
                   help="Mean over frame pairs of the centroid shift along the prompted direction "
                        "(1 = 1 px/frame the prompted way, 0 = still, -1 = backwards)."),
        MetricSpec("quality", "sample",
                   help="Mean over frames of (classifier top probability + stroke crispness) / 2, "
                        "scaled down for crops with little ink (a blank frame scores 0)."),
    )

    @classmethod
    def check_inputs(cls, config: Config, *, recipe_file: str | None = None) -> None:
        """The classifier must exist (checkpoint) or have a recipe; it is built only when the benchmark is."""
        from genrl.cache import resolve_recipe_path

        if config.classifier_checkpoint:
            path = Path(config.classifier_checkpoint).expanduser()
            if not (path / "model.safetensors").is_file():
                raise EvalError(f"classifier_checkpoint: no digit classifier at {path} (expected model.safetensors)")
        else:
            resolve_recipe_path(config.classifier_recipe, referenced_from=recipe_file, key="classifier_recipe")

    def __init__(self, config: Config, *, recipe_file: str | None = None) -> None:
        from genrl.pretrain.classifier import classifier_from_recipe

        self.check_inputs(config, recipe_file=recipe_file)
        self.config = config
        if config.classifier_checkpoint:
            model_dir = Path(config.classifier_checkpoint).expanduser()
        else:
            model_dir = classifier_from_recipe(config.classifier_recipe, referenced_from=recipe_file,
                                               key="eval.classifier_recipe")
        self.input_files = {"classifier": model_dir}  # hashed into the run manifest
        self.prompts = prompt_set("heldout", config.prompts, segments=config.segments,
                                  segment_frames=config.segment_frames, canvas=config.canvas,
                                  data_seed=config.data_seed)
        scorer = {"checkpoint": str(model_dir), "recipe": None}
        self.scorers = {
            "text_alignment": VideoTextAlignmentReward(VideoTextAlignmentReward.Config(**scorer), model_dir=model_dir),
            "motion_alignment": VideoMotionAlignmentReward(VideoMotionAlignmentReward.Config()),
            "quality": VideoQualityReward(VideoQualityReward.Config(**scorer), model_dir=model_dir),
        }
        self._last_videos: dict[str, tuple[torch.Tensor, list]] = {}

    # ------------------------------------------------------------------ protocol
    def videos(self, policy, seed: int) -> tuple[torch.Tensor, list]:
        """``n_per_prompt`` videos ``[B, F, H, W]`` of every held-out prompt, and the prompt of each."""
        cfg = self.config
        items = [p for p in self.prompts for _ in range(cfg.n_per_prompt)]
        videos = torch.as_tensor(policy.generate(items, torch.arange(len(items)), seed=seed)).detach().float().cpu()
        if videos.dim() == 5 and videos.shape[2] == 1:  # [B, F, 1, H, W]
            videos = videos[:, :, 0]
        expected = [len(items), items[0].frames, cfg.canvas, cfg.canvas]
        if list(videos.shape) != expected:
            raise ValueError(f"policy.generate returned videos {list(videos.shape)}, expected {expected} "
                             f"(prompts, frames, canvas, canvas)")
        return videos, items

    @torch.no_grad()
    def run(self, policy, seed: int) -> SeedResult:
        videos, items = self.videos(policy, seed)
        contexts = video_contexts(items, AFTER)
        per_sample = {name: fn(videos, contexts).double().numpy() for name, fn in self.scorers.items()}
        return SeedResult(seed=seed, groups=[p.text for p in items], per_sample=per_sample, samples=(videos, items))

    def strips(self, path: Path, videos: torch.Tensor, items: list, *, label: str = "") -> Path:
        """A PNG with the first ``strip_videos`` videos as frame strips (12 frames per row)."""
        from genrl.eval.plots import save_grid_png

        k = min(self.config.strip_videos, len(items))
        rows = [(f"{label}{items[i].text}", videos[i]) for i in range(k)]
        return save_grid_png(path, rows, ncols=min(videos.shape[1], 12))

    def report_sections(self, result, assets_dir: Path) -> list:
        """Frame strips of a few videos of the first seed."""
        from genrl.eval.report import Image, Section

        first = result.seed_results[0]
        videos, items = first.samples
        png = self.strips(Path(assets_dir) / f"videos_seed{first.seed}.png", videos, items)
        return [Section("Videos", [Image(str(png.resolve()), alt=f"frame strips, seed {first.seed}",
                                         caption=f"first {min(self.config.strip_videos, len(items))} videos "
                                                 f"(seed {first.seed}), frames left to right")])]

    # ------------------------------------------------------------ training loop
    def evaluate(self, trainer, *, tag: str) -> dict:
        """Before/after evaluation of a training run (the config's seed), as flat numbers."""
        ema = trainer.ema.applied() if getattr(trainer, "ema", None) is not None else contextlib.nullcontext()
        with ema, torch.no_grad():
            seed_result = self.run(trainer.policy, self.config.seed)
        self._last_videos[tag] = seed_result.samples
        return save_tagged_result(trainer, tag, seed_result.flat())

    def report(self, trainer, results: dict) -> dict:
        """Print the before/after table; write frame strips of the same prompts before and after."""
        summary = {"summary_table": before_after_table(trainer, results)}
        if {"before", "after"} <= set(self._last_videos):
            from genrl.eval.plots import save_grid_png

            k = min(self.config.strip_videos, len(self._last_videos["after"][1]))
            rows = [(f"{tag}: {items[i].text}", videos[i]) for i in range(k)
                    for tag, (videos, items) in self._last_videos.items() if tag in ("before", "after")]
            frames = self._last_videos["after"][0].shape[1]
            summary["videos_png"] = str(save_grid_png(trainer.run_dir / "videos_before_after.png", rows,
                                                      ncols=min(frames, 12)))
        return summary
