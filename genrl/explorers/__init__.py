"""Exploration strategies: where the diversity of a rollout group comes from."""

from genrl.explorers.sde import SDEExplorer, sde_step  # noqa: F401
