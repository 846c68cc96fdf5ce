"""Bad values met while running are skipped and counted, never silently absorbed.

* a non-finite loss or gradient norm (or one above ``trainer.skip_grad_norm``): the optimizer update
  is skipped, the offending minibatch is saved to ``RUN_DIR/faults/`` for inspection, and the run
  stops once the skipped updates pass ``trainer.max_skipped_update_share`` of the run's planned updates;
* a checkpoint that cannot be written (disk full, I/O error): the previous one stays valid, the
  failure is counted and reported; the final checkpoint must succeed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genrl.trainer.checkpoint import save_tensors
from genrl.trainer.rollout import Rollout


class TooManyFaultsError(RuntimeError):
    pass


class FaultLog:
    def __init__(self, run_dir: Path, *, max_skipped_update_share: float, skip_grad_norm: float | None,
                 planned_updates: int) -> None:
        self.run_dir = Path(run_dir)
        self.planned_updates = planned_updates
        self.max_skipped_update_share = max_skipped_update_share
        self.skip_grad_norm = skip_grad_norm
        self.skipped_updates = 0
        self.total_updates = 0
        self.checkpoint_failures = 0

    def bad_update(self, grad_norm: float) -> bool:
        """Whether an update with this (global) gradient norm must be skipped."""
        finite = bool(torch.isfinite(torch.tensor(grad_norm)))
        return not finite or (self.skip_grad_norm is not None and grad_norm > self.skip_grad_norm)

    def record_update(self, skipped: bool, *, grad_norm: float, batch: Rollout | None, tag: str, rank: int) -> None:
        self.total_updates += 1
        if not skipped:
            return
        self.skipped_updates += 1
        print(f"[genrl] update {tag} skipped: gradient norm {grad_norm} (non-finite or above trainer.skip_grad_norm)")
        if batch is not None:
            out = self.run_dir / "faults"
            out.mkdir(parents=True, exist_ok=True)
            save_tensors(out / f"{tag}_rank{rank}.safetensors", {k: v.float() if v.is_floating_point() else v
                                                                 for k, v in batch.tensors.items()})
        # The share is of the run's planned updates, so one early blow-up does not end a long run.
        share = self.skipped_updates / self.planned_updates
        if share > self.max_skipped_update_share:
            raise TooManyFaultsError(
                f"{self.skipped_updates} updates ({share:.1%} of the run's {self.planned_updates}) had a non-finite "
                f"or exploding gradient, above trainer.max_skipped_update_share={self.max_skipped_update_share:.1%}; "
                f"the offending minibatches are in {self.run_dir / 'faults'}")

    def state_dict(self) -> dict:
        return {"skipped_updates": self.skipped_updates, "total_updates": self.total_updates,
                "checkpoint_failures": self.checkpoint_failures}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_updates = state.get("skipped_updates", 0)
        self.total_updates = state.get("total_updates", 0)
        self.checkpoint_failures = state.get("checkpoint_failures", 0)
