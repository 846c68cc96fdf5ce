"""Flow-matching image policy: a diffusers flow transformer + FlowMatchEulerDiscreteScheduler.

Rollout walks the sampler with the explorer's SDE steps and stores the whole trajectory with the
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


@POLICIES.register("flow_image")
class FlowImagePolicy(TrainableWeights):
    """Class/prompt-conditioned flow-matching image generator as a stochastic policy."""

    @dataclass
    class Config:
        base_checkpoint: str | None = option(
            default=None, help="Checkpoint directory of the base model (a genrl checkpoint or pipeline folder)."
        )
        base_recipe: str | None = option(
            default=None,
            help="Pretraining recipe that makes the base model; built once and cached under $GENRL_CACHE.",
        )
        model: FlowDiTConfig = option(
            default_factory=FlowDiTConfig, help="Architecture when starting from random weights (no base)."
        )
        num_steps: int = option(default=10, help="Denoising steps of the sampler (rollout and evaluation).")
        shift: float = option(default=1.0, help="Timestep shift of the flow-matching scheduler.")
        guidance_scale: float = option(default=1.0, help="Classifier-free guidance scale; 1 disables CFG.")
        lora: LoraOptions | None = option(default=None, help="LoRA adapter settings; null = full fine-tuning.")
        forward_chunk: int = option(
            default=32, help="Rows per network call; fixed so results do not depend on batch composition."
        )

        def validate(self) -> None:
            if self.base_checkpoint and self.base_recipe:
                raise ValueError("base_recipe: give base_checkpoint or base_recipe, not both")
            if self.num_steps < 1:
                raise ValueError("num_steps: must be >= 1")
            if self.forward_chunk < 1:
                raise ValueError("forward_chunk: must be >= 1")

    def __init__(self, config: Config, *, device: torch.device | str = "cpu", base_dir: Path | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.base_dir = Path(base_dir).resolve() if base_dir else None
        if self.base_dir is not None:
            self.transformer, self.prompt_encoder, self.model_config = self._load_base(self.base_dir)
        else:
            self.model_config = config.model
            self.transformer = build_transformer(config.model)
            self.prompt_encoder = ClassPromptEncoder(config.model.num_classes, config.model.cond_tokens, config.model.cond_dim)
        self.prompt_encoder.requires_grad_(False)
        self.scheduler = FlowMatchEulerDiscreteScheduler(shift=config.shift)
        self.scheduler.set_timesteps(config.num_steps)
        self.sigmas = self.scheduler.sigmas.float().to(self.device)
        if config.lora is not None:
            from peft import LoraConfig, get_peft_model

            self.transformer.requires_grad_(False)
            lcfg = LoraConfig(
                r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                target_modules=list(config.lora.target_modules), init_lora_weights=True,
            )
            self.transformer = get_peft_model(self.transformer, lcfg)
        self.transformer.to(self.device)
        self.prompt_encoder.to(self.device)
        self.engine_model: nn.Module = self.transformer  # replaced by the engine-wrapped module (DDP, ...)

    # ----------------------------------------------------------------- loading
    @staticmethod
    def resolve_base(config: Config, *, recipe_file: str | None, key: str) -> Path | None:
        """The base checkpoint folder, checked (or built from its recipe) before any training work."""
        from genrl.pretrain.flow_image import flow_base_from_recipe

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

    def checkpoint_meta(self) -> dict:
        return {"policy": "flow_image", "model": asdict(self.model_config)}

    # --------------------------------------------------------------- parameters
    def trainable_module(self) -> nn.Module:
        """The module the engine wraps (DDP/DeepSpeed/FSDP); the prompt encoder stays frozen outside."""
        return self.transformer

    @staticmethod
    def reward_inputs(rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """What reward callables receive: images [B, H, W] in [0, 1] and the prompts, on the CPU."""
        return rollout["images"].cpu(), rollout["prompts"].cpu()

    def frozen_checkpoint_files(self) -> dict[str, dict[str, torch.Tensor]]:
        """Frozen parts a checkpoint must carry to be sampled on its own (not in the optimizer)."""
        return {"prompt_encoder.safetensors": {k: v.detach().cpu() for k, v in self.prompt_encoder.state_dict().items()}}

    # -------------------------------------------------------------- the network
    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.model_config
        return (c.channels, c.sample_size, c.sample_size)

    @property
    def reward_sample_spec(self) -> tuple[tuple[int, ...], str]:
        """(shape of one sample as reward callables receive it, kind of contexts), for compatibility checks."""
        c, h, w = self.image_shape
        return ((h, w) if c == 1 else (c, h, w)), "class"

    def _forward_chunked(self, model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n, chunk = len(x), self.config.forward_chunk
        timestep = (sigma * self.scheduler.config.num_train_timesteps).expand(n)
        outs = []
        for s in range(0, n, chunk):
            xb, tb, lb = x[s : s + chunk], timestep[s : s + chunk], labels[s : s + chunk]
            m = len(xb)
            if m < chunk:  # pad with copies of the last row so the kernel sees the same batch size
                pad = chunk - m
                xb = torch.cat([xb, xb[-1:].expand(pad, *xb.shape[1:])])
                tb = torch.cat([tb, tb[-1:].expand(pad)])
                lb = torch.cat([lb, lb[-1:].expand(pad)])
            tokens, pooled = self.prompt_encoder(lb)
            out = model(hidden_states=xb, encoder_hidden_states=tokens, pooled_projections=pooled,
                        timestep=tb, return_dict=False)[0]
            outs.append(out[:m])
        return torch.cat(outs).float()

    def velocity(self, model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        v = self._forward_chunked(model, x, sigma, labels)
        g = self.config.guidance_scale
        if g != 1.0:
            null = torch.full_like(labels, self.model_config.num_classes)
            v_uncond = self._forward_chunked(model, x, sigma, null)
            v = v_uncond + g * (v - v_uncond)
        return v

    @staticmethod
    def to_images(x: torch.Tensor) -> torch.Tensor:
        """Model space [-1, 1] -> images in [0, 1], [B, H, W] for single-channel models."""
        img = ((x.float() + 1) / 2).clamp(0, 1)
        return img[:, 0] if img.shape[1] == 1 else img

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def rollout(self, prompts: torch.Tensor, sample_ids: torch.Tensor, *, step: int, seed: int,
                plan: ExplorationPlan, explorer_config) -> Rollout:
        """Sample a batch with SDE exploration; store trajectory + old log-probs of every step."""
        model = self.engine_model
        model.eval()
        labels = prompts.to(self.device)
        ids = sample_ids.tolist()
        x = keyed_normal(self.image_shape, seed, Purpose.INIT_NOISE, step, ids, device=self.device)
        traj, log_probs = [x], torch.zeros(len(x), self.config.num_steps, device=self.device)
        old_means = {}  # Gaussian means of the trained steps (GRPO-Guard's ratio normalisation needs mu_old)
        rule, level = explorer_config.noise_rule, explorer_config.noise_level
        for t in range(self.config.num_steps):
            sigma, sigma_next = self.sigmas[t], self.sigmas[t + 1]
            v = self.velocity(model, x, sigma, labels)
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
                   "log_probs": log_probs, "images": self.to_images(x)}
        if old_means and len(old_means) == len(plan.train_steps):
            tensors["old_means"] = torch.stack([old_means[t] for t in plan.train_steps], 1)  # [B, W, ...]
        return Rollout(tensors, meta)

    def score(self, batch: Rollout, *, reference: bool = False) -> dict[str, torch.Tensor]:
        """Log-probs (and Gaussian means/stds) of the stored transitions at the trained steps.

        With ``reference=True`` the reference policy scores them (call under ``torch.no_grad``).
        """
        ctx = self.reference() if reference else contextlib.nullcontext(self.engine_model)
        steps = batch.meta["train_steps"]
        lat, labels = batch["latents"], batch["prompts"]
        out_lp, out_mean = [], []
        with ctx as model:
            if not reference:
                model.train()
            for t in steps:
                sigma, sigma_next = self.sigmas[t], self.sigmas[t + 1]
                v = self.velocity(model, lat[:, t], sigma, labels)
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
                   purpose: Purpose = Purpose.EVAL, step: int = 0) -> torch.Tensor:
        """Deterministic Euler sampling with diffusers' scheduler (the reference ODE sampler).

        The initial noise is keyed like a rollout's (``purpose``, ``step``, sample id), so row i is the
        same whatever else is in the batch.
        """
        model = self.engine_model
        model.eval()
        labels = prompts.to(self.device)
        x = keyed_normal(self.image_shape, seed, purpose, step, sample_ids.tolist(), device=self.device)
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(self.config.num_steps)
        for t in range(self.config.num_steps):
            v = self.velocity(model, x, self.sigmas[t], labels)
            x = scheduler.step(v, scheduler.timesteps[t], x, return_dict=False)[0]
        return self.to_images(x)

