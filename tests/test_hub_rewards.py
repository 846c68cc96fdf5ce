"""Reward models loaded from local folders (CLIPScore, PickScore, LAION aesthetic) and the VLM judge.

Every model here is a tiny random CLIP built from a config and saved with ``save_pretrained``
(with a tokenizer made locally), so the tests exercise the real loading path without a hub.
The VLM judge is tested against a local ThreadingHTTPServer that answers like an OpenAI server.
"""

from __future__ import annotations

import base64
import io
import json
import math
import string
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from genrl.config.validate import RecipeError, build
from genrl.rewards.base import RewardSet
from genrl.rewards.clip import (
    AestheticHead,
    AestheticReward,
    ClipScoreReward,
    PickScoreReward,
    convert_aesthetic_head,
    load_aesthetic_head,
)
from genrl.rewards.vlm_judge import VLMJudgeReward
from tests.helpers import make_trainer, smoke_recipe

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]  # not CLIP's, to see that preprocessor_config.json is used
LOGIT_SCALE = 20.0


def _tiny_clip(folder: Path) -> Path:
    """A 2-layer CLIP (16 px images, 16-d projection) and a character-level CLIP BPE tokenizer."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + ".,?!"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[f"{c}</w>"] = len(vocab)
    for piece in ("th", "the</w>"):
        vocab[piece] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[("t", "h"), ("th", "e</w>")])
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 40, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 16, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(LOGIT_SCALE))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD}))
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return _tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def _reward(cls, fields: dict, key: str = "rewards[0]"):
    """As the trainer does it: validate the config, resolve the folder, then build."""
    config = build(cls.Config, fields, file="recipe.yaml", key=key)
    model_dir = cls.resolve(config, recipe_file="recipe.yaml", key=key)
    return cls(config, device=torch.device("cpu"), model_dir=model_dir)


def _images(n: int = 5) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(n, 1, 8, 8)


@torch.no_grad()
def _hand_embeddings(folder: Path, images: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm embeddings computed step by step with the transformers API."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    x = F.interpolate(images.repeat(1, 3, 1, 1), size=(16, 16), mode="bicubic", antialias=True).clamp(0, 1)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    img = model.get_image_features(pixel_values=x)
    tokens = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")
    txt = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    img, txt = (getattr(o, "pooler_output", o) for o in (img, txt))
    return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)


# ----------------------------------------------------------------------------- CLIP rewards


def test_clip_score_is_the_cosine_of_clip_embeddings_and_survives_save_and_reload(clip_dir, tmp_path):
    images = _images(5)
    texts = ["a photo of the digit one", "a cat", "a photo of the digit one", "the digit 7", "zero"]
    reward = _reward(ClipScoreReward, {"path": str(clip_dir), "batch_size": 2})  # chunks of 2 (and 2 texts)
    scores = reward(images, texts)
    img, txt = _hand_embeddings(clip_dir, images, texts)
    assert scores.dtype == torch.float32 and scores.shape == (5,)
    torch.testing.assert_close(scores, (img * txt).sum(-1), atol=1e-5, rtol=1e-5)
    assert scores.std() > 0  # the tiny model does tell the pairs apart

    again = tmp_path / "copy"
    reward.encoder.model.save_pretrained(again)
    reward.encoder.tokenizer.save_pretrained(again)
    (again / "preprocessor_config.json").write_text((clip_dir / "preprocessor_config.json").read_text())
    assert torch.equal(_reward(ClipScoreReward, {"path": str(again), "batch_size": 2})(images, texts), scores)

    paper = _reward(ClipScoreReward, {"path": str(clip_dir), "scale": 2.5, "clamp_negative": True})
    torch.testing.assert_close(paper(images, texts), 2.5 * scores.clamp(min=0), atol=1e-5, rtol=1e-5)


def test_class_id_prompts_go_through_the_template(clip_dir):
    images = _images(3)
    reward = _reward(ClipScoreReward, {"path": str(clip_dir)})
    by_id = reward(images, torch.tensor([3, 0, 3]))
    by_text = reward(images, ["a photo of the digit three", "a photo of the digit zero", "a photo of the digit three"])
    assert torch.equal(by_id, by_text)
    assert torch.equal(reward(images[:, 0], torch.tensor([3, 0, 3])), by_id)  # [B, H, W], as the flow policy gives

    custom = _reward(ClipScoreReward, {"path": str(clip_dir), "prompt_template": "{} digit",
                                       "class_names": ["nil", "uno"]})
    torch.testing.assert_close(custom(images[:2], torch.tensor([1, 0])), reward(images[:2], ["uno digit", "nil digit"]))
    with pytest.raises(ValueError, match="class id 2 has no entry in class_names"):
        custom(images[:1], torch.tensor([2]))


def test_pickscore_is_exp_logit_scale_times_the_cosine(clip_dir):
    images, prompts = _images(4), torch.tensor([0, 1, 2, 3])
    cos = _reward(ClipScoreReward, {"path": str(clip_dir)})(images, prompts)
    pick = _reward(PickScoreReward, {"path": str(clip_dir), "batch_size": 3})(images, prompts)
    torch.testing.assert_close(pick, LOGIT_SCALE * cos, atol=1e-4, rtol=1e-5)


def test_videos_score_the_mean_over_their_frames(clip_dir):
    frames = _images(6)  # two videos of three frames
    videos = frames.view(2, 3, *frames.shape[1:])
    texts = ["a cat", "the digit 7"]
    reward = _reward(PickScoreReward, {"path": str(clip_dir), "batch_size": 4})
    per_frame = reward(frames, [t for t in texts for _ in range(3)]).view(2, 3)
    torch.testing.assert_close(reward(videos, texts), per_frame.mean(1), atol=1e-5, rtol=1e-5)


def test_aesthetic_head_reads_safetensors_and_refuses_pickles(clip_dir, tmp_path):
    torch.manual_seed(2)
    head = AestheticHead(dim=16).eval()
    assert sorted(head.state_dict()) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    head_file = tmp_path / "head.safetensors"
    # Keys as saved from DataParallel ("module.") are accepted by the converter.
    save_file(convert_aesthetic_head({f"module.{k}": v for k, v in head.state_dict().items()}), str(head_file))

    images = _images(5)
    reward = _reward(AestheticReward, {"clip_path": str(clip_dir), "head_path": str(head_file), "batch_size": 2})
    img, _ = _hand_embeddings(clip_dir, images, ["x"])
    with torch.no_grad():
        expected = head(img).squeeze(-1)
    torch.testing.assert_close(reward(images, torch.zeros(5, dtype=torch.long)), expected, atol=1e-5, rtol=1e-5)

    pth = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(head.state_dict(), pth)  # exists, and is still never unpickled
    with pytest.raises(RecipeError) as info:
        _reward(AestheticReward, {"clip_path": str(clip_dir), "head_path": str(pth)})
    assert info.value.key == "rewards[0].head_path"
    assert "only .safetensors" in info.value.message and "st.save_file(" in info.value.message
    assert "weights_only=True" in info.value.message and "sac+logos+ava1-l14-linearMSE.safetensors" in info.value.message
    with pytest.raises(ValueError, match="only .safetensors"):
        load_aesthetic_head(pth)
    with pytest.raises(ValueError, match=r"missing \['layers.7.bias'\]"):
        convert_aesthetic_head({k: v for k, v in head.state_dict().items() if k != "layers.7.bias"})

    wide = tmp_path / "wide.safetensors"
    save_file(convert_aesthetic_head(AestheticHead(dim=768).state_dict()), str(wide))
    with pytest.raises(RecipeError, match="takes 768-d embeddings but the CLIP model"):
        _reward(AestheticReward, {"clip_path": str(clip_dir), "head_path": str(wide)})


def test_a_wrong_model_folder_is_a_recipe_error_before_any_work(clip_dir, tmp_path):
    with pytest.raises(RecipeError) as info:
        _reward(ClipScoreReward, {"path": str(tmp_path / "missing")})
    assert info.value.key == "rewards[0].path" and "no folder at" in info.value.message
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecipeError, match="no readable config.json"):
        _reward(PickScoreReward, {"path": str(tmp_path / "empty")})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(RecipeError, match="model_type 'siglip', expected 'clip'"):
        _reward(ClipScoreReward, {"path": str(tmp_path / "other")})
    with pytest.raises(RecipeError) as info:
        _reward(AestheticReward, {"clip_path": str(tmp_path / "missing"), "head_path": "h.safetensors"}, key="rewards[2]")
    assert info.value.key == "rewards[2].clip_path"

    # Through a recipe and the trainer: the reward is resolved before the policy is built.
    with pytest.raises(RecipeError) as info:
        make_trainer(tmp_path / "run", f"rewards=[{{name: clip_score, path: {tmp_path / 'missing'}}}]")
    assert info.value.key == "rewards[0].path"
    with pytest.raises(RecipeError) as info:
        smoke_recipe("rewards=[{name: clip_score, path: x, batch_size: 0}]")
    assert info.value.key == "rewards[0].batch_size"


# ----------------------------------------------------------------------------- VLM judge


def _answer(logprobs: dict[str, float]) -> dict:
    top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in logprobs.items()]
    first = next(iter(logprobs))
    return {"id": "x", "object": "chat.completion", "choices": [{
        "index": 0, "message": {"role": "assistant", "content": first}, "finish_reason": "length",
        "logprobs": {"content": [{"token": first, "logprob": logprobs[first], "top_logprobs": top}]}}]}


class _FakeServer:
    """Answers chat completions from a script ((status, json) pairs or "hang"), then by question, or a default."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict, dict]] = []  # (headers, body)
        self.script: list = []
        self.by_question: dict[str, dict] = {}
        self.default = _answer({"yes": math.log(0.6), "no": math.log(0.2), "maybe": math.log(0.1)})
        self.release = threading.Event()
        self.lock = threading.Lock()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with state.lock:
                    state.requests.append((dict(self.headers), body))
                    step = state.script.pop(0) if state.script else None
                if step == "hang":
                    state.release.wait(10)
                    return
                question = body["messages"][0]["content"][0]["text"]
                scripted = state.by_question.get(question, state.default)
                status, answer = step or (scripted if isinstance(scripted, tuple) else (200, scripted))
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _FakeServer()
    yield s
    s.close()


def _judge(server: _FakeServer, **fields) -> VLMJudgeReward:
    config = build(VLMJudgeReward.Config, {"base_url": server.base_url, "model": "judge-vl",
                                           "retry_backoff_s": 0.01, **fields}, key="rewards[0]")
    return VLMJudgeReward(config, device=torch.device("cpu"))


def test_judge_reward_is_p_yes_over_p_yes_plus_p_no_and_the_request_is_openai_shaped(server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    judge = _judge(server, api_key_env="JUDGE_KEY", top_logprobs=3)
    q = "Does this image show the digit {}? Answer yes or no."
    server.by_question[q.format("one")] = _answer({" Yes": math.log(0.5), "no": math.log(0.5), "YES": math.log(0.5)})
    server.by_question[q.format("two")] = _answer({"No": math.log(0.9), "maybe": math.log(0.05)})
    images = torch.rand(3, 8, 8)  # one-channel images come as [B, H, W] from the flow policy
    values = judge(images, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(values, torch.tensor([0.75, 2 / 3, 0.0]))
    assert getattr(judge, "remote", False) is True

    assert len(server.requests) == 3
    headers, body = next(r for r in server.requests if "zero" in r[1]["messages"][0]["content"][0]["text"])
    assert headers["Authorization"] == "Bearer sk-test" and headers["Content-Type"] == "application/json"
    assert {k: body[k] for k in ("model", "max_tokens", "logprobs", "top_logprobs", "temperature")} == {
        "model": "judge-vl", "max_tokens": 1, "logprobs": True, "top_logprobs": 3, "temperature": 0}
    text, image = body["messages"][0]["content"]
    assert body["messages"][0]["role"] == "user" and text == {"type": "text", "text": q.format("zero")}
    url = image["image_url"]["url"]
    assert image["type"] == "image_url" and url.startswith("data:image/png;base64,")
    png = base64.b64decode(url.removeprefix("data:image/png;base64,"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = Image.open(io.BytesIO(png))
    assert decoded.size == (64, 64) and decoded.mode == "L"  # 8x8 grey, upscaled 8x (nearest)
    pixels = torch.from_numpy(np.array(decoded))
    expected = (images[0] * 255).round().to(torch.uint8).repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert torch.equal(pixels, expected)

    # String prompts pass through; no api_key_env, no Authorization header; RGB images stay RGB.
    server.requests.clear()
    plain = _judge(server, upscale=2)
    assert plain(torch.rand(1, 3, 4, 4), ["a red square"]).tolist() == [pytest.approx(0.75)]
    headers, body = server.requests[0]
    assert "Authorization" not in headers
    assert body["messages"][0]["content"][0]["text"] == "Does this image show a red square? Answer yes or no."
    url = body["messages"][0]["content"][1]["image_url"]["url"]
    rgb = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert rgb.size == (8, 8) and rgb.mode == "RGB"


def test_judge_retries_server_errors_then_succeeds(server):
    server.script = [(500, {"error": "busy"}), (503, b"overloaded"), None]
    values = _judge(server, max_retries=2)(torch.rand(1, 1, 8, 8), ["a digit"])
    assert values.tolist() == [pytest.approx(0.75)] and len(server.requests) == 3


def test_judge_failures_are_nan_and_bounded_in_time(server, capsys, monkeypatch):
    # A server that never answers: NaN after (1 + max_retries) timeouts, not a hang.
    server.script = ["hang", "hang"]
    start = time.monotonic()
    values = _judge(server, timeout_s=0.3, max_retries=1)(torch.rand(1, 1, 8, 8), ["a digit"])
    assert math.isnan(values[0]) and time.monotonic() - start < 3.0 and len(server.requests) == 2
    assert "1 of 1 samples got NaN" in capsys.readouterr().out

    # Malformed answers and client errors: NaN for that sample only, no retry, one line per reason.
    server.requests.clear()
    server.by_question = {
        "Does this image show a? Answer yes or no.": {"choices": []},
        "Does this image show b? Answer yes or no.": _answer({"maybe": -0.1, "perhaps": -2.0}),
        "Does this image show c? Answer yes or no.": b"<html>not json</html>",
        "Does this image show d? Answer yes or no.": {"choices": [{"logprobs": {"content": [
            {"top_logprobs": [{"token": "yes", "logprob": "high"}]}]}}]},
        "Does this image show x? Answer yes or no.": (400, {"error": {"message": "model does not support logprobs"}}),
    }
    judge = _judge(server, concurrency=2)
    values = judge(torch.rand(6, 1, 8, 8), ["x", "a", "b", "c", "d", "e"])
    assert torch.isnan(values).sum() == 5 and len(server.requests) == 6  # one 400, four malformed, one fine
    assert values[~torch.isnan(values)].tolist() == [pytest.approx(0.75)]
    out = capsys.readouterr().out
    for reason in ("no choices[0].logprobs", "neither 'yes' nor 'no'", "not JSON", "top_logprobs entry", "HTTP 400"):
        assert reason in out
    assert len(out.strip().splitlines()) == 5

    # Nobody listening at all: retried, then NaN, quickly.
    server.close()
    start = time.monotonic()
    values = _judge(server, max_retries=2)(torch.rand(2, 1, 8, 8), ["a", "b"])
    assert torch.isnan(values).all() and time.monotonic() - start < 3.0
    assert "after 3 tries" in capsys.readouterr().out


def test_judge_runs_on_the_reward_sets_worker_thread(server):
    judge = _judge(server)
    rs = RewardSet([("judge", judge, 1.0), ("mean", lambda im, p: im.flatten(1).mean(1), 0.5)])
    out = rs.score(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(out.values[:, 0], torch.full((4,), 0.75))
    assert out.valid.all()


def test_judge_config_is_checked(monkeypatch):
    with pytest.raises(RecipeError) as info:
        smoke_recipe("rewards=[{name: vlm_judge, base_url: 'ftp://host/v1', model: m}]")
    assert info.value.key == "rewards[0].base_url"
    with pytest.raises(RecipeError) as info:
        smoke_recipe("rewards=[{name: vlm_judge, base_url: 'http://h/v1', model: m, question_template: 'Is it?'}]")
    assert info.value.key == "rewards[0].question_template"
    with pytest.raises(RecipeError) as info:
        smoke_recipe("rewards=[{name: vlm_judge, base_url: 'http://h/v1', model: m, top_logprobs: 50}]")
    assert info.value.key == "rewards[0].top_logprobs"
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    config = build(VLMJudgeReward.Config, {"base_url": "http://h/v1", "model": "m", "api_key_env": "NO_SUCH_KEY_VAR"})
    with pytest.raises(RecipeError, match="environment variable NO_SUCH_KEY_VAR is not set"):
        VLMJudgeReward(config)


def test_a_short_training_run_with_hub_rewards_and_a_judge(clip_dir, server, tmp_path):
    head_file = tmp_path / "head.safetensors"
    save_file(convert_aesthetic_head(AestheticHead(dim=16).state_dict()), str(head_file))
    rewards = (f"rewards=[{{name: clip_score, path: '{clip_dir}'}}, {{name: pickscore, path: '{clip_dir}', weight: 0.1}},"
               f" {{name: aesthetic, clip_path: '{clip_dir}', head_path: '{head_file}', weight: 0.1}},"
               f" {{name: vlm_judge, base_url: '{server.base_url}', model: judge-vl}}]")
    run = tmp_path / "run"
    make_trainer(run, rewards, "trainer.steps=1", "logging.tensorboard=false").train()
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    for name in ("clip_score", "pickscore", "aesthetic", "vlm_judge"):
        assert math.isfinite(metrics[f"reward/{name}/mean"]), name
    assert metrics["reward/vlm_judge/mean"] == pytest.approx(0.75)
    assert len(server.requests) == 16  # one per sample: 4 prompts x 4 per group
