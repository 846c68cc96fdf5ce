"""Preference reward modelling: the data format, the labelling cascade, Bradley–Terry training
(loss, planted preferences, resume), the model folder and its use as a reward by path."""

from __future__ import annotations

import http.server
import json
import math
import threading
from pathlib import Path

import pytest
import torch
import yaml

from genrl.config.load import load_recipe
from genrl.config.validate import RecipeError
from genrl.data.moving_digits import moving_digit_pairs
from genrl.preference.data import PreferenceDataError, PreferencePairs, read_pairs, save_pairs
from genrl.preference.labelling import PREFER_A, PREFER_B, TIE, UNDECIDED, run_cascade
from genrl.preference.loss import bradley_terry_loss, centering_loss, pairwise_accuracy
from genrl.preference.models.base import RewardModelError, load_reward_model
from genrl.preference.train import RewardModelTrainer, RewardTrainRecipe
from genrl.recipe import TrainRecipe
from tests.helpers import ROOT, reset_accelerate, run_genrl


# ------------------------------------------------------------------ loss
def test_bradley_terry_loss_matches_hand_computation() -> None:
    r_c, r_r = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.5])
    # -log sigma(1 - 0) = log(1 + e^-1) = 0.3132617; -log sigma(0 - 0.5 - 0.5) = log(1 + e^1) = 1.3132617
    assert bradley_terry_loss(r_c, r_r, torch.tensor([0.0, 0.5])).item() == pytest.approx(0.8132617, abs=1e-6)
    assert bradley_terry_loss(r_c, r_r).item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.exp(0.5))) / 2)
    assert centering_loss(r_c, r_r).item() == pytest.approx((1.0 + 0.25) / 2)
    assert pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])).item() == pytest.approx(0.5)


# ------------------------------------------------------------------ data
def _image_pairs(n: int = 6) -> PreferencePairs:
    g = torch.Generator().manual_seed(0)
    return PreferencePairs(chosen=torch.rand(n, 1, 4, 4, generator=g), rejected=torch.rand(n, 1, 4, 4, generator=g),
                           contexts=torch.arange(n) % 3, margin=torch.linspace(0, 1, n), group=torch.arange(n) // 2,
                           label_source=["rule"] * n)


@pytest.mark.parametrize("fmt,name", [("arrow", "pairs"), ("parquet", "pairs.parquet"), ("jsonl", "pairs.jsonl")])
def test_pairs_round_trip_in_every_format(tmp_path: Path, fmt: str, name: str) -> None:
    pairs = _image_pairs()
    back = read_pairs(save_pairs(pairs, tmp_path / name, fmt))
    assert torch.equal(back.chosen, pairs.chosen) and torch.equal(back.rejected, pairs.rejected)
    assert torch.equal(back.contexts, pairs.contexts) and back.context_kind == "class"
    assert torch.allclose(back.margin, pairs.margin) and torch.equal(back.group, pairs.group)
    assert back.sample_shape == (1, 4, 4)


def test_corrupted_rows_are_reported_by_index(tmp_path: Path) -> None:
    good = {"chosen": [[0.1, 0.2], [0.3, 0.4]], "rejected": [[0.0, 0.0], [0.0, 0.0]], "context": 1}
    rows = [dict(good) for _ in range(9)]
    rows[3] = {**good, "rejected": [[0.0, 0.0, 0.0]]}  # wrong shape
    rows[5] = {k: v for k, v in good.items() if k != "rejected"} | {"rejected": None}  # missing
    rows[7] = {**good, "chosen": [[float("nan"), 0.0], [0.0, 0.0]]}  # non-finite
    rows[8] = {**good, "margin": -1.0}  # negative margin
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PreferenceDataError) as err:
        read_pairs(path)
    msg = str(err.value)
    assert str(path) in msg and "4 of 9 rows are unusable" in msg
    assert "row 3: rejected has shape [1, 3], expected [2, 2]" in msg
    assert "row 5: rejected is missing" in msg and "row 7: chosen has non-finite values" in msg
    assert "row 8: margin -1.0" in msg


def test_missing_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"chosen": [1.0], "rejected": [0.0]}) + "\n")
    with pytest.raises(PreferenceDataError, match=r"missing column\(s\) \['context'\]"):
        read_pairs(path)


# ------------------------------------------------------------------ labelling cascade
class _Rule:
    def __init__(self, decisions: list[int], margin: float = 0.0) -> None:
        self.decisions, self.seen = decisions, []
        self.config = type("C", (), {"margin": margin})()

    def __call__(self, a, b, contexts):
        self.seen.append(a[:, 0].tolist())
        return torch.tensor([self.decisions[int(i)] for i in a[:, 0]])


def test_cascade_records_the_deciding_rule_and_counts_ties_and_undecided() -> None:
    a = torch.arange(6.0).view(6, 1)
    first = _Rule([PREFER_A, UNDECIDED, TIE, UNDECIDED, UNDECIDED, PREFER_B], margin=0.5)
    second = _Rule([0, PREFER_B, 0, UNDECIDED, PREFER_A, 0])
    out = run_cascade([first, second], ["hard", "judge"], a, a.clone(), torch.zeros(6, dtype=torch.long))
    assert out.decisions.tolist() == [PREFER_A, PREFER_B, TIE, UNDECIDED, PREFER_A, PREFER_B]
    assert out.stage.tolist() == [0, 1, 0, -1, 1, 0]
    assert out.margin.tolist() == [0.5, 0.0, 0.5, 0.0, 0.0, 0.5]
    assert second.seen == [[1.0, 3.0, 4.0]]  # only what the first rule left undecided
    assert out.counts["hard"] == {"seen": 6, "a": 1, "b": 1, "tie": 1, "failed": 0}
    assert out.counts["judge"] == {"seen": 3, "a": 1, "b": 1, "tie": 0, "failed": 0}


def _judge_server(handler_fn):
    class Handler(http.server.BaseHTTPRequestHandler):
        calls = 0

        def do_POST(self):  # noqa: N802 (http.server's name)
            Handler.calls += 1
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, answer = handler_fn(body, Handler.calls)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, Handler


def test_http_judge_decides_retries_and_counts_failures() -> None:
    from genrl.preference.rules import HTTPJudge

    def answer(body, call):
        if call == 1:
            return 503, {}  # retried
        return 200, {"decisions": ["a" if x[0] > y[0] else "b" if x[0] < y[0] else "tie"
                                   for x, y in zip(body["a"], body["b"])]}

    server, handler = _judge_server(answer)
    try:
        judge = HTTPJudge(HTTPJudge.Config(url=f"http://127.0.0.1:{server.server_port}", retries=1, batch_size=8))
        d = judge(torch.tensor([[2.0], [0.0], [1.0]]), torch.tensor([[1.0], [1.0], [1.0]]), torch.zeros(3))
        assert d.tolist() == [PREFER_A, PREFER_B, TIE] and handler.calls == 2 and judge.last_failures == 0
    finally:
        server.shutdown()
    dead = HTTPJudge(HTTPJudge.Config(url=f"http://127.0.0.1:{server.server_port}", retries=0, timeout_s=1))
    d = dead(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2))
    assert d.tolist() == [UNDECIDED, UNDECIDED] and dead.last_failures == 2


def test_python_judge_is_loaded_from_the_named_file(tmp_path: Path) -> None:
    from genrl.preference.rules import PythonJudge

    (tmp_path / "judge.py").write_text("def judge(a, b, contexts):\n    return ['a', None, 'tie']\n")
    judge = PythonJudge(PythonJudge.Config(file=str(tmp_path / "judge.py")))
    assert judge(torch.zeros(3, 1), torch.zeros(3, 1), [0, 0, 0]).tolist() == [PREFER_A, UNDECIDED, TIE]
    with pytest.raises(RecipeError, match=r"labeller\[1\]\.file: judge file .* not found"):
        PythonJudge(PythonJudge.Config(file=str(tmp_path / "nope.py")), recipe_file="r.yaml", key="labeller[1]")


# ------------------------------------------------------------------ training
def _video_recipe(tmp_path: Path, **trainer) -> tuple[RewardTrainRecipe, Path]:
    data = tmp_path / "video_pairs.parquet"
    if not data.exists():
        save_pairs(moving_digit_pairs(1000, frames=6, size=16, seed=0), data, "parquet")
    raw = yaml.safe_load((ROOT / "reward_models/moving_digits_video/train.yaml").read_text())
    raw["data"]["path"] = str(data)
    raw["model"].update(channels=8, hidden=32)
    raw["trainer"].update({"epochs": 8, "batch_size": 32, "micro_batch_size": 16, "lr": 3e-3, **trainer})
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    recipe, _ = load_recipe(path, RewardTrainRecipe)
    return recipe, path


def test_video_reward_model_learns_a_planted_preference(tmp_path: Path) -> None:
    """Smooth motion beats a swapped or repeated frame: invisible in any single frame."""
    recipe, path = _video_recipe(tmp_path)
    result = RewardModelTrainer(recipe, recipe_file=str(path), run_dir=str(tmp_path / "run")).train()
    assert result["eval/accuracy"] >= 0.9, result
    model, info = load_reward_model(tmp_path / "run")
    assert info["modality"] == "video" and info["sample_shape"] == [6, 1, 16, 16]
    pairs = read_pairs(tmp_path / "video_pairs.parquet").select(range(64))
    with torch.no_grad():
        gap = model(pairs.chosen, pairs.contexts) - model(pairs.rejected, pairs.contexts)
    assert (gap > 0).float().mean() >= 0.9
    for name in ("model/MODEL_CARD.md", "model/config.json", "model/model.safetensors", "eval/calibration.png",
                 "eval/calibration.json", "manifest.json", "recipe.yaml"):
        assert (tmp_path / "run" / name).is_file(), name
    card = (tmp_path / "run/model/MODEL_CARD.md").read_text()
    assert "pairwise accuracy" in card and info["data"]["data"]["sha256"][:16] in card


def test_resumed_reward_training_equals_uninterrupted(tmp_path: Path) -> None:
    recipe, path = _video_recipe(tmp_path, epochs=2)
    full = RewardModelTrainer(recipe, recipe_file=str(path), run_dir=str(tmp_path / "full"))
    full.train()
    reset_accelerate()
    first = RewardModelTrainer(recipe, recipe_file=str(path), run_dir=str(tmp_path / "split"))
    stop = first.total_updates // 2 + 1  # mid-epoch
    assert first.train(until_step=stop)["stopped_at"] == stop
    reset_accelerate()
    second = RewardModelTrainer(recipe, recipe_file=str(path), run_dir=str(tmp_path / "split"))
    second.train()
    assert second.step == full.step
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k]), k
    log = [json.loads(x) for x in (tmp_path / "split/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, full.step + 1))  # no duplicated lines after the resume


def test_cli_reports_a_corrupted_data_file(tmp_path: Path) -> None:
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"chosen": [[1.0]], "rejected": [[0.0, 1.0]], "context": 0}) + "\n")
    proc = run_genrl("reward", "train", ROOT / "reward_models/moving_digits_video/train.yaml",
                     f"data.path={bad}", "--run-dir", tmp_path / "run", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert f"genrl: {bad}: 1 of 1 rows are unusable (row 0: rejected has shape [1, 2], expected [1, 1])" in proc.stderr


# ------------------------------------------------------------------ the learned reward, by path
def _train_recipe_with(tmp_path: Path, reward: dict) -> Path:
    raw = yaml.safe_load((ROOT / "recipes/smoke/flow_grpo_tiny.yaml").read_text())
    raw["rewards"] = [reward]
    path = tmp_path / "rl.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_missing_reward_model_path_fails_at_recipe_validation(tmp_path: Path) -> None:
    path = _train_recipe_with(tmp_path, {"name": "learned", "path": str(tmp_path / "nope")})
    with pytest.raises(RecipeError) as err:
        load_recipe(path, TrainRecipe)
    assert err.value.key == "rewards[0].path" and "does not exist" in err.value.message
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign/config.json").write_text(json.dumps({"format": "hf"}))
    path = _train_recipe_with(tmp_path, {"name": "learned", "path": str(tmp_path / "foreign")})
    with pytest.raises(RecipeError, match=r"rewards\[0\]\.path: .*expected 'genrl-reward-model/1'"):
        load_recipe(path, TrainRecipe)
    with pytest.raises(RewardModelError):
        load_reward_model(tmp_path / "foreign")


def test_learned_reward_scores_normalised_and_checks_the_policy(tmp_path: Path) -> None:
    from genrl.rewards.learned import LearnedReward, policy_reward_check

    recipe, path = _video_recipe(tmp_path, epochs=1)
    RewardModelTrainer(recipe, recipe_file=str(path), run_dir=str(tmp_path / "rm")).train()
    reward = LearnedReward(LearnedReward.Config(path=str(tmp_path / "rm")), model_dir=tmp_path / "rm" / "model")
    pairs = read_pairs(tmp_path / "video_pairs.parquet").select(range(10))
    with torch.no_grad():
        raw = reward.model(pairs.chosen, pairs.contexts)
    assert torch.allclose(reward(pairs.chosen, pairs.contexts), (raw - reward.mean) / reward.std)
    assert reward.input_files["model"] == tmp_path / "rm" / "model"

    class ImagePolicy:  # what the flow policy reports: 8x8 grey images, class contexts
        reward_sample_spec = ((8, 8), "class")

    with pytest.raises(RecipeError, match=r"rewards\[0\]\.path: the reward model .* scores samples of shape "
                                          r"\[6, 1, 16, 16\], the policy makes \[8, 8\]"):
        policy_reward_check(LearnedReward, tmp_path / "rm" / "model", ImagePolicy(), "rl.yaml", "rewards[0]")


def test_incompatible_reward_model_fails_before_training(tmp_path: Path) -> None:
    """A video reward model in an image recipe: a clear error naming rewards[0].path, before step 0."""
    from genrl.trainer.loop import Trainer

    recipe, path = _video_recipe(tmp_path, epochs=1)
    RewardModelTrainer(recipe, recipe_file=str(path), run_dir=str(tmp_path / "rm")).train()
    reset_accelerate()
    rl = _train_recipe_with(tmp_path, {"name": "learned", "path": str(tmp_path / "rm")})
    config, _ = load_recipe(rl, TrainRecipe)
    with pytest.raises(RecipeError, match=r"rewards\[0\]\.path: the reward model .* \[6, 1, 16, 16\]"):
        Trainer(config, recipe_file=str(rl), run_dir=str(tmp_path / "rl"))
    assert not (tmp_path / "rl" / "manifest.json").exists()


def test_auxiliary_losses_declared_by_an_architecture_are_weighted_into_the_loss(tmp_path: Path) -> None:
    """Gen-Drive's scene evaluator adds plan reconstruction this way: aux_columns + aux_losses()."""
    from dataclasses import dataclass

    from genrl.config.validate import option
    from genrl.preference.models.image import ImagePreferenceModel
    from genrl.registry import REWARD_MODELS

    if "test_aux_image" not in REWARD_MODELS:
        @REWARD_MODELS.register("test_aux_image")
        class AuxModel(ImagePreferenceModel):
            aux_columns = ("target",)

            @dataclass
            class Config(ImagePreferenceModel.Config):
                scale: float = option(default=1.0, help="Scale of the auxiliary loss.")

            def aux_losses(self, batch):
                return {"recon": self.config.scale * (batch["target"] - 0.25).pow(2).mean()}

    pairs = _image_pairs(8)
    pairs.extra = {"target": torch.full((8,), 1.25)}  # (1.25 - 0.25)^2 = 1.0 on every row
    save_pairs(pairs, tmp_path / "aux", "arrow")
    raw = {"kind": "preference_reward", "data": {"path": str(tmp_path / "aux"), "eval_fraction": 0.25},
           "model": {"name": "test_aux_image", "channels": 4, "hidden": 8, "scale": 2.0},
           "loss": {"aux_weights": {"recon": 0.5}}, "trainer": {"epochs": 1, "batch_size": 4}}
    (tmp_path / "aux.yaml").write_text(yaml.safe_dump(raw))
    recipe, _ = load_recipe(tmp_path / "aux.yaml", RewardTrainRecipe)
    trainer = RewardModelTrainer(recipe, recipe_file=str(tmp_path / "aux.yaml"), run_dir=str(tmp_path / "run"))
    metrics = trainer.train_update(0)
    assert metrics["loss/aux/recon"] == pytest.approx(2.0)
    assert metrics["loss/total"] == pytest.approx(metrics["loss/bt"] + 0.5 * 2.0, rel=1e-5)
