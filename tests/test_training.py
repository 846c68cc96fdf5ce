"""Loop behaviour on the smoke recipe: determinism, exact resume, atomic checkpoints, logging."""

from __future__ import annotations

import json
import shutil

import torch

from genrl.trainer.checkpoint import latest_checkpoint, list_checkpoints, load_tensors
from tests.helpers import make_trainer, reset_accelerate


def _metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_same_recipe_and_seed_give_identical_metrics(tmp_path):
    make_trainer(tmp_path / "a").train()
    make_trainer(tmp_path / "b").train()
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert len(a) == 3 and a == b
    wa = load_tensors(latest_checkpoint(tmp_path / "a") / "policy.safetensors")
    wb = load_tensors(latest_checkpoint(tmp_path / "b") / "policy.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_different_seed_gives_different_samples(tmp_path):
    make_trainer(tmp_path / "a").train()
    make_trainer(tmp_path / "b", "seed=1").train()
    assert _metrics(tmp_path / "a")[0]["reward/total/mean"] != _metrics(tmp_path / "b")[0]["reward/total/mean"]


def test_interrupted_and_resumed_run_ends_with_exactly_the_same_weights(tmp_path):
    full = tmp_path / "full"
    make_trainer(full, "trainer.checkpoint_every=0").train()
    part = tmp_path / "part"
    out = make_trainer(part, "trainer.checkpoint_every=0").train(until_step=1)
    assert out["stopped_at"] == 1 and latest_checkpoint(part).name == "step_00000001"
    reset_accelerate()
    make_trainer(part, "trainer.checkpoint_every=0").train()  # resumes automatically
    for name in ("policy.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_tensors(latest_checkpoint(full) / name)
        b = load_tensors(latest_checkpoint(part) / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert _metrics(full) == _metrics(part)
    manifest = json.loads((part / "manifest.json").read_text())
    assert [s["resumed_from_step"] for s in manifest["sessions"]] == [0, 1]


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    trainer = make_trainer(tmp_path, "trainer.keep_last=2")
    trainer.train()
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_00000002", "step_00000003"]
    meta = json.loads((tmp_path / "checkpoints" / "step_00000003" / "checkpoint.json").read_text())
    assert list(meta)[:3] == ["format", "policy", "model"] and meta["policy"] == "flow_image"
    # A crash while writing leaves only a temporary folder: the last good checkpoint still wins.
    shutil.copytree(tmp_path / "checkpoints" / "step_00000003", tmp_path / "checkpoints" / ".tmp_step_00000004")
    (tmp_path / "checkpoints" / ".tmp_step_00000004" / "policy.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step_00000003"
    # No pickle anywhere in a checkpoint.
    files = {p.suffix for p in (tmp_path / "checkpoints" / "step_00000003").iterdir()}
    assert files <= {".json", ".safetensors"}


def test_run_directory_records_provenance_and_metrics(tmp_path):
    make_trainer(tmp_path).train()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for key in ("recipe_hash", "seed", "git", "packages", "recipe", "base_checkpoint", "checkpoints", "command"):
        assert key in manifest
    assert manifest["packages"]["torch"].startswith("2.")
    assert (tmp_path / "recipe.yaml").is_file()
    row = _metrics(tmp_path)[0]
    for key in ("reward/stroke_crispness/mean", "reward/total/std", "adv/zero_std_group_share", "clip_frac",
                "approx_kl", "kl", "grad_norm", "lr", "ratio/step_00/mean", "ratio/step_01/max"):
        assert key in row, key
    raw = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert {"time/rollout", "time/reward", "time/update"} <= raw.keys()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_resuming_with_a_changed_recipe_is_refused(tmp_path):
    make_trainer(tmp_path, "trainer.steps=2").train(until_step=1)
    reset_accelerate()
    import pytest

    with pytest.raises(ValueError, match="different recipe"):
        make_trainer(tmp_path, "trainer.steps=2", "trainer.lr=0.5").train()


def test_nan_rewards_are_skipped_counted_and_stop_the_run_past_the_share(tmp_path):
    from dataclasses import dataclass

    import pytest

    from genrl.registry import REWARDS
    from genrl.rewards.base import InvalidRewardError
    from genrl.rewards.image import RewardConfig

    if "test_nan_first" not in REWARDS:

        @REWARDS.register("test_nan_first")
        class NanFirst:  # NaN for the first sample of every batch: 1 in 16
            @dataclass
            class Config(RewardConfig):
                pass

            def __init__(self, config, **_):
                self.config = config

            def __call__(self, images, prompts):
                out = images.flatten(1).mean(1)
                out[0] = float("nan")
                return out

    make_trainer(tmp_path / "ok", "rewards=[{name: test_nan_first}]", "trainer.max_invalid_reward_share=0.1").train()
    rows = _metrics(tmp_path / "ok")
    assert [r["reward/invalid_share"] for r in rows] == [1 / 16] * 3
    assert all(r["reward/test_nan_first/mean"] == r["reward/test_nan_first/mean"] for r in rows)  # finite
    reset_accelerate()
    with pytest.raises(InvalidRewardError, match="1 of 16 samples"):
        make_trainer(tmp_path / "stop", "rewards=[{name: test_nan_first}]", "trainer.max_invalid_reward_share=0.05").train()
