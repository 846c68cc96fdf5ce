"""Remote, asynchronous and group-wise rewards: chunked scoring, retries, timeouts, worker processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from genrl.config.validate import RecipeError
from genrl.registry import REWARDS
from genrl.rewards.base import InvalidRewardError, RewardConfig, RewardSet, build_reward
from genrl.rewards.group import rank_within_groups
from genrl.trainer.producer import RolloutProducer
from tests.helpers import make_trainer, reset_accelerate, smoke_recipe

RELEASE = threading.Event()  # wakes abandoned sleeping calls at the end of a test

if "test_async_sleepy" not in REWARDS:

    @REWARDS.register("test_async_sleepy")
    class Sleepy:
        """Stroke crispness after a sleep: on every call, or only on calls holding prompt ``slow_prompt``."""

        @dataclass
        class Config(RewardConfig):
            sleep_s: float = 0.0
            slow_prompt: int | None = None

        def __init__(self, config, **_):
            self.config = config

        def __call__(self, images, prompts):
            c = self.config
            if c.sleep_s and (c.slow_prompt is None or bool((prompts == c.slow_prompt).any())):
                RELEASE.wait(c.sleep_s)  # in a worker process nothing sets it: a plain sleep
            return images.flatten(1).mean(1)


@pytest.fixture
def release():
    RELEASE.clear()
    yield
    RELEASE.set()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _reward_workers() -> list:
    return [p for p in multiprocessing.active_children() if p.name.startswith("genrl-reward-")]


def _two_steps(tmp_path, name, *overrides):
    trainer = make_trainer(tmp_path / name, "logging.tensorboard=false", *overrides)
    metrics = [trainer.train_step(s) for s in range(2)]
    weights = trainer.policy.trainable_state_dict()
    trainer.rewards.close()
    reset_accelerate()
    return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in metrics], weights


@pytest.mark.parametrize("rewards", ["[{name: stroke_crispness}]",
                                     "[{name: group_rank, of: {name: stroke_crispness}}, {name: stroke_crispness}]"])
def test_chunked_generation_and_scoring_give_the_same_numbers_as_one_piece(tmp_path, rewards):
    one = _two_steps(tmp_path, "one", f"rewards={rewards}")
    # 2 pieces of whole groups; 8 pieces cut the groups of 4 (group_rank is then scored after the last piece)
    for k in (2, 8):
        metrics, weights = _two_steps(tmp_path, f"k{k}", f"rewards={rewards}", f"trainer.reward_chunks={k}")
        assert metrics == one[0], k
        assert all(torch.equal(weights[n], one[1][n]) for n in weights), k


def test_pieces_hold_whole_groups_unless_that_costs_network_calls():
    class Policy:  # only what the producer reads at construction: rows per network call
        def __init__(self, forward_chunk):
            self.config = type("Config", (), {"forward_chunk": forward_chunk})()

    def bounds(prompts, group, world, k, rank=0, forward_chunk=None):
        p = RolloutProducer(Policy(forward_chunk), None, None, seed=0, prompts_per_step=prompts, group_size=group,
                            rank=rank, world_size=world, reward_chunks=k)
        return p.bounds, p.chunks_hold_whole_groups

    assert bounds(4, 4, 1, 2) == ([(0, 8), (8, 16)], True)
    # whole groups (32/48/32/48) would take 6 network calls of 40 rows, equal pieces 4: equal pieces win
    assert bounds(10, 16, 1, 4, forward_chunk=40) == ([(0, 40), (40, 80), (80, 120), (120, 160)], False)
    assert bounds(10, 16, 1, 5, forward_chunk=32) == ([(i, i + 32) for i in range(0, 160, 32)], True)
    assert bounds(4, 4, 1, 3) == ([(0, 4), (4, 8), (8, 16)], True)  # uneven, but whole groups
    assert bounds(1, 16, 1, 4) == ([(0, 4), (4, 8), (8, 12), (12, 16)], False)  # one group: cut
    assert bounds(3, 4, 2, 2, rank=1) == ([(0, 2), (2, 6)], False)  # rank 1's shard starts inside a group
    with pytest.raises(ValueError, match=r"trainer.reward_chunks: expected 1 to 8 .* got 9"):
        bounds(4, 4, 2, 9)


def test_bad_reward_options_are_recipe_errors_naming_the_key():
    for value, expect in (("0", "expected 1 to the rollout batch"), ("17", "= 16, got 17")):
        with pytest.raises(RecipeError) as e:
            smoke_recipe(f"trainer.reward_chunks={value}")
        assert e.value.key == "trainer.reward_chunks" and expect in e.value.message
    cases = {"[{name: stroke_crispness, retries: -1}]": ("rewards[0].retries", "must be >= 0"),
             "[{name: stroke_crispness, executor: local, call_timeout_s: 1}]":
                 ("rewards[0].call_timeout_s", "a local call cannot be interrupted"),
             "[{name: stroke_crispness, executor: fork}]": ("rewards[0].executor", "expected one of"),
             "[{name: group_rank, of: {name: stroke_crisp}}]": ("rewards[0].of.name", "did you mean 'stroke_crispness'"),
             "[{name: group_rank, of: {name: stroke_crispness, wieght: 1}}]": ("rewards[0].of.wieght", "unknown key")}
    for rewards, (key, expect) in cases.items():
        with pytest.raises(RecipeError) as e:
            smoke_recipe(f"rewards={rewards}")
        assert e.value.key == key and expect in e.value.message, (rewards, str(e.value))


def test_a_failing_call_is_retried_then_succeeds_and_spent_retries_give_nan():
    calls = []

    def flaky(images, prompts):
        calls.append(1)
        if len(calls) % 3 == 1:
            raise ConnectionError("reward server restarting")
        return torch.ones(len(prompts))

    rs = RewardSet([("flaky", flaky, 1.0, RewardConfig(retries=2))])
    rs.backoff_s = 0.0
    out = rs.score(torch.zeros(4, 2, 2), torch.zeros(4))
    assert out.valid.all() and len(calls) == 2

    def down(images, prompts):
        calls.append(1)
        raise ConnectionError("down")

    calls.clear()
    rs = RewardSet([("down", down, 1.0, RewardConfig(retries=1))], max_invalid_share=0.5)
    rs.backoff_s = 0.0
    out = rs.score(torch.zeros(4, 2, 2), torch.zeros(4))
    assert not out.valid.any() and len(calls) == 2
    with pytest.raises(InvalidRewardError):
        rs.account(out.valid)


def test_a_timed_out_call_gives_nan_quickly_and_stops_the_run_past_the_share(tmp_path, release):
    trainer = make_trainer(tmp_path, "rewards=[{name: test_async_sleepy, sleep_s: 60, call_timeout_s: 0.2, retries: 1},"
                                     " {name: stroke_crispness, executor: process}]",
                           "trainer.reward_chunks=2", "trainer.max_invalid_reward_share=0.5")
    worker = trainer.rewards.fns[1].pid
    t0 = time.perf_counter()
    with pytest.raises(InvalidRewardError, match=r"16 of 16 samples .* above trainer.max_invalid_reward_share"):
        trainer.train()
    # 2 pieces x (0.2 s + 0.1 s backoff + 0.2 s), not 60 s; the scoring thread is shut down
    assert time.perf_counter() - t0 < 10
    # stopped on error: the scoring thread is shut down and the worker process is gone
    assert trainer.rewards._queue is None and not _pid_alive(worker) and not _reward_workers()


SLOW_ON_MINUS_ONE = """
import time

def reward(images, prompts):
    if bool((prompts == -1).any()):
        time.sleep(60)
    return images.flatten(1).mean(1)
"""


def test_process_executor_matches_local_restarts_after_a_timeout_and_leaves_no_process(tmp_path):
    # A `python` reward (a built-in component: the child imports nothing of the tests, so starts fast)
    (tmp_path / "slow.py").write_text(SLOW_ON_MINUS_ONE)
    config = REWARDS.get("python").Config(file=str(tmp_path / "slow.py"), executor="process")
    worker = build_reward("python", config)
    assert worker.__name__ == "python:slow.py:reward" and worker.input_files["code"] == tmp_path / "slow.py"
    rs = RewardSet([("slow", worker, 1.0, config)])
    images, prompts = torch.rand(6, 8, 8), torch.tensor([1, 2, 3, 4, 5, 6])
    first = worker.pid
    assert torch.equal(rs.score(images, prompts).values[:, 0], images.flatten(1).mean(1))
    with pytest.raises(TimeoutError):
        worker(images, torch.tensor([-1] * 6), timeout=0.3)
    assert not _pid_alive(first)  # killed, not left sleeping
    assert torch.equal(worker(images, prompts, timeout=30), images.flatten(1).mean(1))  # a fresh worker
    second = worker.pid
    assert second != first
    rs.close()
    assert not _pid_alive(second) and not _reward_workers()

    # In a run: the worker scores like the local component, and is gone when train() returns.
    reset_accelerate()
    trainer = make_trainer(tmp_path, "rewards=[{name: stroke_crispness, executor: process}]", "trainer.steps=1",
                           "logging.tensorboard=false")
    pid = trainer.rewards.fns[0].pid
    trainer.train()
    assert not _pid_alive(pid) and not _reward_workers()
    reset_accelerate()
    ref = make_trainer(tmp_path / "ref", "trainer.steps=1", "logging.tensorboard=false")
    ref.train()
    assert trainer.history[0]["reward/total/mean"] == ref.history[0]["reward/total/mean"]


def test_group_rank_is_the_normalised_rank_within_each_group_whatever_the_order():
    scores = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0, 5.0, 5.0, 0.0, 7.0])
    groups = torch.tensor([7, 7, 7, 7, 2, 2, 2, 2, 9])
    expected = torch.tensor([1.0, 0.0, 0.5, 0.5, 2 / 3, 2 / 3, 2 / 3, 0.0, 0.5])  # ties averaged; alone: 0.5
    assert torch.allclose(rank_within_groups(scores, groups), expected)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(rank_within_groups(scores[perm], groups[perm] * 10 + 1), expected[perm])
    with_nan = rank_within_groups(torch.tensor([1.0, float("nan"), 3.0]), torch.zeros(3))
    assert torch.isnan(with_nan[1]) and with_nan[[0, 2]].tolist() == [0.0, 1.0]


def test_group_rank_sees_whole_groups_even_when_pieces_cut_them():
    spec = smoke_recipe("rewards=[{name: group_rank, of: {name: stroke_crispness}}, {name: stroke_crispness}]").rewards
    rs = RewardSet([(s.name, build_reward(s.name, s.config), 1.0, s.config) for s in spec])
    images, prompts = torch.rand(12, 8, 8), torch.zeros(12, dtype=torch.long)
    groups = torch.arange(12) // 4
    whole = rs.score(images, prompts, groups=groups)
    assert torch.allclose(whole.values[:, 0], rank_within_groups(whole.values[:, 1], groups))
    for whole_groups, cuts in ((False, [0, 3, 6, 9, 12]), (True, [0, 4, 12])):
        stream = rs.stream(whole_groups=whole_groups)
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            stream.add(images[lo:hi], prompts[lo:hi], groups=groups[lo:hi])
        assert torch.equal(stream.result().values, whole.values), whole_groups
    rs.close()


def test_http_reward_retries_connection_errors_and_5xx_with_backoff():
    from genrl.rewards.external import HTTPReward

    answers = ["503", "good"]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = answers.pop(0) if answers else "good"
            data = json.dumps({"rewards": [float(p) for p in body["prompts"]]}).encode()
            self.send_response(503 if answer == "503" else 200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/score"
    images, prompts = torch.zeros(3, 8, 8), torch.tensor([1, 2, 3])
    try:
        reward = HTTPReward(HTTPReward.Config(url=url, timeout_s=5, retry_backoff_s=0.01))
        assert reward(images, prompts).tolist() == [1.0, 2.0, 3.0] and not answers  # the 503 was retried
    finally:
        server.shutdown()
        server.server_close()
    down = HTTPReward(HTTPReward.Config(url=url, timeout_s=5, max_retries=2, retry_backoff_s=0.01))
    t0 = time.perf_counter()
    assert torch.isnan(down(images, prompts)).all()  # connection refused, 3 tries, then NaN
    assert time.perf_counter() - t0 < 2


def test_group_wise_reward_across_processes_needs_whole_groups_per_process(tmp_path):
    """3 prompts over 2 processes would cut a group in two: refused before any work, naming the key."""
    import os
    import subprocess
    import sys

    from tests.helpers import SMOKE

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
           "-m", "genrl.cli", "train", str(SMOKE), "--run-dir", str(tmp_path / "run"), "trainer.prompts_per_step=3",
           "trainer.minibatch_size=12", "trainer.micro_batch_size=6",
           "rewards=[{name: group_rank, of: {name: stroke_crispness}}]"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    assert ("trainer.prompts_per_step: expected a multiple of the 2 processes: the group-wise reward(s) "
            "['group_rank'] need every process's shard to hold whole groups") in proc.stderr
    assert not (tmp_path / "run" / "manifest.json").exists()
