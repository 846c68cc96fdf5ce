"""Exploration strategies: where the diversity of a rollout group comes from."""

from genrl.explorers.ddpm import DDPMExplorer  # noqa: F401
from genrl.explorers.kvpo import KVPOExplorer  # noqa: F401
from genrl.explorers.sde import SDEExplorer, sde_step  # noqa: F401
from genrl.explorers.vlm import NoisyImageExplorer, SamplingExplorer, VogueExplorer  # noqa: F401
