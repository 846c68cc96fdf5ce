"""Reward components in a child process (``executor: process``).

A heavy reward model (a VLM, an OCR pipeline) scored in the trainer's process competes for its GIL
and memory. Here the component is built and called in a spawned child process: the child imports
the component's module, builds it from its registered name and config (so nothing but plain data
crosses at start-up) and then answers ``score`` requests over a pipe. Tensors cross as CPU tensors
(pickled bytes, no shared-memory file descriptors to leak). The child runs 1 torch thread: the
trainer owns the cores.

Never hang: every wait has a bound. A call that passes its timeout gets the child killed (a busy
child's late answer would otherwise be taken for the next call's) and the next call starts a fresh
one; a child that dies is noticed at once (end of file on the pipe). The child is a daemon process,
so it also dies with the trainer; ``close()`` stops it at the end of training.
"""

from __future__ import annotations

import importlib
import multiprocessing
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import torch

from genrl.registry import REWARDS


class RewardWorkerError(RuntimeError):
    """The worker process could not build the component, failed a call, or died."""


def _send(conn, obj: Any) -> None:
    conn.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _serve(conn, name: str, module: str, config: Any, kwargs: dict[str, Any]) -> None:
    """The child's main loop: build the component, then score until told to stop or orphaned."""
    torch.set_num_threads(1)
    try:
        importlib.import_module("genrl.rewards")  # the built-in registrations
        importlib.import_module(module)  # the component's own module (a user's or a test's registration)
        fn = REWARDS.get(name)(config, **kwargs)
        info = {"name": str(getattr(fn, "__name__", name)),
                "input_files": {k: str(v) for k, v in getattr(fn, "input_files", {}).items()}}
    except Exception as exc:
        _send(conn, ("error", f"{exc!r}"))
        return
    _send(conn, ("ready", info))
    groupwise = bool(getattr(fn, "groupwise", False))
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the trainer is gone
        if message[0] == "stop":
            return
        _, samples, contexts, groups = message
        try:
            out = fn(samples, contexts, groups=groups) if groupwise else fn(samples, contexts)
            reply = ("ok", torch.as_tensor(out, dtype=torch.float32).detach().cpu())
        except Exception as exc:
            reply = ("error", f"{exc!r}")
        _send(conn, reply)


class ProcessReward:
    """A handle on reward component ``name`` living in a spawned child process.

    Callable like the component itself, plus ``timeout=`` (seconds to wait for the answer). Class
    attributes of the component (``groupwise``, ``remote``, ``best_value``) are copied; its
    ``__name__`` and ``input_files`` come from the child once it is built.
    """

    in_worker_process = True

    def __init__(self, name: str, config: Any, *, startup_timeout_s: float = 600.0, **build_kwargs: Any) -> None:
        cls = REWARDS.get(name)
        self.name, self.config = name, config
        self.groupwise = bool(getattr(cls, "groupwise", False))
        self.remote = bool(getattr(cls, "remote", False))
        if hasattr(cls, "best_value"):
            self.best_value = cls.best_value
        self.startup_timeout_s = startup_timeout_s
        self._module = cls.__module__
        self._kwargs = build_kwargs
        self._lock = threading.Lock()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn = None
        self.__name__ = name
        self.input_files: dict[str, Path] = {}
        self.start()  # build errors surface now, before any training work

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork: never copy a trainer's threads/CUDA state
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_serve, args=(child, self.name, self._module, self.config, self._kwargs),
                              name=f"genrl-reward-{self.name}", daemon=True)
        process.start()
        child.close()  # the child holds the only other end: its death is an end of file here
        self._process, self._conn = process, parent
        try:
            kind, payload = self._receive(self.startup_timeout_s)
        except BaseException:
            self.close()
            raise
        if kind != "ready":
            self.close()
            raise RewardWorkerError(f"reward {self.name!r} could not be built in its worker process: {payload}")
        self.__name__ = payload["name"]
        self.input_files = {k: Path(v) for k, v in payload["input_files"].items()}

    def _receive(self, timeout: float | None) -> tuple[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError(f"no answer from reward worker {self.name!r} within {timeout} s")
            if self._conn.poll(wait):
                try:
                    return pickle.loads(self._conn.recv_bytes())
                except (EOFError, OSError):
                    break
            if not self._process.is_alive():
                break
        self._process.join(1)
        raise RewardWorkerError(f"reward worker {self.name!r} exited (exit code {self._process.exitcode})")

    def __call__(self, samples, contexts, *, groups: torch.Tensor | None = None,
                 timeout: float | None = None) -> torch.Tensor:
        with self._lock:
            if not self.alive:
                self.close()
                self.start()
            try:
                _send(self._conn, ("score", samples, contexts, groups))
                kind, payload = self._receive(timeout)
            except (TimeoutError, RewardWorkerError, OSError):
                self.close(force=True)  # a late answer must never be read as the next call's; restarted next call
                raise
        if kind == "error":
            raise RewardWorkerError(f"reward {self.name!r} failed in its worker process: {payload}")
        return payload

    def close(self, *, force: bool = False) -> None:
        """Stop the child (politely unless ``force``, then by force); a later call starts a fresh one."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is None:
            return
        if process.is_alive() and not force:
            try:
                _send(conn, ("stop",))
            except OSError:
                pass
            process.join(2)
        if process.is_alive():
            process.kill()
            process.join(5)
        conn.close()
