"""The reward seam.

A reward component is any callable ``reward(samples, contexts, **info) -> Tensor[B]`` (TRL's
contract, adapted to tensors). Components registered in ``REWARDS`` are classes with a ``Config``;
two optional class attributes widen the contract:

* ``groupwise = True``: the component is called with ``groups=`` (the group id of each sample) and
  may score samples relative to their group (e.g. a rank within the group);
* ``remote = True``: the component is slow or remote (a reward server, a VLM judge); ``RewardSet``
  scores such components on a worker thread, so the loop can overlap them with other work.

Non-finite values and exceptions (a NaN from a model, a failed request) are not fatal one by one:
they are counted, the sample's group is left out of the update, and the run stops with a clear
message once the share of bad samples passes ``max_invalid_share``. A component that returns the
wrong number of values is a bug, not a bad value: that raises at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

RewardFn = Callable[..., torch.Tensor]


@dataclass
class RewardOutput:
    values: torch.Tensor  # [B, C] raw component values (NaN where a component failed)
    valid: torch.Tensor  # [B] bool: every component finite
    names: list[str]


class InvalidRewardError(RuntimeError):
    pass


class RewardSet:
    """Weighted reward components; returns one column per component."""

    def __init__(self, components: Sequence[tuple[str, RewardFn, float]], *, max_invalid_share: float = 0.05) -> None:
        if not components:
            raise ValueError("a recipe needs at least one reward component")
        self.names = [n for n, _, _ in components]
        self.fns = [f for _, f, _ in components]
        self.weights = torch.tensor([w for _, _, w in components], dtype=torch.float32)
        self.max_invalid_share = max_invalid_share
        self.invalid_count = 0
        self.total_count = 0
        self._pool: ThreadPoolExecutor | None = None

    def _call(self, fn: RewardFn, samples, contexts, groups: torch.Tensor | None) -> torch.Tensor:
        kwargs = {"groups": groups} if getattr(fn, "groupwise", False) else {}
        try:
            out = fn(samples, contexts, **kwargs)
        except Exception as exc:  # a failing component costs its samples, not the run (counted by account())
            print(f"[genrl] reward {getattr(fn, '__name__', fn)!r} failed: {exc!r}; its samples are skipped")
            return torch.full((len(contexts),), float("nan"))
        out = torch.as_tensor(out, dtype=torch.float32).detach().cpu().reshape(-1)
        if len(out) != len(contexts):
            raise ValueError(f"reward {getattr(fn, '__name__', fn)!r} returned {len(out)} values for {len(contexts)} samples")
        return out

    def score(self, samples, contexts, *, groups: torch.Tensor | None = None) -> RewardOutput:
        remote = [i for i, f in enumerate(self.fns) if getattr(f, "remote", False)]
        futures: dict[int, Future] = {}
        if remote:
            self._pool = self._pool or ThreadPoolExecutor(max_workers=len(remote))
            futures = {i: self._pool.submit(self._call, self.fns[i], samples, contexts, groups) for i in remote}
        cols = [futures[i].result() if i in futures else self._call(f, samples, contexts, groups)
                for i, f in enumerate(self.fns)]
        values = torch.stack(cols, 1)
        return RewardOutput(values, torch.isfinite(values).all(1), list(self.names))

    def submit(self, samples, contexts, *, groups: torch.Tensor | None = None) -> Future:
        """Start scoring and return a future (the loop waits at depth 0; later modes overlap)."""
        self._pool = self._pool or ThreadPoolExecutor(max_workers=2)
        return self._pool.submit(self.score, samples, contexts, groups=groups)

    def account(self, valid: torch.Tensor) -> None:
        """Count invalid samples over the whole run; stop past the allowed share."""
        self.invalid_count += int((~valid).sum())
        self.total_count += len(valid)
        share = self.invalid_count / max(self.total_count, 1)
        if self.invalid_count and share > self.max_invalid_share:
            raise InvalidRewardError(
                f"{self.invalid_count} of {self.total_count} samples ({share:.1%}) got a non-finite or failed "
                f"reward, above trainer.max_invalid_reward_share={self.max_invalid_share:.1%}; "
                f"check the reward components {self.names}"
            )
