"""Flow-matching image (and video) policy: a diffusers flow transformer + flow-matching Euler sampler.

The model family sits behind a backbone (:mod:`genrl.models.flow_backbones`): genrl's class-conditioned
digits model, or a diffusers pipeline folder (SD3/SD3.5, FLUX.1; Wan2.1 for ``flow_video``) whose
transformer is the policy and whose text encoders and VAE stay frozen. Rollout walks the sampler with the explorer's SDE steps and stores the whole trajectory with the
old per-step log-probabilities; ``score`` replays the stored transitions of the trained steps
through the *same* step function (``sde_step``) with gradients.

The network is always evaluated in chunks of exactly ``forward_chunk`` rows (the last one padded):
CPU/GPU matmul kernels may pick different reduction orders for different batch sizes, so a
fixed chunk makes each sample's output independent of how samples are batched. That is what keeps
the importance ratio exactly 1 before the first update, whatever the minibatch shuffling.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from torch import nn

from genrl.config.validate import option
from genrl.explorers.sde import ExplorationPlan, sde_step
from genrl.models.flow_backbones import DTYPES, ClassBackbone, Cond, load_pipeline_backbone, pipeline_family
from genrl.models.flow_dit import (
    ClassPromptEncoder,
    FlowDiTConfig,
    build_transformer,
    load_prompt_encoder,
    save_prompt_encoder,
)
from genrl.policies.loading import load_rl_checkpoint, read_checkpoint_meta, resolve_genrl_base
from genrl.policies.weights import TrainableWeights
from genrl.registry import POLICIES
from genrl.rng import Purpose, keyed_normal
from genrl.trainer.rollout import Rollout

CHECKPOINT_FORMAT = "genrl-checkpoint/1"


@dataclass
class LoraOptions:
    rank: int = option(default=8, help="LoRA rank r.")
    alpha: float = option(default=16.0, help="LoRA alpha (scale = alpha / r).")
    dropout: float = option(default=0.0, help="LoRA dropout; keep 0 for an exact on-policy ratio.")
    target_modules: list[str] = option(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj"],
        help="Module names (suffixes) that get adapters.",
    )


@dataclass
class PipelineOptions:
    """A diffusers pipeline folder as the base model, and how it is run."""

    path: str = option(help="Pipeline folder (model_index.json inside): StableDiffusion3Pipeline, FluxPipeline "
                            "(flow_image) or WanPipeline (flow_video), e.g. a local stable-diffusion-3.5-medium.")
    height: int = option(default=512, help="Image/video height in pixels.")
    width: int = option(default=512, help="Image/video width in pixels.")
    num_frames: int = option(default=33, help="Video frames (flow_video; Wan needs 1 + a multiple of 4).")
    negative_prompt: str = option(default="", help="CFG's unconditional prompt (SD3, Wan; FLUX.1-dev embeds guidance).")
    max_sequence_length: int = option(default=256, help="T5/UMT5 prompt tokens (SD3 256, FLUX 512, Wan 226 upstream).")
    dtype: str = option(default="float32", help="Weights of the frozen parts and of the transformer's base weights: "
                                                "float32, bfloat16 or float16 (LoRA adapters are kept in float32).")
    prompt_cache_size: int = option(default=1024, help="Distinct prompts whose text embeddings stay cached (CPU).")
    decode_chunk: int = option(default=8, help="Rows per VAE decode call (decoding runs only for rewards).")

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {self.dtype!r}")
        for name in ("height", "width", "num_frames", "max_sequence_length", "prompt_cache_size", "decode_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")


@POLICIES.register("flow_image")
class FlowImagePolicy(TrainableWeights):
    """Class- or text-conditioned flow-matching image generator as a stochastic policy."""

    name = "flow_image"  # as registered (checkpoints record it)
    families = ("sd3", "flux")  # pipeline families this policy name accepts
    class_models = True  # genrl's class-conditioned models too (flow_video has none)

    @dataclass
    class Config:
        base_checkpoint: str | None = option(
            default=None, help="Checkpoint directory of a genrl base model (pretrained or an RL checkpoint)."
        )
        base_recipe: str | None = option(
            default=None,
            help="Pretraining recipe that makes the base model; built once and cached under $GENRL_CACHE.",
        )
        model: FlowDiTConfig = option(
            default_factory=FlowDiTConfig, help="Architecture when starting from random weights (no base)."
        )
        pipeline: PipelineOptions | None = option(
            default=None, help="A diffusers pipeline folder as the base (instead of base_checkpoint/base_recipe).")
        num_steps: int = option(default=10, help="Denoising steps of the sampler (rollout and evaluation).")
        shift: float | None = option(
            default=None, help="Timestep shift of the flow-matching schedule; null = the model's own (1.0 for genrl "
                               "models, the pipeline scheduler's shift, FLUX's resolution-dependent one).")
        guidance_scale: float = option(default=1.0, help="Classifier-free guidance scale; 1 disables CFG.")
        lora: LoraOptions | None = option(default=None, help="LoRA adapter settings; null = full fine-tuning.")
        forward_chunk: int = option(
            default=32, help="Rows per network call; fixed so results do not depend on batch composition."
        )
        gradient_checkpointing: bool = option(
            default=False, help="Re-compute the transformer's activations in the backward pass (saves memory).")

        def validate(self) -> None:
            if self.base_checkpoint and self.base_recipe:
                raise ValueError("base_recipe: give base_checkpoint or base_recipe, not both")
            if self.pipeline is not None and (self.base_checkpoint or self.base_recipe):
                raise ValueError("pipeline: a pipeline folder is the base; drop base_checkpoint/base_recipe")
            if self.num_steps < 1:
                raise ValueError("num_steps: must be >= 1")
            if self.forward_chunk < 1:
                raise ValueError("forward_chunk: must be >= 1")

    def __init__(self, config: Config, *, device: torch.device | str = "cpu", base_dir: Path | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.base_dir = Path(base_dir).resolve() if base_dir else None
        self.prompt_encoder: ClassPromptEncoder | None = None
        if config.pipeline is not None:
            path = Path(config.pipeline.path).expanduser().resolve()
            family = pipeline_family(path)
            if family not in self.families:
                raise ValueError(f"{path}: a {family!r} pipeline is not a {self.name} model (this policy takes "
                                 f"{list(self.families)}; video pipelines go with policy flow_video)")
            self.backbone = load_pipeline_backbone(path, config.pipeline, device=self.device,
                                                   guidance_scale=config.guidance_scale)
            self.transformer, self.model_config = self.backbone.transformer, None
        else:
            if not self.class_models:
                raise ValueError(f"{self.name}: needs a pipeline folder (policy.pipeline.path)")
            if self.base_dir is not None:
                self.transformer, self.prompt_encoder, self.model_config = self._load_base(self.base_dir)
            else:
                self.model_config = config.model
                self.transformer = build_transformer(config.model)
                self.prompt_encoder = ClassPromptEncoder(config.model.num_classes, config.model.cond_tokens,
                                                         config.model.cond_dim)
            self.backbone = ClassBackbone(self.transformer, self.prompt_encoder, self.model_config)
        for m in self.backbone.frozen_modules():
            m.requires_grad_(False)
        self.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0 if config.shift is None else config.shift)
        self.scheduler.set_timesteps(config.num_steps)
        self.sigmas = self.backbone.sigmas(config.num_steps, config.shift).to(self.device)
        if config.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        if config.lora is not None:
            from peft import LoraConfig, get_peft_model

            self.transformer.requires_grad_(False)
            lcfg = LoraConfig(
                r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                target_modules=list(config.lora.target_modules), init_lora_weights=True,
            )
            self.transformer = get_peft_model(self.transformer, lcfg)
            for p in self.transformer.parameters():  # adapters train in float32 over low-precision base weights
                if p.requires_grad:
                    p.data = p.data.float()
        self.transformer.to(self.device)
        for m in self.backbone.frozen_modules():
            m.to(self.device)
        self.engine_model: nn.Module = self.transformer  # replaced by the engine-wrapped module (DDP, ...)
        self._items: dict[int, object] = {}

    # ----------------------------------------------------------------- loading
    @classmethod
    def resolve_base(cls, config: Config, *, recipe_file: str | None, key: str) -> Path | None:
        """The base checkpoint folder, checked (or built from its recipe) before any training work; a pipeline
        folder is checked to hold a pipeline of a family this policy takes."""
        from genrl.config.validate import RecipeError
        from genrl.pretrain.flow_image import flow_base_from_recipe

        if config.pipeline is not None:
            try:
                family = pipeline_family(Path(config.pipeline.path).expanduser())
            except (FileNotFoundError, ValueError) as exc:
                raise RecipeError(recipe_file, f"{key}.pipeline.path", str(exc)) from None
            if family not in cls.families:
                raise RecipeError(recipe_file, f"{key}.pipeline.path",
                                  f"a {family!r} pipeline; this policy takes {list(cls.families)}")
            return None
        return resolve_genrl_base(config, recipe_file=recipe_file, key=key, from_recipe=flow_base_from_recipe)

    @staticmethod
    def _load_base(path: Path) -> tuple[nn.Module, ClassPromptEncoder, FlowDiTConfig]:
        meta = read_checkpoint_meta(path)
        if meta.get("policy") != "flow_image":
            raise ValueError(f"{path}: holds a {meta.get('policy')!r} model, expected 'flow_image'")
        model_cfg = FlowDiTConfig(**meta["model"])
        if meta.get("weights") == "full_base":
            # use_safetensors: never fall back to a pickled .bin file found in a checkpoint folder
            transformer = SD3Transformer2DModel.from_pretrained(str(path / "transformer"), use_safetensors=True)
            encoder = load_prompt_encoder(path / "prompt_encoder.safetensors", model_cfg)
            return transformer, encoder, model_cfg
        # An RL checkpoint: rebuild its base, then apply its trained weights.
        policy = FlowImagePolicy.from_checkpoint(path, use_ema=True, merge=True)
        return policy.transformer, policy.prompt_encoder, policy.model_config

    @classmethod
    def from_checkpoint(cls, path: Path | str, *, use_ema: bool = True, merge: bool = False,
                        device: str = "cpu") -> FlowImagePolicy:
        """Load any flow_image checkpoint (a pretrained base or an RL checkpoint) for sampling."""
        from genrl.trainer.checkpoint import load_tensors

        path = Path(path).resolve()
        meta = read_checkpoint_meta(path)
        if meta.get("weights") == "full_base":
            return cls(cls.Config(num_steps=meta.get("num_steps", 10)), device=device, base_dir=path)
        if meta.get("pipeline"):  # the recipe may name the pipeline relative to where the run started
            pconf = meta["policy_config"]
            meta = {**meta, "policy_config": {**pconf, "pipeline": {**pconf["pipeline"], "path": meta["pipeline"]}}}
        policy = load_rl_checkpoint(cls, path, meta, use_ema=use_ema, device=device)
        config = policy.config
        if (path / "prompt_encoder.safetensors").is_file():  # a from-scratch run's (frozen, seeded) encoder
            policy.prompt_encoder.load_state_dict(load_tensors(path / "prompt_encoder.safetensors"))
        if merge and config.lora is not None:
            policy.transformer = policy.transformer.merge_and_unload()
        return policy

    def save_base(self, out_dir: Path) -> None:
        """Write a self-contained base checkpoint (diffusers folders + prompt encoder)."""
        transformer = self.transformer
        if self.config.lora is not None:
            transformer = copy.deepcopy(transformer).merge_and_unload()
        transformer.save_pretrained(str(out_dir / "transformer"))
        self.scheduler.save_pretrained(str(out_dir / "scheduler"))
        save_prompt_encoder(self.prompt_encoder, out_dir / "prompt_encoder.safetensors")

    @property
    def input_files(self) -> dict[str, Path]:
        """What the run's manifest content-hashes besides the base checkpoint: the pipeline folder."""
        return {} if self.prompt_encoder is not None else {"pipeline": self.backbone.path}

    def checkpoint_meta(self) -> dict:
        if self.prompt_encoder is None:
            return {"policy": self.name, "pipeline": str(self.backbone.path)}
        return {"policy": "flow_image", "model": asdict(self.model_config)}

    # --------------------------------------------------------------- parameters
    def trainable_module(self) -> nn.Module:
        """The module the engine wraps (DDP/DeepSpeed/FSDP); prompt/text encoders and the VAE stay frozen outside."""
        return self.transformer

    def reward_inputs(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor | list]:
        """What reward callables receive, on the CPU: images in [0, 1] ([B, H, W] for single-channel models,
        [B, 3, H, W]; videos [B, F, 3, H, W]) and the prompts (class ids, or the prompt texts with metadata)."""
        prompts = rollout["prompts"].cpu()
        if self.backbone.condition_kind == "text":
            return rollout["images"].cpu(), [self._items[int(i)] for i in prompts.tolist()]
        return rollout["images"].cpu(), prompts

    def frozen_checkpoint_files(self) -> dict[str, dict[str, torch.Tensor]]:
        """Frozen parts a checkpoint must carry to be sampled on its own (not in the optimizer)."""
        if self.prompt_encoder is None:  # a pipeline's frozen parts stay in its folder
            return {}
        return {"prompt_encoder.safetensors": {k: v.detach().cpu() for k, v in self.prompt_encoder.state_dict().items()}}

    # -------------------------------------------------------------- the network
    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one sample in model (latent) space."""
        return tuple(self.backbone.latent_shape)

    @property
    def reward_sample_spec(self) -> tuple[tuple[int, ...], str]:
        """(shape of one sample as reward callables receive it, kind of contexts), for compatibility checks."""
        if self.prompt_encoder is None:
            o = self.config.pipeline
            image = (3, o.height, o.width)
            return ((o.num_frames, *image) if self.backbone.kind == "video" else image), "text"
        c, h, w = self.image_shape
        return ((h, w) if c == 1 else (c, h, w)), "class"

    def conditioning(self, batch: Rollout) -> Cond:
        """The per-row conditioning a rollout stored (what the update re-scores with)."""
        return {k[len("cond."):]: v for k, v in batch.tensors.items() if k.startswith("cond.")}

    def _forward_chunked(self, model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: Cond,
                         null: Cond | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The network on ``forward_chunk`` rows at a time (the last chunk padded). With ``null`` (CFG's
        unconditional branch) each call takes the chunk twice, conditioned and unconditioned (2 x forward_chunk
        rows, as diffusers pipelines batch CFG): one larger call instead of two."""
        n, chunk = len(x), self.config.forward_chunk
        sigma = sigma.expand(n)

        def piece(t: torch.Tensor, s: int) -> torch.Tensor:
            tb = t[s : s + chunk]
            if len(tb) < chunk:  # pad with copies of the last row so the kernel sees the same batch size
                tb = torch.cat([tb, tb[-1:].expand(chunk - len(tb), *tb.shape[1:])])
            return tb

        outs, outs_null = [], []
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            xb, sb, cb = piece(x, s), piece(sigma, s), {k: piece(v, s) for k, v in cond.items()}
            if null is None:
                outs.append(self.backbone.network(model, xb, sb, cb)[:m].float())
                continue
            both = {k: torch.cat([cb[k], piece(null[k], s)]) for k in cb}
            out = self.backbone.network(model, torch.cat([xb, xb]), torch.cat([sb, sb]), both).float()
            outs.append(out[:m])
            outs_null.append(out[chunk : chunk + m])
        return torch.cat(outs), (torch.cat(outs_null) if null is not None else None)

    def velocity(self, model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The guided velocity at noise level ``sigma`` (a scalar or one per row). FLUX.1-dev's guidance is an
        input of the network (no second pass); the other families run CFG's unconditional branch."""
        g = self.config.guidance_scale
        if g == 1.0 or getattr(self.backbone, "guidance_embeds", False):
            return self._forward_chunked(model, x, sigma, cond)[0]
        v, v_uncond = self._forward_chunked(model, x, sigma, cond, self.backbone.null_condition(cond))
        return v_uncond + g * (v - v_uncond)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> what rewards see, in [0, 1] (the pipeline's VAE decodes latents)."""
        return self.backbone.decode(x)

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def rollout(self, prompts: torch.Tensor, sample_ids: torch.Tensor, *, step: int, seed: int,
                plan: ExplorationPlan, explorer_config, items: list | None = None,
                group_ids: torch.Tensor | None = None) -> Rollout:
        """Sample a batch with SDE exploration; store trajectory + old log-probs of every step.

        ``items`` are the prompt source's records of ``prompts`` (the texts, for pipeline models)."""
        model = self.engine_model
        model.eval()
        labels = prompts.to(self.device)
        if items is not None:
            self._items = {int(i): it for i, it in zip(prompts.tolist(), items)}  # this piece's, for reward_inputs
        cond = self.backbone.condition(labels, items)
        ids = sample_ids.tolist()
        x = keyed_normal(self.image_shape, seed, Purpose.INIT_NOISE, step, ids, device=self.device)
        traj, log_probs = [x], torch.zeros(len(x), self.config.num_steps, device=self.device)
        old_means = {}  # Gaussian means of the trained steps (GRPO-Guard's ratio normalisation needs mu_old)
        rule, level = explorer_config.noise_rule, explorer_config.noise_level
        for t in range(self.config.num_steps):
            sigma, sigma_next = self.sigmas[t], self.sigmas[t + 1]
            v = self.velocity(model, x, sigma, cond)
            if plan.stochastic[t]:
                noise = keyed_normal(self.image_shape, seed, Purpose.STEP_NOISE, step, ids, t, device=self.device)
                x, lp, mean, _ = sde_step(x, v, sigma.expand(len(x)), sigma_next.expand(len(x)),
                                          sigma_max=float(self.sigmas[1]), rule=rule, noise_level=level, noise=noise)
                if lp is not None:
                    log_probs[:, t] = lp
                if t in plan.train_steps:
                    old_means[t] = mean
            else:
                x, _, _, _ = sde_step(x, v, sigma.expand(len(x)), sigma_next.expand(len(x)),
                                      sigma_max=float(self.sigmas[1]), rule=rule, noise_level=0.0)
            traj.append(x)
        # step/seed let forward-process objectives (DiffusionNFT) key their fresh noise like the sampler's
        meta = {"train_steps": list(plan.train_steps), "noise_rule": rule, "noise_level": level,
                "step": step, "seed": seed}
        tensors = {"prompts": labels, "sample_ids": sample_ids.to(self.device), "latents": torch.stack(traj, 1),
                   "log_probs": log_probs, "images": self.to_images(x).to(self.device),
                   **{f"cond.{k}": v for k, v in cond.items()}}
        if old_means and len(old_means) == len(plan.train_steps):
            tensors["old_means"] = torch.stack([old_means[t] for t in plan.train_steps], 1)  # [B, W, ...]
        return Rollout(tensors, meta)

    def score(self, batch: Rollout, *, reference: bool = False) -> dict[str, torch.Tensor]:
        """Log-probs (and Gaussian means/stds) of the stored transitions at the trained steps.

        With ``reference=True`` the reference policy scores them (call under ``torch.no_grad``).
        """
        ctx = self.reference() if reference else contextlib.nullcontext(self.engine_model)
        steps = batch.meta["train_steps"]
        lat, cond = batch["latents"], self.conditioning(batch)
        out_lp, out_mean = [], []
        with ctx as model:
            if not reference:
                model.train()
            for t in steps:
                sigma, sigma_next = self.sigmas[t], self.sigmas[t + 1]
                v = self.velocity(model, lat[:, t], sigma, cond)
                _, lp, mean, std = sde_step(
                    lat[:, t], v, sigma.expand(len(v)), sigma_next.expand(len(v)), sigma_max=float(self.sigmas[1]),
                    rule=batch.meta["noise_rule"], noise_level=batch.meta["noise_level"], x_next=lat[:, t + 1],
                )
                out_lp.append(lp)
                out_mean.append(mean)
        stds = torch.stack([self._std(t, batch.meta) for t in steps])
        return {"log_probs": torch.stack(out_lp, 1), "means": torch.stack(out_mean, 1), "stds": stds}

    def _std(self, t: int, meta: dict) -> torch.Tensor:
        one = torch.zeros(1, 1, device=self.device)
        _, _, _, std = sde_step(one, one, self.sigmas[t].view(1), self.sigmas[t + 1].view(1),
                                sigma_max=float(self.sigmas[1]), rule=meta["noise_rule"], noise_level=meta["noise_level"])
        return std.reshape(())

    # --------------------------------------------------------------- evaluation
    @torch.no_grad()
    def sample_ode(self, prompts: torch.Tensor, sample_ids: torch.Tensor, *, seed: int,
                   purpose: Purpose = Purpose.EVAL, step: int = 0, items: list | None = None) -> torch.Tensor:
        """Deterministic Euler sampling: ``sde_step`` at noise level 0, which is diffusers' Euler step bit for bit.

        The initial noise is keyed like a rollout's (``purpose``, ``step``, sample id), so row i is the
        same whatever else is in the batch. ``items``: the prompt texts, for pipeline models.
        """
        model = self.engine_model
        model.eval()
        cond = self.backbone.condition(prompts.to(self.device), items)
        x = keyed_normal(self.image_shape, seed, purpose, step, sample_ids.tolist(), device=self.device)
        for t in range(self.config.num_steps):
            v = self.velocity(model, x, self.sigmas[t], cond)
            x = sde_step(x, v, self.sigmas[t].view(1), self.sigmas[t + 1].view(1), sigma_max=float(self.sigmas[1]),
                         rule="flow_grpo", noise_level=0.0)[0]
        return self.to_images(x)

    # ------------------------------------------------------------------- export
    export_formats = ("diffusers-lora", "merged", "peft")

    def export(self, fmt: str, out: Path) -> None:
        """Write the trained weights into the empty folder ``out`` in a format other tools load unchanged:

        * ``diffusers-lora``: ``pytorch_lora_weights.safetensors`` for ``pipeline.load_lora_weights(out)``
          (the LoRA config, alpha included, travels in the file's metadata);
        * ``merged``: a whole pipeline folder with the adapters merged (``Pipeline.from_pretrained(out)``);
          for genrl's class-conditioned models, a genrl base checkpoint;
        * ``peft``: the transformer's PEFT adapter (``PeftModel.from_pretrained(transformer, out)``).
        """
        from genrl.export import ExportError

        if fmt not in self.export_formats:
            raise ExportError(f"format {fmt!r}: expected one of {list(self.export_formats)}")
        lora = self.config.lora is not None
        if fmt in ("diffusers-lora", "peft") and not lora:
            raise ExportError(f"format {fmt!r} needs a LoRA run; this run fine-tuned all weights: use --format merged")
        if fmt == "peft":
            if self.prompt_encoder is None:
                self.transformer.peft_config["default"].base_model_name_or_path = str(self.backbone.path / "transformer")
            self.transformer.save_pretrained(str(out))
            return
        if self.prompt_encoder is None and fmt == "diffusers-lora":
            from peft.utils import get_peft_model_state_dict

            prefix = "base_model.model."
            state = {k.removeprefix(prefix): v.detach().cpu() for k, v in get_peft_model_state_dict(self.transformer).items()}
            meta = {k: (sorted(v) if isinstance(v, set) else v)
                    for k, v in self.transformer.peft_config["default"].to_dict().items()}
            type(self.backbone.pipe).save_lora_weights(str(out), transformer_lora_layers=state,
                                                       transformer_lora_adapter_metadata=meta)
            return
        if fmt == "diffusers-lora":
            raise ExportError("format 'diffusers-lora' needs a diffusers pipeline model; genrl's class-conditioned "
                              "models export as 'merged' (a genrl base checkpoint) or 'peft'")
        if self.prompt_encoder is None:
            pipe = self.backbone.pipe
            pipe.transformer = self.transformer.merge_and_unload() if lora else self.transformer
            pipe.save_pretrained(str(out))
        else:
            import json

            self.save_base(out)  # adapters merged into a copy
            meta = {"format": CHECKPOINT_FORMAT, "policy": "flow_image", "weights": "full_base",
                    "model": asdict(self.model_config), "num_steps": self.config.num_steps}
            (out / "checkpoint.json").write_text(json.dumps(meta, indent=2))


@POLICIES.register("flow_video")
class FlowVideoPolicy(FlowImagePolicy):
    """A diffusers text-to-video pipeline (Wan2.1) as a Flow-GRPO policy: the same SDE sampler, log-probs and
    objectives as ``flow_image``, on video latents; rewards receive decoded videos [B, F, 3, H, W] in [0, 1]."""

    name = "flow_video"
    families = ("wan",)
    class_models = False

    @dataclass
    class Config(FlowImagePolicy.Config):
        def validate(self) -> None:
            super().validate()
            if self.pipeline is None:
                raise ValueError("pipeline: flow_video runs a diffusers video pipeline folder (pipeline.path)")
