"""Tiny SD3 / FLUX / Wan pipelines load through ``DiffusionPipeline.from_pretrained`` with the real component
classes and run end to end; the published transformer configs build at full size (on ``meta``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from genrl.models.pipelines_tiny import (
    FAMILIES,
    FAMILY_KEYS,
    PIPELINE_CLASSES,
    REAL_TRANSFORMER_CONFIGS,
    TinySizes,
    build_tiny_pipeline,
    real_size_components,
    tiny_call_kwargs,
    tiny_pipeline_components,
    tiny_transformer_config,
)

PROMPTS = ["a photo of a cat on a red sofa", "a small dog running across a green field"]
COMPONENTS = {
    "sd3": {"transformer": "SD3Transformer2DModel", "vae": "AutoencoderKL", "scheduler": "FlowMatchEulerDiscreteScheduler",
            "text_encoder": "CLIPTextModelWithProjection", "text_encoder_2": "CLIPTextModelWithProjection",
            "text_encoder_3": "T5EncoderModel", "tokenizer": "CLIPTokenizer", "tokenizer_2": "CLIPTokenizer",
            "tokenizer_3": "T5Tokenizer"},
    "flux": {"transformer": "FluxTransformer2DModel", "vae": "AutoencoderKL", "scheduler": "FlowMatchEulerDiscreteScheduler",
             "text_encoder": "CLIPTextModel", "text_encoder_2": "T5EncoderModel", "tokenizer": "CLIPTokenizer",
             "tokenizer_2": "T5Tokenizer"},
    "wan": {"transformer": "WanTransformer3DModel", "vae": "AutoencoderKLWan", "scheduler": "UniPCMultistepScheduler",
            "text_encoder": "UMT5EncoderModel", "tokenizer": "T5Tokenizer"},
}
# Published sizes (weights + buffers): SD3.5-M "2.5B" (its 384^2 x 1536 pos-embed table is a buffer),
# FLUX.1 "12B", Wan2.1 "1.3B" (1.42B counted).
REAL_SIZES_B = {"sd3.5-medium": 2.47, "flux.1-dev": 11.90, "wan2.1-t2v-1.3b": 1.42}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, DiffusionPipeline]:
    root = tmp_path_factory.mktemp("tiny_pipelines")
    return {f: DiffusionPipeline.from_pretrained(build_tiny_pipeline(f, root / f)) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_folder_loads_as_the_real_pipeline_with_the_real_component_classes(pipelines, family):
    pipe = pipelines[family]
    assert type(pipe) is PIPELINE_CLASSES[family]
    assert {k: type(v).__name__ for k, v in pipe.components.items() if v is not None} == COMPONENTS[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_two_step_generation_of_a_two_prompt_batch_is_finite_and_full_size(pipelines, family):
    kwargs = tiny_call_kwargs(family)
    out = pipelines[family](PROMPTS, num_inference_steps=2, output_type="pt",
                            generator=torch.Generator().manual_seed(0), **kwargs)
    s = TinySizes()
    if family == "wan":
        assert out.frames.shape == (2, s.num_frames, 3, s.image_size, s.image_size)
        assert torch.isfinite(out.frames).all()
    else:
        assert out.images.shape == (2, 3, s.image_size, s.image_size)
        assert torch.isfinite(out.images).all()


def test_sd3_encode_prompt_pads_clip_to_t5_width_and_concatenates_pooled(pipelines):
    pipe = pipelines["sd3"]
    tf = pipe.transformer.config
    embeds, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPTS, None, None, max_sequence_length=16,
                                                         do_classifier_free_guidance=True)
    assert embeds.shape == neg.shape == (2, 77 + 16, tf.joint_attention_dim)
    assert pooled.shape == neg_pooled.shape == (2, tf.pooled_projection_dim)
    clip_width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert clip_width < tf.joint_attention_dim and (embeds[:, :77, clip_width:] == 0).all()


def test_flux_encode_prompt_uses_t5_tokens_and_clip_pooled(pipelines):
    pipe = pipelines["flux"]
    tf = pipe.transformer.config
    embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS, None, max_sequence_length=16)
    assert embeds.shape == (2, 16, tf.joint_attention_dim)
    assert pooled.shape == (2, tf.pooled_projection_dim)
    assert text_ids.shape == (16, 3)
    assert tf.guidance_embeds and sum(tf.axes_dims_rope) == tf.attention_head_dim
    assert pipe.scheduler.config.use_dynamic_shifting


def test_same_seed_same_weights_other_seed_other_weights():
    def weights(seed: int) -> dict[str, torch.Tensor]:
        comps = tiny_pipeline_components("sd3", seed=seed)
        return {f"{n}.{k}": v for n, m in comps.items() if isinstance(m, torch.nn.Module)
                for k, v in m.state_dict().items()}

    a, b, c = weights(0), weights(0), weights(1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["transformer.proj_out.weight"], c["transformer.proj_out.weight"])


def test_saved_folders_are_byte_identical_for_the_same_seed(tmp_path):
    one, two = (build_tiny_pipeline("wan", tmp_path / name, seed=3) for name in ("one", "two"))
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files and all((one / f).read_bytes() == (two / f).read_bytes() for f in files)


def test_transformer_overrides_reach_the_saved_config(tmp_path):
    folder = build_tiny_pipeline("flux", tmp_path / "flux", transformer_overrides={"num_single_layers": 1})
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert pipe.transformer.config.num_single_layers == 1 and len(pipe.transformer.single_transformer_blocks) == 1


@pytest.mark.parametrize("key", list(REAL_TRANSFORMER_CONFIGS))
def test_tiny_transformer_config_has_the_real_keys_and_builds(key):
    config = tiny_transformer_config(key)
    assert config.keys() == REAL_TRANSFORMER_CONFIGS[key].keys()
    family = next(f for f, k in FAMILY_KEYS.items() if k == key)
    model = tiny_pipeline_components(family)["transformer"]
    assert {k: model.config[k] for k in config} == {k: list(v) if isinstance(v, tuple) else v
                                                    for k, v in config.items()}
    assert sum(p.numel() for p in model.parameters()) < 1e6


@pytest.mark.parametrize("key", list(REAL_TRANSFORMER_CONFIGS))
def test_real_size_components_fit_the_published_transformer(key):
    with torch.device("meta"):
        comps = real_size_components(key, dtype=torch.bfloat16)
    tf = comps["transformer"]
    size = sum(t.numel() for t in [*tf.parameters(), *tf.buffers()]) / 1e9
    assert size == pytest.approx(REAL_SIZES_B[key], abs=0.01)
    assert next(tf.parameters()).dtype == torch.bfloat16 and torch.get_default_dtype() == torch.float32
    assert {k: tf.config[k] for k in REAL_TRANSFORMER_CONFIGS[key]} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in REAL_TRANSFORMER_CONFIGS[key].items()}
    text = [m for n, m in comps.items() if n.startswith("text_encoder")]
    assert sum(p.numel() for m in text for p in m.parameters()) < 1e7  # only the transformer costs
    c = tf.config
    if key == "sd3.5-medium":
        assert comps["text_encoder"].config.projection_dim + comps["text_encoder_2"].config.projection_dim == 2048
        assert comps["text_encoder_3"].config.d_model == c.joint_attention_dim == 4096
    elif key == "flux.1-dev":
        assert comps["text_encoder"].config.hidden_size == c.pooled_projection_dim == 768
        assert comps["text_encoder_2"].config.d_model == c.joint_attention_dim == 4096
    else:
        assert comps["text_encoder"].config.d_model == c.text_dim == 4096


def test_real_widths_run_end_to_end_at_reduced_depth():
    """Full-width SD3.5-M with 1 block (CPU-sized): the small text encoders and 8x VAE plug into it."""
    comps = real_size_components("sd3.5-medium", dtype=torch.bfloat16, transformer_overrides={
        "num_layers": 1, "dual_attention_layers": [0], "pos_embed_max_size": 8})
    with torch.no_grad():
        images = PIPELINE_CLASSES["sd3"](**comps)(PROMPTS, num_inference_steps=1, height=64, width=64,
                                                  max_sequence_length=8, output_type="pt").images
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images.float()).all()


def test_unknown_family_and_size_are_rejected(tmp_path: Path):
    with pytest.raises(KeyError):
        build_tiny_pipeline("sdxl", tmp_path)
    with pytest.raises(TypeError):
        tiny_pipeline_components("sd3", hidden=3)
