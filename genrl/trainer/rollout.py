"""The rollout batch that flows from a policy through rewards and advantages to the objective."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Rollout:
    """Per-sample tensors (leading dim = batch) plus batch-wide metadata.

    Policies decide what they store (trajectories, old log-probs, token ids, branch energies...);
    the loop only relies on ``prompts``/``sample_ids`` and, once scored, ``rewards``/``advantages``.
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        if len(value) != len(self):
            raise ValueError(f"rollout field {key!r} has {len(value)} rows, expected {len(self)}")
        self.tensors[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def select(self, index: torch.Tensor | Sequence[int]) -> Rollout:
        index = torch.as_tensor(index, dtype=torch.long)
        return Rollout({k: v[index.to(v.device)] for k, v in self.tensors.items()}, dict(self.meta))

    def to(self, device: torch.device | str) -> Rollout:
        return Rollout({k: v.to(device) for k, v in self.tensors.items()}, dict(self.meta))

    @staticmethod
    def cat(parts: Sequence[Rollout]) -> Rollout:
        keys = parts[0].tensors.keys()
        return Rollout({k: torch.cat([p.tensors[k] for p in parts]) for k in keys}, dict(parts[0].meta))
