"""Any reward model trained with ``genrl reward train`` as a reward component, by path.

    rewards:
      - {name: learned, path: runs/rm-digits, weight: 1.0}                     # a run directory (or RUN/model)
      - {name: learned, recipe: reward_models/digit_preference/train.yaml}     # or: trained once and cached

Scores are computed batched, without gradients, on the policy's device, and standardised with the
statistics of the model's own training samples (``normalize: standard``), so that a learned reward
and a 0..1 rule reward can be weighted against each other without guessing its scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from genrl.config.validate import RecipeError, option
from genrl.registry import REWARDS
from genrl.rewards.image import RewardConfig


@REWARDS.register("learned")
class LearnedReward:
    @dataclass(kw_only=True)
    class Config(RewardConfig):
        path: str | None = option(default=None, help="Run directory (or its model/ folder) of `genrl reward train`.")
        recipe: str | None = option(default=None, help="Or: a reward-model training recipe (trained and cached).")
        normalize: Literal["standard", "none"] = option(
            default="standard", help="standard = (r - mean) / std over the model's training samples; none = raw.")
        batch_size: int = option(default=256, help="Samples per forward pass.")

        def validate(self) -> None:
            from genrl.preference.models.base import RewardModelError, read_model_info

            if (self.path is None) == (self.recipe is None):
                raise ValueError("path: give exactly one of path and recipe")
            if self.batch_size < 1:
                raise ValueError("batch_size: must be >= 1")
            if self.path is not None:
                try:
                    read_model_info(self.path)  # a missing or foreign folder fails at recipe validation
                except RewardModelError as exc:
                    raise ValueError(f"path: {exc}") from None

    @staticmethod
    def resolve(config: Config, *, recipe_file: str | None, key: str) -> Path:
        from genrl.preference.models.base import find_model_dir
        from genrl.preference.train import reward_model_from_recipe

        if config.path is not None:
            return find_model_dir(config.path)
        return find_model_dir(reward_model_from_recipe(config.recipe, referenced_from=recipe_file,
                                                       key=f"{key}.recipe"))

    def __init__(self, config: Config, *, device: torch.device | str = "cpu", model_dir: Path) -> None:
        from genrl.preference.models.base import load_reward_model

        self.config = config
        self.model, self.info = load_reward_model(model_dir, device=device)
        self.device = torch.device(device)
        stats = self.info.get("normalization", {})
        self.mean, self.std = float(stats.get("mean", 0.0)), float(stats.get("std", 1.0))
        self.__name__ = f"learned:{Path(model_dir).parent.name if Path(model_dir).name == 'model' else Path(model_dir).name}"
        self.input_files = {"model": Path(model_dir)}  # hashed into the run manifest

    @staticmethod
    def check_policy(model_dir: Path, sample_shape: tuple[int, ...], context_kind: str) -> None:
        """Raise ValueError unless the model in ``model_dir`` can score the policy's samples and contexts
        (static: checked from config.json, whichever executor will run the model)."""
        from genrl.preference.models.base import read_model_info

        info = read_model_info(model_dir)
        want, got = tuple(info["sample_shape"]), tuple(sample_shape)
        if got != want and not (len(want) == len(got) + 1 and want[0] == 1 and want[1:] == got):
            raise ValueError(f"the reward model at {info['model_dir']} scores samples of shape {list(want)}, "
                             f"the policy makes {list(got)}")
        if context_kind != info.get("context_kind"):
            raise ValueError(f"the reward model at {info['model_dir']} takes {info.get('context_kind')} "
                             f"contexts, the policy's are {context_kind}")

    def _adapt(self, samples: torch.Tensor) -> torch.Tensor:
        want = self.model.sample_shape
        if samples.dim() == len(want) and want[0] == 1:  # grey images without a channel axis
            samples = samples.unsqueeze(1)
        return samples

    @torch.no_grad()
    def __call__(self, samples: torch.Tensor, contexts) -> torch.Tensor:
        samples = self._adapt(samples)
        out = []
        for lo in range(0, len(samples), self.config.batch_size):
            hi = lo + self.config.batch_size
            ctx = contexts[lo:hi]
            ctx = ctx.to(self.device) if torch.is_tensor(ctx) else list(ctx)
            out.append(self.model(samples[lo:hi].to(self.device), ctx).float().cpu())
        r = torch.cat(out) if out else torch.empty(0)
        if self.config.normalize == "standard":
            r = (r - self.mean) / self.std
        return r


def policy_reward_check(reward_cls: type, model_dir: Path | None, policy, recipe_file: str | None, key: str) -> None:
    """Compatibility of a reward with the policy, checked when the trainer is built (before step 0)."""
    check = getattr(reward_cls, "check_policy", None)
    spec = getattr(policy, "reward_sample_spec", None)
    if check is None or spec is None or model_dir is None:
        return
    try:
        check(model_dir, *spec)
    except ValueError as exc:
        raise RecipeError(recipe_file, f"{key}.path", str(exc)) from None
