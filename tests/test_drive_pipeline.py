"""Gen-Drive end to end on tiny recipes: scenes -> generator -> labelled pairs -> evaluator -> RL -> curve -> table.

The smoke recipes chain through the artifact cache (``genrl train recipes/smoke/gen_drive_tiny.yaml`` builds
the scene set, the base generator, the labels and the scene evaluator first), so this is also the test that
the recipe references resolve.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genrl.config.load import load_recipe
from genrl.config.validate import build
from genrl.drive.planner import PlannerRow, ScenePlanner, make_selector
from genrl.drive.scene import SceneSpec, empty_scene

ROOT = Path(__file__).resolve().parents[1]


class _FixedPolicy:
    """A stand-in generator: S given candidate scenes, whatever the context."""

    def __init__(self, candidates: torch.Tensor) -> None:
        self.candidates = candidates

    def generate(self, contexts, sample_ids, *, seed, purpose, step=0):
        return self.candidates[: len(sample_ids)], self.candidates[: len(sample_ids), 0]


def _straight(speed: float, spec: SceneSpec, y: float = 0.0) -> torch.Tensor:
    t = torch.arange(1, spec.future_steps + 1) * spec.dt
    return torch.stack([speed * t, torch.full_like(t, y), torch.zeros_like(t), torch.full_like(t, speed)], -1)


def test_planner_executes_the_selected_scene():
    spec = SceneSpec(num_agents=2, history_steps=2, future_steps=4, num_lanes=2, lane_points=5, route_points=4)
    ctx = empty_scene(spec)
    ctx["agent_mask"][0, :] = True
    ctx["history"][0, 0, 1] = torch.tensor([0.0, 0.0, 0.0, 10.0])  # the ego now: origin, 10 m/s
    ctx["history"][0, 1, 1] = torch.tensor([25.0, 0.0, 0.0, 0.0])  # a stopped car 25 m ahead
    ctx["history_mask"][0, :, 1] = True
    ctx["size"][0, :] = torch.tensor([5.0, 2.0])
    for lane in range(2):
        ctx["lanes"][0, lane, :, 0] = torch.linspace(-10, 60, 5)
        ctx["lanes"][0, lane, :, 1] = 4.0 * lane
    ctx["lane_mask"][0, :] = True
    ctx["route"][0, :, 0] = torch.linspace(10, 40, 4)
    stopped = torch.tensor([25.0, 0.0, 0.0, 0.0]).expand(spec.future_steps, 4)
    # candidate 0 drives into the stopped car at 12 m/s; 1 changes to the free lane at 12 m/s; 2 crawls
    cands = torch.stack([torch.stack([_straight(12, spec), stopped]),
                         torch.stack([_straight(12, spec, y=4.0), stopped]),
                         torch.stack([_straight(2, spec), stopped])])
    context = {k: v for k, v in ctx.items() if k not in ("future", "future_mask")}
    pdm = ScenePlanner(_FixedPolicy(cands), spec, samples=3, choose=make_selector("pdm", spec))
    assert torch.equal(pdm(context), cands[1, 0])  # the safe lane change with progress
    first = ScenePlanner(_FixedPolicy(cands), spec, samples=1, choose=make_selector("first", spec))
    assert torch.equal(first(context), cands[0, 0])
    def pick(episode: int) -> int:  # the random selector is keyed by (seed, episode, decision)
        rnd = ScenePlanner(_FixedPolicy(cands), spec, samples=3, choose=make_selector("random", spec, seed=0))
        rnd.reset(episode)
        return int(torch.nonzero((cands[:, 0] == rnd(context)).all(-1).all(-1))[0])

    picks = [pick(e) for e in range(12)]
    assert picks == [pick(e) for e in range(12)]  # reproducible
    assert set(picks) == {0, 1, 2}
    with pytest.raises(ValueError, match="selector"):
        make_selector("best", spec)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, monkeypatch_module):
    """The smoke RL run, with every artifact it needs built into a fresh cache."""
    from genrl.recipe import TrainRecipe
    from genrl.trainer.loop import Trainer

    tmp = tmp_path_factory.mktemp("gen_drive")
    monkeypatch_module.setenv("GENRL_CACHE", str(tmp / "cache"))
    recipe_file = ROOT / "recipes/smoke/gen_drive_tiny.yaml"
    recipe, _ = load_recipe(recipe_file, TrainRecipe, [f"run_dir={tmp / 'run'}"])
    trainer = Trainer(recipe, recipe_file=str(recipe_file))
    trainer.train()
    return tmp, trainer


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_smoke_chain_trains_the_generator_against_the_evaluator(tiny_run):
    tmp, trainer = tiny_run
    h = trainer.history
    assert len(h) == 4 and all(torch.isfinite(torch.tensor(r["reward/total/mean"])) for r in h)
    assert h[0]["ratio_mean"] == pytest.approx(1.0)  # on-policy first update
    steps = sorted(p.name for p in (tmp / "run" / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert steps == ["step_00000002", "step_00000004"]
    labels = json.loads(next((tmp / "cache" / "scene_preference_labels").glob("*/labels.json")).read_text())
    assert labels["kept"] > 0 and labels["by_rule"]["scene_safety"]["a"] + labels["by_rule"]["scene_safety"]["b"] > 0


def test_curve_selects_a_checkpoint_and_the_table_has_every_row(tiny_run):
    from genrl.drive.curve import over_optimisation_curve
    from genrl.drive.evaluate import DriveEvalRecipe, run_eval

    tmp, _ = tiny_run
    run = tmp / "run"
    curve_recipe, _ = load_recipe(ROOT / "recipes/drive/curve.yaml", DriveEvalRecipe,
                                  ["seeds.count=1", "duration_s=3", "workers=1", f"out={tmp / 'curve'}"])
    result = over_optimisation_curve(run, curve_recipe, progress=False)
    assert [p["step"] for p in result["points"]] == [0, 2, 4]
    assert all(0.0 <= p["score"] <= 1.0 for p in result["points"])
    assert (tmp / "curve" / "curve.png").is_file() and "(selected)" in (tmp / "curve" / "curve.md").read_text()
    best = run / "checkpoints" / "best"
    if result["selected"]["step"] > 0:
        assert json.loads((run / "eval" / "curve_selection.json").read_text())["step"] == result["selected"]["step"]

    ft = str(best) if best.is_dir() else str(run / "checkpoints" / "step_00000004")
    base, evaluator = "recipes/smoke/scene_diffusion_tiny.yaml", "recipes/smoke/scene_evaluator_tiny.yaml"
    rows = [{"name": "idm_expert", "planner": "idm"}, {"name": "constant_velocity", "planner": "constant_velocity"},
            {"name": "base_single", "planner": "generator", "generator": base},
            {"name": "base_multi_evaluator", "planner": "generator", "generator": base, "samples": 4,
             "selector": "evaluator", "evaluator": evaluator},
            {"name": "ft_single", "planner": "generator", "generator": ft},
            {"name": "base_multi_random", "planner": "generator", "generator": base, "samples": 4, "selector": "random"},
            {"name": "base_multi_pdm", "planner": "generator", "generator": base, "samples": 4, "selector": "pdm"}]
    recipe = build(DriveEvalRecipe, {"kind": "drive_eval", "rows": rows, "seeds": {"start": 1000, "count": 1},
                                     "duration_s": 3.0, "workers": 2, "out": str(tmp / "table")}, file="eval.yaml")
    table = run_eval(recipe, progress=False)  # two worker processes
    assert set(table["rows"]) == {r["name"] for r in rows}
    for per_family in table["rows"].values():
        assert set(per_family) == {"highway", "merge"}
        assert all(0.0 <= m["score"] <= 1.0 and m["episodes"] == 1 for m in per_family.values())
    assert table["rows"]["base_multi_evaluator"]["highway"]["planner_ms"] > 0
    # resuming: nothing left to run, the same table comes back
    again = run_eval(recipe, progress=False)
    assert json.dumps(again["rows"]) == json.dumps(table["rows"])


def test_eval_refuses_seeds_used_for_training(tmp_path):
    from genrl.config.validate import RecipeError
    from genrl.drive.evaluate import DriveEvalRecipe, check_heldout

    recipe = build(DriveEvalRecipe, {"kind": "drive_eval", "rows": [{"name": "idm_expert", "planner": "idm"}],
                                     "seeds": {"start": 0, "count": 3},
                                     "heldout_from": "recipes/smoke/drive_collect_tiny.yaml"}, file="eval.yaml")
    with pytest.raises(RecipeError, match="seeds"):
        check_heldout(recipe, "eval.yaml")
    assert build(PlannerRow, {"name": "x", "planner": "idm"}).planner == "idm"
