"""Rewards: plain callables ``reward(samples, contexts) -> tensor [B]``, weighted into [B, C]."""

from genrl.rewards import external, image, learned  # noqa: F401  (registers the built-in rewards)
from genrl.rewards.base import RewardSet  # noqa: F401

from genrl.rewards import clip, vlm_judge  # noqa: F401  # isort: skip  (the hub and VLM-judge rewards)
from genrl.rewards import group  # noqa: F401, E402  # isort: skip  (group-wise rewards: group_rank)
from genrl.rewards import answers  # noqa: F401, E402  # isort: skip  (verifiable answer rewards)
from genrl.rewards import video  # noqa: F401, E402  # isort: skip  (moving-digit video rewards: text, motion, quality)
from genrl.rewards import compressibility  # noqa: F401, E402  # isort: skip  (DDPO JPEG compressibility)
