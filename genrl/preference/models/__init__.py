"""Reward-model architectures (registered in ``REWARD_MODELS``) and their folder format."""

from genrl.preference.models import image, image_text, scene, video  # noqa: F401
from genrl.preference.models.base import (  # noqa: F401
    RewardModel,
    RewardModelError,
    load_reward_model,
    read_model_info,
    save_reward_model,
)
