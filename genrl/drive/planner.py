"""Generation-then-evaluation planning: sample S scenes, score them, execute the best scene's ego plan.

    context (the ego's scene now)  --generator-->  S joint futures [S, A, F, 4]
                                   --selector--->  one index   --> its ego row = the plan [F, 4]

Selectors are what the evaluation table compares over the *same* S samples: the learned scene evaluator
(Gen-Drive), a uniform random choice, and the rule-based PDM-style scorer; ``first`` is the single-sample
planner (S = 1). The noise of decision d in episode e is keyed by (seed, e, d, sample), so a planner's
episode is reproducible and two selectors see identical candidates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from genrl.config.validate import option
from genrl.drive.scene import SceneSpec, pack_context
from genrl.rng import Purpose

SELECTORS = ("first", "evaluator", "random", "pdm")


@dataclass
class PlannerRow:
    """One row of a closed-loop evaluation: a planner and how it picks among its samples."""

    name: str = option(help="Row name in the table (also the folder of its episodes).")
    planner: Literal["idm", "constant_velocity", "generator"] = option(
        help="idm = highway-env's IDM/MOBIL expert drives the ego; constant_velocity = keep speed and heading; "
             "generator = a scene diffusion checkpoint plans.")
    generator: str | None = option(default=None, help="Scene diffusion base folder, RL run directory or checkpoint, "
                                                      "or its pretraining recipe (.yaml; built once and cached).")
    samples: int = option(default=1, help="S: scenes generated per decision.")
    selector: Literal["first", "evaluator", "random", "pdm"] = option(
        default="first", help="How the executed scene is chosen among the S: first (S = 1), the learned evaluator, "
                              "uniformly at random, or the PDM-style rule scorer.")
    evaluator: str | None = option(default=None, help="Scene evaluator: a `genrl reward train` run or model folder, or "
                                                      "its training recipe (.yaml; trained once and cached); needed by "
                                                      "selector evaluator.")

    def validate(self) -> None:
        if self.planner == "generator" and not self.generator:
            raise ValueError("generator: a generator row needs a checkpoint path")
        if self.planner != "generator" and (self.generator or self.samples != 1 or self.selector != "first"):
            raise ValueError(f"planner: a {self.planner!r} row takes no generator, samples or selector")
        if self.samples < 1:
            raise ValueError("samples: must be >= 1")
        if self.selector == "first" and self.samples != 1:
            raise ValueError("selector: 'first' is the single-sample planner; with samples > 1 choose evaluator, "
                             "random or pdm")
        if self.selector == "evaluator" and not self.evaluator:
            raise ValueError("evaluator: selector 'evaluator' needs the path of a trained scene evaluator")


class ScenePlanner:
    """A callable planner for ``genrl.drive.closed_loop.run_episode``: context -> ego plan [F, 4]."""

    def __init__(self, policy, spec: SceneSpec, *, samples: int, choose: Callable[[torch.Tensor, torch.Tensor, int], int],
                 seed: int = 0) -> None:
        self.policy, self.spec, self.samples, self.choose, self.seed = policy, spec, samples, choose, seed
        self.episode, self.decision = 0, 0
        self.seconds: list[float] = []

    def reset(self, episode: int) -> None:
        """Key the noise of the coming episode (call before each episode)."""
        self.episode, self.decision = episode, 0

    @torch.no_grad()
    def plan_scenes(self, context: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the S generated scenes [S, A, F, 4], their packed context [S, C]) of this decision."""
        packed = pack_context(self.spec, context).expand(self.samples, -1).contiguous()
        ids = torch.arange(self.samples) + self.samples * self.decision
        states, _ = self.policy.generate(packed, ids, seed=self.seed, purpose=Purpose.EVAL, step=self.episode)
        return states, packed

    def __call__(self, context: dict[str, torch.Tensor]) -> torch.Tensor:
        t0 = time.perf_counter()
        states, packed = self.plan_scenes(context)
        best = self.choose(states, packed, self.episode * 100003 + self.decision) if self.samples > 1 else 0
        self.decision += 1
        self.seconds.append(time.perf_counter() - t0)
        return states[best, 0]


def make_selector(kind: str, spec: SceneSpec, *, evaluator: str | None = None, seed: int = 0,
                  device: str = "cpu") -> Callable[[torch.Tensor, torch.Tensor, int], int]:
    """``choose(states [S, A, F, 4], packed [S, C], key) -> index`` for a selector name."""
    if kind == "random":
        from genrl.drive.selectors import random_choice

        return lambda states, packed, key: random_choice(len(states), seed, key)
    if kind == "pdm":
        from genrl.drive.selectors import pdm_score

        return lambda states, packed, key: int(torch.argmax(pdm_score(states, packed, spec)))
    if kind == "evaluator":
        from genrl.preference.models.base import find_model_dir, load_reward_model

        model, _ = load_reward_model(find_model_dir(resolve_model(evaluator, "evaluator")), device=device)
        model.eval()
        return lambda states, packed, key: int(torch.argmax(model(states.to(device), packed.to(device)).float()))
    if kind == "first":
        return lambda states, packed, key: 0
    raise ValueError(f"selector: expected one of {list(SELECTORS)}, got {kind!r}")


def resolve_model(path: str, what: str, *, row: str | None = None) -> Path:
    """A model folder, or the folder its recipe builds (pretraining / reward-model recipes are cached)."""
    if path.endswith((".yaml", ".yml")):
        from genrl.cache import resolve_recipe_path
        from genrl.config.load import load_yaml

        recipe = resolve_recipe_path(path, key=what)
        if what == "generator":
            from genrl.pretrain.scene_diffusion import scene_diffusion_base_from_recipe

            return scene_diffusion_base_from_recipe(str(recipe))
        if load_yaml(recipe).get("kind") != "preference_reward":
            raise ValueError(f"{what}: {recipe} is not a reward-model training recipe (kind preference_reward)")
        from genrl.preference.train import reward_model_from_recipe

        return reward_model_from_recipe(str(recipe))
    found = Path(path).expanduser()
    if not found.exists():
        where = f"row {row!r}: " if row else ""
        raise FileNotFoundError(f"{where}{what} {found} does not exist")
    return found


def build_planner(row: PlannerRow, *, seed: int = 0, device: str = "cpu"):
    """The planner of a table row: "idm", a constant-velocity callable, or a :class:`ScenePlanner`."""
    if row.planner == "idm":
        return "idm"
    if row.planner == "constant_velocity":
        from genrl.drive.closed_loop import constant_velocity_planner

        return constant_velocity_planner
    from genrl.sampling import load_policy_for_sampling

    policy, _ = load_policy_for_sampling(resolve_model(row.generator, "generator", row=row.name))
    spec = policy.spec
    return ScenePlanner(policy, spec, samples=row.samples, seed=seed,
                        choose=make_selector(row.selector, spec, evaluator=row.evaluator, seed=seed, device=device))
