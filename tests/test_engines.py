"""Engines behind the loop: DeepSpeed ZeRO-2 and ZeRO-3 on CPU in one process (FSDP needs GPUs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from genrl.trainer.checkpoint import latest_checkpoint, load_tensors
from tests.helpers import ROOT, SMOKE

ZERO2 = ROOT / "recipes" / "accelerate" / "deepspeed_zero2.yaml"
ZERO3 = ROOT / "recipes" / "accelerate" / "deepspeed_zero3.yaml"


def _accelerate(run_dir, cwd, *extra, config=ZERO2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "1",
           "--mixed_precision", "no", "-m", "genrl.cli", "train", str(SMOKE), "--run-dir", str(run_dir),
           "trainer.steps=3", *extra]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_deepspeed_runs_the_loop_on_cpu_matches_plain_training_and_resumes_exactly(tmp_path):
    _accelerate(tmp_path / "ds", tmp_path)
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["hardware"]["engine"] == "DEEPSPEED ZeRO-2"
    # the same recipe without an engine: the same weights up to float rounding (fp32)
    plain = subprocess.run([sys.executable, "-m", "genrl.cli", "train", str(SMOKE), "--run-dir", str(tmp_path / "plain"),
                            "trainer.steps=3"], env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr[-2000:]
    a = load_tensors(latest_checkpoint(tmp_path / "ds") / "policy.safetensors")
    b = load_tensors(latest_checkpoint(tmp_path / "plain") / "policy.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    # interrupted after step 2 and resumed under ZeRO-2: identical to the uninterrupted ZeRO-2 run
    _accelerate(tmp_path / "part", tmp_path, "--until-step", "2")
    proc = _accelerate(tmp_path / "part", tmp_path)
    assert "resuming" in proc.stdout
    c = load_tensors(latest_checkpoint(tmp_path / "part") / "policy.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)
    # ZeRO-3 (parameters sharded, gathered for checkpoints; EMA is refused there): same weights too
    _accelerate(tmp_path / "z3", tmp_path, "trainer.ema_decay=null", config=ZERO3)
    assert json.loads((tmp_path / "z3" / "manifest.json").read_text())["hardware"]["engine"] == "DEEPSPEED ZeRO-3"
    d = load_tensors(latest_checkpoint(tmp_path / "z3") / "policy.safetensors")
    for k in a:
        assert torch.allclose(d[k], b[k], rtol=1e-5, atol=1e-6), k
