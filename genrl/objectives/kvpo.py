"""KVPO's objective: a clipped policy gradient over the branches of each fork group (arXiv 2605.14278).

For fork group q with branches g = 1..G (the anchor is the reference, not a choice):

    E_g       = TVE of branch g (``ARVideoPolicy.branch_energy``)            the branch's velocity energy
    pi(g)     = softmax_g(-E_g / tau)                                        a policy over the group's branches
    rho_g     = pi_theta(g) / pi_old(g)                                      old = the rollout's energies
    L_clip    = -mean_g min(rho_g A_g, clip(rho_g, 1 - eps_low, 1 + eps_high) A_g)
    L_KL      = lambda * mean_q KL(pi_theta(.|q) || pi_init(.|q))            pi_init: the initial (reference) policy
    L         = L_clip + L_KL

A_g comes from the ``anchor_relative`` estimator (reward of g minus the anchor's, per component). **Protect**:
in a group where no branch beats the anchor (every A_g <= 0) the clipped term is dropped — every branch would
only be pushed down, which moves the softmax mass among worse-than-anchor branches instead of towards the
behaviour that already does best (the anchor's); ``kvpo/protected_share`` logs how often it engages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genrl.config.validate import option
from genrl.objectives.base import LossOutput
from genrl.objectives.grpo import clipped_surrogate
from genrl.registry import OBJECTIVES
from genrl.trainer.rollout import Rollout


def group_log_softmax(logits: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """log softmax of ``logits`` within each group (rows of a group need not be contiguous)."""
    out = torch.empty_like(logits)
    for g in torch.unique(groups):
        m = groups == g
        out[m] = torch.log_softmax(logits[m], 0)
    return out


def protected_groups(adv: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Per row: does its group have no branch with a positive advantage (no branch beats the anchor)?"""
    out = torch.zeros_like(groups, dtype=torch.bool)
    for g in torch.unique(groups):
        m = groups == g
        out[m] = bool(adv[m].max() <= 0)
    return out


def branch_kl(log_pi: torch.Tensor, log_pi_ref: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean over groups of KL(pi || pi_ref) = sum_g pi(g) (log pi(g) - log pi_ref(g))."""
    per_row = log_pi.exp() * (log_pi - log_pi_ref)
    return torch.stack([per_row[groups == g].sum() for g in torch.unique(groups)]).mean()


@OBJECTIVES.register("kvpo")
class KVPO:
    policies = ("ar_video",)
    whole_groups = True  # a softmax over a group's branches: minibatches hold whole groups (the loop obliges)

    @dataclass
    class Config:
        tau: float = option(default=0.05, help="Temperature of the branch policy softmax(-E / tau).")
        clip_low: float = option(default=0.1, help="Lower clip: rho >= 1 - clip_low (paper: 0.9).")
        clip_high: float = option(default=0.2, help="Upper clip: rho <= 1 + clip_high (paper: 1.2).")
        adv_clip: float = option(default=5.0, help="Advantages are clipped to [-adv_clip, adv_clip].")
        kl_beta: float = option(default=0.01, help="lambda: weight of KL(pi_theta || pi_init) over the branch softmax.")
        protect: bool = option(default=True, help="Drop the clipped term of groups where no branch beats the anchor.")

        def validate(self) -> None:
            if self.tau <= 0:
                raise ValueError("tau: must be > 0")
            if not (0 < self.clip_low < 1 and self.clip_high > 0):
                raise ValueError("clip_low: expected 0 < clip_low < 1 and clip_high > 0")
            if self.kl_beta < 0:
                raise ValueError("kl_beta: must be >= 0")

    needs_reference = property(lambda self: self.config.kl_beta > 0)

    def __init__(self, config: Config) -> None:
        self.config = config

    @staticmethod
    def check_whole_groups(batch: Rollout) -> None:
        """Every group of the (micro-)batch complete: one anchor and the same number of rows in each."""
        groups, anchors = batch["group_ids"], batch["is_anchor"]
        uniq, counts = torch.unique(groups, return_counts=True)
        per_group = [int(anchors[groups == g].sum()) for g in uniq]
        if len(set(counts.tolist())) != 1 or any(a != 1 for a in per_group):
            raise ValueError(f"kvpo: expected whole fork groups (one anchor each, equal sizes) in every micro-batch, got "
                             f"group sizes {counts.tolist()} with {per_group} anchors; the loop keeps groups whole "
                             "when trainer.minibatch_size and micro_batch_size are multiples of group_size")

    def __call__(self, policy, batch: Rollout) -> LossOutput:
        cfg = self.config
        self.check_whole_groups(batch)
        sub = batch.select(torch.nonzero(~batch["is_anchor"]).flatten())
        groups = sub["group_ids"]
        adv = sub["advantages"].clamp(-cfg.adv_clip, cfg.adv_clip)
        log_pi = group_log_softmax(-policy.energies(sub) / cfg.tau, groups)
        log_pi_old = group_log_softmax(-sub["energy"] / cfg.tau, groups)
        per_row, ratio = clipped_surrogate(log_pi, log_pi_old, adv, cfg.clip_low, cfg.clip_high)
        protected = protected_groups(adv, groups) if cfg.protect else torch.zeros_like(groups, dtype=torch.bool)
        policy_loss = (per_row * (~protected).float()).mean()
        loss, metrics = policy_loss, {}
        if cfg.kl_beta > 0:
            with torch.no_grad():
                log_pi_ref = group_log_softmax(-policy.energies(sub, reference=True) / cfg.tau, groups)
            kl = branch_kl(log_pi, log_pi_ref, groups)
            loss = loss + cfg.kl_beta * kl
            metrics["kl"] = float(kl.detach())
        with torch.no_grad():
            metrics.update({
                "policy_loss": float(policy_loss.detach()),
                "clip_frac": float(((ratio < 1 - cfg.clip_low) | (ratio > 1 + cfg.clip_high)).float().mean()),
                "kvpo/protected_share": float(protected.float().mean()),
                "kvpo/ratio_mean": float(ratio.mean()),
                "kvpo/pi_max": float(log_pi.exp().max()),
                "kvpo/energy_mean": float(sub["energy"].mean()),
            })
        return LossOutput(loss, metrics)
