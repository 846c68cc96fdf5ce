"""What every policy does with its trainable weights, whatever the model: list them, copy them out
for a checkpoint (whole, also under FSDP), load them back, and keep a reference policy for a KL term.

A policy class mixes this in and provides ``trainable_module()`` (the module the engine wraps) and
``config.lora`` (LoRA options or None).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn


class TrainableWeights:
    ref_module: nn.Module | None = None

    def trainable_module(self) -> nn.Module:  # pragma: no cover - every policy defines it
        raise NotImplementedError

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.trainable_module().named_parameters() if p.requires_grad}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) copies on the CPU; a collective under FSDP, where every rank calls it."""
        from genrl.trainer.checkpoint import full_tensor

        return {n: full_tensor(p.detach()).cpu().clone() for n, p in self.trainable_parameters().items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = self.trainable_parameters()
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(f"policy weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        from genrl.trainer.checkpoint import shard_like

        with torch.no_grad():
            for n, p in params.items():
                p.copy_(shard_like(state[n].to(p.device, p.dtype), p))

    def make_reference(self) -> None:
        """Full fine-tuning keeps a frozen copy as the KL reference; LoRA disables its adapter instead."""
        if self.config.lora is None and self.ref_module is None:
            self.ref_module = copy.deepcopy(self.trainable_module()).requires_grad_(False).eval()

    @contextlib.contextmanager
    def reference(self) -> Iterator[nn.Module]:
        if self.config.lora is not None:
            module = self.trainable_module()
            with module.disable_adapter():
                yield module
        else:
            if self.ref_module is None:
                raise RuntimeError("reference policy requested but make_reference() was not called")
            yield self.ref_module
