"""Registries at the plug points of genrl: policies, explorers, rewards, advantage
estimators, objectives, prompt sources and benchmarks, plus the two plug points of preference
reward modelling (reward-model architectures and labelling rules). Nothing else is looked up by name.

A registered component is a class with a ``Config`` dataclass attribute; recipes name the
component (``name: sde``) and give its config fields next to the name.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Registry:
    """A named table of components of one kind (e.g. ``explorers``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise KeyError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} {name!r}: expected one of {self.names()}{hint}"


POLICIES = Registry("policies")
EXPLORERS = Registry("explorers")
REWARDS = Registry("rewards")
ADVANTAGES = Registry("advantage estimators")
OBJECTIVES = Registry("objectives")
PROMPTS = Registry("prompt sources")
BENCHMARKS = Registry("benchmarks")
REWARD_MODELS = Registry("reward model architectures")
LABEL_RULES = Registry("labelling rules")
