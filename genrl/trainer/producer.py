"""Rollout as a producer of batches.

Today the producer runs at depth 0 (generate step s with the current weights, then train on it).
The loop only ever asks ``producer.get(step)``, so an asynchronous or one-step-off-policy producer
(depth 1: generate s+1 while s trains) slots in here without forking the loop.
"""

from __future__ import annotations

import torch

from genrl.trainer.rollout import Rollout


class RolloutProducer:
    def __init__(self, policy, explorer, prompts, *, seed: int, prompts_per_step: int, group_size: int,
                 rank: int, world_size: int, depth: int = 0) -> None:
        if depth != 0:
            raise NotImplementedError("rollout_depth > 0 (asynchronous rollout) is not implemented yet")
        self.policy, self.explorer, self.prompts = policy, explorer, prompts
        self.seed, self.rank, self.world = seed, rank, world_size
        self.n_prompts, self.group_size = prompts_per_step, group_size

    @property
    def global_batch(self) -> int:
        return self.n_prompts * self.group_size

    def shard(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prompts, global sample ids, group ids) of this rank's contiguous slice of the step's batch."""
        n = self.global_batch
        if n % self.world:
            raise ValueError(f"the rollout batch ({n}) must divide evenly over {self.world} processes")
        prompts = self.prompts.sample(step, self.n_prompts).repeat_interleave(self.group_size)
        j = torch.arange(n)
        lo, hi = self.rank * n // self.world, (self.rank + 1) * n // self.world
        return prompts[lo:hi], (step * n + j)[lo:hi], (j // self.group_size)[lo:hi]

    def get(self, step: int) -> Rollout:
        prompts, ids, groups = self.shard(step)
        plan = self.explorer.plan(step, self.policy.config.num_steps)
        rollout = self.policy.rollout(prompts, ids, step=step, seed=self.seed, plan=plan,
                                      explorer_config=self.explorer.config)
        rollout["group_ids"] = groups.to(rollout["prompts"].device)
        return rollout
