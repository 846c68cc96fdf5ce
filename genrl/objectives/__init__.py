"""Objectives (algorithms): a policy + a rollout minibatch with advantages -> a loss."""

from genrl.objectives.base import LossOutput  # noqa: F401
from genrl.objectives.diffusion_nft import DiffusionNFT  # noqa: F401
from genrl.objectives.flow_grpo import FlowGRPO  # noqa: F401
from genrl.objectives.gen_drive import GenDrive  # noqa: F401
from genrl.objectives.grpo import GRPO, Vogue  # noqa: F401
from genrl.objectives.kvpo import KVPO  # noqa: F401
