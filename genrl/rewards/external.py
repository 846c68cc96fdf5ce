"""Rewards from outside genrl: user code named explicitly in a recipe, and a remote HTTP scorer.

Trust boundaries: user code is only ever imported from the file a recipe names (its hash goes into
the run manifest, so replay refuses if it changed); a reward server is contacted only at the
configured address, with a timeout, and its answer is validated — a malformed or late answer makes
the batch's rewards NaN (counted and skipped by the loop), never a crash and never executed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from genrl.config.validate import RecipeError, option
from genrl.registry import REWARDS
from genrl.rewards.image import RewardConfig


@REWARDS.register("python")
class PythonFileReward:
    """``reward(images, prompts) -> Tensor[B]`` defined in a Python file of your own."""

    @dataclass(kw_only=True)
    class Config(RewardConfig):
        file: str = option(help="Path of the Python file that defines the reward function.")
        function: str = option(default="reward", help="Name of the function in that file.")

    def __init__(self, config: Config, **_: object) -> None:
        self.config = config
        path = Path(config.file).expanduser().resolve()
        if not path.is_file():
            raise RecipeError(None, "rewards[].file", f"reward code file {path} not found")
        spec = importlib.util.spec_from_file_location(f"genrl_user_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # explicit: the recipe named this file
        fn = getattr(module, config.function, None)
        if not callable(fn):
            raise RecipeError(None, "rewards[].function", f"{path} defines no callable {config.function!r}")
        self.fn = fn
        self.__name__ = f"python:{path.name}:{config.function}"
        self.input_files = {"code": path}

    def __call__(self, images: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.fn(images, prompts), dtype=torch.float32)


@REWARDS.register("http")
class HTTPReward:
    """POSTs ``{"images": [[...]], "prompts": [...]}`` as JSON and expects ``{"rewards": [B floats]}``."""

    remote = True

    @dataclass(kw_only=True)
    class Config(RewardConfig):
        url: str = option(help="Endpoint of the reward server (http:// or https://).")
        timeout_s: float = option(default=30.0, help="Seconds to wait for an answer before the batch counts as failed.")

        def validate(self) -> None:
            if not self.url.startswith(("http://", "https://")):
                raise ValueError("url: expected an http:// or https:// address")
            if self.timeout_s <= 0:
                raise ValueError("timeout_s: must be > 0")

    def __init__(self, config: Config, **_: object) -> None:
        self.config = config
        self.__name__ = f"http:{config.url}"

    def __call__(self, images: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        body = json.dumps({"images": images.tolist(), "prompts": prompts.tolist()}).encode()
        request = urllib.request.Request(self.config.url, data=body, headers={"Content-Type": "application/json"})
        nan = torch.full((len(prompts),), float("nan"))
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as resp:
                answer = json.loads(resp.read(10_000_000))
        except (urllib.error.URLError, TimeoutError, OSError, json.JSONDecodeError) as exc:
            print(f"[genrl] reward server {self.config.url} failed: {exc!r}")
            return nan
        values = answer.get("rewards") if isinstance(answer, dict) else None
        if (not isinstance(values, list) or len(values) != len(prompts)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            print(f"[genrl] reward server {self.config.url}: malformed answer (expected {{'rewards': "
                  f"[{len(prompts)} finite numbers]}}); the batch is skipped")
            return nan
        return torch.tensor(values, dtype=torch.float32)
