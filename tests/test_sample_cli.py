"""`genrl pretrain` and `genrl sample` from the command line, on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import ROOT, SMOKE, run_genrl

genrl = run_genrl


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    genrl("pretrain", ROOT / "recipes/smoke/pretrain_tiny.yaml", "--out", out, cwd=out)
    return out


def test_sample_a_pretrained_base_is_deterministic(tiny_base, tmp_path):
    for name in ("a.npz", "b.npz"):
        genrl("sample", tiny_base, "--prompts", "0,1,2", "--n", "4", "--seed", "7", "--out", tmp_path / name, cwd=tmp_path)
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["images"].shape == (12, 8, 8) and a["images"].dtype == np.float32
    assert a["prompts"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert 0.0 <= a["images"].min() and a["images"].max() <= 1.0
    assert np.array_equal(a["images"], b["images"])
    genrl("sample", tiny_base, "--prompts", "0,1,2", "--n", "4", "--seed", "8", "--out", tmp_path / "c.npz", cwd=tmp_path)
    assert not np.array_equal(a["images"], np.load(tmp_path / "c.npz")["images"])


def test_fine_tune_from_a_base_then_sample_the_run_directory(tiny_base, tmp_path):
    run = tmp_path / "run"
    genrl("train", SMOKE, "--run-dir", run, f"policy.base_checkpoint={tiny_base}", "policy.lora={rank: 2, alpha: 4}",
          "trainer.steps=2", cwd=tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["base_checkpoint"] == str(tiny_base.resolve())
    genrl("sample", run, "--prompts", "5", "--n", "3", "--seed", "1", "--out", tmp_path / "ema.npz", cwd=tmp_path)
    genrl("sample", run, "--prompts", "5", "--n", "3", "--seed", "1", "--no-ema", "--out", tmp_path / "raw.npz", cwd=tmp_path)
    ema, raw = np.load(tmp_path / "ema.npz")["images"], np.load(tmp_path / "raw.npz")["images"]
    assert ema.shape == raw.shape == (3, 8, 8)
    assert not np.array_equal(ema, raw)  # the EMA weights were used by default


def test_sampling_a_missing_path_is_a_clear_error(tmp_path):
    proc = genrl("sample", tmp_path / "nope", "--out", tmp_path / "x.npz", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "no such run directory or checkpoint" in proc.stderr


def test_a_from_scratch_run_samples_exactly_what_it_trained(tmp_path):
    """The checkpoint carries everything (including the frozen, seeded prompt encoder)."""
    import torch

    from genrl.sampling import load_policy_for_sampling
    from tests.helpers import make_trainer

    trainer = make_trainer(tmp_path / "run", "trainer.ema_decay=null", "trainer.steps=1")
    trainer.train()
    prompts, ids = torch.tensor([1, 2, 3]), torch.arange(3)
    expected = trainer.policy.sample_ode(prompts, ids, seed=3)
    policy, _ = load_policy_for_sampling(tmp_path / "run")
    assert torch.equal(policy.sample_ode(prompts, ids, seed=3), expected)
