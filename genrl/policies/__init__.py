"""Policies: model adapters that sample stochastically and re-score their own samples."""

from genrl.policies.ar_video import ARVideoPolicy  # noqa: F401
from genrl.policies.flow_image import FlowImagePolicy  # noqa: F401
from genrl.policies.scene_diffusion import SceneDiffusionPolicy  # noqa: F401
from genrl.policies.vlm import VLMPolicy  # noqa: F401
