"""Flow-GRPO: PPO-style clipped objective on the per-step Gaussian policy of an SDE sampler.

For each trained denoising step t of sample i, with advantage A_i (clipped to ±adv_clip):

    rho_{i,t} = exp(log p_theta(x_{t+1} | x_t) - log p_old(x_{t+1} | x_t))
    L_clip    = mean_{i,t} max(-A_i rho_{i,t}, -A_i clip(rho_{i,t}, 1 - eps, 1 + eps))
    L_KL      = beta * mean_{i,t} ||mu_theta - mu_ref||^2 / (2 sigma_t^2)        (optional)
    L         = L_clip + L_KL

GRPO-Guard (``guard: true``; Wang et al., arXiv 2510.22319, https://arxiv.org/abs/2510.22319, "RatioNorm" and
gradient reweighting; the same equations as https://verl-omni.readthedocs.io/en/latest/algo/grpo_guard.html).
With x_{t+1} = mu_old + s_t z (s_t = the step's std, sigma_t sqrt(|dt|) for Flow-GRPO) the per-dimension-averaged
log-ratio is  log rho = -b_t - mean_d(z (mu_old - mu_theta)) / s_t,  b_t = mean_d (mu_theta - mu_old)^2 / (2 s_t^2):
its mean -b_t < 0 drifts left and its scale ~ 1 / s_t differs across steps, so a fixed clip range misses
over-confident positive updates at some steps. RatioNorm removes the shift and the step-dependent scale:

    rho^_{i,t} = exp( s_t * (log rho_{i,t} + b_{i,t}) )          (per-step mean 0 of log rho^, scale free of s_t)
    L_clip     = mean_{i,t} w_t max(-A_i rho^, -A_i clip(rho^, 1 - eps, 1 + eps)),   w_t = 1 / |dt_t|

w_t equalises the policy gradient across noise levels (d mu / d v is proportional to dt); we rescale w_t by the
mean |dt| of the sampler's steps so that a uniform schedule has w = 1 (a constant factor only). mu_old is the
rollout's ``old_means`` (the Gaussian means stored at the trained steps).
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
    policies = ("flow_image", "flow_video", "ar_video")  # per-step Gaussian log-probs of a flow sampler

    @dataclass
    class Config:
        clip_range: float = option(default=1e-4, help="PPO clip epsilon on the per-step ratio (Flow-GRPO: 1e-4..1e-3).")
        adv_clip: float = option(default=5.0, help="Advantages are clipped to [-adv_clip, adv_clip].")
        kl_beta: float = option(default=0.0, help="Weight of the KL to the reference policy; 0 = no KL (no ref forward).")
        guard: bool = option(default=False, help="GRPO-Guard: RatioNorm of the per-step ratios + 1/dt reweighting.")
        guard_reweight: bool = option(default=True, help="With guard: weight each step's loss by 1/|dt| (normalised).")

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
        if cfg.guard:
            ratio = torch.exp(guard_log_ratio(out["log_probs"], old_lp, out["means"], batch["old_means"], out["stds"]))
        else:
            ratio = torch.exp(out["log_probs"] - old_lp)  # [B, W]
        unclipped = -adv * ratio
        clipped = -adv * torch.clamp(ratio, 1 - cfg.clip_range, 1 + cfg.clip_range)
        per_step = torch.maximum(unclipped, clipped)  # [B, W]
        if cfg.guard and cfg.guard_reweight:
            per_step = per_step * guard_step_weights(policy.sigmas, steps).to(per_step.device)
        policy_loss = per_step.mean()
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


def guard_log_ratio(log_probs: torch.Tensor, old_log_probs: torch.Tensor, means: torch.Tensor,
                    old_means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """RatioNorm: s_t (log rho + b_t), b_t = mean_d (mu_theta - mu_old)^2 / (2 s_t^2); all [B, W] but means [B, W, ...]."""
    s = stds.view(1, -1).to(log_probs.dtype)  # [1, W]
    b = (means - old_means.to(means.dtype)).pow(2).flatten(2).mean(2) / (2 * s**2)
    return s * (log_probs - old_log_probs + b)


def guard_step_weights(sigmas: torch.Tensor, steps: list[int]) -> torch.Tensor:
    """w_t = 1 / |dt_t| over the trained steps, times the sampler's mean |dt| (uniform schedule: all 1); [1, W]."""
    dt = (sigmas[:-1] - sigmas[1:]).abs().float()
    return (dt.mean() / dt[list(steps)]).view(1, -1)
