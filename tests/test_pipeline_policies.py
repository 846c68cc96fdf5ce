"""Real model families through the same code: diffusers pipeline folders (SD3, FLUX, Wan) built at toy
width from their published configs, saved with ``save_pretrained`` and trained through the real loading
path; exports that diffusers / peft load unchanged; the example recipes' models run one step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from genrl.config.validate import RecipeError, build
from genrl.explorers.sde import ExplorationPlan
from genrl.models.pipelines_tiny import build_tiny_pipeline
from genrl.policies.flow_image import FlowImagePolicy, FlowVideoPolicy, LoraOptions, PipelineOptions
from genrl.prompts.text_files import TextFilePrompts
from genrl.recipe import TrainRecipe
from tests.helpers import ROOT, reset_accelerate

SMOKE = ROOT / "recipes" / "smoke" / "pipeline_flow_grpo_tiny.yaml"
POLICY = {"sd3": "flow_image", "flux": "flow_image", "wan": "flow_video"}
MODELS = {"sd3": "sd35_medium_flow_grpo.yaml", "flux": "flux1_dev_flow_grpo.yaml", "wan": "wan21_1_3b_flow_grpo.yaml"}
TINY = {"height": 32, "width": 32, "num_frames": 5, "max_sequence_length": 16}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipelines")
    return {f: build_tiny_pipeline(f, root / f) for f in ("sd3", "flux", "wan")}


def _policy(family: str, path: Path, **kw) -> FlowImagePolicy:
    cls = FlowVideoPolicy if family == "wan" else FlowImagePolicy
    kw = {"num_steps": 4, "guidance_scale": 3.5, "forward_chunk": 4, **kw}
    return cls(cls.Config(pipeline=PipelineOptions(path=str(path), **TINY), **kw))


class _Explorer:
    noise_rule, noise_level = "flow_grpo", 0.7


def _train(recipe_data: dict, run_dir: Path):
    from genrl.trainer.loop import Trainer

    reset_accelerate()
    recipe = build(TrainRecipe, recipe_data, file="test.yaml")
    trainer = Trainer(recipe, recipe_file=str(SMOKE), run_dir=str(run_dir))
    trainer.train()
    return trainer


def _smoke(family: str, path: Path, **trainer) -> dict:
    data = yaml.safe_load(SMOKE.read_text())
    data["policy"]["name"] = POLICY[family]
    data["policy"]["pipeline"]["path"] = str(path)
    data["trainer"].update(trainer)
    return data


def _metrics(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- the sampler is the pipeline's


@pytest.mark.parametrize("family", ["sd3", "flux", "wan"])
def test_ode_sampling_reproduces_the_diffusers_pipeline(pipelines, family):
    """Same text encoders, CFG (FLUX: embedded guidance), schedule, Euler steps and VAE decode as the pipeline's
    own __call__, from the same initial latents."""
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

    from genrl.data.prompt_files import TextPrompt
    from genrl.rng import Purpose, keyed_normal

    policy = _policy(family, pipelines[family], guidance_scale=4.5 if family != "flux" else 3.5)
    prompts = [TextPrompt("a red car on a street"), TextPrompt("two dogs in the snow")]
    ours = policy.sample_ode(torch.arange(2), torch.arange(2), seed=0, items=prompts)
    pipe = DiffusionPipeline.from_pretrained(str(pipelines[family]))
    latents = keyed_normal(policy.image_shape, 0, Purpose.EVAL, 0, [0, 1])
    kw = {"height": 32, "width": 32, "num_inference_steps": 4, "guidance_scale": policy.config.guidance_scale,
          "latents": latents, "output_type": "pt", "max_sequence_length": 16}
    if family == "wan":  # the SDE policy steps with Euler; give the pipeline the same scheduler
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        theirs = pipe([str(p) for p in prompts], negative_prompt="", num_frames=5, **kw).frames
        theirs = torch.as_tensor(theirs)
    else:
        extra = {"negative_prompt": ""} if family == "sd3" else {}
        theirs = pipe([str(p) for p in prompts], **extra, **kw).images
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs.float(), atol=2e-4), (ours - theirs).abs().max()


# ----------------------------------------------------------------------------- policy behaviour


@pytest.mark.parametrize("family", ["sd3", "flux", "wan"])
def test_rollout_is_rescored_exactly_and_rewards_see_decoded_samples(pipelines, family):
    from genrl.data.prompt_files import TextPrompt

    policy = _policy(family, pipelines[family], lora=LoraOptions(rank=4, alpha=8, target_modules=["to_q", "to_v"]))
    items = [TextPrompt("a cat", {"tag": "single_object"}, 3), TextPrompt("a dog", {}, 7)]
    plan = ExplorationPlan(stochastic=[True] * 4, train_steps=[1, 2])
    r = policy.rollout(torch.tensor([3, 7]), torch.tensor([0, 1]), step=0, seed=0, plan=plan,
                       explorer_config=_Explorer, items=items)
    # the update re-scores with exactly what the rollout saw: ratio 1 before any update
    assert torch.equal(policy.score(r)["log_probs"].detach(), r["log_probs"][:, [1, 2]])
    samples, contexts = policy.reward_inputs(r)
    expected = (2, 5, 3, 32, 32) if family == "wan" else (2, 3, 32, 32)
    assert tuple(samples.shape) == expected and 0 <= samples.min() and samples.max() <= 1
    assert contexts == ["a cat", "a dog"] and contexts[0].metadata == {"tag": "single_object"}
    assert policy.reward_sample_spec == (expected[1:], "text")


def test_each_distinct_prompt_is_encoded_once(pipelines):
    from genrl.data.prompt_files import TextPrompt

    policy = _policy("sd3", pipelines["sd3"])
    calls = []
    encode = policy.backbone.encode_texts
    policy.backbone.encode_texts = lambda texts: calls.append(list(texts)) or encode(texts)
    a, b = TextPrompt("a cat"), TextPrompt("a dog")
    first = policy.backbone.condition(torch.arange(3), [a, b, a])
    again = policy.backbone.condition(torch.arange(2), [b, a])
    assert calls == [["a cat", "a dog"]]  # batched, de-duplicated, then cached
    assert torch.equal(first["embeds"][1], again["embeds"][0]) and torch.equal(first["embeds"][0], first["embeds"][2])
    policy.config.pipeline.prompt_cache_size = 1
    policy.backbone.condition(torch.arange(1), [TextPrompt("a bird")])
    assert list(policy.backbone._cache) == ["a bird"]  # least recently used prompts leave the cache


# ----------------------------------------------------------------------------- training + export


@pytest.mark.parametrize("family", ["sd3", "flux", "wan"])
def test_flow_grpo_trains_from_a_saved_pipeline_folder(pipelines, family, tmp_path):
    trainer = _train(_smoke(family, pipelines[family]), tmp_path / "run")
    rows = _metrics(tmp_path / "run")
    assert len(rows) == 2
    first = rows[0]
    assert all(first[k] == 1.0 for k in first if k.startswith("ratio/") and not k.endswith("/std"))
    assert first["grad_norm"] > 0 and torch.isfinite(torch.tensor(first["policy_loss"]))
    lora_b = [p for n, p in trainer.policy.trainable_parameters().items() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b)  # the adapters moved off their zero init
    assert (tmp_path / "run" / "checkpoints" / "step_00000002" / "policy.safetensors").is_file()
    import json

    inputs = json.loads((tmp_path / "run" / "manifest.json").read_text())["inputs"]
    from genrl.hashing import folder_sha256

    assert inputs["policy:pipeline"]["sha256"] == folder_sha256(pipelines[family])  # the pipeline is provenance
    assert inputs["prompts:path"]["path"].endswith("data/prompts/simple_scenes.txt")


@pytest.fixture(scope="module")
def sd3_run(pipelines, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sd3_run") / "run"
    _train(_smoke("sd3", pipelines["sd3"]), run)
    return run


def _transformer_out(model, cfg) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=g)
    emb = torch.randn(2, 5, cfg.joint_attention_dim, generator=g)
    pooled = torch.randn(2, cfg.pooled_projection_dim, generator=g)
    with torch.no_grad():
        return model(hidden_states=x, encoder_hidden_states=emb, pooled_projections=pooled,
                     timestep=torch.tensor([700.0, 200.0]), return_dict=False)[0]


def test_exports_load_unchanged_in_diffusers_and_peft(pipelines, sd3_run, tmp_path):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import PeftModel

    from genrl.export import export_run
    from genrl.sampling import load_policy_for_sampling

    policy, _ = load_policy_for_sampling(sd3_run)
    cfg = policy.transformer.config
    trained = _transformer_out(policy.transformer, cfg)
    for fmt in ("diffusers-lora", "merged", "peft"):
        export_run(sd3_run, fmt, tmp_path / fmt)
        assert (tmp_path / fmt / "export.json").is_file()

    pipe = StableDiffusion3Pipeline.from_pretrained(str(pipelines["sd3"]))
    base = _transformer_out(pipe.transformer, cfg)
    assert (base - trained).abs().max() > 1e-4  # training changed the model
    pipe.load_lora_weights(str(tmp_path / "diffusers-lora"))
    assert torch.allclose(_transformer_out(pipe.transformer, cfg), trained, atol=1e-6)  # alpha/rank travel too

    merged = StableDiffusion3Pipeline.from_pretrained(str(tmp_path / "merged"))
    assert torch.allclose(_transformer_out(merged.transformer, cfg), trained, atol=1e-5)  # base + LoRA, merged

    peft = PeftModel.from_pretrained(SD3Transformer2DModel.from_pretrained(str(pipelines["sd3"] / "transformer")),
                                     str(tmp_path / "peft"))
    assert torch.allclose(_transformer_out(peft, cfg), trained, atol=1e-6)


def test_export_refusals(sd3_run, tmp_path):
    from genrl.cli import main
    from genrl.export import ExportError, export_run

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(ExportError, match="exists and is not an empty folder"):
        export_run(sd3_run, "merged", tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    with pytest.raises(ExportError, match="expected one of"):
        export_run(sd3_run, "onnx", tmp_path / "o")
    with pytest.raises(SystemExit):
        main(["export", str(sd3_run), "--format", "onnx", "--out", str(tmp_path / "o")])
    assert main(["export", str(tmp_path / "nowhere"), "--format", "merged", "--out", str(tmp_path / "o")]) == 2


def test_lora_formats_are_refused_for_a_full_fine_tune(pipelines, tmp_path):
    from genrl.export import ExportError

    policy = _policy("sd3", pipelines["sd3"])
    for fmt in ("diffusers-lora", "peft"):
        with pytest.raises(ExportError, match="needs a LoRA run.*--format merged"):
            policy.export(fmt, tmp_path)


# ----------------------------------------------------------------------------- recipe errors


def test_pipeline_mistakes_are_named_before_loading(pipelines, tmp_path):
    from genrl.trainer.loop import Trainer

    def trainer(data):
        reset_accelerate()
        return Trainer(build(TrainRecipe, data, file="r.yaml"), recipe_file="r.yaml", run_dir=str(tmp_path / "r"))

    with pytest.raises(RecipeError, match=r"policy\.pipeline\.path.*not a diffusers pipeline folder"):
        trainer(_smoke("sd3", tmp_path / "missing"))
    wrong = _smoke("sd3", pipelines["wan"])  # a video pipeline under the image policy
    with pytest.raises(RecipeError, match=r"policy\.pipeline\.path.*'wan' pipeline; this policy takes \['sd3', 'flux'\]"):
        trainer(wrong)
    no_pipe = _smoke("wan", pipelines["wan"])
    del no_pipe["policy"]["pipeline"]
    with pytest.raises(RecipeError, match="pipeline: flow_video runs a diffusers video pipeline folder"):
        build(TrainRecipe, no_pipe, file="r.yaml")


def test_text_prompts_need_a_text_model():
    data = yaml.safe_load((ROOT / "recipes" / "smoke" / "flow_grpo_tiny.yaml").read_text())
    data["prompts"] = {"name": "text_prompts", "path": "data/prompts/simple_scenes.txt"}
    with pytest.raises(RecipeError, match="set policy.pipeline.path"):
        build(TrainRecipe, data, file="r.yaml")


# ----------------------------------------------------------------------------- example recipes


@pytest.mark.parametrize("family", ["sd3", "flux", "wan"])
def test_example_recipe_runs_one_step_at_tiny_size(pipelines, family, tmp_path):
    """The published-settings recipe, its model at tiny width/depth (same classes: the real transformer config
    with depth and widths overridden), batch sizes shrunk; every other setting as shipped."""
    data = yaml.safe_load((ROOT / "recipes" / "models" / MODELS[family]).read_text())
    build(TrainRecipe, data, file=MODELS[family])  # valid as shipped
    data["policy"]["pipeline"].update(path=str(pipelines[family]), dtype="float32", **TINY)
    data["policy"]["forward_chunk"] = 2
    data["mixed_precision"] = "no"
    data["rewards"] = [{"name": "jpeg_compressibility"}]  # PickScore needs its weights on disk
    data["trainer"].update(steps=1, prompts_per_step=1, group_size=2, minibatch_size=2, micro_batch_size=2,
                           checkpoint_every=0)
    data["policy"]["num_steps"] = min(data["policy"]["num_steps"], 4)
    data["explorer"]["window_size"] = 2
    trainer = _train(data, tmp_path / "run")
    assert trainer.policy.config.lora.rank == 32 and trainer.policy.config.gradient_checkpointing
    assert len(_metrics(tmp_path / "run")) == 1


def test_prompt_source_feeds_texts_to_the_policy(pipelines):
    prompts = TextFilePrompts(build(TextFilePrompts.Config, {"path": "data/prompts/geneval_style.jsonl"}), seed=0)
    idx = prompts.sample(0, 2)
    items = prompts.items(idx)
    policy = _policy("sd3", pipelines["sd3"])
    plan = ExplorationPlan(stochastic=[True] * 4, train_steps=[0])
    r = policy.rollout(idx, torch.tensor([0, 1]), step=0, seed=0, plan=plan, explorer_config=_Explorer, items=items)
    _, contexts = policy.reward_inputs(r)
    assert contexts == items and all("include" in c.metadata for c in contexts)


def test_vlm_example_recipe_runs_one_step_at_tiny_size(tmp_path):
    """recipes/models/qwen25vl_3b_vogue.yaml on a Qwen2.5-VL-architecture model at tiny width and depth (the same
    model class, processor and chat-template path as the 3B download); lengths and batch sizes shrunk."""
    from genrl.data.visual_arithmetic import SYSTEM_PROMPT, VisualArithmetic
    from genrl.models.vlm import TinyVLMConfig, build_tiny_qwen25vl

    name = "qwen25vl_3b_vogue.yaml"
    data = yaml.safe_load((ROOT / "recipes" / "models" / name).read_text())
    build(TrainRecipe, data, file=name)  # valid as shipped
    train = VisualArithmetic("train", 64, 0, ("sum", "difference", "larger", "count"))
    corpus = [SYSTEM_PROMPT, "system\nuser\nassistant\n"] + [f"{it.question} {it.solution()}" for it in train.items(range(64))]
    build_tiny_qwen25vl(tmp_path / "qwen", TinyVLMConfig(), corpus)
    data["policy"].update(base_checkpoint=str(tmp_path / "qwen"), max_prompt_tokens=128, max_new_tokens=8,
                          forward_chunk=4, max_image_patches=None)
    data["prompts"]["size"] = 64
    data["mixed_precision"] = "no"
    data.pop("eval")
    data["trainer"].update(steps=1, prompts_per_step=2, group_size=2, minibatch_size=4, micro_batch_size=4,
                           checkpoint_every=0)
    trainer = _train(data, tmp_path / "run")
    assert trainer.policy.config.gradient_checkpointing and type(trainer.policy.model).__name__ == \
        "Qwen2_5_VLForConditionalGeneration"
    assert len(_metrics(tmp_path / "run")) == 1


def test_a_class_model_run_exports_merged_as_a_genrl_base(tmp_path):
    """genrl's own digits model (full fine-tune, EMA): the merged export is a base checkpoint that samples exactly
    like the run's checkpoint; the LoRA formats are refused with the reason."""
    from genrl.export import ExportError, export_run
    from genrl.sampling import load_policy_for_sampling
    from tests.helpers import make_trainer

    reset_accelerate()
    make_trainer(tmp_path / "run", "trainer.steps=2").train()
    export_run(tmp_path / "run", "merged", tmp_path / "base")
    exported, _ = load_policy_for_sampling(tmp_path / "base")
    trained, _ = load_policy_for_sampling(tmp_path / "run")
    ids = torch.arange(6)
    # (within rounding: the base's default forward_chunk differs from the run's, so the kernels see other batch sizes)
    torch.testing.assert_close(exported.sample_ode(ids % 10, ids, seed=1), trained.sample_ode(ids % 10, ids, seed=1),
                               atol=1e-5, rtol=0)
    with pytest.raises(ExportError, match="needs a LoRA run"):
        export_run(tmp_path / "run", "diffusers-lora", tmp_path / "lora")
    assert not (tmp_path / "lora").exists()


def test_sample_cli_takes_text_prompts_for_a_pipeline_run(sd3_run, tmp_path):
    import numpy as np

    from genrl.cli import main
    from genrl.data.prompt_files import load_prompt_records
    from genrl.sampling import load_policy_for_sampling

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red car\ntwo dogs in the snow\n")
    out = tmp_path / "s.npz"
    assert main(["sample", str(sd3_run), "--prompt-file", str(prompts), "--n", "3", "--batch", "4", "--seed", "5",
                 "--out", str(out)]) == 0
    data = np.load(out)
    assert data["images"].shape == (6, 3, 32, 32) and list(data["prompts"]) == ["a red car"] * 3 + ["two dogs in the snow"] * 3
    policy, _ = load_policy_for_sampling(sd3_run)
    records = load_prompt_records(prompts)
    items = [r for r in records for _ in range(3)]
    whole = policy.sample_ode(torch.tensor([0, 0, 0, 1, 1, 1]), torch.arange(6), seed=5, items=items)
    assert np.allclose(data["images"], whole.numpy(), atol=1e-6)  # chunked sampling = one call (rows keyed by id)
    with pytest.raises(SystemExit, match="prompted with text: give --prompt-file"):
        main(["sample", str(sd3_run), "--n", "1", "--out", str(tmp_path / "x.npz")])
