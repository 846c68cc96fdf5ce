"""The same recipe under torchrun with 2 processes (gloo) equals 1 process: same samples, same update."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from genrl.trainer.checkpoint import latest_checkpoint, load_tensors
from tests.helpers import ROOT, SMOKE


def _run(run_dir, nproc: int, tmp_path, recipe=SMOKE, port: int = 29533) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["train", str(recipe), "--run-dir", str(run_dir), "trainer.steps=2"]
    if nproc == 1:
        cmd = [sys.executable, "-m", "genrl.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(port), "-m", "genrl.cli", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_processes_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run(one, 1, tmp_path)
    _run(two, 2, tmp_path)
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    # Keyed noise: the very same samples at step 1, hence bit-identical rewards, in both runs;
    # step 2 samples come from weights that agree within float rounding.
    assert m1[0]["reward/stroke_crispness/mean"] == m2[0]["reward/stroke_crispness/mean"]
    assert m1[0]["reward/total/std"] == m2[0]["reward/total/std"]
    assert abs(m1[1]["reward/total/mean"] - m2[1]["reward/total/mean"]) <= 1e-5 * abs(m1[1]["reward/total/mean"])
    w1 = load_tensors(latest_checkpoint(one) / "policy.safetensors")
    w2 = load_tensors(latest_checkpoint(two) / "policy.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.allclose(w1[k], w2[k], rtol=1e-5, atol=1e-7), k
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["hardware"]["world_size"] == 2


def test_kvpo_fork_groups_split_over_two_processes_match_one_process(tmp_path):
    """KVPO under DDP: each rank rolls out and updates whole fork groups (one anchor + its branches); the
    rollouts are identical to one process, the update agrees within float rounding."""
    recipe = ROOT / "recipes" / "smoke" / "kvpo_tiny.yaml"
    one, two = tmp_path / "one", tmp_path / "two"
    _run(one, 1, tmp_path, recipe)
    _run(two, 2, tmp_path, recipe, port=29541)
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert m1[0]["reward/total/mean"] == m2[0]["reward/total/mean"]
    assert m1[0]["kvpo/energy_mean"] == m2[0]["kvpo/energy_mean"]
    w1 = load_tensors(latest_checkpoint(one) / "policy.safetensors")
    w2 = load_tensors(latest_checkpoint(two) / "policy.safetensors")
    for k in w1:
        assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-6), k


def test_the_committed_single_process_accelerate_config_runs_the_smoke_recipe(tmp_path):
    from tests.helpers import ROOT

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes/accelerate/single_process.yaml"), "--cpu", "-m", "genrl.cli", "train", str(SMOKE),
           "--run-dir", str(tmp_path / "run"), "trainer.steps=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert latest_checkpoint(tmp_path / "run").name == "step_00000001"


def test_a_pipeline_policy_splits_over_two_processes_like_one(tmp_path):
    """A diffusers pipeline folder (tiny SD3) under DDP: per-row prompt embeddings travel with the rollout through
    the gather; samples are identical to one process and the first update's gradient agrees within float rounding.

    (Weights are not compared: the LoRA gradients here are ~1e-3 and Adam's first step is lr * sign(g), so a
    rounding-level difference in a near-zero component flips a whole lr-sized step.)"""
    from genrl.models.pipelines_tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd3", tmp_path / "sd3")
    recipe = tmp_path / "pipeline.yaml"
    recipe.write_text((ROOT / "recipes" / "smoke" / "pipeline_flow_grpo_tiny.yaml").read_text()
                      .replace("path: runs/tiny_sd3", f"path: {pipe}")
                      .replace("path: data/prompts/simple_scenes.txt", f"path: {ROOT / 'data/prompts/simple_scenes.txt'}"))
    one, two = tmp_path / "one", tmp_path / "two"
    _run(one, 1, tmp_path, recipe)
    _run(two, 2, tmp_path, recipe, port=29547)
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    for key in ("reward/total/mean", "reward/total/std", "adv/abs_max"):
        assert m1[0][key] == m2[0][key], key
    assert abs(m1[0]["grad_norm"] - m2[0]["grad_norm"]) <= 1e-5 * m1[0]["grad_norm"]
    assert abs(m1[1]["reward/total/mean"] - m2[1]["reward/total/mean"]) <= 1e-3 * abs(m1[1]["reward/total/mean"])
    assert json.loads((two / "manifest.json").read_text())["hardware"]["world_size"] == 2
