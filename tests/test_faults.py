"""Fault injection, one test per fault: the run goes on or stops as specified, and nothing already
written (metric lines, checkpoints) is lost."""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from genrl.registry import OBJECTIVES, REWARDS
from genrl.rewards.image import RewardConfig
from genrl.trainer import checkpoint as ckpt
from tests.helpers import make_trainer, reset_accelerate


def _lines(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


if "test_fails_from_step_2" not in REWARDS:

    @REWARDS.register("test_fails_from_step_2")
    class FailsFromStep2:
        """Scores normally at the first call, then raises (e.g. a reward server that went down)."""

        @dataclass
        class Config(RewardConfig):
            pass

        def __init__(self, config, **_):
            self.config, self.calls = config, 0

        def __call__(self, images, prompts):
            self.calls += 1
            if self.calls >= 2:
                raise ConnectionError("reward server unreachable")
            out = images.flatten(1).mean(1)
            out[:3] = float("nan")  # and a few bad values at the first call: their groups are skipped
            return out


def test_failing_rewards_skip_their_groups_then_stop_the_run_keeping_what_was_written(tmp_path):
    from genrl.rewards.base import InvalidRewardError

    trainer = make_trainer(tmp_path, "rewards=[{name: test_fails_from_step_2}]", "trainer.max_invalid_reward_share=0.3")
    with pytest.raises(InvalidRewardError, match=r"19 of 32 samples .* above trainer.max_invalid_reward_share"):
        trainer.train()
    rows = _lines(tmp_path)
    assert len(rows) == 1 and rows[0]["reward/skipped_groups"] == 1.0  # samples 0-2 are all in group 0
    assert rows[0]["reward/invalid_share"] == 3 / 16
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000001"
    ckpt.verify_checkpoint(ckpt.latest_checkpoint(tmp_path))


if "test_nan_once" not in OBJECTIVES:
    from genrl.objectives.flow_grpo import FlowGRPO

    @OBJECTIVES.register("test_nan_once")
    class NanOnce(FlowGRPO):
        """Flow-GRPO whose loss is NaN on its third micro-batch (a numerical blow-up)."""

        calls = 0

        def __call__(self, policy, batch):
            out = super().__call__(policy, batch)
            type(self).calls += 1
            if type(self).calls == 3:
                out.loss = out.loss * float("nan")
            return out


def test_a_nan_loss_skips_the_update_saves_the_batch_and_training_goes_on(tmp_path):
    NanOnce.calls = 0
    trainer = make_trainer(tmp_path, "objective={name: test_nan_once, kl_beta: 0.01}")
    trainer.train()
    rows = _lines(tmp_path)
    assert len(rows) == 3 and [r["fault/skipped_updates"] for r in rows] == [1.0, 1.0, 1.0]
    saved = list((tmp_path / "faults").glob("*.safetensors"))
    assert [p.name for p in saved] == ["step000000_epoch0_mb1_rank0.safetensors"]
    assert "latents" in ckpt.load_tensors(saved[0])
    weights = ckpt.load_tensors(ckpt.latest_checkpoint(tmp_path) / "policy.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_exploding_gradients_past_the_share_stop_the_run(tmp_path):
    from genrl.trainer.faults import TooManyFaultsError

    trainer = make_trainer(tmp_path, "trainer.skip_grad_norm=1.0e-12", "trainer.max_skipped_update_share=0.5")
    with pytest.raises(TooManyFaultsError, match="faults"):
        trainer.train()
    assert len(list((tmp_path / "faults").iterdir())) >= 2


def test_disk_full_while_saving_keeps_the_previous_checkpoint_and_goes_on(tmp_path, monkeypatch):
    real = ckpt.save_tensors
    calls = {"n": 0}

    def flaky_save(path, tensors):
        if "step_00000002" in str(path):
            calls["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, tensors)

    monkeypatch.setattr(ckpt, "save_tensors", flaky_save)
    trainer = make_trainer(tmp_path, "trainer.keep_last=5")
    trainer.train()
    assert calls["n"] == 1
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step_00000001", "step_00000003"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    for p in ckpt.list_checkpoints(tmp_path):
        ckpt.verify_checkpoint(p)
    assert len(_lines(tmp_path)) == 3 and trainer.faults.checkpoint_failures == 1


def test_a_corrupted_checkpoint_on_resume_falls_back_and_ends_identical(tmp_path):
    make_trainer(tmp_path / "full").train()
    reset_accelerate()
    part = tmp_path / "part"
    make_trainer(part).train(until_step=2)
    bad = part / "checkpoints" / "step_00000002" / "policy.safetensors"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    bad.write_bytes(bytes(data))
    reset_accelerate()
    trainer = make_trainer(part)
    trainer.train()
    notes = json.loads((part / "manifest.json").read_text())["sessions"][-1]["notes"]
    assert notes and "step_00000002 is unusable" in notes[0] and "does not match" in notes[0]
    assert json.loads((part / "manifest.json").read_text())["sessions"][-1]["resumed_from_step"] == 1
    a = ckpt.load_tensors(ckpt.latest_checkpoint(tmp_path / "full") / "policy.safetensors")
    b = ckpt.load_tensors(ckpt.latest_checkpoint(part) / "policy.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_data_row_of_the_wrong_shape_is_reported_by_index(tmp_path):
    from genrl.data.image_files import DataRowError, load_image_dataset

    rows = [{"image": np.zeros((8, 8)).tolist(), "label": i % 10} for i in range(5)]
    rows[3]["image"] = np.zeros((7, 8)).tolist()
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataRowError, match=r"data.jsonl: row 3: image has shape \[7, 8\], expected \[8, 8\]"):
        load_image_dataset(path, size=8, num_classes=10)
    rows[3]["image"] = np.zeros((8, 8)).tolist()
    rows[4]["label"] = 12
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataRowError, match=r"row 4: label 12 is not an integer in \[0, 10\)"):
        load_image_dataset(path, size=8, num_classes=10)
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 8, 9)), labels=np.zeros(4, dtype=int))
    with pytest.raises(DataRowError, match=r"d.npz: row 0: image has shape \[8, 9\]"):
        load_image_dataset(tmp_path / "d.npz", size=8, num_classes=10)
    images, labels = load_image_dataset(path.with_name("ok.npz") if False else _good_npz(tmp_path), size=8, num_classes=10)
    assert images.shape == (6, 8, 8) and labels.tolist() == [0, 1, 2, 3, 4, 5]


def _good_npz(tmp_path):
    p = tmp_path / "good.npz"
    np.savez(p, images=np.full((6, 8, 8), 255, dtype=np.uint8), labels=np.arange(6))
    return p


def test_a_reward_server_is_validated_and_timed_out_not_trusted():
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from genrl.rewards.external import HTTPReward

    mode = {"answer": "good"}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            n = len(body["prompts"])
            if mode["answer"] == "slow":
                time.sleep(1.0)
            payload = {"good": {"rewards": [float(p) for p in body["prompts"]]},
                       "short": {"rewards": [1.0] * (n - 1)},
                       "code": {"rewards": "__import__('os').system('true')"},
                       "slow": {"rewards": [0.0] * n}}[mode["answer"]]
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reward = HTTPReward(HTTPReward.Config(url=f"http://127.0.0.1:{server.server_port}/score", timeout_s=0.3))
        images, prompts = torch.zeros(3, 8, 8), torch.tensor([1, 2, 3])
        assert reward(images, prompts).tolist() == [1.0, 2.0, 3.0]
        for bad in ("short", "code", "slow"):
            mode["answer"] = bad
            assert torch.isnan(reward(images, prompts)).all(), bad
    finally:
        server.shutdown()
