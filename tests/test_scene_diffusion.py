"""Gen-Drive's scene generator: the model, its pretraining, the scene_diffusion policy and the gen_drive objective.

Everything runs on a synthetic scene data set built here (written with the real dataset writer): agents
driving along three straight lanes with a constant acceleration and a small yaw rate per agent, so the
future follows from the history and a tiny model learns it in seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from genrl.drive.dataset import rows_to_dataset, save_scenes
from genrl.drive.scene import SCENE_KEYS, SceneSpec, empty_scene, pack_context, unicycle_rollout
from genrl.explorers.ddpm import DDPMExplorer
from genrl.models.scene_diffusion import SceneDiffusionConfig, ddpm_step
from genrl.objectives.gen_drive import GenDrive
from genrl.policies.scene_diffusion import SceneDiffusionPolicy
from genrl.prompts.driving_scenes import DrivingScenePrompts
from genrl.rng import Purpose

SPEC = SceneSpec(num_agents=4, history_steps=3, future_steps=4, dt=0.5, num_lanes=3, lane_points=4, route_points=4)
TINY_MODEL = {"d_model": 32, "heads": 2, "encoder_layers": 1, "denoiser_layers": 1, "ffn_mult": 2, "num_steps": 5}


def synthetic_scenes(n: int, seed: int) -> dict[str, np.ndarray]:
    """Scenes of SPEC: ego at the origin heading +x; up to 3 other agents; 2 real lanes (+ 1 padded in half)."""
    g = torch.Generator().manual_seed(seed)
    A, H, F, dt = SPEC.num_agents, SPEC.history_steps, SPEC.future_steps, SPEC.dt
    scene = empty_scene(SPEC, n)
    for i in range(n):
        real = 1 + int(torch.randint(A, (1,), generator=g))  # 1..A real agents
        start = torch.zeros(A, 4)
        start[:, 0] = torch.rand(A, generator=g) * 50 - 20
        start[:, 1] = torch.randint(-1, 2, (A,), generator=g).float() * 4
        start[:, 3] = 6 + torch.rand(A, generator=g) * 8
        start[0, :3] = 0.0
        acc = (torch.rand(A, 1, generator=g) * 2 - 1).expand(A, H - 1 + F)
        yaw = (torch.rand(A, 1, generator=g) * 0.1 - 0.05).expand(A, H - 1 + F).clone()
        yaw[0, : H - 1] = 0.0  # the ego heads along +x at t = 0
        traj = torch.cat([start[:, None], unicycle_rollout(start, torch.stack([acc, yaw], -1), dt)], 1)
        traj[..., :2] -= traj[0, H - 1, :2].clone()  # the ego's current position is the origin
        scene["history"][i, :real] = traj[:real, :H]
        scene["future"][i, :real] = traj[:real, H:]
        scene["history_mask"][i, :real] = True
        scene["future_mask"][i, :real] = True
        scene["agent_mask"][i, :real] = True
        scene["size"][i, :real] = torch.tensor([4.5, 1.8])
        lanes = 2 + (i % 2)
        xs = torch.linspace(-10, 50, SPEC.lane_points)
        for lane in range(lanes):
            scene["lanes"][i, lane, :, 0] = xs
            scene["lanes"][i, lane, :, 1] = (lane - 1) * 4.0
        scene["lane_mask"][i, :lanes] = True
        scene["route"][i, :, 0] = torch.linspace(0, 40, SPEC.route_points)
    rows = {k: scene[k].float().numpy() for k in SCENE_KEYS}
    rows.update({"family": ["synthetic"] * n, "seed": list(range(n)), "episode_step": [0] * n, "agent_id": [0] * n})
    return rows


@pytest.fixture(scope="session")
def scene_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "synthetic"
    splits = {name: rows_to_dataset(SPEC, synthetic_scenes(n, seed)) for name, n, seed in
              (("train", 96, 0), ("validation", 24, 1))}
    return save_scenes(SPEC, splits, out)


@pytest.fixture(scope="session")
def base(scene_data, tmp_path_factory) -> Path:
    """A tiny base built through the cached recipe path (``policy.base_recipe`` / ``genrl pretrain``)."""
    import os

    from genrl.pretrain.scene_diffusion import scene_diffusion_base_from_recipe

    folder = tmp_path_factory.mktemp("pretrain")
    recipe = folder / "scene_diffusion_tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "kind": "scene_diffusion", "data": {"path": str(scene_data), "validation_limit": 24},
        "model": TINY_MODEL, "steps": 150, "batch_size": 32, "lr": 3e-3, "warmup_steps": 10, "ema_decay": 0.9,
        "eval_samples": 3}))
    old = os.environ.get("GENRL_CACHE")
    os.environ["GENRL_CACHE"] = str(folder / "cache")
    try:
        return scene_diffusion_base_from_recipe(str(recipe))
    finally:
        if old is None:
            os.environ.pop("GENRL_CACHE")
        else:
            os.environ["GENRL_CACHE"] = old


def _policy(base: Path, **overrides) -> SceneDiffusionPolicy:
    return SceneDiffusionPolicy(SceneDiffusionPolicy.Config(forward_chunk=4, **overrides), base_dir=base)


def _rollout(policy, prompts: DrivingScenePrompts, ids: list[int], scenes: list[int], step: int = 0):
    plan = DDPMExplorer(DDPMExplorer.Config(), seed=0).plan(step, policy.config.num_steps)
    idx = torch.tensor(scenes)
    return policy.rollout(idx, torch.tensor(ids), step=step, seed=0, plan=plan, items=prompts.items(idx))


@pytest.fixture(scope="session")
def prompts(scene_data) -> DrivingScenePrompts:
    return DrivingScenePrompts(DrivingScenePrompts.Config(path=str(scene_data)), seed=0)


# ------------------------------------------------------------------------------ pretraining


def test_pretraining_lowers_validation_loss_and_writes_a_loadable_base(base: Path, prompts) -> None:
    from genrl.pretrain import pretrain_job
    from genrl.pretrain.scene_diffusion import SceneDiffusionPretrainRecipe

    meta = json.loads((base / "checkpoint.json").read_text())
    assert meta["policy"] == "scene_diffusion" and meta["weights"] == "full_base"
    assert meta["scene_spec"] == SPEC.to_dict() and (base / "model.safetensors").is_file()
    val = meta["validation"]
    assert val["val_loss"] < 0.7 * val["val_loss_before"], val
    for key in ("ego_ade", "ego_fde", "ego_min_ade@3", "all_ade", "all_min_fde@3"):
        assert math.isfinite(val[key]) and val[key] >= 0, (key, val)
    assert val["ego_min_ade@3"] <= val["ego_ade"] + 1e-6
    assert pretrain_job("scene_diffusion")[0] is SceneDiffusionPretrainRecipe

    policy = SceneDiffusionPolicy.from_checkpoint(base)
    assert policy.spec.to_dict() == SPEC.to_dict() and policy.config.num_steps == TINY_MODEL["num_steps"]
    states, plan = policy.generate(prompts.items(torch.arange(5)).contexts, torch.arange(5), seed=0)
    assert states.shape == (5, *SPEC.sample_shape) and torch.equal(plan, states[:, 0])
    assert torch.isfinite(states).all()


def test_missing_data_set_is_a_clear_error(tmp_path: Path) -> None:
    from genrl.drive.dataset import SceneDataError, scene_data_folder

    with pytest.raises(SceneDataError, match="not found.*genrl drive collect"):
        scene_data_folder(str(tmp_path / "nope"), None)


# ------------------------------------------------------------------------------ the model


def test_generated_states_follow_the_unicycle(base: Path, prompts) -> None:
    policy = _policy(base)
    ro = _rollout(policy, prompts, [0, 1, 2], [3, 4, 5])
    current = policy.current_states(ro["contexts"])
    actions = ro["chain"][:, -1] * policy.model_config.action_scale()
    assert torch.allclose(ro["states"], unicycle_rollout(current, actions, SPEC.dt), atol=1e-5)
    assert ro["chain"].shape == (3, TINY_MODEL["num_steps"] + 1, *SPEC.action_shape)
    assert ro["log_probs"].shape == (3, TINY_MODEL["num_steps"])


def test_masked_agents_and_lanes_do_not_leak(base: Path, prompts) -> None:
    policy = _policy(base)
    ctx = prompts.items(torch.arange(4)).contexts
    from genrl.drive.scene import unpack_context

    scene = {k: v.clone() for k, v in unpack_context(SPEC, ctx).items()}
    scene["agent_mask"][:, 3] = False
    scene["history_mask"][:, 3] = False
    scene["history_mask"][:, 1, 0] = False  # an unobserved history step of a real agent
    scene["lane_mask"][:, 2] = False
    scene["lane_mask"][:, 0, -1] = False  # a padded point of a real lane
    g = torch.Generator().manual_seed(0)
    other = {k: v.clone() for k, v in scene.items()}
    other["history"][:, 3] += torch.randn(other["history"][:, 3].shape, generator=g) * 10
    other["size"][:, 3] += 3.0
    other["history"][:, 1, 0] += 7.0
    other["lanes"][:, 2] += torch.randn(other["lanes"][:, 2].shape, generator=g) * 10
    other["lanes"][:, 0, -1] += 5.0
    x_k = torch.randn(4, *SPEC.action_shape, generator=g)
    x_other = x_k.clone()
    x_other[:, 3] += 3.0
    k = torch.full((4,), 3)
    with torch.no_grad():
        out = policy.model.denoiser(x_k, k, policy.model.encoder(scene))
        out2 = policy.model.denoiser(x_other, k, policy.model.encoder(other))
        out3 = policy.model.denoiser(x_k, k, policy.model.encoder({**scene, "agent_mask": scene["agent_mask"] | True}))
    assert torch.equal(out[:, :3], out2[:, :3])  # real agents: bit-identical
    assert not torch.equal(out[:, :3], out3[:, :3])  # ...while an unmasked agent 3 does change them


# ------------------------------------------------------------------------------ the policy


def test_ego_only_log_probs(base: Path, prompts) -> None:
    policy = _policy(base)
    ro = _rollout(policy, prompts, [0, 1, 2, 3], [0, 1, 2, 3])
    assert ro.meta["train_steps"] == list(range(TINY_MODEL["num_steps"] - 1))  # the last step is deterministic
    lp = policy.score(ro)["log_probs"].detach()
    j = 1
    moved = ro.select(torch.arange(4))
    moved.tensors["chain"] = ro["chain"].clone()
    moved["chain"][:, j + 1, 1:] += 0.5  # the non-ego rows of x_{k-1} of step j
    lp2 = policy.score(moved)["log_probs"].detach()
    assert torch.equal(lp[:, j], lp2[:, j])  # step j's log-prob ignores non-ego rows of its target
    assert not torch.equal(lp[:, j + 1], lp2[:, j + 1])  # ...which still condition the next step
    ego = ro.select(torch.arange(4))
    ego.tensors["chain"] = ro["chain"].clone()
    ego["chain"][:, j + 1, 0] += 0.5
    assert not torch.equal(lp[:, j], policy.score(ego)["log_probs"].detach()[:, j])


def test_first_ratio_is_exactly_one(base: Path, prompts) -> None:
    policy = _policy(base)
    ro = _rollout(policy, prompts, list(range(6)), [5, 4, 3, 2, 1, 0])
    steps = ro.meta["train_steps"]
    out = policy.score(ro.select(torch.tensor([4, 0, 5, 2, 1, 3])))  # another order and chunking
    assert torch.equal(out["log_probs"].detach(), ro["log_probs"][[4, 0, 5, 2, 1, 3]][:, steps])
    ro["advantages"] = torch.randn(6)
    loss = GenDrive(GenDrive.Config())(policy, ro)
    assert loss.metrics["ratio_mean"] == 1.0 and loss.metrics["clip_frac"] == 0.0
    assert loss.metrics["regression_loss"] > 0 and loss.loss.requires_grad


def test_rollout_is_independent_of_the_batch_split(base: Path, prompts) -> None:
    policy = _policy(base)
    ids, scenes = [10, 11, 12, 13, 14, 15], [0, 0, 1, 1, 2, 2]
    whole = _rollout(policy, prompts, ids, scenes, step=3)
    parts = [_rollout(policy, prompts, ids[:2], scenes[:2], step=3), _rollout(policy, prompts, ids[2:], scenes[2:], step=3)]
    for key in ("chain", "log_probs", "states"):
        assert torch.equal(whole[key], torch.cat([p[key] for p in parts])), key
    assert not torch.equal(whole["states"][0], whole["states"][1])  # same scene, different sample ids
    ctx = prompts.items(torch.tensor(scenes)).contexts
    g1, _ = policy.generate(ctx, torch.tensor(ids), seed=1, purpose=Purpose.EVAL)
    g2 = torch.cat([policy.generate(ctx[i:i + 1], torch.tensor(ids[i:i + 1]), seed=1)[0] for i in range(6)])
    assert torch.equal(g1, g2)


def test_scene_spec_mismatch_is_refused(prompts) -> None:
    other = SceneSpec(**{**SPEC.to_dict(), "num_agents": 5})
    policy = SceneDiffusionPolicy(SceneDiffusionPolicy.Config(model=SceneDiffusionConfig(**TINY_MODEL), scene=other))
    with pytest.raises(ValueError, match=r"SceneSpec differs.*num_agents"):
        _rollout(policy, prompts, [0], [0])


# ------------------------------------------------------------------------------ RL through the shared loop


def test_two_training_steps_train_the_denoiser_only(base: Path, scene_data: Path, tmp_path: Path) -> None:
    from genrl.config.load import load_recipe
    from genrl.recipe import TrainRecipe
    from genrl.trainer.loop import Trainer

    reward = tmp_path / "progress_reward.py"
    reward.write_text("def reward(samples, contexts):\n    return samples[:, 0, -1, 0] / 10.0  # ego progress (m / 10)\n")
    recipe = tmp_path / "gen_drive_tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "seed": 0, "device": "cpu",
        "policy": {"name": "scene_diffusion", "base_checkpoint": str(base), "forward_chunk": 4},
        "explorer": {"name": "ddpm"},
        "prompts": {"name": "driving_scenes", "path": str(scene_data), "limit": 32},
        "rewards": [{"name": "python", "file": str(reward), "weight": 1.0}],
        "advantage": {"name": "batch_normalized"},
        "objective": {"name": "gen_drive", "clip_range": 0.01, "alpha": 10.0},
        "trainer": {"steps": 2, "prompts_per_step": 4, "group_size": 2, "minibatch_size": 8, "micro_batch_size": 4,
                    "lr": 1e-3},
        "logging": {"progress": False, "tensorboard": False},
    }, sort_keys=False))
    config, _ = load_recipe(recipe, TrainRecipe)
    trainer = Trainer(config, recipe_file=str(recipe))
    enc0 = {k: v.clone() for k, v in trainer.policy.model.encoder.state_dict().items()}
    den0 = {k: v.clone() for k, v in trainer.policy.model.denoiser.state_dict().items()}
    result = trainer.train()
    assert len(trainer.history) == 2
    for h in trainer.history:
        assert math.isfinite(h["reward/total/mean"]) and math.isfinite(h["regression_loss"])
    assert trainer.history[0]["ratio/step_00/mean"] == pytest.approx(1.0, abs=1e-6)  # first minibatch on-policy
    assert all(torch.equal(v, trainer.policy.model.encoder.state_dict()[k]) for k, v in enc0.items())
    moved = [k for k, v in den0.items() if not torch.equal(v, trainer.policy.model.denoiser.state_dict()[k])]
    assert len(moved) == len(den0), sorted(set(den0) - set(moved))
    assert set(trainer.policy.trainable_parameters()) == {f"{k}" for k in den0}

    final = Path(result["final_checkpoint"])
    reloaded = SceneDiffusionPolicy.from_checkpoint(final, use_ema=False)
    for k, v in trainer.policy.model.state_dict().items():
        assert torch.equal(v, reloaded.model.state_dict()[k]), k


def test_pack_roundtrip_of_items(prompts, scene_data) -> None:
    from genrl.drive.dataset import load_scenes

    scene, _ = load_scenes(scene_data, "train", limit=3)
    items = prompts.items(torch.arange(3))
    assert torch.equal(items.contexts, pack_context(SPEC, scene))
    assert torch.equal(items.future, scene["future"]) and items.spec == SPEC.to_dict()


def test_ddpm_step_without_noise_returns_the_mean(base: Path, prompts) -> None:
    policy = _policy(base)
    ctx = prompts.items(torch.arange(2)).contexts
    enc = policy.encode(ctx)
    x = torch.randn(2, *SPEC.action_shape)
    with torch.no_grad():
        x_prev, mean, std, x0 = ddpm_step(policy.model.denoiser, x, 3, enc, schedule=policy.schedule)
        last, mean1, std1, x0_1 = ddpm_step(policy.model.denoiser, x, 1, enc, torch.randn_like(x),
                                            schedule=policy.schedule)
    assert torch.equal(x_prev, mean) and float(std) > 0
    assert float(std1) == 0.0 and torch.allclose(last, x0_1, atol=1e-6)  # the last step lands on x0_hat


@pytest.mark.parametrize("name", ["recipes/pretrain/scene_diffusion.yaml", "recipes/smoke/scene_diffusion_tiny.yaml"])
def test_pretraining_recipes_validate(name: str) -> None:
    from genrl.cache import check_references
    from genrl.config.load import load_recipe
    from genrl.pretrain.scene_diffusion import SceneDiffusionPretrainRecipe

    root = Path(__file__).resolve().parent.parent
    config, resolved = load_recipe(root / name, SceneDiffusionPretrainRecipe)
    assert config.kind == "scene_diffusion" and config.data.collect_recipe
    assert check_references(resolved, name)  # the collection recipe exists


def test_data_options_need_exactly_one_source(tmp_path: Path) -> None:
    from genrl.config.load import load_recipe
    from genrl.config.validate import RecipeError
    from genrl.pretrain.scene_diffusion import SceneDiffusionPretrainRecipe

    for data in ({}, {"path": "a", "collect_recipe": "b"}):
        f = tmp_path / "bad.yaml"
        f.write_text(yaml.safe_dump({"kind": "scene_diffusion", "data": data}))
        with pytest.raises(RecipeError, match="exactly one of path and collect_recipe"):
            load_recipe(f, SceneDiffusionPretrainRecipe)
