"""Gen-Drive's evaluator side on constructed scenes: geometry checks, the labelling cascade, the scene
labelling job, the learned scene evaluator (trained by the BT trainer, used as a `learned` reward) and
the PDM-style rule scorer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from genrl.config.load import load_recipe
from genrl.config.validate import build
from genrl.drive import geometry as geo
from genrl.drive.dataset import rows_to_dataset, save_scenes
from genrl.drive.labels import SceneLabelRecipe, build_rules, label_scenes
from genrl.drive.scene import SceneSpec, empty_scene, pack_context, unicycle_rollout
from genrl.drive.selectors import pdm_score, random_choice
from genrl.preference.labelling import PREFER_A, PREFER_B, TIE, run_cascade

ROOT = Path(__file__).resolve().parent.parent
SPEC = SceneSpec(num_agents=4, history_steps=3, future_steps=6, dt=0.5, num_lanes=3, lane_points=6, route_points=6)
LANES_Y = (-4.0, 0.0, 4.0)


def highway(spec: SceneSpec = SPEC, *, ego_speed: float = 10.0, others=()) -> dict[str, torch.Tensor]:
    """One straight 3-lane scene (lanes along x at y = -4, 0, 4), the ego in the middle lane at the origin.

    ``others``: (x, y, speed) of further agents, driving along +x; their logged future is constant speed.
    """
    s = empty_scene(spec, 1)
    h, f = spec.history_steps, spec.future_steps
    agents = [(0.0, 0.0, ego_speed), *others]
    for i, (x, y, v) in enumerate(agents):
        t_hist = torch.arange(-(h - 1), 1) * spec.dt
        t_fut = torch.arange(1, f + 1) * spec.dt
        s["history"][0, i] = torch.stack([x + v * t_hist, torch.full((h,), y), torch.zeros(h), torch.full((h,), v)], -1)
        s["future"][0, i] = torch.stack([x + v * t_fut, torch.full((f,), y), torch.zeros(f), torch.full((f,), v)], -1)
        s["history_mask"][0, i] = True
        s["future_mask"][0, i] = True
        s["size"][0, i] = torch.tensor([4.5, 2.0])
        s["agent_mask"][0, i] = True
    xs = torch.linspace(-10, 90, spec.lane_points)
    for k, y in enumerate(LANES_Y[: spec.num_lanes]):
        s["lanes"][0, k] = torch.stack([xs, torch.full_like(xs, y), torch.zeros_like(xs)], -1)
        s["lane_mask"][0, k] = True
    s["route"][0] = torch.stack([torch.linspace(-10, 90, spec.route_points), torch.zeros(spec.route_points)], -1)
    return s


def plan(scene: dict, accel: float = 0.0, yaw_rate: float = 0.0) -> torch.Tensor:
    """Generated scene [1, A, F, 4]: the ego under constant actions, the others as logged."""
    out = scene["future"].clone()
    current = scene["history"][:, 0, -1]
    actions = torch.tensor([accel, yaw_rate]).expand(1, SPEC.future_steps, 2)
    out[:, 0] = unicycle_rollout(current, actions, SPEC.dt)
    return out


# ------------------------------------------------------------------ geometry
def test_box_overlap_axis_aligned_and_rotated() -> None:
    def hit(pose_b, size=(4.0, 2.0)) -> bool:
        states = torch.tensor([[[0.0, 0.0, 0.0, 0.0]], [[*pose_b, 0.0]]])[None]  # [1, 2, 1, 4]
        return bool(geo.collisions(states, torch.tensor([[[4.0, 2.0], list(size)]]), torch.tensor([[True, True]]))[0, 0, 1, 0])

    assert hit((3.9, 0.0, 0.0)) and not hit((4.1, 0.0, 0.0))  # bumper to bumper
    assert hit((0.0, 1.9, 0.0)) and not hit((0.0, 2.1, 0.0))  # side by side
    assert hit((2.8, 1.5, math.pi / 4))  # rotated: the first box's corner (2, 1) lies inside the second
    assert not hit((3.5, 2.5, math.pi / 4))  # rotated, close, but an axis separates them
    # A thin box across the first box's corner (2, 1): their bounding boxes overlap either way; only the
    # diagonal axis separates them, by 0.1 m, and 0.1 m closer they touch.
    assert not hit((1.747, 1.747, -math.pi / 4), size=(2.0, 0.5))
    assert hit((1.606, 1.606, -math.pi / 4), size=(2.0, 0.5))
    states = torch.tensor([[[0.0, 0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]])[None]
    assert not geo.collisions(states, torch.ones(1, 2, 2) * 4, torch.tensor([[True, False]])).any()  # padding
    assert geo.collisions(states, torch.ones(1, 2, 2) * 4, torch.tensor([[True, True]])).diagonal(0, 1, 2).sum() == 0


def test_off_road_and_progress() -> None:
    s = highway()
    states = torch.zeros(1, SPEC.num_agents, SPEC.future_steps, 4)
    states[0, 0, :, 1] = torch.tensor([0.0, 1.0, -1.0, 3.0 - 4.0, 3.0 + 4.0, 2.0 + 4.0])  # y; lanes at -4, 0, 4
    states[0, 0, :, 0] = 10.0
    off = geo.off_road(states, s["lanes"], s["lane_mask"], SPEC, margin=0.0)[0, 0]
    assert off.tolist() == [False, False, False, False, True, False]  # 3 m beyond the outer lane = off
    one = torch.zeros(1, 1, 1, 4)
    three = one.clone()
    one[..., 1], three[..., 1] = 1.0 + 4.0, 3.0 + 4.0  # 1 m / 3 m from the outermost lane (width 4)
    assert not geo.off_road(one, s["lanes"], s["lane_mask"], SPEC, margin=0.0).item()
    assert geo.off_road(three, s["lanes"], s["lane_mask"], SPEC, margin=0.0).item()
    for dx in (0.0, 17.5, 42.0, 120.0):  # beyond the route's end too
        st = torch.zeros(1, 1, 2, 4)
        st[0, 0, -1, 0] = dx
        assert geo.progress(st, s["route"]).item() == pytest.approx(dx, abs=1e-4)
    a = plan(s, accel=1.0)
    c = geo.comfort(a, SPEC.dt, s["history"][:, 0])
    assert c["max_lon_jerk"].item() == pytest.approx(1.0 / SPEC.dt) and c["max_lat_acc"].item() == 0
    assert c["min_lon_acc"].item() == pytest.approx(1.0) == c["max_lon_acc"].item()
    turn = geo.comfort(plan(s, yaw_rate=0.2), SPEC.dt, s["history"][:, 0])
    assert turn["max_lat_acc"].item() == pytest.approx(10.0 * 0.2, rel=1e-5) and turn["max_lon_jerk"].item() == 0
    ade, fde = geo.plan_discrepancy(a, plan(s))
    assert fde.item() == pytest.approx(0.5 * 1.0 * 3.0**2 + 0.5 * 0.5 * 3.0, rel=0.05) and 0 < ade.item() < fde.item()


# ------------------------------------------------------------------ the cascade
def _cascade():
    recipe = build(SceneLabelRecipe, {
        "kind": "scene_preference_labels", "data": "unused", "generator": "perturbed_log",
        "labeller": [{"name": "trajectory_discrepancy", "min_ade": 0.5, "min_fde": 1.0},
                     {"name": "scene_safety", "min_progress_gap": 3.0, "min_progress_ratio": 1.2},
                     {"name": "python_judge", "file": str(ROOT / "genrl/drive/selectors.py"),
                      "function": "comfort_progress_judge"}]})
    return build_rules(recipe, SPEC, None)


def test_cascade_stages_on_constructed_scenes() -> None:
    free = highway(others=[(30.0, 4.0, 10.0)])
    blocked = highway(others=[(25.0, 0.0, 0.0)])  # a stopped car ahead in the ego's lane
    blocked["future"][0, 1, :, 3] = 0.0
    blocked["future"][0, 1, :, 0] = 25.0
    cases = [  # (scene, a, b, expected decision, expected stage)
        (free, plan(free), plan(free) + 0.05, TIE, "trajectory_discrepancy"),
        (blocked, plan(blocked), plan(blocked, accel=-3.0), PREFER_B, "scene_safety"),  # a drives into it
        (free, plan(free, yaw_rate=-0.4), plan(free), PREFER_B, "scene_safety"),  # a leaves the road
        (free, plan(free, accel=1.0), plan(free, accel=-1.5), PREFER_A, "scene_safety"),  # progress gap
        (free, plan(free), plan(free, accel=0.6), None, "python_judge"),  # equally safe, gap < 3 m
    ]
    a = torch.cat([c[1] for c in cases])
    b = torch.cat([c[2] for c in cases])
    ctx = torch.cat([pack_context(SPEC, c[0]) for c in cases])
    rules, names = _cascade()
    result = run_cascade(rules, names, a, b, ctx)
    for k, (_, _, _, want, stage) in enumerate(cases):
        assert names[result.stage[k]] == stage if result.stage[k] >= 0 else stage is None, k
        if want is not None:
            assert result.decisions[k] == want, k
    assert result.decisions[4] in (PREFER_A, PREFER_B, TIE)
    assert rules[1].last_details["collision"] == 1 and rules[1].last_details["off_road"] == 1
    assert rules[1].last_details["progress"] == 1
    assert result.counts["trajectory_discrepancy"] == {"seen": 5, "a": 0, "b": 0, "tie": 1, "failed": 0}
    assert result.counts["python_judge"]["seen"] == 1
    # Swapping a and b swaps every decision of the hard checks.
    swapped = run_cascade(rules, names, b, a, ctx)
    assert (swapped.decisions[1:4] == -result.decisions[1:4]).all()


# ------------------------------------------------------------------ labelling job + learned evaluator
def _scene_data(path: Path, n: int, seed: int = 0) -> Path:
    """n random 3-lane scenes: ego speed 6-14 m/s, up to 3 agents in random lanes, some stopped ahead."""
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in (*SPEC.shapes(), "family", "seed", "episode_step", "agent_id")}
    for i in range(n):
        others = [(float(rng.uniform(8, 60)), float(rng.choice(LANES_Y)), float(rng.uniform(0, 14)))
                  for _ in range(int(rng.integers(1, SPEC.num_agents)))]
        s = highway(ego_speed=float(rng.uniform(6, 14)), others=others)
        for k in SPEC.shapes():
            rows[k].append(s[k][0].float().numpy())
        rows["family"].append("constructed")
        rows["seed"].append(i)
        rows["episode_step"].append(0)
        rows["agent_id"].append(0)
    return save_scenes(SPEC, {"train": rows_to_dataset(SPEC, rows)}, path)


def _label_recipe(data: Path, **over) -> SceneLabelRecipe:
    raw = {"kind": "scene_preference_labels", "data": str(data), "generator": "perturbed_log",
           "samples_per_scene": 4, "seed": 0,
           "labeller": [{"name": "trajectory_discrepancy"}, {"name": "scene_safety"},
                        {"name": "python_judge", "file": str(ROOT / "genrl/drive/selectors.py"),
                         "function": "comfort_progress_judge"}], **over}
    return build(SceneLabelRecipe, raw)


def test_label_scenes_writes_pairs_and_counts(tmp_path: Path) -> None:
    from genrl.preference.data import read_pairs

    data = _scene_data(tmp_path / "scenes", 12)
    report = label_scenes(_label_recipe(data), tmp_path / "labels")
    pairs = read_pairs(tmp_path / "labels" / "pairs")
    assert report["candidates"] == {"scenes": 12, "samples": 48, "pairs": 72}
    by = report["by_rule"]
    decided = sum(c["a"] + c["b"] for c in by.values())
    assert decided == report["kept"] == len(pairs)
    assert decided + report["ties"] + report["undecided"] == 72
    assert by["scene_safety"]["seen"] == by["trajectory_discrepancy"]["seen"] - by["trajectory_discrepancy"]["tie"]
    assert pairs.sample_shape == SPEC.sample_shape and pairs.contexts.shape == (len(pairs), SPEC.context_dim)
    assert set(pairs.label_source) <= {"scene_safety", "python_judge"} and pairs.group.max() < 12
    assert json.loads((tmp_path / "labels/checkpoint.json").read_text())["pairs"] == len(pairs)
    # Keyed: the same recipe labels the same pairs.
    again = label_scenes(_label_recipe(data), tmp_path / "again")
    assert again["by_rule"] == report["by_rule"]
    # A generator callable is used as given, its output shape checked.
    with pytest.raises(ValueError, match=r"scene generator returned shape \[8, 4, 5, 4\]"):
        label_scenes(_label_recipe(data, limit=2), tmp_path / "bad",
                     generate=lambda ctx, ids, **_: torch.zeros(len(ids), 4, 5, 4))


def test_label_scenes_with_the_scene_diffusion_policy(tmp_path: Path) -> None:
    """The real generator's interface (random weights: only the plumbing is checked)."""
    sd = pytest.importorskip("genrl.policies.scene_diffusion")
    from genrl.models.scene_diffusion import SceneDiffusionConfig
    from genrl.rng import Purpose

    torch.manual_seed(0)
    tiny = SceneDiffusionConfig(d_model=16, heads=2, encoder_layers=1, denoiser_layers=1, ffn_mult=2, num_steps=3,
                                accel_scale=4.0, yaw_rate_scale=0.5)  # random weights: spread plans widely
    policy = sd.SceneDiffusionPolicy(sd.SceneDiffusionPolicy.Config(model=tiny, scene=SPEC))
    data = _scene_data(tmp_path / "scenes", 4)
    report = label_scenes(_label_recipe(data, samples_per_scene=3), tmp_path / "labels",
                          generate=lambda ctx, ids: policy.generate(ctx, ids, seed=0, purpose=Purpose.DATA))
    assert report["candidates"] == {"scenes": 4, "samples": 12, "pairs": 12}
    assert (tmp_path / "labels/pairs").is_dir()


def test_scene_evaluator_trains_and_scores_as_a_learned_reward(tmp_path: Path) -> None:
    from genrl.preference.models.base import load_reward_model
    from genrl.preference.train import RewardModelTrainer, RewardTrainRecipe
    from genrl.rewards.learned import LearnedReward

    data = _scene_data(tmp_path / "scenes", 160)
    report = label_scenes(_label_recipe(data), tmp_path / "labels")
    assert report["kept"] > 500, report
    smoke = ROOT / "recipes/smoke/scene_evaluator_tiny.yaml"
    recipe, _ = load_recipe(smoke, RewardTrainRecipe, [f"data.path={tmp_path / 'labels' / 'pairs'}", "data.label_recipe=null",
                                                             "model.num_lanes=3", "model.lane_points=6", "model.route_points=6"])
    trainer = RewardModelTrainer(recipe, recipe_file=str(smoke), run_dir=str(tmp_path / "rm"))
    result = trainer.train()
    assert result["eval/accuracy"] > 0.65, result
    log = [json.loads(x) for x in (tmp_path / "rm/metrics.jsonl").read_text().splitlines()]
    aux = [r["loss/aux/ego_plan"] for r in log if "loss/aux/ego_plan" in r]
    assert np.mean(aux[-3:]) < 0.5 * np.mean(aux[:3]), aux
    model, info = load_reward_model(tmp_path / "rm")
    assert info["modality"] == "scene" and info["context_kind"] == "array" and info["sample_shape"] == [4, 6, 4]
    reward = LearnedReward(LearnedReward.Config(path=str(tmp_path / "rm")), model_dir=tmp_path / "rm" / "model")
    s = highway(others=[(25.0, 0.0, 0.0)])
    samples = torch.cat([plan(s, accel=-3.0), plan(s, accel=0.5)])
    scores = reward(samples, pack_context(SPEC, s).expand(2, -1))
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="packed scenes"):
        model(samples, torch.zeros(2, 7))


# ------------------------------------------------------------------ the rule scorer
def test_pdm_score_ranks_collision_below_safe_and_prefers_progress() -> None:
    blocked = highway(others=[(25.0, 0.0, 0.0)])
    blocked["future"][0, 1, :, 0], blocked["future"][0, 1, :, 3] = 25.0, 0.0
    cands = torch.cat([plan(blocked), plan(blocked, accel=-3.0)])  # into the stopped car / brake before it
    score = pdm_score(cands, pack_context(SPEC, blocked)[0], SPEC)
    assert score[0] == 0 and score[1] > 0
    free = highway(others=[(60.0, 4.0, 10.0)])
    cands = torch.cat([plan(free, accel=-1.0), plan(free, accel=1.0), plan(free, yaw_rate=-0.4)])
    score = pdm_score(cands, pack_context(SPEC, free), SPEC)
    assert score[1] > score[0] > 0 and score[2] == 0  # more progress wins; off-road scores 0
    assert random_choice(4, 0, 7) == random_choice(4, 0, 7) and 0 <= random_choice(4, 1, 7) < 4
