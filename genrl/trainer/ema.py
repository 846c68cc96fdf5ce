"""Exponential moving average of the trained parameters (what ``genrl sample`` uses when present)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    def __init__(self, params: dict[str, nn.Parameter], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.shadow = {n: p.detach().clone().float() for n, p in params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach().float(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) copies on the CPU; a collective under FSDP, where every rank calls it."""
        from genrl.trainer.checkpoint import full_tensor

        return {n: full_tensor(t).cpu().clone() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from genrl.trainer.checkpoint import shard_like

        for n in self.shadow:
            self.shadow[n].copy_(shard_like(state[n].to(self.shadow[n].device), self.shadow[n]))

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily swap the EMA weights in (for evaluation)."""
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(backup[n])
