"""Image rewards for the digits task: a learned classifier and a hand-written style preference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from genrl.config.validate import option
from genrl.eval.image_metrics import stroke_crispness
from genrl.registry import REWARDS
from genrl.rewards.base import RewardConfig

__all__ = ["RewardConfig", "DigitClassifierReward", "StrokeCrispnessReward"]  # RewardConfig: re-exported from base


@REWARDS.register("digit_classifier")
class DigitClassifierReward:
    """p(prompted digit | image) under a learned digit classifier (the quick start's reward model)."""

    @dataclass
    class Config(RewardConfig):
        checkpoint: str | None = option(default=None, help="Folder of a trained classifier.")
        recipe: str | None = option(
            default="reward_models/digit_classifier/train.yaml",
            help="Training recipe of the classifier; built and cached if no checkpoint is given.",
        )

        def validate(self) -> None:
            if not self.checkpoint and not self.recipe:
                raise ValueError("recipe: give a checkpoint or a recipe")

    def __init__(self, config: Config, *, device: torch.device, model_dir: Path) -> None:
        from genrl.models.digit_classifier import load_classifier

        self.config = config
        self.model_dir = model_dir
        self.model = load_classifier(model_dir).to(device).eval()
        self.__name__ = "digit_classifier"

    @staticmethod
    def resolve(config: Config, *, recipe_file: str | None, key: str) -> Path:
        """Where the classifier weights are (checked/built before any training work)."""
        from genrl.pretrain.classifier import classifier_from_recipe

        if config.checkpoint:
            path = Path(config.checkpoint).expanduser()
            if not (path / "model.safetensors").is_file():
                from genrl.config.validate import RecipeError

                raise RecipeError(recipe_file, f"{key}.checkpoint", f"no classifier at {path} (expected model.safetensors)")
            return path
        return classifier_from_recipe(config.recipe, referenced_from=recipe_file, key=f"{key}.recipe")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        p = self.model(images.float().to(next(self.model.parameters()).device)).softmax(-1)
        return p.gather(1, prompts.view(-1, 1).to(p.device)).squeeze(1).cpu()


@REWARDS.register("stroke_crispness")
class StrokeCrispnessReward:
    """Mean |2x - 1| over pixels: 1 for pure black-and-white strokes, lower for grey or blurred ones.

    The digits data is not crisp (its pixels take 17 grey levels), so more pretraining does not teach
    this; it is a preference only RL can add. Best possible value: 1.0.
    """

    best_value = 1.0

    @dataclass
    class Config(RewardConfig):
        pass

    def __init__(self, config: Config, **_: object) -> None:
        self.config = config
        self.__name__ = "stroke_crispness"

    def __call__(self, images: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        return stroke_crispness(images.float().cpu())
