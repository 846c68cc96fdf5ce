"""Rollout as a producer of batches.

Today the producer runs at depth 0 (generate step s with the current weights, then train on it).
The loop asks ``producer.chunks(step)``: the step's shard in ``reward_chunks`` pieces, so that the
loop can score piece k while piece k+1 is generated (still on-policy: every piece is generated with
the weights of step s). Noise is keyed by sample id (``genrl/rng.py``) and the network runs in fixed
``forward_chunk`` rows, so the samples do not depend on how the shard is cut. An asynchronous or
one-step-off-policy producer (depth 1: generate s+1 while s trains) slots in here without forking
the loop.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from genrl.trainer.rollout import Rollout

ROUND_OFFSET = 1 << 40  # sample/group ids of dynamic-sampling refill rounds never meet a real step's


class RolloutProducer:
    def __init__(self, policy, explorer, prompts, *, seed: int, prompts_per_step: int, group_size: int,
                 rank: int, world_size: int, depth: int = 0, reward_chunks: int = 1) -> None:
        if depth != 0:
            raise NotImplementedError("rollout_depth > 0 (asynchronous rollout) is not implemented yet")
        self.policy, self.explorer, self.prompts = policy, explorer, prompts
        self.seed, self.rank, self.world = seed, rank, world_size
        self.n_prompts, self.group_size = prompts_per_step, group_size
        self.reward_chunks = reward_chunks
        self.bounds = self._chunk_bounds()
        start = self._shard_range()[0]
        self.chunks_hold_whole_groups = all((start + lo) % group_size == 0 and (start + hi) % group_size == 0
                                            for lo, hi in self.bounds)

    @property
    def global_batch(self) -> int:
        return self.n_prompts * self.group_size

    def _shard_range(self) -> tuple[int, int]:
        n = self.global_batch
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    def _chunk_bounds(self) -> list[tuple[int, int]]:
        """[lo, hi) of each piece within this rank's shard.

        Two candidates: whole groups spread as evenly as possible, and equal slices (which may cut
        groups). Whole groups win unless they cost more network calls: the policy runs its network
        on ``forward_chunk`` rows at a time (padding the last), so 160 samples in groups of 16 cut
        into 4 pieces of 40 take 4 calls per denoising step at forward_chunk 40, whole groups
        (32/48/32/48) 6.
        """
        start, end = self._shard_range()
        size, k = end - start, self.reward_chunks
        if not 1 <= k <= size:
            raise ValueError(f"trainer.reward_chunks: expected 1 to {size} (the samples each of the {self.world} "
                             f"process(es) generates per step), got {k}")
        rows = getattr(getattr(self.policy, "config", None), "forward_chunk", None) or 1

        def calls(cuts: list[int]) -> int:
            return sum(-(-(hi - lo) // rows) for lo, hi in zip(cuts[:-1], cuts[1:]))

        equal = [i * size // k for i in range(k + 1)]
        # Group boundaries inside the shard (a shard may start or end inside a group across processes).
        edges = [0, *(p for p in range(1, size) if (start + p) % self.group_size == 0), size]
        units = len(edges) - 1
        cuts = equal
        if units >= k:
            whole = [edges[i * units // k] for i in range(k + 1)]
            if calls(whole) <= calls(equal):
                cuts = whole
        return list(zip(cuts[:-1], cuts[1:]))

    def shard(self, step: int, round: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prompts, global sample ids, group ids) of this rank's contiguous slice of the step's batch.

        ``round`` > 0 is a refill of dynamic sampling: fresh prompts, sample ids offset past any real step's."""
        n = self.global_batch
        if n % self.world:
            raise ValueError(f"the rollout batch ({n}) must divide evenly over {self.world} processes")
        picked = self.prompts.sample(step, self.n_prompts, round=round) if round else self.prompts.sample(step, self.n_prompts)
        prompts = picked.repeat_interleave(self.group_size)
        j = torch.arange(n)
        lo, hi = self._shard_range()
        return prompts[lo:hi], (round * ROUND_OFFSET + step * n + j)[lo:hi], (j // self.group_size)[lo:hi]

    def chunks(self, step: int, round: int = 0) -> Iterator[Rollout]:
        """This rank's shard of step ``step`` (refill ``round``), generated piece by piece (``reward_chunks`` pieces)."""
        prompts, ids, groups = self.shard(step, round)
        plan = self.explorer.plan(step, getattr(self.policy.config, "num_steps", None))
        for lo, hi in self.bounds:
            # Prompt sources with items (questions + images) hand them over with globally unique group ids.
            key = round * ROUND_OFFSET + step * self.n_prompts + groups[lo:hi]
            extra = {"items": self.prompts.items(prompts[lo:hi]), "group_ids": key} if hasattr(self.prompts, "items") else {}
            piece = self.policy.rollout(prompts[lo:hi], ids[lo:hi], step=step, seed=self.seed, plan=plan,
                                        explorer_config=self.explorer.config, **extra)
            piece["group_ids"] = groups[lo:hi].to(piece["prompts"].device)
            yield piece

    def get(self, step: int) -> Rollout:
        """The whole shard at once (all pieces, concatenated)."""
        pieces = list(self.chunks(step))
        return pieces[0] if len(pieces) == 1 else Rollout.cat(pieces)
