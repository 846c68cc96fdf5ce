"""The highway-env driving world: scene collection into a data set, recipe errors, the plan tracker, and
closed-loop episodes with their raw metrics (each a few seconds, CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genrl.config.load import load_recipe
from genrl.config.validate import RecipeError
from genrl.drive import world as W
from genrl.drive.closed_loop import constant_velocity_planner, run_episode
from genrl.drive.collect import CollectRecipe, collect_episode, collect_from_recipe
from genrl.drive.dataset import SPLITS, load_scenes
from genrl.drive.scene import CONTEXT_KEYS, SceneSpec
from tests.helpers import ROOT

TINY = ROOT / "recipes" / "smoke" / "drive_collect_tiny.yaml"


@pytest.fixture(scope="module")
def tiny_scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("drive") / "scenes"
    return collect_from_recipe(str(TINY), [], str(out))


def test_collected_rows_round_trip(tiny_scenes) -> None:
    recipe, _ = load_recipe(TINY, CollectRecipe)
    spec = recipe.spec
    seeds = {}
    for split in SPLITS:
        scene, meta = load_scenes(tiny_scenes, split, spec=spec)
        n = len(meta["seed"])
        assert n > 0 and set(meta["family"]) == {"highway", "merge"}
        for k, shape in spec.shapes().items():
            assert tuple(scene[k].shape) == (n, *shape), k
        # Centred on the ego (no others-centred scenes in this recipe): at the origin, heading 0, fully observed.
        assert meta["agent_id"] == [0] * n
        assert torch.all(scene["agent_mask"][:, 0]) and torch.all(scene["history_mask"][:, 0])
        assert torch.all(scene["future_mask"][:, 0])
        assert torch.allclose(scene["history"][:, 0, -1, :3], torch.zeros(n, 3), atol=1e-5)
        # Padding rows are fully masked and zero; real lanes and the route lie ahead/around.
        pad = ~scene["agent_mask"]
        assert not scene["history_mask"][pad].any() and not scene["future_mask"][pad].any()
        assert torch.all(scene["history"][pad] == 0)
        assert scene["lane_mask"].any(dim=(1, 2)).all()
        assert torch.all(scene["route"][:, :, 0] > 0) and torch.all(torch.diff(scene["route"][:, :, 0]) > 0)
        # The ego moves forward: its first future x is positive.
        assert torch.all(scene["future"][:, 0, 0, 0] > 0)
        seeds[split] = set(meta["seed"])
    assert not (seeds["train"] & seeds["validation"]) and not (seeds["test"] & (seeds["train"] | seeds["validation"]))
    assert seeds["test"] == set(recipe.test.seeds())

    # The rows are exactly what the recorder builds for that episode (and episodes are reproducible).
    scene, meta = load_scenes(tiny_scenes, "train", spec=spec)
    rows, stats = collect_episode(recipe, "merge", 0)
    idx = [i for i, (f, s) in enumerate(zip(meta["family"], meta["seed"])) if f == "merge" and s == 0]
    assert len(idx) == len(rows) == stats["scenes"]
    for i, row in zip(idx, rows):
        assert meta["episode_step"][i] == row["episode_step"]
        for k in scene:
            assert np.array_equal(scene[k][i].numpy().astype(np.float32), row[k].astype(np.float32)), k

    # An independent recording of the same episode gives the same scene.
    env = W.make_env("merge", 0)
    W.use_expert_ego(env)
    rec = W.SceneRecorder(env, spec)
    rec.record()
    t = rows[0]["episode_step"]
    for _ in range(t + spec.future_steps):
        for _ in range(W.ticks_per_step(10, spec.dt)):
            W.tick(env, 10)
        rec.record()
    again = rec.scene(0, with_future=True, t=t)
    for k in scene:
        assert torch.equal(again[k][0].float(), scene[k][idx[0]].float()), k
    ctx = W.current_context(env, spec)
    assert set(ctx) == set(CONTEXT_KEYS) and ctx["history"].shape[0] == 1


def test_others_centred_scenes_and_bit_identical(tmp_path) -> None:
    over = ["families=[merge]", "center_on_others=true", "train.count=1", "validation.count=1", "test.count=1"]
    a = collect_from_recipe(str(TINY), over, str(tmp_path / "a"))
    b = collect_from_recipe(str(TINY), over, str(tmp_path / "b"))
    sa, ma = load_scenes(a, "train")
    sb, mb = load_scenes(b, "train")
    assert ma == mb and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert len(set(ma["agent_id"])) > 1  # scenes centred on other vehicles too
    assert torch.allclose(sa["history"][:, 0, -1, :3], torch.zeros(len(sa["history"]), 3), atol=1e-5)


def test_recipe_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(RecipeError, match="scene_evry"):
        load_recipe(TINY, CollectRecipe, ["scene_evry=2"])
    with pytest.raises(RecipeError, match=r"families.*roundabout"):
        load_recipe(TINY, CollectRecipe, ["families=[highway, roundabout]"])
    with pytest.raises(RecipeError, match=r"test: seeds overlap"):
        load_recipe(TINY, CollectRecipe, ["test.start=1"])
    with pytest.raises(RecipeError, match=r"spec\.num_agent"):
        load_recipe(TINY, CollectRecipe, ["spec.num_agent=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("scene_every:", "scene_evry:"))
    with pytest.raises(RecipeError) as e:
        load_recipe(bad, CollectRecipe)
    assert str(bad) in str(e.value) and "scene_evry" in str(e.value)
    with pytest.raises(ValueError, match="highway"):
        W.make_env("roundabout", 0)


@pytest.mark.parametrize("family,seconds", [("highway", 8.0), ("merge", 12.0)])
def test_plan_tracker_replays_the_expert(family: str, seconds: float) -> None:
    spec = SceneSpec()
    steps, n = int(seconds / spec.dt), W.ticks_per_step(10, spec.dt)
    env = W.make_env(family, 1)
    W.use_expert_ego(env)
    rec = W.SceneRecorder(env, spec)
    rec.record()
    for _ in range(steps + spec.future_steps):
        for _ in range(n):
            W.tick(env, 10)
        rec.record()
    logged = np.stack([s[0] for s in rec.states])
    assert np.ptp(logged[:, 1]) > 1.0  # the expert changed lane: the replay has a curve to follow

    env = W.make_env(family, 1)
    tracker = W.use_plan_tracker(env, dt=spec.dt)
    assert env.unwrapped.vehicle is tracker and env.unwrapped.road.vehicles[0] is tracker
    errors = []
    for k in range(steps):
        tracker.set_plan(logged[k + 1:k + 1 + spec.future_steps, :4], env.unwrapped.time)
        for _ in range(n):
            W.tick(env, 10)
        errors.append(float(np.linalg.norm(tracker.position - logged[k + 1, :2])))
    assert not tracker.crashed
    assert max(errors) < 2.0, errors


def _without_timing(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "planner_ms"}


def test_run_episode_metrics_are_deterministic() -> None:
    spec = SceneSpec()
    keys = {"collision", "off_road", "progress_m", "duration_s", "mean_speed", "max_abs_jerk", "rms_jerk",
            "max_abs_lat_acc", "min_acc", "max_acc", "min_ttc", "speed_over_limit_share", "decisions", "planner_ms"}
    for family, planner in [("merge", "idm"), ("merge", constant_velocity_planner), ("highway", "idm"),
                            ("highway", constant_velocity_planner)]:
        a = run_episode(family, 3, planner, spec=spec, duration_s=6.0)
        b = run_episode(family, 3, planner, spec=spec, duration_s=6.0)
        assert keys <= set(a) and _without_timing(a) == _without_timing(b), (family, planner)
        assert all(isinstance(v, (bool, int, float)) for v in a.values())
        assert 0 < a["duration_s"] <= 6.0 + 1e-9 and a["progress_m"] > 0 and a["mean_speed"] > 0
        assert 0.0 <= a["speed_over_limit_share"] <= 1.0 and a["min_acc"] <= a["max_acc"]
        if planner == "idm":
            assert a["decisions"] == 0 and not a["collision"] and not a["off_road"]
        else:
            assert a["decisions"] == math.ceil(a["duration_s"] / spec.dt - 1e-9) and a["planner_ms"] > 0
            assert a["max_abs_jerk"] < 1e-4  # constant speed, straight on: no jerk (float noise after the hand-over)
    # A planner that returns a wrongly shaped plan is refused with a clear message.
    with pytest.raises(ValueError, match=r"planner: expected a plan of shape \[F, 4\]"):
        run_episode("merge", 0, lambda ctx: torch.zeros(3), spec=spec, duration_s=1.0)
