"""Group-wise rewards: a sample's score relative to the other samples of its group.

``group_rank`` wraps any registered reward (``of: {name: ..., <its fields>}``) and returns each
sample's rank among its group, ``rank / (G - 1)`` in [0, 1] (ties share their mean rank; a group of
one scores 0.5). A rank is robust to the scale and outliers of the wrapped score, which matters
when that score is a judge's probability or an unbounded model output.

Being group-wise (``groupwise = True``), it is called with ``groups=`` and must see whole groups:
``RewardStream`` scores it per rollout piece only when the pieces hold whole groups, else after the
last piece. Ranks only depend on the group ids, never on the order of groups or samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genrl.config.validate import ComponentSpec, RecipeError, build, component, option
from genrl.registry import REWARDS
from genrl.rewards.base import RewardConfig


def rank_within_groups(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Normalised rank of each score within its group: 0 = lowest, 1 = highest, ties averaged.

    A non-finite score gets NaN and is left out of its group's ranking (its group is skipped by the
    loop anyway, but the others keep meaningful values for logging)."""
    scores = scores.float().reshape(-1)
    groups = torch.as_tensor(groups).reshape(-1).to(scores.device)
    ok = torch.isfinite(scores)
    same = (groups[:, None] == groups[None, :]) & ok[None, :]
    below = (same & (scores[None, :] < scores[:, None])).sum(1).float()
    ties = (same & (scores[None, :] == scores[:, None])).sum(1).float()  # includes the sample itself
    size = same.sum(1).float()
    rank = below + (ties - 1) / 2
    out = torch.where(size > 1, rank / (size - 1).clamp(min=1), torch.full_like(rank, 0.5))
    return torch.where(ok, out, torch.full_like(out, float("nan")))


@dataclass
class _Inner:
    """Wrapper so the nested spec is validated like a rewards[] entry (registry names, fields)."""

    of: ComponentSpec = component(REWARDS, help="The wrapped reward.")


@REWARDS.register("group_rank")
class GroupRankReward:
    """Rank of the wrapped reward's score within the group, in [0, 1] (ties averaged)."""

    groupwise = True

    @dataclass(kw_only=True)
    class Config(RewardConfig):
        of: dict[str, Any] = option(
            help="The reward whose scores are ranked, written like a rewards[] entry: {name: ..., <its fields>} "
                 "(its weight/executor/retries are not used: this component's own are)."
        )

        def inner(self) -> ComponentSpec:
            try:
                return build(_Inner, {"of": self.of}).of
            except RecipeError as e:  # re-keyed under this component: rewards[i].of.name
                raise ValueError(f"{e.key}: {e.message}") from None

        def validate(self) -> None:
            self.inner()

    def __init__(self, config: Config, *, device: torch.device | str = "cpu", model_dir: Path | None = None,
                 **_: object) -> None:
        self.config = config
        spec = config.inner()
        extra = {"model_dir": model_dir} if model_dir is not None else {}
        self.inner = REWARDS.get(spec.name)(spec.config, device=device, **extra)
        self.inner_groupwise = bool(getattr(self.inner, "groupwise", False))
        self.__name__ = f"group_rank({getattr(self.inner, '__name__', spec.name)})"
        self.input_files = dict(getattr(self.inner, "input_files", {}))

    @staticmethod
    def resolve(config: Config, *, recipe_file: str | None, key: str) -> Path | None:
        """The wrapped reward's weights, checked or built before any training work (if it has any)."""
        spec = config.inner()
        cls = REWARDS.get(spec.name)
        if not hasattr(cls, "resolve"):
            return None
        return cls.resolve(spec.config, recipe_file=recipe_file, key=f"{key}.of")

    def __call__(self, samples, contexts, groups: torch.Tensor) -> torch.Tensor:
        kwargs = {"groups": groups} if self.inner_groupwise else {}
        scores = torch.as_tensor(self.inner(samples, contexts, **kwargs), dtype=torch.float32).cpu()
        return rank_within_groups(scores, groups)
