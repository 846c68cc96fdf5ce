"""Rewards from outside genrl: user code named explicitly in a recipe, and a remote HTTP scorer.

Trust boundaries: user code is only ever imported from the file a recipe names (its hash goes into
the run manifest, so replay refuses if it changed); a reward server is contacted only at the
configured address, with a timeout, and its answer is validated — a malformed or late answer makes
the batch's rewards NaN (counted and skipped by the loop), never a crash and never executed.

Retries: a connection error or a 5xx answer is retried inside the call (``max_retries``, backoff
``retry_backoff_s`` doubled each time: the server may be restarting). A late answer is not retried
here (another request only adds load to a busy server), nor is a 4xx or malformed answer (the same
request gets the same answer). The generic ``retries``/``call_timeout_s`` of every reward come on top.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from genrl.config.validate import RecipeError, option
from genrl.registry import REWARDS
from genrl.rewards.base import RewardConfig


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


def post_json(url: str, body: bytes, *, timeout_s: float, retries: int = 0,
              backoff_s: float = 0.2) -> tuple[object, str | None, int]:
    """POST JSON; (answer, None, tries) or (None, why, tries). Connection errors and 5xx answers are
    retried with exponential backoff; a late answer (socket timeout), a 4xx or non-JSON is not."""
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                return json.loads(resp.read(10_000_000)), None, attempt + 1
        except urllib.error.HTTPError as exc:
            why, transient = f"HTTP {exc.code}", exc.code >= 500
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            why, transient = repr(reason), not isinstance(reason, TimeoutError)
        except ValueError as exc:  # not JSON
            why, transient = repr(exc), False
        if not transient or attempt == retries:
            return None, why, attempt + 1
        time.sleep(backoff_s * 2**attempt)
    raise AssertionError("unreachable")


@REWARDS.register("http")
class HTTPReward:
    """POSTs ``{"images": [[...]], "prompts": [...]}`` as JSON and expects ``{"rewards": [B floats]}``."""

    remote = True

    @dataclass(kw_only=True)
    class Config(RewardConfig):
        url: str = option(help="Endpoint of the reward server (http:// or https://).")
        timeout_s: float = option(default=30.0, help="Seconds to wait for an answer before the batch counts as failed.")
        max_retries: int = option(default=2, help="Retries after a connection error or a 5xx answer.")
        retry_backoff_s: float = option(default=0.2, help="Wait before the first retry; doubled for each next one.")

        def validate(self) -> None:
            if not self.url.startswith(("http://", "https://")):
                raise ValueError("url: expected an http:// or https:// address")
            if self.timeout_s <= 0:
                raise ValueError("timeout_s: must be > 0")
            if self.max_retries < 0:
                raise ValueError("max_retries: must be >= 0")
            if self.retry_backoff_s < 0:
                raise ValueError("retry_backoff_s: must be >= 0")

    def __init__(self, config: Config, **_: object) -> None:
        self.config = config
        self.__name__ = f"http:{config.url}"

    def __call__(self, images: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        body = json.dumps({"images": images.tolist(), "prompts": prompts.tolist()}).encode()
        nan = torch.full((len(prompts),), float("nan"))
        answer, why, tries = post_json(self.config.url, body, timeout_s=self.config.timeout_s,
                                       retries=self.config.max_retries, backoff_s=self.config.retry_backoff_s)
        if why is not None:
            print(f"[genrl] reward server {self.config.url} failed{f' after {tries} tries' if tries > 1 else ''}: {why}")
            return nan
        values = answer.get("rewards") if isinstance(answer, dict) else None
        if (not isinstance(values, list) or len(values) != len(prompts)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            print(f"[genrl] reward server {self.config.url}: malformed answer (expected {{'rewards': "
                  f"[{len(prompts)} finite numbers]}}); the batch is skipped")
            return nan
        return torch.tensor(values, dtype=torch.float32)
