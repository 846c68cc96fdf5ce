"""Randomly initialised SD3 / FLUX / Wan diffusers pipelines, built from configs with no hub access.

Every component uses the class the real checkpoint ships (``SD3Transformer2DModel``, ``AutoencoderKL``,
``CLIPTextModelWithProjection``, ``T5EncoderModel``, ``UMT5EncoderModel``, ``CLIPTokenizer``, ``T5TokenizerFast``,
...), and folders are written with the pipeline's own ``save_pretrained``, so code that loads them through
``DiffusionPipeline.from_pretrained`` runs exactly the path a real checkpoint takes. Only the sizes differ:

* ``tiny_pipeline_components`` / ``build_tiny_pipeline``: everything tiny (CPU tests, seconds).
* ``real_size_components``: the published transformer at full size with the smallest text encoders and VAE
  whose output widths still fit it (GPU benchmarks, where only the transformer's cost should count).

Tokenizers are learned here from a small inline prompt corpus (CLIP byte-level BPE with ``</w>``, T5 Unigram
with ``▁``), split by the real classes' own ``tokenizers`` pre-tokenisers and wrapped in those classes; the
learning is plain counting so token ids are identical in every process (see ``_clip_vocab_merges``).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLWan,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
)

FAMILIES = ("sd3", "flux", "wan")
#: family -> the published checkpoint whose transformer config it mirrors.
FAMILY_KEYS: dict[str, str] = {"sd3": "sd3.5-medium", "flux": "flux.1-dev", "wan": "wan2.1-t2v-1.3b"}
PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "sd3": StableDiffusion3Pipeline, "flux": FluxPipeline, "wan": WanPipeline,
}

# ``transformer/config.json`` of the published checkpoints (``_class_name`` / ``_diffusers_version`` dropped).
REAL_TRANSFORMER_CONFIGS: dict[str, dict[str, Any]] = {
    # stabilityai/stable-diffusion-3.5-medium (~2.5B). 24 heads x 64 = 1536 = caption_projection_dim; the first
    # 13 of 24 blocks are MMDiT-X "dual attention" blocks; pooled = CLIP-L 768 + CLIP-G 1280 projections.
    "sd3.5-medium": {
        "sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 24,
        "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
        "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "pos_embed_max_size": 384,
        "dual_attention_layers": list(range(13)), "qk_norm": "rms_norm",
    },
    # black-forest-labs/FLUX.1-dev (~11.9B). 19 double + 38 single blocks, 24 heads x 128 = 3072; in_channels 64 =
    # 16 latent channels x the 2x2 packing. axes_dims_rope is absent from the file; this is the class default it uses.
    "flux.1-dev": {
        "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
        "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
        "guidance_embeds": True, "axes_dims_rope": [16, 56, 56],
    },
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers (~1.4B). 12 heads x 128 = 1536 (dim), ffn 8960, text_dim = UMT5-XXL's 4096.
    "wan2.1-t2v-1.3b": {
        "patch_size": [1, 2, 2], "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
        "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
        "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None,
        "added_kv_proj_dim": None, "rope_max_seq_len": 1024,
    },
}
_TRANSFORMER_CLASSES: dict[str, type] = {
    "sd3.5-medium": SD3Transformer2DModel, "flux.1-dev": FluxTransformer2DModel,
    "wan2.1-t2v-1.3b": WanTransformer3DModel,
}

# Published VAE latent normalisation: SD3 and FLUX decode ``latents / scaling_factor + shift_factor``.
SD3_VAE_SCALING, SD3_VAE_SHIFT = 1.5305, 0.0609
FLUX_VAE_SCALING, FLUX_VAE_SHIFT = 0.3611, 0.1159
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512


@dataclass(frozen=True)
class TinySizes:
    """Sizes of the tiny stack. Each width the pipelines concatenate or pad is distinct (CLIP 16+16 hidden,
    projections 15+25 = pooled 40, T5 48, transformer 32), so a wiring mistake fails with a shape error."""

    layers: int = 2
    heads: int = 2
    head_dim: int = 16
    text_dim: int = 48  # T5 / UMT5 d_model = joint_attention_dim (SD3, FLUX) = text_dim (Wan)
    pooled_dim: int = 40  # SD3: sum of the two CLIP projections; FLUX: CLIP hidden size
    image_size: int = 32  # pixels (SD3/FLUX images, Wan frames); sets SD3's default sample size
    num_frames: int = 9  # Wan only, a call size (not in the weights): 4k+1 for the 4x temporal VAE
    vae_width: int = 16


@dataclass(frozen=True)
class _TextSizes:
    """The text encoders' own cost (depth, FFN, heads); their output widths come from the transformer."""

    clip_hidden: int = 16
    layers: int = 1
    ffn: int = 32
    heads: int = 2
    kv: int = 8


# ----------------------------------------------------------------------------- tokenizers

_PROMPTS = """
a photo of a cat sitting on a red sofa next to an old wooden window in soft morning light
a small dog running across a green field under a bright blue sky with white clouds
portrait of a young woman with long dark hair wearing a yellow coat in the rain
a bowl of fresh fruit apples oranges and bananas on a kitchen table
an astronaut riding a horse on the moon digital art highly detailed
a futuristic city at night with neon lights tall buildings and flying cars
a mountain lake at sunset reflecting pink and orange clouds
a close up of a flower with drops of water on its petals macro photography
two children playing with a ball on a sandy beach near the ocean waves
a steaming cup of coffee and a book on a desk beside a lamp
a black and white photograph of a busy street in an old european town
a painting of a ship sailing through a storm in the style of an oil painting
a cute robot holding an umbrella in a snowy forest
a red car parked in front of a modern house with large glass windows
an owl perched on a branch in a dark forest under the full moon
a plate of pasta with tomato sauce and basil on a white table
a watercolor landscape of rolling hills a river and a small village
a man playing guitar on a stage with colorful lights and a crowd
three birds flying over a calm sea at dawn
a cozy cabin covered in snow with smoke rising from the chimney
a golden retriever puppy sleeping on a blue blanket
a glass of orange juice next to a croissant on a wooden tray
a dragon made of fire flying above a medieval castle
a bicycle leaning against a brick wall covered with green ivy
a girl reading a book under a big tree in the park during autumn
the letters of the word hello written in chalk on a blackboard
a stack of pancakes with honey and berries, 4k, sharp focus, cinematic
""".split("\n")
_CORPUS = [line.strip() for line in _PROMPTS if line.strip()]
_ASCII = [chr(c) for c in range(33, 127)]  # printable ASCII: unseen bytes map to <unk>, which keeps the vocab small
CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
T5_SPECIALS = ("<pad>", "</s>", "<unk>")


def _words(pre_tokenizer: Any, normalizer: Any = None) -> Counter[str]:
    """Corpus word counts, split exactly as the tokenizer class splits text (insertion order = corpus order)."""
    counts: Counter[str] = Counter()
    for line in _CORPUS:
        text = normalizer.normalize_str(line) if normalizer is not None else line
        counts.update(piece for piece, _ in pre_tokenizer.pre_tokenize_str(text))
    return counts


@functools.cache
def _clip_vocab_merges(num_merges: int = 280) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Learn CLIP-style BPE merges (``</w>`` marks word ends) over the corpus, split by CLIPTokenizer's own
    normaliser and pre-tokeniser. Done here rather than with ``tokenizers.trainers.BpeTrainer``, whose tie
    breaking follows Rust hash order and so gives different token ids in every process."""
    backend = CLIPTokenizer().backend_tokenizer
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): n for w, n in _words(backend.pre_tokenizer, backend.normalizer).items()}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))  # deterministic tie break
        merges.append(best)
        words = {_merge(word, best): n for word, n in words.items()}
    vocab = {tok: i for i, tok in enumerate([*CLIP_SPECIALS, *_ASCII, *(f"{c}</w>" for c in _ASCII)])}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return vocab, tuple(merges)


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if word[i:i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


@functools.cache
def _t5_pieces(vocab_size: int = 300, max_len: int = 10) -> tuple[tuple[str, float], ...]:
    """A Unigram vocab: pad/eos/unk first (ids 0/1/2, as T5Tokenizer requires), every ASCII character and
    ``▁``, then the most useful corpus substrings (count x saved pieces), scored by log frequency. Counted here,
    not with ``UnigramTrainer``, for the same reason as the BPE: reproducible ids across processes."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    counts: Counter[str] = Counter()
    for word, n in _words(split).items():
        for i in range(len(word)):
            for j in range(i + 1, min(len(word), i + max_len) + 1):
                counts[word[i:j]] += n
    chars = ["▁", *_ASCII]
    multi = sorted((p for p in counts if len(p) > 1 and counts[p] > 1), key=lambda p: (-counts[p] * (len(p) - 1), p))
    pieces = chars + multi[: vocab_size - len(T5_SPECIALS) - len(chars)]
    total = sum(counts[p] for p in pieces)
    scores = [(p, round(math.log(max(counts[p], 0.5) / total), 6)) for p in pieces]
    return tuple([(t, 0.0) for t in T5_SPECIALS] + scores)


def clip_tokenizer() -> CLIPTokenizer:
    """A real ``CLIPTokenizer`` (bos/eos, pad = eos, 77 tokens) over a locally trained BPE vocab."""
    vocab, merges = _clip_vocab_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=CLIP_MAX_LENGTH)


def t5_tokenizer() -> T5TokenizerFast:
    """A real T5 tokenizer (``T5TokenizerFast`` is ``T5Tokenizer`` in transformers 5): pad 0, eos 1, unk 2,
    no ``<extra_id_*>`` sentinels (an encoder-only text model never needs them)."""
    return T5TokenizerFast(vocab=list(_t5_pieces()), extra_ids=0, model_max_length=T5_MAX_LENGTH)


# ----------------------------------------------------------------------------- text encoders


def _clip(tok: CLIPTokenizer, hidden: int, projection: int | None, t: _TextSizes, act: str) -> torch.nn.Module:
    """A 1-layer CLIP text tower; ``eos_token_id`` must be the tokenizer's, CLIP pools at the first eos."""
    config = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=t.ffn, num_hidden_layers=t.layers,
        num_attention_heads=t.heads, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act=act,
        projection_dim=projection or hidden, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _t5(tok: T5TokenizerFast, d_model: int, t: _TextSizes, umt5: bool = False) -> torch.nn.Module:
    """A 1-layer T5 v1.1-style (gated-gelu) encoder of width ``d_model``; UMT5 for Wan."""
    kwargs = dict(vocab_size=len(tok), d_model=d_model, d_kv=t.kv, d_ff=t.ffn, num_layers=t.layers,
                  num_heads=t.heads, feed_forward_proj="gated-gelu", pad_token_id=tok.pad_token_id,
                  eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kwargs)).eval()
    return T5EncoderModel(T5Config(**kwargs)).eval()


def _sd3_text(tf: dict[str, Any], t: _TextSizes) -> dict[str, Any]:
    """Two CLIPs whose projections sum to ``pooled_projection_dim`` (3/8 : 5/8, as CLIP-L 768 : CLIP-G 1280)
    and whose hidden sizes fit inside ``joint_attention_dim`` (SD3 zero-pads CLIP states to the T5 width)."""
    pooled, joint = tf["pooled_projection_dim"], tf["joint_attention_dim"]
    if 2 * t.clip_hidden > joint:
        raise ValueError(f"two CLIP hidden sizes ({t.clip_hidden}) must fit in joint_attention_dim {joint}")
    proj_l = pooled * 3 // 8
    return {
        "tokenizer": clip_tokenizer(), "tokenizer_2": clip_tokenizer(), "tokenizer_3": t5_tokenizer(),
        "text_encoder": _clip(clip_tokenizer(), t.clip_hidden, proj_l, t, "quick_gelu"),
        "text_encoder_2": _clip(clip_tokenizer(), t.clip_hidden, pooled - proj_l, t, "gelu"),
        "text_encoder_3": _t5(t5_tokenizer(), joint, t),
    }


def _flux_text(tf: dict[str, Any], t: _TextSizes) -> dict[str, Any]:
    """FLUX pools CLIP's hidden state directly (no projection), so CLIP width = ``pooled_projection_dim``."""
    pooled = tf["pooled_projection_dim"]
    return {
        "tokenizer": clip_tokenizer(), "tokenizer_2": t5_tokenizer(),
        "text_encoder": _clip(clip_tokenizer(), pooled, None, _heads_dividing(t, pooled), "quick_gelu"),
        "text_encoder_2": _t5(t5_tokenizer(), tf["joint_attention_dim"], t),
    }


def _wan_text(tf: dict[str, Any], t: _TextSizes) -> dict[str, Any]:
    return {"tokenizer": t5_tokenizer(), "text_encoder": _t5(t5_tokenizer(), tf["text_dim"], t, umt5=True)}


def _heads_dividing(t: _TextSizes, width: int) -> _TextSizes:
    heads = next(h for h in range(t.heads, 0, -1) if width % h == 0)
    return _TextSizes(t.clip_hidden, t.layers, t.ffn, heads, t.kv)


# ----------------------------------------------------------------------------- VAEs and schedulers


def _vae_kl(levels: int, width: int, scaling: float, shift: float, image_size: int) -> AutoencoderKL:
    """SD3/FLUX-style KL VAE (16 latent channels, no quant convs) with ``2**(levels-1)`` downscaling."""
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(width,) * levels, layers_per_block=1, latent_channels=16,
        norm_num_groups=max(1, width // 2), sample_size=image_size, scaling_factor=scaling, shift_factor=shift,
        use_quant_conv=False, use_post_quant_conv=False,
    ).eval()


def _vae_wan(width: int) -> AutoencoderKLWan:
    """Wan2.1's VAE layout (8x spatial, 4x temporal, z_dim 16) at a tiny channel count."""
    return AutoencoderKLWan(base_dim=width, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def _vae(family: str, width: int, kl_levels: int, image_size: int) -> torch.nn.Module:
    """The family's VAE class with its published latent normalisation (Wan's lives in the class defaults)."""
    if family == "wan":
        return _vae_wan(width)
    scaling, shift = (SD3_VAE_SCALING, SD3_VAE_SHIFT) if family == "sd3" else (FLUX_VAE_SCALING, FLUX_VAE_SHIFT)
    return _vae_kl(kl_levels, width, scaling, shift, image_size)


def _scheduler(family: str) -> FlowMatchEulerDiscreteScheduler | UniPCMultistepScheduler:
    """The schedulers the real checkpoints ship, always built on CPU in float32: schedulers create their sigma
    tables on torch's default device/dtype (UniPC then copies them to CPU, which fails from ``meta``, and a
    bfloat16 default would quantise the sigmas)."""
    with torch.device("cpu"), _default_dtype(torch.float32):
        return _scheduler_on_cpu(family)


def _scheduler_on_cpu(family: str) -> FlowMatchEulerDiscreteScheduler | UniPCMultistepScheduler:
    if family == "sd3":
        return FlowMatchEulerDiscreteScheduler(shift=3.0)
    if family == "flux":
        return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                               base_image_seq_len=256, max_image_seq_len=4096)
    # Wan2.1 ships UniPC in flow mode; WanPipeline's annotation says FlowMatchEuler but it only calls
    # set_timesteps/step, which UniPC provides.
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


# ----------------------------------------------------------------------------- transformers


def _family(key_or_family: str) -> tuple[str, str]:
    """(family, checkpoint key) from either name."""
    if key_or_family in FAMILY_KEYS:
        return key_or_family, FAMILY_KEYS[key_or_family]
    for family, key in FAMILY_KEYS.items():
        if key == key_or_family:
            return family, key
    raise KeyError(f"unknown family {key_or_family!r}: one of {FAMILIES} or {tuple(REAL_TRANSFORMER_CONFIGS)}")


def _flux_axes(head_dim: int) -> list[int]:
    """Rotary axes (text/frame, h, w) summing to the head dim, all even: 128 -> [16, 56, 56], 16 -> [4, 6, 6]."""
    for t in (head_dim // 8, head_dim // 4):
        hw = (head_dim - t) // 2
        if t > 0 and t % 2 == 0 and hw % 2 == 0 and t + 2 * hw == head_dim:
            return [t, hw, hw]
    raise ValueError(f"attention_head_dim {head_dim}: no even rotary split")


_KL_LEVELS = 3  # tiny SD3/FLUX VAE: 4x downscale, so 32 px -> 8x8 latents -> 4x4 FLUX tokens


def tiny_transformer_config(family_key: str, **sizes: Any) -> dict[str, Any]:
    """The published transformer config with depth and widths shrunk (same keys, same class, same features:
    SD3.5's dual-attention blocks and qk-norm, FLUX's guidance embedding, Wan's norms)."""
    s = TinySizes(**sizes)
    _, key = _family(family_key)
    config = dict(REAL_TRANSFORMER_CONFIGS[key])
    width = s.heads * s.head_dim
    common = {"num_layers": s.layers, "num_attention_heads": s.heads, "attention_head_dim": s.head_dim}
    if key == "sd3.5-medium":
        latent = s.image_size // 2 ** (_KL_LEVELS - 1)
        common |= {"sample_size": latent, "pos_embed_max_size": 2 * latent // config["patch_size"],
                   "joint_attention_dim": s.text_dim, "caption_projection_dim": width,
                   "pooled_projection_dim": s.pooled_dim, "dual_attention_layers": list(range((s.layers + 1) // 2))}
    elif key == "flux.1-dev":
        common |= {"num_single_layers": 2 * s.layers, "joint_attention_dim": s.text_dim,
                   "pooled_projection_dim": s.pooled_dim, "axes_dims_rope": _flux_axes(s.head_dim)}
    else:
        common |= {"text_dim": s.text_dim, "ffn_dim": 2 * width}
    assert common.keys() <= config.keys(), set(common) - set(config)
    return config | common


def _transformer(key: str, config: dict[str, Any]) -> torch.nn.Module:
    return _TRANSFORMER_CLASSES[key](**config).eval()


# ----------------------------------------------------------------------------- components


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed the global RNG for one component; the caller's CPU RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Create parameters directly in ``dtype`` (a 12B FLUX in fp32 would not fit next to its bf16 copy)."""
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _components(family: str, key: str, tf_config: dict[str, Any], text: _TextSizes, vae: Callable[[], Any],
                seed: int) -> dict[str, Any]:
    """Assemble a pipeline's components; each module is seeded on its own, so resizing one never changes
    another's weights."""
    with _seeded(seed):
        transformer = _transformer(key, tf_config)
    with _seeded(seed + 1):
        encoders = {"sd3": _sd3_text, "flux": _flux_text, "wan": _wan_text}[family](tf_config, text)
    with _seeded(seed + 2):
        vae_model = vae()
    return {"transformer": transformer, "vae": vae_model, "scheduler": _scheduler(family), **encoders}


def tiny_pipeline_components(family: str, *, seed: int = 0, transformer_overrides: dict | None = None,
                             **sizes: Any) -> dict[str, Any]:
    """Components for ``PIPELINE_CLASSES[family](**components)``; ``sizes`` are ``TinySizes`` fields."""
    family, key = _family(family)
    s = TinySizes(**sizes)
    tf_config = tiny_transformer_config(key, **sizes) | dict(transformer_overrides or {})
    vae = functools.partial(_vae, family, s.vae_width, _KL_LEVELS, s.image_size)
    return _components(family, key, tf_config, _TextSizes(), vae, seed)


def tiny_call_kwargs(family: str, **sizes: Any) -> dict[str, Any]:
    """Pipeline-call sizes matching the tiny build. Pass them explicitly: FLUX defaults to 128 latent px x the
    VAE factor (512 px here) and Wan to 480x832x81 whatever the weights; T5 pads to 256/512/226 tokens."""
    family, _ = _family(family)
    s = TinySizes(**sizes)
    kwargs: dict[str, Any] = {"height": s.image_size, "width": s.image_size, "max_sequence_length": 16}
    return kwargs | ({"num_frames": s.num_frames} if family == "wan" else {})


def build_tiny_pipeline(family: str, out_dir: Path, *, seed: int = 0,
                        transformer_overrides: dict | None = None) -> Path:
    """Write a tiny pipeline folder with the pipeline's own ``save_pretrained`` and return it."""
    family, _ = _family(family)
    out_dir = Path(out_dir)
    pipe = PIPELINE_CLASSES[family](**tiny_pipeline_components(family, seed=seed,
                                                                transformer_overrides=transformer_overrides))
    pipe.save_pretrained(out_dir)
    return out_dir


def real_size_components(family_key: str, *, seed: int = 0, transformer_overrides: dict | None = None,
                         dtype: torch.dtype | None = None, vae_width: int = 8) -> dict[str, Any]:
    """Full-size published transformer (random init) plus the smallest text encoders / VAE that fit it.

    Modules are created on torch's default device (wrap the call in ``with torch.device("cuda"):``) and, with
    ``dtype``, directly in that dtype. The VAE keeps the real 8x downscale so latents have the real token count.
    """
    family, key = _family(family_key)
    tf_config = dict(REAL_TRANSFORMER_CONFIGS[key]) | dict(transformer_overrides or {})
    text = _TextSizes(clip_hidden=32, ffn=32, heads=2, kv=8)
    vae = functools.partial(_vae, family, vae_width, 4, 1024)  # 4 levels: the real 8x downscale
    with _default_dtype(dtype):
        return _components(family, key, tf_config, text, vae, seed)


__all__ = [
    "FAMILIES", "FAMILY_KEYS", "PIPELINE_CLASSES", "REAL_TRANSFORMER_CONFIGS", "TinySizes",
    "build_tiny_pipeline", "clip_tokenizer", "real_size_components", "t5_tokenizer", "tiny_call_kwargs",
    "tiny_pipeline_components", "tiny_transformer_config",
]
