"""KVPO's exploration: causal history routing on the KV cache of an autoregressive video generator.

Each prompt is one *fork group* of ``branches + 1`` rows (``trainer.group_size``). The group shares a
prefix (blocks before the fork block, generated once), the initial noise and the tail noise (keyed by
the group, not the row). Row 0 is the **anchor**: the unperturbed rollout. For the ``window_blocks``
blocks from the fork on, branch k attends to the sink + the ``keep_recent`` nearest frames + ``n =
window_frames - keep_recent`` *older* frames from the cache pool (frames between the sink and the local
window) instead of the full local window — the only difference between the rows of a group is which
history they see. After the window every row attends normally to its own (now different) cache.

Routing: one keyed permutation of the pool per group; branch k takes the k-th disjoint slice of n frames.
If the pool is too small for G disjoint slices, the branches take G *distinct* n-subsets of the pool
(keyed), so that no two branches of a group see the same history. The fork block is drawn per training
step (keyed) among the blocks where routing fits, so a batch advances in lockstep.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from genrl.config.validate import option
from genrl.models.ar_video import window_context
from genrl.registry import EXPLORERS
from genrl.rng import Purpose, keyed_generator


@dataclass
class KVPOPlan:
    kind = "kvpo"
    seed: int
    step: int
    branches: int
    window_blocks: int
    keep_recent: int
    fork_blocks: list[int] | None

    def pool(self, start: int, model_cfg) -> list[int]:
        """Frames a branch may route in at a fork starting at frame ``start``: older than the local window."""
        return list(range(model_cfg.sink_frames, max(model_cfg.sink_frames, start - model_cfg.window_frames)))

    def routed_count(self, model_cfg) -> int:
        return model_cfg.window_frames - self.keep_recent

    def _fits(self, start: int, model_cfg) -> bool:
        return math.comb(len(self.pool(start, model_cfg)), self.routed_count(model_cfg)) >= self.branches

    def fork_block(self, starts: list[int], model_cfg) -> int:
        """The fork block of this step: keyed among blocks where G distinct routings exist and the window fits."""
        last = len(starts) - self.window_blocks
        ok = [b for b in range(1, last + 1) if self._fits(starts[b], model_cfg)]
        if self.fork_blocks is not None:
            ok = [b for b in ok if b in self.fork_blocks]
        if not ok:
            n = self.routed_count(model_cfg)
            raise ValueError(
                f"explorer.kvpo: no block of a {starts[-1] + model_cfg.frames_per_block}-frame video can fork: routing "
                f"{n} frame(s) for {self.branches} branches needs a pool older than sink ({model_cfg.sink_frames}) + "
                f"window ({model_cfg.window_frames}) frames with at least {self.branches} distinct {n}-frame choices, "
                f"and {self.window_blocks} window block(s) after the fork; use longer videos, fewer branches or a "
                f"larger keep_recent (allowed fork_blocks: {self.fork_blocks})")
        g = keyed_generator(self.seed, Purpose.BRANCH, self.step)
        return ok[int(torch.randint(len(ok), (1,), generator=g))]

    def routes(self, group_key: int, start: int, model_cfg) -> list[list[int]]:
        """The routed older frames of each branch of group ``group_key`` at a fork starting at ``start``."""
        pool, n, G = self.pool(start, model_cfg), self.routed_count(model_cfg), self.branches
        g = keyed_generator(self.seed, Purpose.BRANCH, self.step, int(group_key))
        if len(pool) >= G * n:
            perm = [pool[i] for i in torch.randperm(len(pool), generator=g).tolist()]
            return [sorted(perm[k * n:(k + 1) * n]) for k in range(G)]
        subsets = list(itertools.combinations(pool, n))
        order = torch.randperm(len(subsets), generator=g).tolist()
        return [sorted(subsets[i]) for i in order[:G]]

    def branch_context(self, start: int, routed: list[int], model_cfg) -> list[int]:
        """Sink + the ``keep_recent`` nearest frames before ``start`` + the routed frames."""
        sink = range(min(model_cfg.sink_frames, start))
        recent = range(max(0, start - self.keep_recent), start)
        return sorted(set(sink) | set(recent) | set(routed))


@EXPLORERS.register("kvpo")
class KVPOExplorer:
    """Fork groups with routed KV history (see the module doc); pairs with objective ``kvpo`` and the
    ``anchor_relative`` advantage."""

    policies = ("ar_video",)

    @dataclass
    class Config:
        branches: int = option(default=4, help="G: routed branches per fork group (trainer.group_size = G + 1, the anchor).")
        window_blocks: int = option(default=2, help="P: blocks after the fork generated with routed history.")
        keep_recent: int = option(default=2, help="m: nearest window frames every branch keeps; the rest are routed.")
        fork_blocks: list[int] | None = option(default=None, help="Blocks the fork may be drawn from; null = all that fit.")

        def validate(self) -> None:
            if self.branches < 2:
                raise ValueError("branches: expected >= 2 (a softmax over one branch has no gradient)")
            if self.window_blocks < 1 or self.keep_recent < 0:
                raise ValueError("window_blocks: expected window_blocks >= 1 and keep_recent >= 0")

    def __init__(self, config: Config, *, seed: int) -> None:
        self.config, self.seed = config, seed

    def plan(self, step: int, num_steps: int | None = None) -> KVPOPlan:
        c = self.config
        return KVPOPlan(self.seed, step, c.branches, c.window_blocks, c.keep_recent, c.fork_blocks)


def kvpo_rollout(policy, model, conds: torch.Tensor, group_keys: torch.Tensor, *, step: int, seed: int,
                 plan: KVPOPlan) -> tuple[dict, dict]:
    """Generate this piece's fork groups (anchor first); returns (tensors, meta) for the rollout."""
    from genrl.policies.ar_video import SCOPE_AFTER, SCOPE_CHUNK, SCOPE_PREFIX

    mc = policy.model_config
    if plan.keep_recent >= mc.window_frames:
        raise ValueError(f"explorer.keep_recent: expected < the model's window_frames ({mc.window_frames}), "
                         f"got {plan.keep_recent}: nothing would be routed")
    B, G1 = len(conds), plan.branches + 1
    keys = group_keys.tolist()
    if B % G1 or any(len(set(keys[i:i + G1])) != 1 for i in range(0, B, G1)):
        raise ValueError(f"kvpo: expected whole fork groups of branches + 1 = {G1} rows (set trainer.group_size: {G1}); "
                         f"got {B} rows with group ids {keys[:2 * G1]}...")
    heads = torch.arange(0, B, G1, device=conds.device)
    head_keys = keys[::G1]
    starts = policy.block_starts(conds.shape[1])
    fork = plan.fork_block(starts, mc)
    window = range(fork, fork + plan.window_blocks)
    is_anchor = torch.zeros(B, dtype=torch.bool, device=conds.device)
    is_anchor[heads] = True
    branch_rows = torch.nonzero(~is_anchor).flatten()
    # 1. the shared prefix, once per group
    clean_h, cache_h, _ = policy.sample_blocks(model, conds[heads], head_keys, seed=seed, purpose=Purpose.INIT_NOISE,
                                               step=step, blocks=range(fork))
    rep = torch.arange(len(heads), device=conds.device).repeat_interleave(G1)
    cache, clean = cache_h.select(rep), clean_h[rep].clone()
    fork_cache = cache.select(branch_rows)  # the unperturbed fork-time cache of the branches (for the TVE)
    # 2. routed contexts of the window blocks: row 0 of a group is the anchor (its normal window)
    routed = torch.full((B, plan.routed_count(mc)), -1, dtype=torch.long)
    contexts = {}
    for b in window:
        ctx = []
        for g, key in enumerate(head_keys):
            ctx.append(window_context(starts[b], mc))
            for k, frames in enumerate(plan.routes(key, starts[fork], mc)):
                ctx.append(plan.branch_context(starts[b], frames, mc))
                routed[g * G1 + 1 + k] = torch.tensor(frames)
        contexts[b] = torch.tensor(ctx, dtype=torch.long, device=conds.device)
    # 3. window and tail, every row continuing its own cache; prefix/initial/tail noise keyed by the group
    clean, _, traj = policy.sample_blocks(model, conds, keys, seed=seed, purpose=Purpose.INIT_NOISE, step=step,
                                          cache=cache, clean=clean, blocks=range(fork, len(starts)), contexts=contexts,
                                          state_blocks=window)
    states = torch.stack([traj[b][0] for b in window], 1)  # [B, P, K+1, C, f, H, W]
    energy = torch.zeros(B, device=conds.device)
    energy[branch_rows] = policy.branch_energy(model, fork_cache, clean[branch_rows], conds[branch_rows],
                                               states[branch_rows], fork)
    fpb = mc.frames_per_block
    scope = torch.full(conds.shape[:2], SCOPE_AFTER, dtype=torch.long, device=conds.device)
    scope[:, :starts[fork]] = SCOPE_PREFIX
    scope[:, starts[fork]:starts[fork] + plan.window_blocks * fpb] = SCOPE_CHUNK
    tensors = {"clean": clean, "states": states, "energy": energy, "is_anchor": is_anchor, "scope": scope,
               "routed_frames": routed.to(conds.device), "fork_block": torch.full((B,), fork, device=conds.device)}
    return tensors, {"kind": "kvpo", "fork_block": fork, "window_blocks": plan.window_blocks}
