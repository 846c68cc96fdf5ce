"""Logged driving scenes (a genrl.drive scene data set) as the prompts of Gen-Drive's RL fine-tuning.

Each step draws scene indices (keyed by seed and step, each scene once per epoch); ``items`` hands the
policy those scenes as packed contexts (:func:`genrl.drive.scene.pack_context`) with their logged futures
and masks (the regulariser's target). The data set's SceneSpec must equal the policy's: the
``scene_diffusion`` policy refuses other scenes with a message naming this folder and the differing keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genrl.config.validate import option
from genrl.drive.dataset import load_scenes, read_spec, scene_data_folder
from genrl.drive.scene import pack_context
from genrl.policies.scene_diffusion import SceneItems
from genrl.prompts.order import epoch_slice
from genrl.registry import PROMPTS


@PROMPTS.register("driving_scenes")
class DrivingScenePrompts:
    policies = ("scene_diffusion",)

    @dataclass
    class Config:
        path: str | None = option(default=None, help="Scene data set folder (written by `genrl drive collect`); "
                                                     "relative paths are looked up from the working directory, then "
                                                     "the project root.")
        collect_recipe: str | None = option(default=None, help="Instead of path: a `kind: drive_collect` recipe "
                                                               "(collected once, cached under $GENRL_CACHE).")
        split: str = option(default="train", help="Split whose scenes are the prompts.")
        limit: int | None = option(default=None, help="Use at most this many scenes (null = all).")

        def validate(self) -> None:
            if (self.path is None) == (self.collect_recipe is None):
                raise ValueError("path: give exactly one of path and collect_recipe")
            if self.limit is not None and self.limit < 1:
                raise ValueError("limit: must be >= 1 or null")

    def __init__(self, config: Config, *, seed: int) -> None:
        self.config, self.seed = config, seed
        self.path = scene_data_folder(config.path, config.collect_recipe, key="prompts")
        self.spec = read_spec(self.path)
        scene, _ = load_scenes(self.path, config.split, limit=config.limit)
        self.contexts = pack_context(self.spec, scene)
        self.future, self.future_mask = scene["future"], scene["future_mask"]
        self.size = len(self.contexts)
        if self.size == 0:
            raise ValueError(f"{self.path} [{config.split}]: no scenes")
        self.input_files = {"scenes": self.path}  # content-hashed into the run's manifest

    def sample(self, step: int, n: int, *, round: int = 0) -> torch.Tensor:
        """Scene indices of step ``step`` (each scene once per epoch; refill rounds draw with replacement)."""
        return epoch_slice(self.seed, step, n, self.size, round=round)

    def items(self, indices: torch.Tensor) -> SceneItems:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return SceneItems(contexts=self.contexts[idx], future=self.future[idx], future_mask=self.future_mask[idx],
                          spec=self.spec.to_dict(), source=str(self.path))
