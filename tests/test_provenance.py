"""Reproducible, auditable runs: manifest schema, replay, input hashes, trust boundaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from genrl.replay import validate_manifest
from tests.helpers import ROOT, SMOKE, run_genrl

genrl = run_genrl


def torchrun(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "genrl.cli", *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_manifest_is_valid_against_the_committed_schema_and_hashes_inputs(tmp_path):
    genrl("train", SMOKE, "--run-dir", tmp_path / "run", "trainer.steps=2", cwd=tmp_path)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    validate_manifest(manifest)
    assert manifest["determinism"]["deterministic_mode"] is True
    assert manifest["determinism"]["caveats"]
    assert [c["step"] for c in manifest["checkpoints"]] == [1, 2]
    assert all(len(c["sha256"]) == 64 for c in manifest["checkpoints"])
    assert manifest["git"]["commit"] is None or len(manifest["git"]["commit"]) == 40


def test_replay_of_a_run_is_bit_for_bit(tmp_path):
    genrl("train", SMOKE, "--run-dir", tmp_path / "run", cwd=tmp_path)
    proc = genrl("replay", tmp_path / "run", cwd=tmp_path)
    assert "replayed bit for bit: 3 steps" in proc.stdout
    report = json.loads((tmp_path / "run-replay" / "replay_report.json").read_text())
    assert report["bitwise"] and report["checkpoints_compared"] == 3


def test_replay_of_a_two_process_run_is_bit_for_bit(tmp_path):
    torchrun("train", SMOKE, "--run-dir", tmp_path / "run", "trainer.steps=2", cwd=tmp_path)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    validate_manifest(manifest)
    assert manifest["hardware"]["world_size"] == 2
    proc = genrl("replay", tmp_path / "run", "--out", tmp_path / "again", cwd=tmp_path)
    assert "replayed bit for bit: 2 steps" in proc.stdout


@pytest.mark.slow
def test_replay_of_the_quick_start_is_bit_for_bit(quickstart, tmp_path):
    run = quickstart[0]
    validate_manifest(json.loads((run / "manifest.json").read_text()))
    proc = genrl("replay", run, "--until", "3", "--out", tmp_path / "replay", cwd=tmp_path)
    assert "replayed bit for bit: 3 steps" in proc.stdout


def test_replay_reports_the_first_divergence(tmp_path):
    genrl("train", SMOKE, "--run-dir", tmp_path / "run", cwd=tmp_path)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["reward/total/mean"] += 1e-3  # as if step 2 had come out differently
    lines[1] = json.dumps(row)
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    proc = genrl("replay", tmp_path / "run", check=False, cwd=tmp_path)
    assert proc.returncode == 1
    assert "diverged at step 2: reward/total/mean" in proc.stdout and "|diff| 0.001" in proc.stdout


def test_replay_refuses_a_changed_reward_model_with_both_hashes(tmp_path):
    clf = tmp_path / "clf"
    genrl("pretrain", ROOT / "reward_models/digit_classifier/train.yaml", "epochs=1", "--out", clf, cwd=tmp_path)
    genrl("train", SMOKE, "--run-dir", tmp_path / "run", "trainer.steps=1",
          f"rewards=[{{name: digit_classifier, checkpoint: {clf}}}]", cwd=tmp_path)
    recorded = json.loads((tmp_path / "run" / "manifest.json").read_text())["inputs"]["rewards[0]:digit_classifier"]
    weights = clf / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    proc = genrl("replay", tmp_path / "run", check=False, cwd=tmp_path)
    assert proc.returncode == 2
    assert "changed since the run" in proc.stderr and recorded["sha256"] in proc.stderr
    from genrl.hashing import folder_sha256

    assert folder_sha256(clf) in proc.stderr
    assert not (tmp_path / "run-replay").exists()


def test_user_reward_code_is_explicit_and_hashed(tmp_path):
    code = tmp_path / "my_reward.py"
    code.write_text("def reward(images, prompts):\n    return images.flatten(1).mean(1)\n")
    genrl("train", SMOKE, "--run-dir", tmp_path / "run", "trainer.steps=1",
          f"rewards=[{{name: python, file: {code}}}]", cwd=tmp_path)
    inputs = json.loads((tmp_path / "run" / "manifest.json").read_text())["inputs"]
    from genrl.hashing import file_sha256

    assert inputs["rewards[0]:code"]["sha256"] == file_sha256(code)
    code.write_text("def reward(images, prompts):\n    return -images.flatten(1).mean(1)\n")
    proc = genrl("replay", tmp_path / "run", check=False, cwd=tmp_path)
    assert proc.returncode == 2 and "rewards[0]:code" in proc.stderr


class _Payload:
    """Unpickling this would create a marker file: proof that something executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_in_a_checkpoint_is_refused_without_executing_it(tmp_path):
    import pickle

    genrl("train", SMOKE, "--run-dir", tmp_path / "run", "trainer.steps=2", cwd=tmp_path)
    latest = tmp_path / "run" / "checkpoints" / "step_00000002"
    marker = tmp_path / "EXECUTED"
    (latest / "optimizer.pt").write_bytes(pickle.dumps(_Payload(marker)))
    proc = genrl("sample", latest, "--n", "1", "--out", tmp_path / "x.npz", check=False, cwd=tmp_path)
    assert proc.returncode == 2 and "optimizer.pt" in proc.stderr and "refusing" in proc.stderr
    # resuming falls back to the previous, clean checkpoint and says so
    proc = genrl("train", SMOKE, "--run-dir", tmp_path / "run", "trainer.steps=2", cwd=tmp_path)
    assert "step_00000002 is unusable" in proc.stdout and "resuming" in proc.stdout and "step_00000001" in proc.stdout
    assert not marker.exists()
