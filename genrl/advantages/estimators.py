"""Advantage estimators (a plug point): they decide how reward components are normalised and combined.

Inputs are *global* (gathered from all ranks): rewards ``[N, C]``, component weights ``[C]``, the
group id of each sample ``[N]`` and a validity mask ``[N]`` (samples whose reward failed get
advantage 0 and are ignored by the statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from genrl.config.validate import option
from genrl.registry import ADVANTAGES


@dataclass
class AdvantageOutput:
    advantages: torch.Tensor  # [N]
    metrics: dict[str, float]


def _combine(rewards: torch.Tensor, weights: torch.Tensor, normalize, mode: str) -> torch.Tensor:
    """``sum_then_normalize``: A = norm(sum_c w_c r_c) (Flow-GRPO);
    ``normalize_then_sum``: A = sum_c w_c norm(r_c) (per-component normalisation, e.g. KVPO/GDPO)."""
    if mode == "sum_then_normalize":
        return normalize((rewards * weights).sum(1))
    return (torch.stack([normalize(rewards[:, c]) for c in range(rewards.shape[1])], 1) * weights).sum(1)


class StatelessEstimator:
    """Estimators that keep no statistics between steps (their checkpoint state is empty)."""

    def __init__(self, config) -> None:
        self.config = config

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@ADVANTAGES.register("group_relative")
class GroupRelative(StatelessEstimator):
    """GRPO: A_i = (r_i - mean_group) / (std_group + eps), the group being the samples of one prompt.

    Groups whose rewards are all equal carry no signal (A = 0); their share is logged as
    ``adv/zero_std_group_share``.
    """

    @dataclass
    class Config:
        eps: float = option(default=1e-4, help="Added to the std before dividing.")
        combine: Literal["sum_then_normalize", "normalize_then_sum"] = option(
            default="sum_then_normalize", help="Normalise the weighted sum of components, or each component."
        )
        std_scope: Literal["group", "batch"] = option(
            default="group", help="Divide by the group's std (GRPO) or the whole batch's std (Flow-GRPO global_std)."
        )
        zero_std_tol: float = option(default=1e-6, help="A group with reward std below this counts as zero-std.")

    def __call__(self, rewards: torch.Tensor, weights: torch.Tensor, groups: torch.Tensor,
                 valid: torch.Tensor) -> AdvantageOutput:
        cfg = self.config
        uniq, inv = torch.unique(groups, return_inverse=True)
        zero_std = torch.zeros(len(uniq), dtype=torch.bool)

        def normalize(r: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(r)
            batch_std = r[valid].std() if valid.sum() > 1 else torch.tensor(0.0)
            for g in range(len(uniq)):
                m = (inv == g) & valid
                if m.sum() == 0:
                    continue
                rg = r[m]
                std = rg.std(unbiased=False) if len(rg) > 1 else torch.tensor(0.0)
                if std < cfg.zero_std_tol:
                    zero_std[g] = True
                    continue
                denom = std if cfg.std_scope == "group" else batch_std
                out[m] = (rg - rg.mean()) / (denom + cfg.eps)
            return out

        adv = _combine(rewards.float(), weights.float(), normalize, cfg.combine)
        adv = torch.where(valid, adv, torch.zeros_like(adv))
        return AdvantageOutput(adv, {"adv/zero_std_group_share": float(zero_std.float().mean()),
                                     "adv/mean": float(adv.mean()), "adv/std": float(adv.std()),
                                     "adv/abs_max": float(adv.abs().max())})


@ADVANTAGES.register("batch_normalized")
class BatchNormalized(StatelessEstimator):
    """A_i = (r_i - mean_batch) / (std_batch + eps): DDPO / Gen-Drive style, no groups needed."""

    @dataclass
    class Config:
        eps: float = option(default=1e-4, help="Added to the std before dividing.")
        combine: Literal["sum_then_normalize", "normalize_then_sum"] = option(
            default="sum_then_normalize", help="Normalise the weighted sum of components, or each component."
        )

    def __call__(self, rewards: torch.Tensor, weights: torch.Tensor, groups: torch.Tensor,
                 valid: torch.Tensor) -> AdvantageOutput:
        def normalize(r: torch.Tensor) -> torch.Tensor:
            rv = r[valid]
            if len(rv) < 2:
                return torch.zeros_like(r)
            return (r - rv.mean()) / (rv.std(unbiased=False) + self.config.eps)

        adv = _combine(rewards.float(), weights.float(), normalize, self.config.combine)
        adv = torch.where(valid, adv, torch.zeros_like(adv))
        return AdvantageOutput(adv, {"adv/mean": float(adv.mean()), "adv/std": float(adv.std()),
                                     "adv/abs_max": float(adv.abs().max())})


@ADVANTAGES.register("anchor_relative")
class AnchorRelative(StatelessEstimator):
    """KVPO: advantages relative to an unperturbed anchor, the *first* row of each group (the kvpo explorer
    puts it there). Per component c, A_c(g) = (r_c(g) - r_c(anchor)) / (std_c(group) + eps), the std over
    the group's rows (anchor included, so branches that all tie but differ from the anchor still get a finite
    signal); A = sum_c w_c A_c. The anchor's own advantage is 0. Scoped rewards (``scope: local`` on the
    explored chunk, ``global`` on the whole post-fork video) with weights 1 and 0.5 give KVPO's
    local + 0.5 x global signal."""

    @dataclass
    class Config:
        eps: float = option(default=1e-4, help="Added to the std before dividing.")
        zero_std_tol: float = option(default=1e-6, help="A component whose group std is below this gives 0.")

    def __call__(self, rewards: torch.Tensor, weights: torch.Tensor, groups: torch.Tensor,
                 valid: torch.Tensor) -> AdvantageOutput:
        cfg = self.config
        rewards, weights = rewards.float(), weights.float()
        adv = torch.zeros(len(rewards))
        uniq = torch.unique_consecutive(groups)
        flat, beats = 0, 0
        for g in uniq.tolist():
            rows = torch.nonzero(groups == g).flatten()
            if not bool(valid[rows].all()) or len(rows) < 2:
                continue
            r = rewards[rows]  # [G+1, C], anchor first
            std = r.std(0, unbiased=False)
            spread = std >= cfg.zero_std_tol
            a = torch.where(spread, (r[1:] - r[:1]) / (std + cfg.eps), torch.zeros_like(r[1:]))
            adv[rows[1:]] = (a * weights).sum(1)
            flat += int(not bool(spread.any()))
            beats += int(bool((adv[rows[1:]] > 0).any()))
        n = max(1, len(uniq))
        return AdvantageOutput(adv, {"adv/zero_std_group_share": flat / n, "adv/beats_anchor_share": beats / n,
                                     "adv/mean": float(adv.mean()), "adv/std": float(adv.std()),
                                     "adv/abs_max": float(adv.abs().max())})
