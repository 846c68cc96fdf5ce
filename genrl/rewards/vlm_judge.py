"""A vision-language model as judge, over any OpenAI-compatible chat-completions endpoint.

Each image is sent with a yes/no question about its prompt; the reward is the judge's
``P(yes) / (P(yes) + P(no))`` read from the log-probabilities of its one-token answer, a graded
score rather than a 0/1 verdict (so a group of samples can be ranked). Local servers such as vLLM
(``vllm serve <model>`` exposes ``http://host:8000/v1``) and hosted APIs both speak this protocol.

Trust boundary as for the ``http`` reward: only the configured address is contacted, every request
has a timeout and a bounded number of retries, and an answer is parsed, never executed. A sample
whose request fails or whose answer is malformed gets NaN (counted and skipped by the loop); the
reward never raises and never hangs. The API key is read from an environment variable named in
the recipe, so it never lands in a recipe, a manifest or a log.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from genrl.config.validate import RecipeError, option
from genrl.registry import REWARDS
from genrl.rewards.clip import DIGIT_NAMES, prompt_texts
from genrl.rewards.image import RewardConfig

_MAX_ANSWER_BYTES = 1_000_000


class _Retryable(Exception):
    """A failure worth another try: no connection, a timeout, a 5xx or 429 answer."""


def png_data_url(image: torch.Tensor, upscale: int = 1) -> str:
    """An image [H, W] or [C, H, W] in [0, 1] (C = 1 or 3) as a ``data:image/png;base64,...`` URL.

    Small images are enlarged ``upscale`` times with nearest-neighbour filtering: a VLM resizes
    its input to hundreds of pixels itself, and sharp 8x8 blocks survive that better than a blur.
    """
    from PIL import Image

    x = image.detach().float().cpu().nan_to_num(0.0).clamp(0, 1).mul(255).round().to(torch.uint8)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected an image [H, W] or [1 or 3, H, W], got shape {tuple(image.shape)}")
    pil = Image.fromarray(x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).contiguous().numpy())
    if upscale > 1:
        pil = pil.resize((pil.width * upscale, pil.height * upscale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def yes_probability(answer: Any) -> float:
    """``P(yes) / (P(yes) + P(no))`` from a chat-completions answer; ValueError saying what is wrong.

    Tokens are compared stripped and lower-cased (" Yes", "YES" and "yes" all count), and the
    probabilities of all spellings are summed.
    """
    try:
        top = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("malformed answer: no choices[0].logprobs.content[0].top_logprobs "
                         "(does the server support logprobs?)") from None
    if not isinstance(top, list):
        raise ValueError("malformed answer: top_logprobs is not a list")
    mass = {"yes": 0.0, "no": 0.0}
    for entry in top:
        token = entry.get("token") if isinstance(entry, dict) else None
        logprob = entry.get("logprob") if isinstance(entry, dict) else None
        if (not isinstance(token, str) or isinstance(logprob, bool) or not isinstance(logprob, (int, float))
                or math.isnan(logprob)):
            raise ValueError(f"malformed answer: top_logprobs entry {str(entry)[:80]}")
        word = token.strip().lower()
        if word in mass:
            mass[word] += math.exp(min(logprob, 0.0))
    total = mass["yes"] + mass["no"]
    if total <= 0:
        raise ValueError(f"neither 'yes' nor 'no' among the {len(top)} top_logprobs tokens")
    return mass["yes"] / total


@REWARDS.register("vlm_judge")
class VLMJudgeReward:
    """Asks a VLM "does this image show <prompt>?" and rewards its probability of "yes"."""

    remote = True

    @dataclass(kw_only=True)
    class Config(RewardConfig):
        base_url: str = option(help="OpenAI-compatible API root, e.g. http://localhost:8000/v1 "
                                    "(requests go to {base_url}/chat/completions).")
        model: str = option(help="Model name the server knows (vLLM: the name given to `vllm serve`).")
        question_template: str = option(default="Does this image show {prompt}? Answer yes or no.",
                                        help="The question; {prompt} is replaced by the sample's prompt text.")
        prompt_template: str = option(default="the digit {}",
                                      help="Prompt text for class-id prompts: '{}' is replaced by the class name.")
        class_names: list[str] = option(default=DIGIT_NAMES, help="Name of each class id, for prompt_template.")
        api_key_env: str | None = option(default=None, help="Name of the environment variable holding the API key "
                                                             "(sent as 'Authorization: Bearer'); never the key itself.")
        timeout_s: float = option(default=30.0, help="Seconds to wait for one answer before it counts as failed.")
        max_retries: int = option(default=2, help="Retries after a connection error, timeout, 429 or 5xx answer.")
        retry_backoff_s: float = option(default=0.5, help="Wait before the first retry; doubled for each next one.")
        concurrency: int = option(default=4, help="Requests in flight at once.")
        top_logprobs: int = option(default=5, help="Alternatives the server lists for the answer token (1-20).")
        upscale: int = option(default=8, help="Nearest-neighbour enlargement of the image before PNG encoding.")

        def validate(self) -> None:
            if not self.base_url.startswith(("http://", "https://")):
                raise ValueError("base_url: expected an http:// or https:// address")
            if not self.model:
                raise ValueError("model: expected a model name")
            if "{prompt}" not in self.question_template:
                raise ValueError("question_template: expected a '{prompt}' where the prompt text goes")
            if "{}" not in self.prompt_template or not self.class_names:
                raise ValueError("prompt_template: expected a '{}' where the class name goes")
            if self.timeout_s <= 0:
                raise ValueError("timeout_s: must be > 0")
            if self.retry_backoff_s < 0:
                raise ValueError("retry_backoff_s: must be >= 0")
            if self.max_retries < 0:
                raise ValueError("max_retries: must be >= 0")
            if self.concurrency < 1:
                raise ValueError("concurrency: must be >= 1")
            if not 1 <= self.top_logprobs <= 20:
                raise ValueError("top_logprobs: expected 1 to 20 (the OpenAI API's range)")
            if self.upscale < 1:
                raise ValueError("upscale: must be >= 1")

    def __init__(self, config: Config, **_: object) -> None:
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise RecipeError(None, "rewards[].api_key_env",
                                  f"environment variable {config.api_key_env} is not set (it should hold the API key)")
            self.headers["Authorization"] = f"Bearer {key}"
        self.pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="genrl-vlm-judge")
        self.__name__ = f"vlm_judge:{config.model}"

    def request_body(self, image_url: str, text: str) -> dict[str, Any]:
        question = self.config.question_template.format(prompt=text)
        return {
            "model": self.config.model,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": question},
                {"type": "image_url", "image_url": {"url": image_url}},
            ]}],
            "max_tokens": 1,
            "logprobs": True,
            "top_logprobs": self.config.top_logprobs,
            "temperature": 0,
        }

    def _post(self, body: bytes) -> Any:
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as resp:
                raw = resp.read(_MAX_ANSWER_BYTES)
        except urllib.error.HTTPError as e:
            detail = e.read(300).decode("utf-8", "replace").replace("\n", " ") if e.fp else ""
            if e.code == 429 or e.code >= 500:
                raise _Retryable(f"HTTP {e.code}") from None
            raise ValueError(f"HTTP {e.code}: {detail}".strip()) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # timeouts are OSErrors
            raise _Retryable(repr(getattr(e, "reason", e))) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ValueError("malformed answer: not JSON") from None

    def judge(self, image_url: str, text: str) -> tuple[float, str | None]:
        """(reward, None), or (NaN, why) once the retries are spent or the answer is unusable."""
        body = json.dumps(self.request_body(image_url, text)).encode()
        for attempt in range(self.config.max_retries + 1):
            try:
                return yes_probability(self._post(body)), None
            except ValueError as e:
                return float("nan"), str(e)
            except _Retryable as e:
                if attempt == self.config.max_retries:
                    return float("nan"), f"{e} after {attempt + 1} tries"
                time.sleep(self.config.retry_backoff_s * 2**attempt)
        return float("nan"), "no try made"  # unreachable: max_retries >= 0

    def __call__(self, images: torch.Tensor, prompts: torch.Tensor | Sequence[Any]) -> torch.Tensor:
        texts = prompt_texts(prompts, self.config.prompt_template, self.config.class_names)
        if len(texts) != len(images):
            raise ValueError(f"got {len(images)} images for {len(texts)} prompts")
        urls = [png_data_url(img, self.config.upscale) for img in images]
        results = list(self.pool.map(self.judge, urls, texts))
        reasons = Counter(why for _, why in results if why is not None)
        for why, count in reasons.items():  # one line per kind of failure, not one per sample
            print(f"[genrl] vlm_judge {self.url}: {count} of {len(results)} samples got NaN: {why}")
        return torch.tensor([value for value, _ in results], dtype=torch.float32)
