"""Preemption and hard kills: the run stops cleanly or loses nothing, and ends identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import torch

from genrl.registry import REWARDS
from genrl.rewards.image import RewardConfig
from genrl.trainer.checkpoint import latest_checkpoint, list_checkpoints, load_tensors
from tests.helpers import SMOKE, make_trainer, reset_accelerate

if "test_signal_at_call_2" not in REWARDS:

    @REWARDS.register("test_signal_at_call_2")
    class SignalAtCall2:
        """Crispness, but the 2nd call delivers SIGUSR1 to this process (SLURM's warning signal)."""

        @dataclass
        class Config(RewardConfig):
            signal: str = "SIGUSR1"

        def __init__(self, config, **_):
            self.config, self.calls = config, 0

        def __call__(self, images, prompts):
            self.calls += 1
            if self.calls == 2:
                os.kill(os.getpid(), getattr(signal, self.config.signal))
            return (2 * images.clamp(0, 1) - 1).abs().flatten(1).mean(1)


def _weights(run_dir):
    return load_tensors(latest_checkpoint(run_dir) / "policy.safetensors")


def test_a_warning_signal_finishes_the_step_saves_and_the_resumed_run_ends_identical(tmp_path):
    recipe = ("rewards=[{name: test_signal_at_call_2}]", "trainer.steps=4", "trainer.checkpoint_every=0")
    full = tmp_path / "full"
    make_trainer(full, "rewards=[{name: stroke_crispness}]", *recipe[1:]).train()
    reset_accelerate()
    part = tmp_path / "part"
    out = make_trainer(part, *recipe).train()
    assert out["preempted"] and out["stopped_at"] == 2  # the signalled step was finished, then saved
    assert [p.name for p in list_checkpoints(part)] == ["step_00000002"]
    reset_accelerate()
    make_trainer(part, *recipe).train()  # the requeued job: resumes automatically (no 2nd signal: calls restart)
    a, b = _weights(full), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    import json

    sessions = json.loads((part / "manifest.json").read_text())["sessions"]
    assert "preempted by SIGUSR1 after step 2" in sessions[0]["notes"][0]


def test_sigterm_is_handled_the_same_way(tmp_path):
    out = make_trainer(tmp_path, "rewards=[{name: test_signal_at_call_2, signal: SIGTERM}]").train()
    assert out["preempted"] and latest_checkpoint(tmp_path).name == "step_00000002"


KILL_DURING_SAVE = """
import os, sys
import genrl.trainer.checkpoint as c
real = c.save_tensors
def save_then_die(path, tensors):
    real(path, tensors)
    if "step_00000002" in str(path) and path.name == "ema.safetensors":
        os.kill(os.getpid(), 9)  # SIGKILL in the middle of writing the step-2 checkpoint
c.save_tensors = save_then_die
from genrl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_during_a_checkpoint_save_loses_nothing(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["train", str(SMOKE), "--run-dir", str(tmp_path / "run"), "trainer.steps=3"]
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9
    assert latest_checkpoint(tmp_path / "run").name == "step_00000001"
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    proc = subprocess.run([sys.executable, "-m", "genrl.cli", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming" in proc.stdout and "step_00000001" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "genrl.cli", "train", str(SMOKE), "--run-dir",
                           str(tmp_path / "clean"), "trainer.steps=3"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0
    a, b = _weights(tmp_path / "run"), _weights(tmp_path / "clean")
    assert all(torch.equal(a[k], b[k]) for k in a)
