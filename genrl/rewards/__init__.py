"""Rewards: plain callables ``reward(samples, contexts) -> tensor [B]``, weighted into [B, C]."""

from genrl.rewards import external, image  # noqa: F401  (registers the built-in rewards)
from genrl.rewards.base import RewardSet  # noqa: F401
