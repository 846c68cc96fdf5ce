"""Labelling rules (``LABEL_RULES``): ``rule(a, b, contexts) -> decisions`` for a batch of pairs.

A decision is ``1`` (a preferred), ``-1`` (b preferred), ``0`` (a tie: the pair is dropped and
counted) or ``2`` (undecided: the pair goes on to the next rule). Put certain, cheap rules first
(hard constraints), measurable gaps next and judges last, as Gen-Drive's labelling cascade does.
Every rule has a ``margin`` option: the Bradley–Terry margin given to the pairs it decides.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from genrl.config.validate import RecipeError, option
from genrl.eval.image_metrics import stroke_crispness
from genrl.preference.labelling import PREFER_A, PREFER_B, TIE, UNDECIDED, RuleConfig
from genrl.registry import LABEL_RULES

_CODES = {"a": PREFER_A, "b": PREFER_B, "tie": TIE, None: UNDECIDED, 1: PREFER_A, -1: PREFER_B, 0: TIE,
          2: UNDECIDED}




def _flat_images(x: torch.Tensor) -> torch.Tensor:
    """[P, 1, H, W] or [P, H, W] -> [P, H, W] (the digit classifier and crispness take grey images)."""
    return x[:, 0] if x.dim() == 4 else x


@LABEL_RULES.register("prompted_digit")
class PromptedDigitRule:
    """Hard constraint: the sample shows the prompted digit (per an independent classifier).

    Exactly one sample passes and the other clearly fails -> the passing one wins; both fail ->
    ``both_fail`` (a tie by default: neither is acceptable, nothing to learn); both pass, or a sample
    the classifier is unsure about (``fail_below <= p < min_confidence``) -> undecided.
    """

    @dataclass(kw_only=True)
    class Config(RuleConfig):
        judge_recipe: str | None = option(default="recipes/eval/digit_judge.yaml",
                                          help="Training recipe of the classifier (built and cached).")
        checkpoint: str | None = option(default=None, help="Or: a trained classifier folder.")
        min_confidence: float = option(default=0.5, help="p(prompted digit) needed to pass.")
        fail_below: float | None = option(default=None, help="p(prompted digit) below which a sample fails "
                                                              "(null = min_confidence: no uncertain band).")
        both_fail: Literal["tie", "undecided"] = option(default="tie", help="Decision when both samples fail.")

        def validate(self) -> None:
            super().validate()
            if self.fail_below is not None and not 0 <= self.fail_below <= self.min_confidence:
                raise ValueError("fail_below: must be in [0, min_confidence]")

    def __init__(self, config: Config, *, recipe_file: str | None = None, key: str = "") -> None:
        from genrl.models.digit_classifier import load_classifier
        from genrl.pretrain.classifier import classifier_from_recipe

        self.config = config
        if config.checkpoint:
            path = Path(config.checkpoint).expanduser()
            if not (path / "model.safetensors").is_file():
                raise RecipeError(recipe_file, f"{key}.checkpoint", f"no classifier at {path}")
        else:
            path = classifier_from_recipe(config.judge_recipe, referenced_from=recipe_file, key=f"{key}.judge_recipe")
        self.model = load_classifier(path).eval()

    @torch.no_grad()
    def verdict(self, x: torch.Tensor, contexts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(passes, fails) per sample; neither = the classifier is unsure."""
        p = self.model(_flat_images(x)).softmax(-1).gather(1, torch.as_tensor(contexts).view(-1, 1)).squeeze(1)
        fail_below = self.config.min_confidence if self.config.fail_below is None else self.config.fail_below
        return p >= self.config.min_confidence, p < fail_below

    def __call__(self, a: torch.Tensor, b: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        (pa, fa), (pb, fb) = self.verdict(a, contexts), self.verdict(b, contexts)
        out = torch.full((len(a),), UNDECIDED, dtype=torch.long)
        out[pa & fb] = PREFER_A
        out[pb & fa] = PREFER_B
        out[fa & fb] = TIE if self.config.both_fail == "tie" else UNDECIDED
        return out


@LABEL_RULES.register("crispness_gap")
class CrispnessGapRule:
    """Measurable quality: the crisper sample (mean |2x - 1|) wins when the gap is at least ``min_gap``."""

    @dataclass(kw_only=True)
    class Config(RuleConfig):
        min_gap: float = option(default=0.03, help="Crispness difference needed to decide.")
        below_gap: Literal["tie", "undecided"] = option(default="undecided", help="Decision below the gap.")

    def __init__(self, config: Config, **_: object) -> None:
        self.config = config

    def __call__(self, a: torch.Tensor, b: torch.Tensor, contexts) -> torch.Tensor:
        gap = stroke_crispness(_flat_images(a).float()) - stroke_crispness(_flat_images(b).float())
        out = torch.full((len(a),), TIE if self.config.below_gap == "tie" else UNDECIDED, dtype=torch.long)
        out[gap >= self.config.min_gap] = PREFER_A
        out[gap <= -self.config.min_gap] = PREFER_B
        return out


def _decode(values, n: int, who: str) -> torch.Tensor:
    """Judge answers ("a"/"b"/"tie"/None or 1/-1/0/2) -> decision codes; anything else is undecided."""
    if not isinstance(values, (list, tuple)) or len(values) != n:
        raise ValueError(f"{who}: expected {n} decisions, got {type(values).__name__}"
                         f"{f' of length {len(values)}' if hasattr(values, '__len__') else ''}")
    return torch.tensor([_CODES.get(v.lower() if isinstance(v, str) else v, UNDECIDED) for v in values])


@LABEL_RULES.register("python_judge")
class PythonJudge:
    """A judge written in Python: ``judge(a, b, contexts) -> ["a" | "b" | "tie" | None, ...]``.

    Loaded only from the file the recipe names; a judge that raises leaves its pairs undecided
    (counted as failed), it does not stop the labelling.
    """

    @dataclass(kw_only=True)
    class Config(RuleConfig):
        file: str = option(help="Python file that defines the judge.")
        function: str = option(default="judge", help="Name of the judge function in that file.")

    def __init__(self, config: Config, *, recipe_file: str | None = None, key: str = "") -> None:
        self.config = config
        path = Path(config.file).expanduser()
        if not path.is_absolute() and recipe_file and not path.is_file():
            path = Path(recipe_file).parent / path
        if not path.is_file():
            raise RecipeError(recipe_file, f"{key}.file", f"judge file {path} not found")
        spec = importlib.util.spec_from_file_location(f"genrl_user_judge_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses (and pickling) look their module up by name
        spec.loader.exec_module(module)  # explicit: the recipe named this file
        self.fn = getattr(module, config.function, None)
        if not callable(self.fn):
            raise RecipeError(recipe_file, f"{key}.function", f"{path} defines no callable {config.function!r}")
        self.last_failures = 0

    def __call__(self, a: torch.Tensor, b: torch.Tensor, contexts) -> torch.Tensor:
        self.last_failures = 0
        try:
            return _decode(list(self.fn(a, b, contexts)), len(a), f"judge {self.config.file}")
        except Exception as exc:  # counted; the pairs stay undecided
            print(f"[genrl] judge {self.config.file} failed: {exc!r}; {len(a)} pairs left undecided")
            self.last_failures = len(a)
            return torch.full((len(a),), UNDECIDED, dtype=torch.long)


@LABEL_RULES.register("http_judge")
class HTTPJudge:
    """A judge behind a local HTTP endpoint (e.g. a small server in front of a VLM).

    POSTs ``{"a": [...], "b": [...], "contexts": [...]}`` (nested lists) in batches and expects
    ``{"decisions": ["a" | "b" | "tie" | null, ...]}``. Connection errors and 5xx answers are retried;
    a batch that still fails, answers late or answers malformed data is left undecided and counted —
    never a hang, never a crash.
    """

    @dataclass(kw_only=True)
    class Config(RuleConfig):
        url: str = option(help="Endpoint of the judge (http:// or https://).")
        batch_size: int = option(default=64, help="Pairs per request.")
        timeout_s: float = option(default=60.0, help="Seconds to wait for one answer.")
        retries: int = option(default=2, help="Retries after a connection error or a 5xx answer (backoff from 0.5 s).")

        def validate(self) -> None:
            super().validate()
            if not self.url.startswith(("http://", "https://")):
                raise ValueError("url: expected an http:// or https:// address")
            if self.batch_size < 1 or self.timeout_s <= 0 or self.retries < 0:
                raise ValueError("batch_size: batch_size >= 1, timeout_s > 0 and retries >= 0 are required")

    def __init__(self, config: Config, **_: object) -> None:
        self.config = config
        self.last_failures = 0

    def _ask(self, a: torch.Tensor, b: torch.Tensor, contexts) -> torch.Tensor:
        from genrl.rewards.external import post_json

        ctx = contexts.tolist() if torch.is_tensor(contexts) else list(contexts)
        body = json.dumps({"a": a.tolist(), "b": b.tolist(), "contexts": ctx}).encode()
        answer, why, tries = post_json(self.config.url, body, timeout_s=self.config.timeout_s,
                                       retries=self.config.retries, backoff_s=0.5)
        if why is None:
            try:
                return _decode(answer.get("decisions") if isinstance(answer, dict) else None, len(a),
                               f"judge {self.config.url}")
            except ValueError as exc:
                why = str(exc)
        print(f"[genrl] judge {self.config.url} failed after {tries} tries: {why}; {len(a)} pairs left undecided")
        self.last_failures += len(a)
        return torch.full((len(a),), UNDECIDED, dtype=torch.long)

    def __call__(self, a: torch.Tensor, b: torch.Tensor, contexts) -> torch.Tensor:
        self.last_failures = 0
        out = []
        for lo in range(0, len(a), self.config.batch_size):
            hi = min(lo + self.config.batch_size, len(a))
            ctx = contexts[lo:hi]
            out.append(self._ask(a[lo:hi], b[lo:hi], ctx))
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

