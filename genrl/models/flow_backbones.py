"""Model families behind the flow policy: what differs between them, and nothing else.

The flow policy (:mod:`genrl.policies.flow_image`) owns the sampler, the SDE exploration, the
log-probabilities and the chunked, batch-independent network calls. A *backbone* answers the
family-specific questions:

* what a row is conditioned on (``condition``: per-row tensors, stored in the rollout so the update
  re-scores with exactly what the rollout saw) and what CFG's unconditional branch is;
* how the transformer is called (timestep units, extra inputs such as FLUX's position ids and
  guidance embedding);
* the latent shape, the sigma schedule, and how latents become the images/videos rewards see.

Families: genrl's class-conditioned digits model (``ClassBackbone``) and diffusers pipeline folders
— ``StableDiffusion3Pipeline`` (SD3/SD3.5), ``FluxPipeline`` (FLUX.1) and ``WanPipeline`` (Wan2.1
text-to-video). Pipeline prompts go through the pipeline's own frozen text encoders (its
``encode_prompt``), once per distinct prompt (an LRU cache), and latents through its VAE, decoded only
for rewards and previews.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn

Cond = dict[str, torch.Tensor]  # per-row conditioning tensors (leading dim = rows)

PIPELINE_FAMILIES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux", "WanPipeline": "wan"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def euler_sigmas(scheduler_config: dict, num_steps: int, *, shift: float | None = None, mu: float | None = None,
                 sigmas: Sequence[float] | None = None) -> torch.Tensor:
    """The ``num_steps + 1`` sigmas (ending at 0) of diffusers' flow-matching Euler scheduler."""
    cfg = dict(scheduler_config)
    if shift is not None:
        cfg.update(shift=shift, use_dynamic_shifting=False)
    sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
    kwargs = {"mu": mu} if sched.config.use_dynamic_shifting else {}
    if sigmas is not None:
        sched.set_timesteps(sigmas=list(sigmas), **kwargs)
    else:
        sched.set_timesteps(num_steps, **kwargs)
    return sched.sigmas.float()


class ClassBackbone:
    """genrl's class-conditioned flow transformer (the digits task): a class id is the prompt."""

    kind = "image"
    condition_kind = "class"

    def __init__(self, transformer: nn.Module, prompt_encoder: nn.Module, model_config) -> None:
        self.transformer, self.prompt_encoder, self.model_config = transformer, prompt_encoder, model_config
        c = model_config
        self.latent_shape = (c.channels, c.sample_size, c.sample_size)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.prompt_encoder]

    def condition(self, prompts: torch.Tensor, items=None) -> Cond:
        if items is not None and any(isinstance(t, str) for t in items):
            raise ValueError("a genrl class-conditioned model is prompted with class ids, not text; text prompts "
                             "need a diffusers pipeline as the base (policy.pipeline.path)")
        return {"labels": prompts}

    def null_condition(self, cond: Cond) -> Cond:
        return {"labels": torch.full_like(cond["labels"], self.model_config.num_classes)}

    def network(self, model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        tokens, pooled = self.prompt_encoder(cond["labels"])
        return model(hidden_states=x, encoder_hidden_states=tokens, pooled_projections=pooled,
                     timestep=sigma * 1000, return_dict=False)[0]

    def sigmas(self, num_steps: int, shift: float | None) -> torch.Tensor:
        return euler_sigmas({"shift": 1.0 if shift is None else shift}, num_steps)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model space [-1, 1] -> images in [0, 1], [B, H, W] for single-channel models."""
        img = ((latents.float() + 1) / 2).clamp(0, 1)
        return img[:, 0] if img.shape[1] == 1 else img


def pipeline_family(path: Path) -> str:
    """``sd3`` / ``flux`` / ``wan`` from a pipeline folder's ``model_index.json`` (or a clear error)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{path}: not a diffusers pipeline folder (expected {index.name} inside it)")
    name = json.loads(index.read_text()).get("_class_name")
    if name not in PIPELINE_FAMILIES:
        raise ValueError(f"{index}: _class_name {name!r} is not supported; expected one of {sorted(PIPELINE_FAMILIES)}")
    return PIPELINE_FAMILIES[name]


class PipelineBackbone:
    """A diffusers text-to-image/video pipeline folder; the transformer is the policy, the rest is frozen."""

    kind = "image"
    condition_kind = "text"
    pipeline_class = ""

    def __init__(self, path: Path, options, *, device: torch.device, guidance_scale: float = 1.0) -> None:
        import diffusers

        self.path, self.options, self.device = Path(path), options, device
        self.guidance_scale = guidance_scale  # FLUX.1-dev feeds it to its guidance embedding; CFG is the policy's
        self.dtype = DTYPES[options.dtype]
        cls = getattr(diffusers, self.pipeline_class)
        self.pipe = cls.from_pretrained(str(self.path), dtype=self.dtype)
        self.transformer = self.pipe.transformer
        self.vae = self.pipe.vae
        self.text_encoders = [m for m in (getattr(self.pipe, n, None) for n in
                                          ("text_encoder", "text_encoder_2", "text_encoder_3")) if m is not None]
        for m in (self.vae, *self.text_encoders):
            m.requires_grad_(False).eval()
        self._cache: OrderedDict[str, Cond] = OrderedDict()
        self._null: Cond | None = None

    def frozen_modules(self) -> list[nn.Module]:
        return [self.vae, *self.text_encoders]

    # --------------------------------------------------------------- prompts
    def encode_texts(self, texts: list[str]) -> Cond:  # pragma: no cover - every family defines it
        raise NotImplementedError

    def condition(self, prompts: torch.Tensor, items=None) -> Cond:
        """Embeddings of each row's prompt text; each distinct text is encoded once (LRU cache on the CPU)."""
        if items is None or any(not isinstance(t, str) for t in items):
            raise ValueError(f"{self.path}: a {self.pipeline_class} is prompted with text; use a prompt source with "
                             "text items (e.g. prompts: {name: text_prompts, path: ...})")
        texts = [str(t) for t in items]
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            with torch.no_grad():
                enc = self.encode_texts(missing)
            for i, t in enumerate(missing):
                self._cache[t] = {k: v[i].detach().cpu() for k, v in enc.items()}
        rows = []
        for t in texts:
            self._cache.move_to_end(t)
            rows.append(self._cache[t])
        while len(self._cache) > self.options.prompt_cache_size:
            self._cache.popitem(last=False)
        return {k: torch.stack([r[k] for r in rows]).to(self.device) for k in rows[0]}

    def null_condition(self, cond: Cond) -> Cond:
        """CFG's unconditional branch: the negative prompt's embeddings, one row per conditioned row."""
        if self._null is None:
            with torch.no_grad():
                self._null = {k: v[:1].detach() for k, v in self.encode_texts([self.options.negative_prompt]).items()}
        n = len(next(iter(cond.values())))
        return {k: v.to(self.device).expand(n, *v.shape[1:]) for k, v in self._null.items()}

    # ---------------------------------------------------------------- schedule
    def sigmas(self, num_steps: int, shift: float | None) -> torch.Tensor:
        return euler_sigmas(self.pipe.scheduler.config, num_steps, shift=shift)

    def _decode_chunks(self, latents: torch.Tensor, fn) -> torch.Tensor:
        chunk = self.options.decode_chunk
        with torch.no_grad():
            out = [fn(latents[s:s + chunk].to(self.device, self.dtype)).float().cpu()
                   for s in range(0, len(latents), chunk)]
        return torch.cat(out)


class SD3Backbone(PipelineBackbone):
    """Stable Diffusion 3 / 3.5: CLIP-L + CLIP-G + T5 prompts, true CFG with a negative prompt."""

    pipeline_class = "StableDiffusion3Pipeline"

    def __init__(self, path: Path, options, *, device: torch.device, guidance_scale: float = 1.0) -> None:
        super().__init__(path, options, device=device, guidance_scale=guidance_scale)
        f = self.pipe.vae_scale_factor
        self.latent_shape = (self.transformer.config.in_channels, options.height // f, options.width // f)

    def encode_texts(self, texts: list[str]) -> Cond:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            texts, texts, texts, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=self.options.max_sequence_length)
        return {"embeds": embeds, "pooled": pooled}

    def network(self, model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        return model(hidden_states=x.to(self.dtype), encoder_hidden_states=cond["embeds"].to(self.dtype),
                     pooled_projections=cond["pooled"].to(self.dtype), timestep=sigma * 1000, return_dict=False)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config

        def one(z: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(z / cfg.scaling_factor + cfg.shift_factor, return_dict=False)[0]

        return ((self._decode_chunks(latents, one) + 1) / 2).clamp(0, 1)


class FluxBackbone(PipelineBackbone):
    """FLUX.1: CLIP-L pooled + T5 tokens, 2x2-packed latents with position ids, and (dev) the guidance
    embedding in place of a second CFG pass."""

    pipeline_class = "FluxPipeline"

    def __init__(self, path: Path, options, *, device: torch.device, guidance_scale: float = 1.0) -> None:
        super().__init__(path, options, device=device, guidance_scale=guidance_scale)
        f = self.pipe.vae_scale_factor
        if options.height % (2 * f) or options.width % (2 * f):
            raise ValueError(f"pipeline.height/width: FLUX needs multiples of {2 * f} (VAE factor {f} x 2x2 packing), "
                             f"got {options.height}x{options.width}")
        self.grid = (options.height // f // 2, options.width // f // 2)
        channels = self.transformer.config.in_channels  # packed: 4 x the VAE's latent channels
        self.latent_shape = (self.grid[0] * self.grid[1], channels)
        ids = torch.zeros(*self.grid, 3)
        ids[..., 1] += torch.arange(self.grid[0])[:, None]
        ids[..., 2] += torch.arange(self.grid[1])[None, :]
        self.img_ids = ids.reshape(-1, 3).to(device)
        self.txt_ids = torch.zeros(options.max_sequence_length, 3, device=device)
        self.guidance_embeds = bool(self.transformer.config.guidance_embeds)

    def encode_texts(self, texts: list[str]) -> Cond:
        embeds, pooled, _ = self.pipe.encode_prompt(texts, texts, device=self.device,
                                                    max_sequence_length=self.options.max_sequence_length)
        return {"embeds": embeds, "pooled": pooled}

    def sigmas(self, num_steps: int, shift: float | None) -> torch.Tensor:
        """FLUX's schedule: linspace(1, 1/N) shifted by mu, which grows with the image's token count."""
        cfg = self.pipe.scheduler.config
        seq = self.latent_shape[0]
        slope = (cfg.max_shift - cfg.base_shift) / (cfg.max_image_seq_len - cfg.base_image_seq_len)
        mu = cfg.base_shift + slope * (seq - cfg.base_image_seq_len)
        return euler_sigmas(cfg, num_steps, shift=shift, mu=mu, sigmas=np.linspace(1.0, 1 / num_steps, num_steps))

    def network(self, model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        n = len(x)
        guidance = torch.full((n,), self.guidance_scale, device=x.device) if self.guidance_embeds else None
        return model(hidden_states=x.to(self.dtype), encoder_hidden_states=cond["embeds"].to(self.dtype),
                     pooled_projections=cond["pooled"].to(self.dtype), timestep=sigma, guidance=guidance,
                     txt_ids=self.txt_ids, img_ids=self.img_ids, return_dict=False)[0]

    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, h*w, C*4] -> [B, C, 2h, 2w] (the inverse of FLUX's 2x2 patch packing)."""
        b, (h, w), c4 = len(latents), self.grid, latents.shape[-1]
        z = latents.view(b, h, w, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return z.reshape(b, c4 // 4, 2 * h, 2 * w)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config

        def one(z: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(self.unpack(z) / cfg.scaling_factor + cfg.shift_factor, return_dict=False)[0]

        return ((self._decode_chunks(latents, one) + 1) / 2).clamp(0, 1)


class WanBackbone(PipelineBackbone):
    """Wan2.1 text-to-video: UMT5 prompts, true CFG with a negative prompt, a causal 3-D VAE.

    The pipeline ships a multistep (UniPC) scheduler; the SDE policy needs single Euler steps, so the
    schedule is diffusers' flow-matching Euler one with the pipeline's ``flow_shift``."""

    kind = "video"
    pipeline_class = "WanPipeline"

    def __init__(self, path: Path, options, *, device: torch.device, guidance_scale: float = 1.0) -> None:
        super().__init__(path, options, device=device, guidance_scale=guidance_scale)
        ft, fs = self.pipe.vae_scale_factor_temporal, self.pipe.vae_scale_factor_spatial
        if (options.num_frames - 1) % ft:
            raise ValueError(f"pipeline.num_frames: Wan needs 1 + a multiple of {ft} frames, got {options.num_frames}")
        self.latent_shape = (self.transformer.config.in_channels, (options.num_frames - 1) // ft + 1,
                             options.height // fs, options.width // fs)

    def encode_texts(self, texts: list[str]) -> Cond:
        embeds, _ = self.pipe.encode_prompt(texts, do_classifier_free_guidance=False, device=self.device,
                                            max_sequence_length=self.options.max_sequence_length)
        return {"embeds": embeds}

    def sigmas(self, num_steps: int, shift: float | None) -> torch.Tensor:
        cfg = self.pipe.scheduler.config
        flow_shift = shift if shift is not None else float(cfg.get("flow_shift", cfg.get("shift", 1.0)) or 1.0)
        return euler_sigmas({"shift": flow_shift}, num_steps)

    def network(self, model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        return model(hidden_states=x.to(self.dtype), encoder_hidden_states=cond["embeds"].to(self.dtype),
                     timestep=sigma * 1000, return_dict=False)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> videos [B, F, 3, H, W] in [0, 1]."""
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1)
        std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1)

        def one(z: torch.Tensor) -> torch.Tensor:
            z = z * std.to(z) + mean.to(z)
            return self.vae.decode(z, return_dict=False)[0]

        video = self._decode_chunks(latents, one)  # [B, 3, F, H, W] in [-1, 1]
        return ((video.permute(0, 2, 1, 3, 4) + 1) / 2).clamp(0, 1)


BACKBONES: dict[str, type[PipelineBackbone]] = {"sd3": SD3Backbone, "flux": FluxBackbone, "wan": WanBackbone}


def load_pipeline_backbone(path: Path, options, *, device: torch.device, guidance_scale: float = 1.0) -> PipelineBackbone:
    return BACKBONES[pipeline_family(path)](path, options, device=device, guidance_scale=guidance_scale)
