"""DiffusionNFT: negative-aware fine-tuning on the forward (noising) process — no likelihoods, any sampler.

Zheng et al., "DiffusionNFT: Online Diffusion Reinforcement with Forward Process", arXiv 2509.16117
(https://arxiv.org/abs/2509.16117, Eq. 5-6 and Algorithm 1; the authors' training script
``scripts/train_nft_sd3.py`` of https://github.com/NVlabs/DiffusionNFT for the practical choices marked [code];
the same equations are restated at https://verl-omni.readthedocs.io/en/latest/algo/diffusionnft.html).

For sample i (clean final sample x0_i in model space, the last latent of the rollout; advantage A_i,
the group-normalised reward (R_i - mean_group) / std_group, i.e. the paper's (r_raw - E r_raw) / Z_c):

    r_i     = 1/2 + 1/2 * clip(A_i / adv_clip, -1, 1)                     optimality probability in [0, 1]
    t       ~ the sampler's sigmas (a keyed random subset per sample) or U(t_min, t_max)
    eps     ~ N(0, I)  (fresh noise, keyed by seed, step, sample id, draw)
    x_t     = (1 - t) x0 + t eps,          v = eps - x0                   (rectified flow, diffusers convention)
    v+      = (1 - beta) v_old(x_t) + beta v_theta(x_t)                   implicit positive policy
    v-      = (1 + beta) v_old(x_t) - beta v_theta(x_t)                   implicit negative policy
    L_nft   = scale * mean_{i,t} [ r_i l(v+) + (1 - r_i) l(v-) ]

with, for ``weighting: none`` (the paper's Eq. 6), l(u) = mean_d (u - v)^2 and, for ``weighting: adaptive``
(the paper's adaptive loss weighting, as in [code]), the x0-regression with a stop-gradient self-normaliser:

    x0_hat(u) = x_t - t u,    l(u) = mean_d (x0_hat(u) - x0)^2 / sg(max(mean_d |x0_hat(u) - x0|, 1e-5))

``scale`` = adv_clip / beta as in [code] (the 1/beta undoes the beta in d v+/d theta; adv_clip is [code]'s constant).
Optional KL to the frozen reference: L = L_nft + kl_beta * mean_{i,t} mean_d (v_theta - v_ref)^2   [code].

v_old is the "old" policy, no gradient. ``old_policy: rollout`` (default) uses the weights that generated the
step's rollout (a snapshot taken at the step's first objective call: the paper's pi_old = the sampling policy,
[code]'s decay 0). ``old_policy: ema`` keeps a soft copy updated once per training step,
theta_old <- d theta_old + (1 - d) theta with d = min(old_decay_rate * k, old_decay_max) at the k-th step
([code]'s ``decay_type`` schedule; [code] counts gradient updates, we count training steps). Deviation: the
shared loop samples with theta, so with ``ema`` the rollouts come from theta, not theta_old. The soft copy is
checkpointed (``state_dict``: RUN_DIR/checkpoints/*/objective.safetensors), so a resumed run continues it exactly.

Identity used by the tests: with r = 1/2 everywhere and ``weighting: none``,
    d/d theta [ 1/2 |v+ - v|^2 + 1/2 |v- - v|^2 ] = beta (v+ - v-) . d v_theta = beta^2 d/d theta |v_theta - v_old|^2,
i.e. plain flow matching onto the old policy's velocity (the sample target v cancels): an uninformative reward
leaves the optimum at v* = v_old (the paper's v* = v_old + (2/beta) Delta with Delta = 0 when pi+ = pi_old).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from genrl.config.validate import option
from genrl.objectives.base import LossOutput
from genrl.registry import OBJECTIVES
from genrl.rng import Purpose, keyed_generator
from genrl.trainer.rollout import Rollout

_NFT_KEY = -12  # extra key separating NFT's draws from the sampler's keyed streams


def nft_loss(v_theta: torch.Tensor, v_old: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor, target: torch.Tensor,
             t: torch.Tensor, r: torch.Tensor, *, beta: float, weighting: str) -> torch.Tensor:
    """Per-row r l(v+) + (1 - r) l(v-) (rows = samples x timesteps); ``t``/``r`` are [N]."""
    v_old = v_old.detach()
    v_pos = (1 - beta) * v_old + beta * v_theta
    v_neg = (1 + beta) * v_old - beta * v_theta
    shape = (-1,) + (1,) * (x_t.dim() - 1)

    def term(u: torch.Tensor) -> torch.Tensor:
        if weighting == "none":
            return (u - target).pow(2).flatten(1).mean(1)
        err = x_t - t.view(shape) * u - x0
        with torch.no_grad():
            w = err.abs().double().flatten(1).mean(1).clamp(min=1e-5).to(err.dtype)
        return err.pow(2).flatten(1).mean(1) / w

    return r * term(v_pos) + (1 - r) * term(v_neg)


@OBJECTIVES.register("diffusion_nft")
class DiffusionNFT:
    policies = ("flow_image", "flow_video")  # forward-process velocity loss

    @dataclass
    class Config:
        beta: float = option(default=1.0, help="Guidance strength beta of v+/v- (paper 0.1..1; [code] default 1).")
        adv_clip: float = option(
            default=5.0, help="r = 1/2 + 1/2 clip(A / adv_clip, -1, 1); also the loss scale adv_clip / beta.")
        time_sampling: Literal["schedule", "uniform"] = option(
            default="schedule", help="'schedule': t from the sampler's sigmas (as [code]); 'uniform': U(t_min, t_max).")
        timestep_fraction: float = option(
            default=1.0, help="Share of the sampler's steps trained per sample and call (schedule sampling).")
        num_timesteps: int = option(default=2, help="Timesteps per sample and call for uniform sampling.")
        t_min: float = option(default=0.0, help="Lower bound of uniform time sampling.")
        t_max: float = option(default=1.0, help="Upper bound of uniform time sampling.")
        weighting: Literal["adaptive", "none"] = option(
            default="adaptive", help="'adaptive': x0 loss / sg(mean |x0 error|) (paper + [code]); 'none': velocity MSE.")
        old_policy: Literal["rollout", "ema"] = option(
            default="rollout", help="'rollout': v_old from the weights that sampled the step; 'ema': soft copy.")
        old_decay_rate: float = option(default=0.001, help="ema: decay grows by this per training step ...")
        old_decay_max: float = option(default=0.5, help="ema: ... up to this cap ([code] decay_type 1: 0.001, 0.5).")
        kl_beta: float = option(default=0.0, help="Weight of mean (v_theta - v_ref)^2 to the reference ([code] 1e-4).")

        def validate(self) -> None:
            if self.beta <= 0:
                raise ValueError("beta: must be > 0")
            if self.adv_clip <= 0:
                raise ValueError("adv_clip: must be > 0")
            if not 0 < self.timestep_fraction <= 1:
                raise ValueError("timestep_fraction: must be in (0, 1]")
            if self.num_timesteps < 1:
                raise ValueError("num_timesteps: must be >= 1")
            if not 0 <= self.t_min < self.t_max <= 1:
                raise ValueError("t_max: need 0 <= t_min < t_max <= 1")
            if not 0 <= self.old_decay_max < 1 or self.old_decay_rate < 0:
                raise ValueError("old_decay_max: need 0 <= old_decay_max < 1 and old_decay_rate >= 0")
            if self.kl_beta < 0:
                raise ValueError("kl_beta: must be >= 0")

    needs_likelihood = False  # forward process only: any sampler, noise level 0 (ODE) included
    needs_reference = property(lambda self: self.config.kl_beta > 0)

    def __init__(self, config: Config) -> None:
        self.config = config
        self._old: dict[str, torch.Tensor] | None = None
        self._step: int | None = None
        self._steps_seen = 0
        self._draws: dict[int, int] = {}
        self._placed = True

    # ------------------------------------------------------------- old policy
    def _begin_step(self, policy, step) -> None:
        """First call of a training step: the current weights are the ones that sampled its rollout."""
        if self._old is not None and not self._placed:
            self._place(policy)
        if step == self._step and self._old is not None:
            return
        self._step, self._draws = step, {}
        params = policy.trainable_parameters()
        if self._old is None or self.config.old_policy == "rollout":
            self._old = {n: p.detach().clone() for n, p in params.items()}
        else:
            d = min(self.config.old_decay_rate * self._steps_seen, self.config.old_decay_max)
            with torch.no_grad():
                for n, p in params.items():
                    self._old[n].mul_(d).add_(p.detach(), alpha=1 - d)
        self._steps_seen += 1

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The soft copy (``ema``) and its step count, so a resumed run continues it exactly; ``rollout``
        mode has no state (its snapshot is retaken at the next step's first call)."""
        from genrl.trainer.checkpoint import full_tensor

        if self.config.old_policy != "ema" or self._old is None:
            return {}
        return {"steps_seen": torch.tensor(self._steps_seen), "step": torch.tensor(-1 if self._step is None else self._step),
                **{f"old.{n}": full_tensor(t).cpu() for n, t in self._old.items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            return
        self._steps_seen, self._step = int(state["steps_seen"]), int(state["step"])
        self._old = {k[len("old."):]: v for k, v in state.items() if k.startswith("old.")}
        self._placed = False  # laid out like the live parameters at the next call

    def _place(self, policy) -> None:
        from genrl.trainer.checkpoint import shard_like

        params = policy.trainable_parameters()
        self._old = {n: shard_like(self._old[n].to(p.device, p.dtype), p) for n, p in params.items()}
        self._placed = True

    @torch.no_grad()
    def _old_velocity(self, policy, x, sigma, cond) -> torch.Tensor:
        params = policy.trainable_parameters()
        backup = {n: p.detach().clone() for n, p in params.items()}
        for n, p in params.items():
            p.copy_(self._old[n])
        try:
            return policy.velocity(policy.engine_model, x, sigma, cond)
        finally:
            for n, p in params.items():
                p.copy_(backup[n])

    # ------------------------------------------------------------ keyed draws
    def _draw(self, policy, batch: Rollout, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row sample index [N], t [N], eps [N, ...]); each sample's draws depend on (seed, step, id, draw) only."""
        cfg = self.config
        seed, step = int(batch.meta.get("seed", 0)), int(batch.meta.get("step", self._step or 0))
        sigmas = policy.sigmas[: policy.config.num_steps].float().cpu()
        idx, ts, eps = [], [], []
        for i, sid in enumerate(batch["sample_ids"].tolist()):
            k = self._draws.get(sid, 0)
            self._draws[sid] = k + 1
            gen = keyed_generator(seed, Purpose.STEP_NOISE, step, sid, _NFT_KEY, k)
            if cfg.time_sampling == "schedule":
                n = max(1, int(len(sigmas) * cfg.timestep_fraction))
                t = sigmas[torch.randperm(len(sigmas), generator=gen)[:n]]
            else:
                n = cfg.num_timesteps
                t = cfg.t_min + (cfg.t_max - cfg.t_min) * torch.rand(n, generator=gen)
            idx += [i] * n
            ts.append(t)
            eps.append(torch.randn((n, *x0.shape[1:]), generator=gen))
        dev = x0.device
        return torch.tensor(idx, device=dev), torch.cat(ts).to(dev), torch.cat(eps).to(dev)

    # ------------------------------------------------------------------- loss
    def __call__(self, policy, batch: Rollout) -> LossOutput:
        cfg = self.config
        self._begin_step(policy, batch.meta.get("step"))
        x0_all = batch["latents"][:, -1].float()  # the sampler's clean output, model space
        row, t, eps = self._draw(policy, batch, x0_all)
        x0 = x0_all[row]
        cond = {k: v[row] for k, v in policy.conditioning(batch).items()}  # each row's prompt, once per draw
        adv = batch["advantages"][row].float()
        r = 0.5 + 0.5 * torch.clamp(adv / cfg.adv_clip, -1.0, 1.0)  # optimality probability

        shape = (-1,) + (1,) * (x0.dim() - 1)
        x_t = (1 - t.view(shape)) * x0 + t.view(shape) * eps
        target = eps - x0
        v_old = self._old_velocity(policy, x_t, t, cond)
        model = policy.engine_model
        model.train()
        v_theta = policy.velocity(model, x_t, t, cond)
        per_row = nft_loss(v_theta, v_old, x_t, x0, target, t, r, beta=cfg.beta, weighting=cfg.weighting)
        # mean over each sample's timesteps, then over samples (every sample draws the same number of t)
        policy_loss = (cfg.adv_clip / cfg.beta) * per_row.mean()
        loss = policy_loss
        metrics = {}
        if cfg.kl_beta > 0:
            with torch.no_grad(), policy.reference() as ref:
                v_ref = policy.velocity(ref, x_t, t, cond)
            kl = (v_theta - v_ref).pow(2).flatten(1).mean(1).mean()
            loss = loss + cfg.kl_beta * kl
            metrics["kl"] = float(kl.detach())
        with torch.no_grad():
            metrics.update({
                "policy_loss": float(policy_loss.detach()),
                "nft/r_mean": float(r.mean()),
                "nft/old_deviation": float((v_theta - v_old).pow(2).mean()),
                "nft/fm_loss": float((v_theta - target).pow(2).mean()),
            })
        return LossOutput(loss, metrics, {})
