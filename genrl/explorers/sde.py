"""SDE exploration on a flow-matching ODE sampler (Flow-GRPO, DanceGRPO, CPS).

Flow matching convention (SD3/FLUX): ``x_sigma = (1 - sigma) * x0 + sigma * noise`` and the model
predicts the velocity ``v = noise - x0``; sampling walks sigma from 1 down to 0. The deterministic
Euler step is ``x' = x + (sigma' - sigma) * v``. Each noise rule below turns that step into a
Gaussian ``N(mean, std^2 I)`` so that a denoising step is a stochastic policy with a log-likelihood.

``sde_step`` is the one step function used both to *sample* (rollout) and to *re-score* a stored
transition (training): Flow-GRPO's design, which keeps rollout and training numerically identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from genrl.config.validate import option
from genrl.registry import EXPLORERS
from genrl.rng import Purpose, keyed_generator

NoiseRule = Literal["flow_grpo", "dance_grpo", "cps"]


def transition(
    x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, sigma_max: float,
    rule: NoiseRule, noise_level: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of p(x_next | x) for one denoising step, in fp32.

    ``sigma``/``sigma_next`` are per-sample tensors broadcastable to ``x``; ``sigma_max`` replaces
    sigma = 1 where a rule divides by ``1 - sigma``.
    """
    dt = sigma_next - sigma  # negative: sigma decreases
    if rule == "flow_grpo":
        # Flow-GRPO: std_t = a * sqrt(sigma / (1 - sigma)); the drift adds the score correction that
        # keeps the marginals of the ODE:  mean = x (1 + std^2 dt / 2 sigma) + v (1 + std^2 (1 - sigma) / 2 sigma) dt
        safe = torch.where(sigma >= 1.0, torch.full_like(sigma, sigma_max), sigma)
        std_t = noise_level * torch.sqrt(safe / (1 - safe))
        mean = x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
        std = std_t * torch.sqrt(-dt)
    elif rule == "dance_grpo":
        # DanceGRPO: Euler mean plus -eta^2/2 * score * dt, score estimated from x0_hat; std = eta sqrt(|dt|).
        x0_hat = x - sigma * v
        score = -(x - x0_hat * (1 - sigma)) / sigma**2
        mean = x + dt * v - 0.5 * noise_level**2 * score * dt
        std = noise_level * torch.sqrt(-dt)
    elif rule == "cps":
        # Coefficient-preserving sampling: re-mix x0_hat and the noise estimate so that the total noise
        # variance at sigma' is exactly sigma'^2; std = sigma' sin(a pi / 2).
        std = sigma_next * math.sin(noise_level * math.pi / 2)
        x0_hat = x - sigma * v
        noise_hat = x + (1 - sigma) * v
        mean = x0_hat * (1 - sigma_next) + noise_hat * torch.sqrt(torch.clamp(sigma_next**2 - std**2, min=0))
    else:  # pragma: no cover - the recipe validator rejects other names
        raise ValueError(f"unknown noise rule {rule!r}")
    return mean, std


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample log N(x; mean, std^2), averaged over all non-batch dimensions (as Flow-GRPO does)."""
    std = std.expand_as(mean)
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(dim=1)


def sde_step(
    x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, *, sigma_max: float,
    rule: NoiseRule, noise_level: float, noise: torch.Tensor | None = None, x_next: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One stochastic denoising step: sample (``noise`` given) or score (``x_next`` given).

    Returns ``(x_next, log_prob, mean, std)``; ``log_prob`` is ``None`` for a deterministic step
    (noise level 0), which then reproduces the Euler ODE step bit for bit.
    """
    x, v = x.float(), v.float()
    shape = (-1,) + (1,) * (x.dim() - 1)
    sigma, sigma_next = sigma.float().view(shape), sigma_next.float().view(shape)
    mean, std = transition(x, v, sigma, sigma_next, sigma_max, rule, noise_level)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    deterministic = noise_level == 0.0
    if x_next is None:
        if deterministic or noise is None:
            x_next = mean
        else:
            x_next = mean + std * noise.float()
    log_prob = None if deterministic else gaussian_log_prob(x_next.detach().float(), mean, std)
    return x_next, log_prob, mean, std


@dataclass
class ExplorationPlan:
    """Which denoising steps are stochastic and which are trained, for one training step."""

    stochastic: list[bool]
    train_steps: list[int]


@EXPLORERS.register("sde")
class SDEExplorer:
    """Noise injection on the flow ODE sampler, on a (possibly random) window of steps.

    ``window_size`` steps are trained (Flow-GRPO-Fast: 1-3 of 10); the window starts at a keyed
    random step within ``[window_min_start, window_max_start]`` each training step. Outside the
    window the sampler is the plain ODE unless ``sde_outside_window``.
    """

    policies = ("flow_image", "flow_video", "ar_video")

    @dataclass
    class Config:
        noise_rule: NoiseRule = option(default="flow_grpo", help="SDE noise rule: flow_grpo, dance_grpo or cps.")
        noise_level: float = option(default=0.7, help="Noise scale a (Flow-GRPO ~0.7). 0 reproduces the ODE sampler.")
        window_size: int | None = option(
            default=None, help="Number of consecutive denoising steps trained each step; null = all steps."
        )
        window_min_start: int = option(default=0, help="Earliest step index the training window may start at.")
        window_max_start: int | None = option(
            default=None, help="Latest start of the window; null = as late as the window fits."
        )
        sde_outside_window: bool = option(
            default=False, help="Also inject noise on untrained steps (Flow-GRPO) instead of ODE steps there (Fast)."
        )

        def validate(self) -> None:
            if self.noise_level < 0:
                raise ValueError("noise_level: must be >= 0")
            if self.window_size is not None and self.window_size < 1:
                raise ValueError("window_size: must be >= 1 or null")
            if self.window_max_start is not None and self.window_max_start < self.window_min_start:
                raise ValueError("window_max_start: must be >= window_min_start")

    def __init__(self, config: Config, *, seed: int) -> None:
        self.config = config
        self.seed = seed

    def plan(self, step: int, num_steps: int) -> ExplorationPlan:
        cfg = self.config
        # CPS's std is sigma_next * sin(a pi / 2): zero on the last step (sigma_next = 0), which then has
        # no density; it always stays a deterministic, untrained step.
        usable = num_steps - 1 if cfg.noise_rule == "cps" else num_steps
        size = usable if cfg.window_size is None else min(cfg.window_size, usable)
        hi = usable - size if cfg.window_max_start is None else min(cfg.window_max_start, usable - size)
        lo = min(cfg.window_min_start, hi)
        start = lo + int(torch.randint(hi - lo + 1, (1,), generator=keyed_generator(self.seed, Purpose.WINDOW, step)))
        train = list(range(start, start + size))
        stochastic = [cfg.noise_level > 0 and t < usable and (t in train or cfg.sde_outside_window)
                      for t in range(num_steps)]
        return ExplorationPlan(stochastic=stochastic, train_steps=train)
