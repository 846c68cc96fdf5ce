"""Gen-Drive's RL objective: DDPO with PPO clipping on the ego's denoising transitions + behaviour regression.

For sample i (advantage A_i: the scene evaluator's reward, normalised over the batch) and trained
denoising step k, with the ego's Gaussian step policy p(x^ego_{k-1} | x_k, scene):

    rho_{i,k} = exp(log p_theta(x^ego_{k-1} | x_k) - log p_old(x^ego_{k-1} | x_k))
    L_pg      = mean_{i,k} max(-A_i rho_{i,k}, -A_i clip(rho_{i,k}, 1 - eps, 1 + eps))          (eps = 0.01)
    L_reg     = mean_{i,k} SmoothL1(states(x0_hat_{i,k}) - s_i^logged)   over valid logged agent steps
    L         = L_pg + alpha L_reg                                                            (alpha = 10)

states(.) is the unicycle roll-out of the predicted clean actions from each agent's current state; the
regression keeps the fine-tuned generator close to the logged behaviour (the paper's regulariser, in
place of a KL term). The scene encoder is frozen by the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genrl.config.validate import option
from genrl.models.scene_diffusion import state_regression_loss
from genrl.objectives.base import LossOutput
from genrl.registry import OBJECTIVES
from genrl.trainer.rollout import Rollout


@OBJECTIVES.register("gen_drive")
class GenDrive:
    policies = ("scene_diffusion",)

    @dataclass
    class Config:
        clip_range: float = option(default=0.01, help="PPO clip epsilon on the per-step ego ratio (Gen-Drive: 0.01).")
        alpha: float = option(default=10.0, help="Weight of the SmoothL1 regression of states(x0_hat) to the logged "
                                                 "future (Gen-Drive: 10); 0 = pure DDPO.")
        smooth_l1_beta: float = option(default=1.0, help="SmoothL1 transition point (m, rad, m/s).")
        adv_clip: float | None = option(default=None, help="Clip advantages to [-adv_clip, adv_clip]; null = no clip "
                                                           "(the paper normalises over the batch only).")

        def validate(self) -> None:
            if self.clip_range <= 0:
                raise ValueError("clip_range: must be > 0")
            if self.alpha < 0 or self.smooth_l1_beta <= 0:
                raise ValueError("alpha: alpha must be >= 0 and smooth_l1_beta > 0")
            if self.adv_clip is not None and self.adv_clip <= 0:
                raise ValueError("adv_clip: must be > 0 or null")

    needs_likelihood = True
    needs_reference = False  # no KL: the regression to logged behaviour regularises

    def __init__(self, config: Config) -> None:
        self.config = config

    def __call__(self, policy, batch: Rollout) -> LossOutput:
        cfg = self.config
        steps = batch.meta["train_steps"]
        adv = batch["advantages"].float()
        if cfg.adv_clip is not None:
            adv = adv.clamp(-cfg.adv_clip, cfg.adv_clip)
        adv = adv.unsqueeze(1)  # [B, 1]
        old_lp = batch["log_probs"][:, steps]  # [B, W]
        out = policy.score(batch)

        ratio = torch.exp(out["log_probs"] - old_lp)  # [B, W]
        pg = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - cfg.clip_range, 1 + cfg.clip_range)).mean()

        states_hat = policy.states_from_actions(out["x0_hat"], batch["contexts"])  # [B, W, A, F, 4]
        valid = batch["future_mask"] & policy.current_agent_mask(batch["contexts"])[:, :, None]  # [B, A, F]
        reg = state_regression_loss(states_hat, batch["future"].unsqueeze(1), valid.unsqueeze(1), cfg.smooth_l1_beta)
        loss = pg + cfg.alpha * reg

        with torch.no_grad():
            log_ratio = out["log_probs"] - old_lp
            metrics = {"policy_loss": float(pg), "regression_loss": float(reg),
                       "clip_frac": float(((ratio - 1).abs() > cfg.clip_range).float().mean()),
                       "ratio_mean": float(ratio.mean()), "ratio_min": float(ratio.min()),
                       "ratio_max": float(ratio.max()), "approx_kl": float(0.5 * (log_ratio**2).mean())}
        return LossOutput(loss, metrics, {t: ratio[:, j].detach() for j, t in enumerate(steps)})
