"""Autoregressive (block-causal) video policy: Self-Forcing-style few-step sampling with a KV cache.

A video is generated block by block (``frames_per_block`` frames). Each block starts from keyed noise and
is denoised in ``num_steps`` steps; between steps the sampler re-noises the predicted clean block,
x' = (1 - s') x0_hat + s' eps — which is ``sde_step`` with the CPS rule at level 1 (the last step lands
on x0_hat). A clean pass (timestep 0) then writes the block into the KV cache. At a prompt switch the
whole cache is re-computed under the new prompt (LongLive-style re-cache).

Two explorations drive the same sampler (``genrl/explorers``):

* ``sde`` (Flow-GRPO on video): the plan's stochastic steps use the explorer's Gaussian step and record
  its log-probability; ``score`` replays the stored transitions through the same ``sde_step``.
* ``kvpo``: one fork group per prompt — a shared prefix, then G branches whose attention context in the
  P blocks after the fork has part of the window replaced by routed older frames, plus one unperturbed
  anchor (row 0 of the group); prefix, initial and tail noise are shared (keyed by the group), so the
  routed history is the only difference. ``branch_energy`` is the Trajectory Velocity Energy of the
  explored blocks replayed under the unrouted context (one function for rollout and update).

Every network call runs on exactly ``forward_chunk`` rows (padding the last), so a row's numbers never
depend on its neighbours: that is what makes the anchor equal a plain rollout bit for bit and the first
importance ratio exactly 1.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import WanTransformer3DModel
from torch import nn

from genrl.config.validate import option
from genrl.explorers.sde import sde_step
from genrl.models.ar_video import (
    ARVideoConfig,
    BlockCausalProcessor,
    BlockCausalState,
    KVCache,
    VideoPromptEncoder,
    build_transformer,
    few_step_sigmas,
    flow_timestep,
    install_block_causal,
    teacher_forcing_layout,
    window_context,
)
from genrl.policies.flow_image import LoraOptions
from genrl.policies.loading import load_rl_checkpoint, read_checkpoint_meta, resolve_genrl_base
from genrl.policies.weights import TrainableWeights
from genrl.registry import POLICIES
from genrl.rng import Purpose, keyed_normal
from genrl.trainer.rollout import Rollout

SCOPE_PREFIX, SCOPE_CHUNK, SCOPE_AFTER = 0, 1, 2  # reward scope flag per frame (rewards' ``scope`` option)


def _lora_targets() -> list[str]:
    return ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class VideoLoraOptions(LoraOptions):
    target_modules: list[str] = option(default_factory=_lora_targets, help="Attention projections that get adapters.")


@POLICIES.register("ar_video")
class ARVideoPolicy(TrainableWeights):
    """Prompted block-causal video generator on a Wan transformer, as a stochastic policy."""

    needs_prompt_items = True  # motion prompts (digit + directions per segment), not ids

    @dataclass
    class Config:
        base_checkpoint: str | None = option(default=None, help="Folder of a pretrained ar_video base (or an RL checkpoint).")
        base_recipe: str | None = option(default=None, help="Pretraining recipe of the base; built once and cached.")
        model: ARVideoConfig = option(default_factory=ARVideoConfig, help="Architecture and block layout without a base.")
        num_steps: int = option(default=4, help="Denoising steps per block (few-step sampler).")
        shift: float = option(default=1.0, help="Timestep shift of the few-step schedule.")
        renoise: float = option(default=1.0, help="CPS level of the native sampler between steps (1 = full re-noise).")
        forward_chunk: int = option(default=16, help="Rows per network call (fixed: results independent of batching).")
        lora: VideoLoraOptions | None = option(default=None, help="LoRA on the attention projections; null = full fine-tuning.")

        def validate(self) -> None:
            if self.base_checkpoint and self.base_recipe:
                raise ValueError("base_recipe: give base_checkpoint or base_recipe, not both")
            if self.num_steps < 1 or self.forward_chunk < 1:
                raise ValueError("num_steps: num_steps and forward_chunk must be >= 1")
            if not 0 <= self.renoise <= 1:
                raise ValueError("renoise: expected a CPS level in [0, 1]")

    def __init__(self, config: Config, *, device: torch.device | str = "cpu", base_dir: Path | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.base_dir = Path(base_dir).resolve() if base_dir else None
        if self.base_dir is not None:
            self.transformer, self.prompt_encoder, self.model_config = self._load_base(self.base_dir)
        else:
            self.model_config = config.model
            self.transformer = build_transformer(config.model)
            self.prompt_encoder = VideoPromptEncoder(config.model)
        self.prompt_encoder.requires_grad_(False)
        install_block_causal(self.transformer, self.model_config)
        self.step_sigmas = few_step_sigmas(config.num_steps, config.shift)
        if config.lora is not None:
            from peft import LoraConfig, get_peft_model

            self.transformer.requires_grad_(False)
            self.transformer = get_peft_model(self.transformer, LoraConfig(
                r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                target_modules=list(config.lora.target_modules), init_lora_weights=True))
        self.transformer.to(self.device)
        self.prompt_encoder.to(self.device)
        self.engine_model: nn.Module = self.transformer

    # ----------------------------------------------------------------- loading
    @staticmethod
    def resolve_base(config: Config, *, recipe_file: str | None, key: str) -> Path | None:
        from genrl.pretrain.ar_video import ar_video_base_from_recipe

        return resolve_genrl_base(config, recipe_file=recipe_file, key=key, from_recipe=ar_video_base_from_recipe)

    @staticmethod
    def _load_base(path: Path) -> tuple[nn.Module, VideoPromptEncoder, ARVideoConfig]:
        from genrl.trainer.checkpoint import load_tensors

        meta = read_checkpoint_meta(path)
        if meta.get("policy") != "ar_video":
            raise ValueError(f"{path}: holds a {meta.get('policy')!r} model, expected 'ar_video'")
        cfg = ARVideoConfig(**meta["model"])
        if meta.get("weights") == "full_base":
            transformer = WanTransformer3DModel.from_pretrained(str(path / "transformer"), use_safetensors=True)
            encoder = VideoPromptEncoder(cfg)
            encoder.load_state_dict(load_tensors(path / "prompt_encoder.safetensors"))
            return transformer, encoder, cfg
        # An RL checkpoint: its base rebuilt, its trained weights applied and merged, as a plain transformer.
        policy = ARVideoPolicy.from_checkpoint(path, merge=True)
        return ARVideoPolicy._fresh_copy(policy.transformer, cfg), policy.prompt_encoder, cfg

    @staticmethod
    def _fresh_copy(transformer: nn.Module, cfg: ARVideoConfig) -> WanTransformer3DModel:
        """A plain Wan transformer with ``transformer``'s weights (processors re-installed by the caller)."""
        fresh = build_transformer(cfg)
        fresh.load_state_dict(transformer.state_dict())
        return fresh

    @classmethod
    def from_checkpoint(cls, path: Path | str, *, use_ema: bool = True, merge: bool = False, device: str = "cpu") -> ARVideoPolicy:
        """Load an ar_video base folder or RL checkpoint for sampling/evaluation."""
        from genrl.trainer.checkpoint import load_tensors

        path = Path(path).resolve()
        meta = read_checkpoint_meta(path)
        if meta.get("weights") == "full_base":
            return cls(cls.Config(num_steps=meta.get("num_steps", 4), shift=meta.get("shift", 1.0)), device=device,
                       base_dir=path)
        policy = load_rl_checkpoint(cls, path, meta, use_ema=use_ema, device=device)
        config = policy.config
        if (path / "prompt_encoder.safetensors").is_file():
            policy.prompt_encoder.load_state_dict(load_tensors(path / "prompt_encoder.safetensors"))
        if merge and config.lora is not None:
            policy.transformer = policy.transformer.merge_and_unload()
            policy.engine_model = policy.transformer
        return policy

    def save_base(self, out_dir: Path, *, extra_meta: dict | None = None) -> None:
        """A self-contained base folder: the Wan transformer (diffusers format) + the prompt encoder."""
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        transformer = self.transformer
        if self.config.lora is not None:
            transformer = copy.deepcopy(transformer).merge_and_unload()
        self._fresh_copy(transformer, self.model_config).save_pretrained(str(out_dir / "transformer"))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.prompt_encoder.state_dict().items()},
                  str(out_dir / "prompt_encoder.safetensors"))
        meta = {"format": "genrl-checkpoint/1", "policy": "ar_video", "weights": "full_base",
                "model": asdict(self.model_config), "num_steps": self.config.num_steps, **(extra_meta or {})}
        (out_dir / "checkpoint.json").write_text(json.dumps(meta, indent=2))

    def checkpoint_meta(self) -> dict:
        return {"policy": "ar_video", "model": asdict(self.model_config)}

    def trainable_module(self) -> nn.Module:
        return self.transformer

    def frozen_checkpoint_files(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"prompt_encoder.safetensors": {k: v.detach().cpu() for k, v in self.prompt_encoder.state_dict().items()}}

    @property
    def reward_sample_spec(self) -> tuple[tuple[int, ...], str]:
        return (self.model_config.canvas, self.model_config.canvas), "video"

    # -------------------------------------------------------------- the network
    @staticmethod
    def state_of(model: nn.Module) -> BlockCausalState:
        """The processors' shared state of ``model`` (an engine wrapper, a PEFT model or a reference copy)."""
        for m in model.modules():
            proc = getattr(m, "processor", None)
            if isinstance(proc, BlockCausalProcessor):
                return proc.state
        raise ValueError("model has no block-causal processors (install_block_causal was not applied)")

    def _chunks(self, n: int):
        c = self.config.forward_chunk
        for s in range(0, n, c):
            idx = torch.arange(s, min(s + c, n))
            pad = c - len(idx)
            yield idx, torch.cat([idx, idx[-1:].expand(pad)]) if pad else idx

    def velocity_cached(self, model: nn.Module, cache: KVCache, x: torch.Tensor, sigma: float, cond: torch.Tensor,
                        start: int, context: torch.Tensor, *, write: bool = False) -> torch.Tensor:
        """Velocity of block ``x`` [B, C, f, H, W] (frames start..start+f) against cached ``context`` [B, Cn]
        frames; ``write`` stores the block's keys/values (the clean pass)."""
        st = self.state_of(model)
        f = x.shape[2]
        positions = torch.arange(start, start + f, device=x.device)
        outs = []
        for real, rows in self._chunks(len(x)):
            tokens = self.prompt_encoder(cond[rows])
            st.mode, st.positions, st.cache, st.rows = "cached", positions, cache, rows.to(x.device)
            st.context, st.write, st.real_rows = context[rows], write, len(real)
            t = flow_timestep(torch.full((len(rows),), float(sigma), device=x.device))
            out = model(hidden_states=x[rows], timestep=t, encoder_hidden_states=tokens, return_dict=False)[0]
            outs.append(out[: len(real)])
        st.write = False
        return torch.cat(outs).float()

    def velocity_full(self, model: nn.Module, x: torch.Tensor, sigmas: torch.Tensor, cond: torch.Tensor,
                      positions: torch.Tensor, allowed: torch.Tensor, *, cache: KVCache | None = None) -> torch.Tensor:
        """Velocity of a whole frame sequence ``x`` [B, C, F, H, W] with per-frame noise ``sigmas`` [B, F],
        rotary ``positions`` [F] and frame mask ``allowed`` [F, F]; with ``cache``, every frame is written."""
        st = self.state_of(model)
        T = self.model_config.tokens_per_frame
        outs = []
        for real, rows in self._chunks(len(x)):
            tokens = self.prompt_encoder(cond[rows])
            st.mode, st.positions, st.allowed, st.context = "full", positions.to(x.device), allowed, None
            st.cache, st.rows, st.write, st.real_rows = cache, rows.to(x.device), cache is not None, len(real)
            t = flow_timestep(sigmas[rows]).repeat_interleave(T, 1)  # per token: [chunk, F*T]
            out = model(hidden_states=x[rows], timestep=t, encoder_hidden_states=tokens, return_dict=False)[0]
            outs.append(out[: len(real)])
        st.write = False
        return torch.cat(outs).float()

    # ------------------------------------------------------------------ layout
    def block_starts(self, frames: int) -> list[int]:
        fpb = self.model_config.frames_per_block
        if frames % fpb:
            raise ValueError(f"a video of {frames} frames does not split into blocks of {fpb} frames")
        return list(range(0, frames, fpb))

    def _anchor_context(self, start: int, rows: int) -> torch.Tensor:
        return torch.tensor(window_context(start, self.model_config), dtype=torch.long,
                            device=self.device).expand(rows, -1)

    @staticmethod
    def _switches(conds: torch.Tensor, start: int) -> bool:
        """Does the prompt change at frame ``start`` (for any row)?"""
        return start > 0 and bool((conds[:, start] != conds[:, start - 1]).any())

    def recache(self, model: nn.Module, cache: KVCache, clean: torch.Tensor, cond: torch.Tensor, end: int) -> None:
        """Re-compute the keys/values of frames [0, end) under prompt ``cond`` (at a prompt switch)."""
        from genrl.models.ar_video import block_causal_mask

        sig = torch.zeros(len(clean), end, device=clean.device)
        self.velocity_full(model, clean[:, :, :end], sig, cond, torch.arange(end), block_causal_mask(end, self.model_config),
                           cache=cache)

    def _before_block(self, model, cache: KVCache, clean: torch.Tensor, conds: torch.Tensor, start: int) -> None:
        if self._switches(conds, start):
            self.recache(model, cache, clean, conds[:, start], start)

    # ------------------------------------------------------------------ sampler
    def denoise_block(self, velocity, noise: torch.Tensor, step_noise: list[torch.Tensor], *,
                      stochastic: list[bool] | None = None, rule: str = "cps",
                      level: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Few-step denoising of one block: (x0 [B, C, f, H, W], states [B, K+1, ...], log-probs [B, K]).

        ``velocity(x, sigma)`` is the network on this block (cached or recomputed context). Step k uses the
        explorer's Gaussian (``rule``/``level``) where ``stochastic[k]``, else the native re-noise; the last
        step (to sigma 0) is deterministic."""
        sig = self.step_sigmas
        K = self.config.num_steps
        x, states = noise, [noise]
        lps = torch.zeros(len(noise), K, device=noise.device)
        for k in range(K):
            v = velocity(x, sig[k])
            explore = bool(stochastic and stochastic[k]) and k < K - 1
            r, lvl = (rule, level) if explore else ("cps", self.config.renoise if k < K - 1 else 0.0)
            s, s_next = torch.full((len(x),), sig[k], device=x.device), torch.full((len(x),), sig[k + 1], device=x.device)
            x, lp, _, _ = sde_step(x, v, s, s_next, sigma_max=sig[1] if K > 1 else 0.999, rule=r, noise_level=lvl,
                                   noise=step_noise[k])
            if explore and lp is not None:
                lps[:, k] = lp
            states.append(x)
        return x, torch.stack(states, 1), lps

    def velocity_recomputed(self, model, clean: torch.Tensor, x: torch.Tensor, sigma: float, cond: torch.Tensor,
                            start: int) -> torch.Tensor:
        """The block's velocity without a cache: the whole clean history [0, start) is run again with the
        noisy block under the block-causal mask (the baseline the KV cache saves; same numbers)."""
        from genrl.models.ar_video import block_causal_mask

        f = x.shape[2]
        frames = torch.cat([clean[:, :, :start], x], 2)
        sig = torch.cat([torch.zeros(len(x), start, device=x.device), torch.full((len(x), f), float(sigma), device=x.device)], 1)
        v = self.velocity_full(model, frames, sig, cond, torch.arange(start + f), block_causal_mask(start + f, self.model_config))
        return v[:, :, start:]

    def _noise(self, seed: int, purpose: Purpose, step: int, keys: list[int], block: int, k: int | None = None) -> torch.Tensor:
        c = self.model_config
        shape = (c.channels, c.frames_per_block, c.canvas, c.canvas)
        extra = (block,) if k is None else (block, k)
        return keyed_normal(shape, seed, purpose, step, keys, *extra, device=self.device)

    def _block_noise(self, seed, purpose, step, keys, block) -> tuple[torch.Tensor, list[torch.Tensor]]:
        init = self._noise(seed, purpose, step, keys, block)
        return init, [self._noise(seed, Purpose.STEP_NOISE if purpose != Purpose.EVAL else Purpose.EVAL, step, keys, block, k + 1)
                      for k in range(self.config.num_steps)]

    @staticmethod
    def frame_conditions(items, device) -> torch.Tensor:
        """[B, F, 2] (digit, direction) per frame from motion prompts (all of one length)."""
        lengths = {it.frames for it in items}
        if len(lengths) != 1:
            raise ValueError(f"prompts of one batch must have one length, got frame counts {sorted(lengths)}")
        return torch.stack([it.conditions() for it in items]).to(device)

    @torch.no_grad()
    def generate(self, prompts, sample_ids: torch.Tensor, *, seed: int, purpose: Purpose = Purpose.EVAL,
                 step: int = 0, record: list | None = None, use_cache: bool = True) -> torch.Tensor:
        """Plain AR sampling (no exploration) of motion prompts -> videos [B, F, H, W] in [0, 1].

        ``use_cache=False`` recomputes the whole history for every block and step (same videos, slower)."""
        model = self.engine_model
        model.eval()
        conds = self.frame_conditions(prompts, self.device)
        clean, _, _ = self.sample_blocks(model, conds, sample_ids.tolist(), seed=seed, purpose=purpose, step=step,
                                         record=record, use_cache=use_cache)
        return self.to_video(clean)

    def sample_blocks(self, model, conds, keys, *, seed, purpose, step, record=None, cache: KVCache | None = None,
                clean: torch.Tensor | None = None, blocks=None, contexts: dict[int, torch.Tensor] | None = None,
                stochastic=None, rule: str = "cps", level: float = 1.0, state_blocks=(), use_cache: bool = True):
        """Generate ``blocks`` (default: all) of ``len(keys)`` rows, continuing ``cache``/``clean`` if given.

        ``contexts`` overrides the attended frames of some blocks (KVPO's routing). Returns (clean
        [B, C, F, H, W], cache, {block: (states, log-probs)} for ``state_blocks``, or every block if stochastic)."""
        c = self.model_config
        B, frames = len(keys), conds.shape[1]
        starts = self.block_starts(frames)
        if cache is None:
            cache = KVCache.empty(B, frames, c, device=self.device)
            clean = torch.zeros(B, c.channels, frames, c.canvas, c.canvas, device=self.device)
        st = self.state_of(model)
        previous, st.record = st.record, record if record is not None else st.record
        traj = {}
        if not use_cache and contexts:
            raise ValueError("routed contexts need the KV cache (use_cache=True)")
        for b in (range(len(starts)) if blocks is None else blocks):
            start = starts[b]
            if use_cache:
                self._before_block(model, cache, clean, conds, start)
            context = (contexts or {}).get(b, self._anchor_context(start, B))
            noise, step_noise = self._block_noise(seed, purpose, step, keys, b)
            cond = conds[:, start]
            if use_cache:
                def velocity(x, sigma, cond=cond, start=start, context=context):
                    return self.velocity_cached(model, cache, x, sigma, cond, start, context)
            else:
                def velocity(x, sigma, cond=cond, start=start):
                    return self.velocity_recomputed(model, clean, x, sigma, cond, start)
            x0, states, lps = self.denoise_block(velocity, noise, step_noise, stochastic=stochastic, rule=rule, level=level)
            clean[:, :, start:start + c.frames_per_block] = x0
            if use_cache:
                self.velocity_cached(model, cache, x0, 0.0, cond, start, context, write=True)
                cache.length = start + c.frames_per_block
            if stochastic is not None or b in state_blocks:
                traj[b] = (states, lps)
        st.record = previous
        return clean, cache, traj

    @staticmethod
    def to_video(clean: torch.Tensor) -> torch.Tensor:
        """[B, C, F, H, W] in [-1, 1] -> [B, F, H, W] (one channel) in [0, 1]."""
        return ((clean.float() + 1) / 2).clamp(0, 1)[:, 0]

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def rollout(self, prompts: torch.Tensor, sample_ids: torch.Tensor, *, step: int, seed: int, plan, explorer_config,
                items=None, group_ids: torch.Tensor | None = None) -> Rollout:
        if items is None:
            raise ValueError("the ar_video policy needs a prompt source with items (e.g. prompts: {name: moving_digits})")
        model = self.engine_model
        model.eval()
        conds = self.frame_conditions(items, self.device)
        if getattr(plan, "kind", "sde") == "kvpo":
            from genrl.explorers.kvpo import kvpo_rollout

            tensors, meta = kvpo_rollout(self, model, conds, group_ids if group_ids is not None else sample_ids,
                                         step=step, seed=seed, plan=plan)
        else:
            tensors, meta = self._sde_rollout(model, conds, sample_ids, step=step, seed=seed, plan=plan,
                                              explorer_config=explorer_config)
        tensors.update({"prompts": prompts.to(self.device), "sample_ids": sample_ids.to(self.device), "conds": conds})
        return Rollout(tensors, {**meta, "step": step, "seed": seed})

    def _sde_rollout(self, model, conds, sample_ids, *, step, seed, plan, explorer_config):
        clean, _, traj = self.sample_blocks(model, conds, sample_ids.tolist(), seed=seed, purpose=Purpose.INIT_NOISE,
                                            step=step, stochastic=plan.stochastic, rule=explorer_config.noise_rule,
                                            level=explorer_config.noise_level)
        blocks = sorted(traj)
        states = torch.stack([traj[b][0] for b in blocks], 1)  # [B, nb, K+1, C, f, H, W]
        log_probs = torch.stack([traj[b][1] for b in blocks], 1).flatten(1)  # [B, nb*K]
        K = self.config.num_steps
        train = [b * K + k for b in blocks for k in plan.train_steps]
        scope = torch.full(conds.shape[:2], SCOPE_AFTER, dtype=torch.long, device=conds.device)
        tensors = {"clean": clean, "states": states, "log_probs": log_probs, "scope": scope}
        return tensors, {"kind": "sde", "train_steps": train, "noise_rule": explorer_config.noise_rule,
                         "noise_level": explorer_config.noise_level}

    def reward_inputs(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """Videos [B, F, H, W] in [0, 1] and per-frame contexts [B, F, 3]: (digit, direction, scope flag)."""
        ctx = torch.cat([rollout["conds"], rollout["scope"].unsqueeze(-1)], -1)
        return self.to_video(rollout["clean"]).cpu(), ctx.cpu()

    # ---------------------------------------------------------------- re-scoring
    def _replay_cache(self, model, clean: torch.Tensor, conds: torch.Tensor, upto_block: int) -> KVCache:
        """The cache a rollout had before block ``upto_block``, rebuilt from the stored clean frames with the
        same calls in the same order (so the numbers are identical). No gradient: history is context."""
        c = self.model_config
        cache = KVCache.empty(len(clean), clean.shape[2], c, device=clean.device)
        with torch.no_grad():
            for start in self.block_starts(clean.shape[2])[:upto_block]:
                self._before_block(model, cache, clean, conds, start)
                self.velocity_cached(model, cache, clean[:, :, start:start + c.frames_per_block], 0.0, conds[:, start],
                                     start, self._anchor_context(start, len(clean)), write=True)
                cache.length = start + c.frames_per_block
        return cache

    def score(self, batch: Rollout, *, reference: bool = False) -> dict[str, torch.Tensor]:
        """Flow-GRPO re-scoring: log-probs [B, W] (and means, stds [W]) of the stored transitions at the
        trained (block, step) pairs, through the same ``sde_step`` as the rollout."""
        ctx = self.reference() if reference else contextlib.nullcontext(self.engine_model)
        K, sig = self.config.num_steps, self.step_sigmas
        c = self.model_config
        train = batch.meta["train_steps"]
        by_block: dict[int, list[int]] = {}
        for j in train:
            by_block.setdefault(j // K, []).append(j % K)
        clean, conds, states = batch["clean"], batch["conds"], batch["states"]
        lp, means, stds = {}, {}, {}
        with ctx as model:
            if not reference:
                model.train()
            starts = self.block_starts(clean.shape[2])
            cache = self._replay_cache(model, clean, conds, 0)
            for b, start in enumerate(starts):
                self._before_block(model, cache, clean, conds, start)
                context = self._anchor_context(start, len(clean))
                for k in by_block.get(b, []):
                    x = states[:, b, k]
                    v = self.velocity_cached(model, cache, x, sig[k], conds[:, start], start, context)
                    s = torch.full((len(x),), sig[k], device=x.device)
                    s_next = torch.full((len(x),), sig[k + 1], device=x.device)
                    _, lp[b * K + k], means[b * K + k], std = sde_step(
                        x, v, s, s_next, sigma_max=sig[1], rule=batch.meta["noise_rule"],
                        noise_level=batch.meta["noise_level"], x_next=states[:, b, k + 1])
                    stds[b * K + k] = std.reshape(-1)[0]
                with torch.no_grad():
                    self.velocity_cached(model, cache, clean[:, :, start:start + c.frames_per_block], 0.0, conds[:, start],
                                         start, context, write=True)
        return {"log_probs": torch.stack([lp[j] for j in train], 1), "means": torch.stack([means[j] for j in train], 1),
                "stds": torch.stack([stds[j] for j in train])}

    # ------------------------------------------------------------------- KVPO
    def branch_energy(self, model, cache: KVCache, clean: torch.Tensor, conds: torch.Tensor, states: torch.Tensor,
                      fork: int) -> torch.Tensor:
        """Trajectory Velocity Energy per row, E = sum_{explored blocks j, steps k} mean ||v_theta(z_jk) - u_jk||^2.

        u_jk = (z_jk - x0_j) / sigma_k is the flow-matching velocity that carries the branch's own state to its
        own clean block; v_theta is replayed with the *unrouted* context on ``cache`` (the fork-time cache,
        advanced with the branch's own clean blocks). A low energy means the unperturbed policy already
        produces this branch, so softmax(-E / tau) is a policy over branches. One function serves the rollout
        (old energies, no grad) and the update (with grad); ``cache`` is modified."""
        c, K, sig = self.model_config, self.config.num_steps, self.step_sigmas
        starts = self.block_starts(clean.shape[2])
        energy = torch.zeros(len(clean), device=clean.device)
        for j in range(states.shape[1]):
            start = starts[fork + j]
            with torch.no_grad():
                self._before_block(model, cache, clean, conds, start)
            context = self._anchor_context(start, len(clean))
            x0 = clean[:, :, start:start + c.frames_per_block]
            for k in range(K):
                z = states[:, j, k]
                v = self.velocity_cached(model, cache, z, sig[k], conds[:, start], start, context)
                energy = energy + ((v - (z - x0) / sig[k]) ** 2).flatten(1).mean(1)
            with torch.no_grad():
                self.velocity_cached(model, cache, x0, 0.0, conds[:, start], start, context, write=True)
        return energy

    def energies(self, batch: Rollout, *, reference: bool = False) -> torch.Tensor:
        """TVE of every row of ``batch`` (whole rows: call it on branch rows) under the current or reference policy."""
        ctx = self.reference() if reference else contextlib.nullcontext(self.engine_model)
        fork = int(batch["fork_block"][0])
        with ctx as model:
            if not reference:
                model.train()
            cache = self._replay_cache(model, batch["clean"], batch["conds"], fork)
            return self.branch_energy(model, cache, batch["clean"], batch["conds"], batch["states"], fork)

    # ---------------------------------------------------------------- training
    def teacher_forcing_loss(self, model, clean: torch.Tensor, cond: torch.Tensor, sigmas: torch.Tensor,
                             noise: torch.Tensor, loss_frames: torch.Tensor) -> torch.Tensor:
        """Flow-matching loss of every block at once (pretraining): clean frames as context, noisy copies as
        queries (``teacher_forcing_layout``); one prompt ``cond`` [B, 2] per clip (the history is seen under
        the current prompt, as after a re-cache); ``sigmas`` [B, F] per frame, ``loss_frames`` [B, F] bool."""
        frames = clean.shape[2]
        positions, allowed = teacher_forcing_layout(frames, self.model_config)
        s = sigmas.view(*sigmas.shape[:1], 1, frames, 1, 1)
        noisy = (1 - s) * clean + s * noise
        x = torch.cat([clean, noisy], 2)
        sig = torch.cat([torch.zeros_like(sigmas), sigmas], 1)
        v = self.velocity_full(model, x, sig, cond, positions, allowed)[:, :, frames:]
        err = ((v - (noise - clean)) ** 2).mean(dim=(1, 3, 4))  # [B, F]
        w = loss_frames.float()
        return (err * w).sum() / w.sum().clamp(min=1)
