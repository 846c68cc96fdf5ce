"""GRPO for token policies (VLMs), with DAPO / Dr.GRPO options, and VOGUE's advantage shaping.

For response i, token t (mask m_it = 1 on the response, eos included), advantage A_i (clipped ±adv_clip):

    rho_it  = exp(log pi_theta(y_it | ...) - log pi_old(y_it | ...))
    L^pg_it = -min(rho_it A_it, clip(rho_it, 1 - eps_low, 1 + eps_high) A_it)         (A_it = A_i for GRPO)
    L^kl_it = beta * k3,   k3 = exp(r) - r - 1,   r = log pi_ref - log pi_theta      (Schulman's k3, >= 0)

Aggregation over tokens (``loss_agg``):
    seq_mean_token_mean  — GRPO:    mean_i [ sum_t m L / sum_t m ]
    token_mean           — DAPO:    sum_{i,t} m L / sum_{i,t} m   (long answers weigh more)
    seq_mean_token_sum   — Dr.GRPO: mean_i [ sum_t m L / T_max ]  (a constant normaliser, no length bias)

``mask_truncated`` drops responses that hit ``max_new_tokens`` without an end token (DAPO's overlong filter).

VOGUE (``objective: vogue``; arXiv 2510.01444) shapes the advantage per token before the clipped loss:

    A'_it = A_i + min(a_v * sg(D_it), |A_i| / b_v) + min(a_e * sg(H_it), |A_i| / b_e)

D_it = the symmetric KL between raw- and noisy-image token distributions (one no-grad forward on the
other image, at rollout or in the update), H_it = the token entropy under the rollout policy. Both bonuses
are >= 0 and capped by |A_i| (1/b_v + 1/b_e), so with 1/b_v + 1/b_e <= 1 they can never flip the sign of
A_i (validated; the sum is also capped at |A_i| against rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from genrl.config.validate import option
from genrl.objectives.base import LossOutput
from genrl.registry import OBJECTIVES
from genrl.trainer.rollout import Rollout

LossAgg = Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum"]


def clipped_surrogate(log_probs: torch.Tensor, old_log_probs: torch.Tensor, adv: torch.Tensor,
                      eps_low: float, eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) and the ratio rho; all [B, T]."""
    ratio = torch.exp(log_probs - old_log_probs)
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps_low, 1 + eps_high))
    return loss, ratio


def k3_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref) per token: exp(r) - r - 1, r = log pi_ref - log pi_theta."""
    r = ref_log_probs - log_probs
    return torch.exp(r) - r - 1


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: LossAgg, max_tokens: int) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to a scalar by GRPO's, DAPO's or Dr.GRPO's rule (see module doc)."""
    if how == "token_mean":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    if how == "seq_mean_token_sum":
        return ((per_token * mask).sum(1) / max_tokens).mean()
    return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def vogue_shaped_advantage(adv: torch.Tensor, uncertainty: torch.Tensor, entropy: torch.Tensor, *,
                           a_v: float, b_v: float, a_e: float, b_e: float) -> torch.Tensor:
    """A' = A + min(a_v D, |A| / b_v) + min(a_e H, |A| / b_e); adv [B, 1], D and H [B, T] (no gradient)."""
    cap = adv.abs()
    return adv + torch.minimum(torch.minimum(a_v * uncertainty.detach(), cap / b_v)  # total <= |A|: no rounding flip
                               + torch.minimum(a_e * entropy.detach(), cap / b_e), cap)


@OBJECTIVES.register("grpo")
class GRPO:
    policies = ("vlm",)  # token log-probs

    @dataclass
    class Config:
        clip_low: float = option(default=0.2, help="Lower clip epsilon: ratios below 1 - clip_low are clipped.")
        clip_high: float = option(default=0.2, help="Upper clip epsilon (DAPO's clip-higher: e.g. 0.28).")
        adv_clip: float = option(default=5.0, help="Advantages are clipped to [-adv_clip, adv_clip].")
        loss_agg: LossAgg = option(
            default="seq_mean_token_mean",
            help="seq_mean_token_mean (GRPO), token_mean (DAPO) or seq_mean_token_sum (Dr.GRPO: / max_new_tokens).")
        kl_beta: float = option(default=0.0, help="Weight of the k3 KL to the reference policy; 0 = no reference forward.")
        mask_truncated: bool = option(
            default=False, help="Leave responses that hit max_new_tokens without ending out of the loss (DAPO).")

        def validate(self) -> None:
            if self.clip_low <= 0 or self.clip_high <= 0:
                raise ValueError("clip_low: clip_low and clip_high must be > 0")
            if self.clip_low >= 1:
                raise ValueError("clip_low: must be < 1 (a ratio cannot go below 0)")
            if self.kl_beta < 0:
                raise ValueError("kl_beta: must be >= 0")

    needs_likelihood = False  # token policies always have likelihoods; no explorer setting can remove them
    needs_reference = property(lambda self: self.config.kl_beta > 0)

    def __init__(self, config: Config) -> None:
        self.config = config

    def token_advantages(self, batch: Rollout, adv: torch.Tensor, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, T] advantages; plain GRPO gives every token its response's advantage."""
        return adv.expand_as(out["log_probs"])

    def __call__(self, policy, batch: Rollout) -> LossOutput:
        cfg = self.config
        mask = batch["response_mask"]
        if cfg.mask_truncated:
            mask = mask * (~batch["truncated"]).unsqueeze(1).float()
        adv = batch["advantages"].clamp(-cfg.adv_clip, cfg.adv_clip).unsqueeze(1)  # [B, 1]
        out = policy.score(batch)
        # Old log-probs from the rollout's re-score, or (policy.old_log_probs: update, one optimizer step per
        # rollout) from this very forward, detached: the weights that sampled are the weights scoring now.
        old = batch["old_log_probs"] if "old_log_probs" in batch else out["log_probs"].detach()
        token_adv = self.token_advantages(batch, adv, out)
        per_token, ratio = clipped_surrogate(out["log_probs"], old, token_adv, cfg.clip_low, cfg.clip_high)
        max_tokens = mask.shape[1]
        policy_loss = aggregate(per_token, mask, cfg.loss_agg, max_tokens)
        loss = policy_loss
        metrics: dict[str, float] = {}
        if cfg.kl_beta > 0:
            with torch.no_grad():
                ref = policy.score(batch, reference=True)["log_probs"]
            kl = aggregate(k3_kl(out["log_probs"], ref), mask, cfg.loss_agg, max_tokens)
            loss = loss + cfg.kl_beta * kl
            metrics["kl"] = float(kl.detach())
        with torch.no_grad():
            m = mask.bool()
            n = m.sum().clamp(min=1)
            log_ratio = (out["log_probs"] - old)[m]
            clipped = ((ratio < 1 - cfg.clip_low) | (ratio > 1 + cfg.clip_high))[m]
            metrics.update({
                "policy_loss": float(policy_loss.detach()),
                "clip_frac": float(clipped.float().sum() / n),
                "approx_kl": float(0.5 * (log_ratio**2).sum() / n),
                "ratio/mean": float(ratio[m].mean()) if m.any() else 1.0,
                "entropy": float((out["entropies"] * mask).sum() / mask.sum().clamp(min=1)),
                "response_tokens": float(batch["response_mask"].sum(1).mean()),
                "truncated_share": float(batch["truncated"].float().mean()),
            })
            metrics.update(self.extra_metrics(batch, adv, token_adv, mask, out))
        return LossOutput(loss, metrics)

    def extra_metrics(self, batch: Rollout, adv, token_adv, mask, out) -> dict[str, float]:
        return {}


@OBJECTIVES.register("vogue")
class Vogue(GRPO):
    @dataclass
    class Config(GRPO.Config):
        a_v: float = option(default=1.0, help="Scale of the visual-uncertainty bonus a_v * D.")
        b_v: float = option(default=2.0, help="Cap of that bonus: |A| / b_v.")
        a_e: float = option(default=0.4, help="Scale of the token-entropy bonus a_e * H.")
        b_e: float = option(default=2.0, help="Cap of that bonus: |A| / b_e.")
        uncertainty_scope: Literal["token", "sequence"] = option(
            default="token", help="D per token, or its mean over the response for every token (the paper is silent; "
                                  "token is the default).")
        shaped_rows: Literal["noisy", "all"] = option(
            default="noisy", help="Rows whose advantage is shaped: those sampled from the noisy branch (the paper's "
                                  "figure) or all rows.")

        def validate(self) -> None:
            super().validate()
            for name in ("a_v", "a_e"):
                if getattr(self, name) < 0:
                    raise ValueError(f"{name}: must be >= 0")
            for name in ("b_v", "b_e"):
                if getattr(self, name) <= 0:
                    raise ValueError(f"{name}: must be > 0")
            if 1 / self.b_v + 1 / self.b_e > 1 + 1e-12:
                raise ValueError(f"b_v: the caps could flip an advantage's sign: 1/b_v + 1/b_e = "
                                 f"{1 / self.b_v + 1 / self.b_e:.3f} > 1 (expected <= 1)")

    explorer_flag = "uncertainty"  # the explorer must measure D_t (checked when the recipe is validated)

    def _bonus_inputs(self, batch: Rollout, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if "vis_uncertainty" in batch:
            d = batch["vis_uncertainty"]  # measured at rollout
        elif "divergence" in out:
            d = out["divergence"].detach()  # measured by this forward (policy.old_log_probs: update)
        else:
            raise ValueError("objective vogue needs the visual uncertainty D_t in the rollout: use explorer vogue "
                             "(or noisy_image with uncertainty: true)")
        mask = batch["response_mask"]
        if self.config.uncertainty_scope == "sequence":
            d = ((d * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)).expand_as(d)
        entropies = batch["entropies"] if "entropies" in batch else out["entropies"].detach()  # sg(H_t)
        return d * mask, entropies * mask

    def token_advantages(self, batch: Rollout, adv: torch.Tensor, out: dict[str, torch.Tensor]) -> torch.Tensor:
        c = self.config
        d, h = self._bonus_inputs(batch, out)
        shaped = vogue_shaped_advantage(adv, d, h, a_v=c.a_v, b_v=c.b_v, a_e=c.a_e, b_e=c.b_e)
        plain = adv.expand_as(shaped)
        if c.shaped_rows == "noisy":
            return torch.where(batch["noisy"].unsqueeze(1), shaped, plain)
        return shaped

    def extra_metrics(self, batch: Rollout, adv, token_adv, mask, out) -> dict[str, float]:
        n = mask.sum().clamp(min=1)
        d, _ = self._bonus_inputs(batch, out)
        return {"vogue/uncertainty": float(d.sum() / n),
                "vogue/bonus": float(((token_adv - adv) * mask).sum() / n),
                "vogue/noisy_share": float(batch["noisy"].float().mean())}
