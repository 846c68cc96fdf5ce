"""Flow-GRPO: PPO-style clipped objective on the per-step Gaussian policy of an SDE sampler.

For each trained denoising step t of sample i, with advantage A_i (clipped to ±adv_clip):

    rho_{i,t} = exp(log p_theta(x_{t+1} | x_t) - log p_old(x_{t+1} | x_t))
    L_clip    = mean_{i,t} max(-A_i rho_{i,t}, -A_i clip(rho_{i,t}, 1 - eps, 1 + eps))
    L_KL      = beta * mean_{i,t} ||mu_theta - mu_ref||^2 / (2 sigma_t^2)        (optional)
    L         = L_clip + L_KL
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genrl.config.validate import option
from genrl.objectives.base import LossOutput
from genrl.registry import OBJECTIVES
from genrl.trainer.rollout import Rollout


@OBJECTIVES.register("flow_grpo")
class FlowGRPO:
    @dataclass
    class Config:
        clip_range: float = option(default=1e-4, help="PPO clip epsilon on the per-step ratio (Flow-GRPO: 1e-4..1e-3).")
        adv_clip: float = option(default=5.0, help="Advantages are clipped to [-adv_clip, adv_clip].")
        kl_beta: float = option(default=0.0, help="Weight of the KL to the reference policy; 0 = no KL (no ref forward).")

        def validate(self) -> None:
            if self.clip_range <= 0:
                raise ValueError("clip_range: must be > 0")
            if self.kl_beta < 0:
                raise ValueError("kl_beta: must be >= 0")

    needs_likelihood = True  # per-step log-probs of an SDE sampler: noise level 0 has none
    needs_reference = property(lambda self: self.config.kl_beta > 0)

    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, policy, batch: Rollout) -> LossOutput:
        cfg = self.config
        steps = batch.meta["train_steps"]
        adv = batch["advantages"].clamp(-cfg.adv_clip, cfg.adv_clip).unsqueeze(1)  # [B, 1]
        old_lp = batch["log_probs"][:, steps]  # [B, W]
        out = policy.score(batch)
        ratio = torch.exp(out["log_probs"] - old_lp)  # [B, W]
        unclipped = -adv * ratio
        clipped = -adv * torch.clamp(ratio, 1 - cfg.clip_range, 1 + cfg.clip_range)
        policy_loss = torch.maximum(unclipped, clipped).mean()
        loss = policy_loss
        metrics = {}
        if cfg.kl_beta > 0:
            with torch.no_grad():
                ref_mean = policy.score(batch, reference=True)["means"]
            var = (out["stds"] ** 2).view(1, -1, *([1] * (ref_mean.dim() - 2)))  # [1, W, 1...]
            kl = ((out["means"] - ref_mean) ** 2 / (2 * var)).flatten(2).mean(2)  # [B, W]
            kl_loss = kl.mean()
            loss = loss + cfg.kl_beta * kl_loss
            metrics["kl"] = float(kl_loss.detach())
        with torch.no_grad():
            log_ratio = out["log_probs"] - old_lp
            metrics.update({
                "policy_loss": float(policy_loss.detach()),
                "clip_frac": float(((ratio - 1).abs() > cfg.clip_range).float().mean()),
                "approx_kl": float(0.5 * (log_ratio**2).mean()),
            })
        return LossOutput(loss, metrics, {t: ratio[:, j].detach() for j, t in enumerate(steps)})
