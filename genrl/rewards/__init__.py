"""Rewards: plain callables ``reward(samples, contexts) -> tensor [B]``, weighted into [B, C]."""

from genrl.rewards import image  # noqa: F401  (registers the image rewards)
from genrl.rewards.base import RewardSet  # noqa: F401
