"""The reward seam.

A reward component is any callable ``reward(samples, contexts, **info) -> Tensor[B]`` (TRL's
contract, adapted to tensors). Components registered in ``REWARDS`` are classes with a ``Config``
(a subclass of :class:`RewardConfig`); two optional class attributes widen the contract:

* ``groupwise = True``: the component is called with ``groups=`` (the group id of each sample) and
  may score samples relative to their group (e.g. ``group_rank``: the rank within the group). It
  must see whole groups: see :class:`RewardStream` for when it is scored;
* ``remote = True``: the component is slow or remote (a reward server, a VLM judge); it runs on its
  own worker thread unless its config says otherwise.

Where a component runs is its ``executor`` (see :class:`RewardConfig`): ``local`` (in the scoring
thread), ``thread`` (a fresh daemon thread per call, which is what makes ``call_timeout_s``
enforceable) or ``process`` (a spawned child process with its own GIL and memory,
``genrl/rewards/worker.py``). A call that raises or passes ``call_timeout_s`` is retried
``retries`` times with a short exponential backoff, then its samples get NaN.

Non-finite values and failed calls are not fatal one by one: they are counted, the sample's group
is left out of the update, and the run stops with a clear message once the share of bad samples
passes ``max_invalid_share``. A component that returns the wrong number of values is a bug, not a
bad value: that raises at once (never retried).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from genrl.config.validate import option
from genrl.registry import REWARDS

RewardFn = Callable[..., torch.Tensor]
Executor = Literal["local", "thread", "process"]


@dataclass
class RewardConfig:
    """Fields every reward component has: its weight, and how its calls are run."""

    weight: float = option(default=1.0, help="Weight of this component in the combined reward.")
    executor: Executor | None = option(
        default=None,
        help="Where the component runs: local (in the scoring thread), thread (its own thread per call; "
             "needed for call_timeout_s) or process (a spawned child process: its own GIL and memory). "
             "null = thread for remote components (http, vlm_judge) or when call_timeout_s is set, else local.",
    )
    retries: int = option(
        default=0, help="Re-runs of a call that raised or passed call_timeout_s (backoff 0.1 s, 0.2 s, ...); "
                        "after the last one its samples get NaN (counted against max_invalid_reward_share).",
    )
    call_timeout_s: float | None = option(
        default=None,
        help="Longest wait for one call of a thread/process component: a late thread is abandoned, a late "
             "process is killed and restarted; then the call is retried or its samples get NaN. null = no limit.",
    )

    def __post_init__(self) -> None:
        # __post_init__ rather than validate(): component configs override validate() without calling super.
        if self.retries < 0:
            raise ValueError("retries: must be >= 0")
        if self.call_timeout_s is not None:
            if self.call_timeout_s <= 0:
                raise ValueError("call_timeout_s: must be > 0 (or null for no limit)")
            if self.executor == "local":
                raise ValueError("call_timeout_s: a local call cannot be interrupted; use executor: thread or "
                                 "process (or leave executor null)")


@dataclass(frozen=True)
class CallPolicy:
    """How RewardSet runs one component (resolved from its config and class attributes)."""

    executor: str
    retries: int = 0
    timeout_s: float | None = None


def call_policy(fn: RewardFn, config: Any = None) -> CallPolicy:
    config = config if config is not None else getattr(fn, "config", None)
    executor = getattr(config, "executor", None)
    timeout = getattr(config, "call_timeout_s", None)
    if executor is None:
        executor = "thread" if getattr(fn, "remote", False) or timeout is not None else "local"
    return CallPolicy(executor, int(getattr(config, "retries", 0) or 0), timeout)


def build_reward(name: str, config: Any, **kwargs: Any) -> RewardFn:
    """The registered component ``name``, or (``executor: process``) a handle on one built in a child process."""
    if getattr(config, "executor", None) == "process":
        from genrl.rewards.worker import ProcessReward

        return ProcessReward(name, config, **kwargs)
    return REWARDS.get(name)(config, **kwargs)


def in_daemon_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """Run ``fn`` on a fresh daemon thread. A call that never returns is abandoned by whoever waits on
    the future with a timeout, and (being a daemon) never keeps the interpreter from exiting."""
    future: Future = Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to whoever waits
                future.set_exception(exc)

    threading.Thread(target=run, name=f"genrl-reward-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return future


@dataclass
class RewardOutput:
    values: torch.Tensor  # [B, C] raw component values (NaN where a component failed)
    valid: torch.Tensor  # [B] bool: every component finite
    names: list[str]
    seconds: float = 0.0  # wall time the scoring took (for time/reward_hidden)


class InvalidRewardError(RuntimeError):
    pass


class RewardSet:
    """Weighted reward components; returns one column per component.

    ``components`` are ``(name, fn, weight)`` or ``(name, fn, weight, config)``; the call policy
    (executor, retries, timeout) comes from ``config``, else from ``fn.config``, else defaults.
    """

    backoff_s = 0.1  # first retry waits this long, doubled each time (capped at 2 s)

    def __init__(self, components: Sequence[tuple], *, max_invalid_share: float = 0.05) -> None:
        if not components:
            raise ValueError("a recipe needs at least one reward component")
        self.names = [c[0] for c in components]
        self.fns = [c[1] for c in components]
        self.weights = torch.tensor([c[2] for c in components], dtype=torch.float32)
        self.policies = [call_policy(c[1], c[3] if len(c) > 3 else None) for c in components]
        for name, fn, policy in zip(self.names, self.fns, self.policies):
            if policy.executor == "process" and not getattr(fn, "in_worker_process", False):
                raise ValueError(f"reward {name!r}: executor 'process' needs the component built in a worker "
                                 f"(genrl.rewards.base.build_reward), got a local {type(fn).__name__}")
        self.max_invalid_share = max_invalid_share
        self.invalid_count = 0
        self.total_count = 0
        self._queue: ThreadPoolExecutor | None = None
        self._closes = 0  # bumped by close(): a call in flight then is not retried (no worker restarted)

    def groupwise(self, i: int) -> bool:
        return bool(getattr(self.fns[i], "groupwise", False))

    # ------------------------------------------------------------ one component
    def _attempt(self, i: int, samples, contexts, kwargs: dict) -> Any:
        fn, policy = self.fns[i], self.policies[i]
        if policy.executor == "process":  # the worker enforces the timeout (and kills itself past it)
            return fn(samples, contexts, timeout=policy.timeout_s, **kwargs)
        if policy.executor == "thread":
            return in_daemon_thread(fn, samples, contexts, **kwargs).result(timeout=policy.timeout_s)
        return fn(samples, contexts, **kwargs)

    def _call(self, i: int, samples, contexts, groups: torch.Tensor | None) -> torch.Tensor:
        """One component's column: retried on failure/timeout, NaN once the retries are spent."""
        fn, policy, n = self.fns[i], self.policies[i], len(contexts)
        label = getattr(fn, "__name__", self.names[i])
        kwargs = {"groups": groups} if self.groupwise(i) else {}
        closes = self._closes
        for attempt in range(policy.retries + 1):
            try:
                out = self._attempt(i, samples, contexts, kwargs)
                break
            except Exception as exc:  # a failing component costs its samples, not the run (counted by account())
                late = isinstance(exc, (TimeoutError, FutureTimeoutError))
                why = f"no answer within call_timeout_s={policy.timeout_s}" if late else repr(exc)
                if attempt < policy.retries and closes == self._closes:
                    print(f"[genrl] reward {label!r} failed ({why}); retry {attempt + 1} of {policy.retries}")
                    time.sleep(min(self.backoff_s * 2**attempt, 2.0))
                    continue
                tries = f" after {attempt + 1} tries" if attempt else ""
                print(f"[genrl] reward {label!r} failed{tries} ({why}); its {n} samples are skipped")
                return torch.full((n,), float("nan"))
        out = torch.as_tensor(out, dtype=torch.float32).detach().cpu().reshape(-1)
        if len(out) != n:
            raise ValueError(f"reward {label!r} returned {len(out)} values for {n} samples")
        return out

    # ------------------------------------------------------------ a batch
    def score(self, samples, contexts, *, groups: torch.Tensor | None = None,
              only: Sequence[int] | None = None) -> RewardOutput:
        """Score now (in this thread); non-local components run in parallel. ``only``: these columns."""
        t0 = time.perf_counter()
        idx = list(range(len(self.fns))) if only is None else list(only)
        futures = {i: in_daemon_thread(self._call, i, samples, contexts, groups)
                   for i in idx if self.policies[i].executor != "local"}
        cols = {i: self._call(i, samples, contexts, groups) for i in idx if i not in futures}
        cols.update({i: f.result() for i, f in futures.items()})  # each _call is bounded by its own timeout
        values = torch.stack([cols[i] for i in idx], 1)
        return RewardOutput(values, torch.isfinite(values).all(1), [self.names[i] for i in idx],
                            time.perf_counter() - t0)

    def submit(self, samples, contexts, *, groups: torch.Tensor | None = None,
               only: Sequence[int] | None = None) -> Future:
        """Start scoring on the scoring thread and return a future of its RewardOutput.

        One scoring thread, so batches are scored one at a time in submission order while the
        caller goes on (generating the next piece of the rollout)."""
        if self._queue is None:
            self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genrl-rewards")
        return self._queue.submit(self.score, samples, contexts, groups=groups, only=only)

    def stream(self, *, whole_groups: bool) -> RewardStream:
        """Score a step's rollout piece by piece as it is generated (see RewardStream)."""
        return RewardStream(self, whole_groups=whole_groups)

    def close(self) -> None:
        """Stop worker processes and the scoring thread (called at the end of training, also on error).

        Nothing is lost for later use: the scoring thread and workers start again on the next call."""
        self._closes += 1
        if self._queue is not None:
            self._queue.shutdown(wait=False, cancel_futures=True)
            self._queue = None
        for fn in self.fns:
            if getattr(fn, "in_worker_process", False):
                fn.close()

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


def _concat(parts: Sequence[Any]) -> Any:
    """Concatenate per-piece reward inputs (tensors, or lists such as texts)."""
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(list(parts))
    return [x for p in parts for x in p]


@dataclass
class RewardStream:
    """Scores a step's rollout piece by piece: piece k is scored while piece k+1 is generated.

    The rule for group-wise components: they are scored with each piece when every piece holds
    whole groups (``whole_groups``), otherwise once, over all pieces together, after the last one
    (their rank or normalisation needs the whole group). Other components are scored per piece.
    """

    rewards: RewardSet
    whole_groups: bool
    pending: list[Future] = field(default_factory=list)
    parts: list[tuple] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.rewards.fns)
        self.later = [] if self.whole_groups else [i for i in range(n) if self.rewards.groupwise(i)]
        self.now = [i for i in range(n) if i not in self.later]

    def add(self, samples, contexts, *, groups: torch.Tensor) -> None:
        if self.now:
            self.pending.append(self.rewards.submit(samples, contexts, groups=groups, only=self.now))
        if self.later:  # kept until the last piece
            self.parts.append((samples, contexts, groups))

    def result(self) -> RewardOutput:
        """Wait for every piece; the rewards of all pieces in order, ``seconds`` = total scoring time."""
        later = None
        if self.later:
            samples, contexts, groups = (_concat(p) for p in zip(*self.parts))
            later = self.rewards.submit(samples, contexts, groups=groups, only=self.later)
        outs = [f.result() for f in self.pending]
        n = sum(len(o.values) for o in outs) if outs else len(later.result().values)
        values = torch.empty(n, len(self.rewards.fns))
        if outs:
            values[:, self.now] = torch.cat([o.values for o in outs])
        if later is not None:
            values[:, self.later] = later.result().values
        seconds = sum(o.seconds for o in outs) + (later.result().seconds if later is not None else 0.0)
        return RewardOutput(values, torch.isfinite(values).all(1), list(self.rewards.names), seconds)
