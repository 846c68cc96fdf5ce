"""The optimizer side of the pretraining jobs: warm-up + cosine LR, one clipped AdamW step, and an EMA of
the weights that is what gets saved (warmed up: the decay grows from 0.1 towards ``decay``)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class PretrainOptimizer:
    """AdamW + warm-up/cosine schedule + gradient clipping + optional EMA over ``params``."""

    def __init__(self, params: list[torch.nn.Parameter], *, lr: float, steps: int, warmup: int,
                 weight_decay: float = 0.0, ema_decay: float = 0.0, max_grad_norm: float = 1.0) -> None:
        self.params, self.max_grad_norm, self.ema_decay = params, max_grad_norm, ema_decay
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: warmup_cosine(s, steps, warmup))
        self.ema = [p.detach().clone() for p in params] if ema_decay > 0 else None
        self.steps = 0

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            with torch.no_grad():
                d = min(self.ema_decay, (1 + self.steps) / (10 + self.steps))
                for e, p in zip(self.ema, self.params):
                    e.lerp_(p.detach(), 1 - d)
        self.steps += 1

    def apply_ema(self) -> None:
        """Copy the EMA weights into the model (before saving)."""
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema, self.params):
                    p.copy_(e)
