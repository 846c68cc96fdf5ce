"""Pretrain the few-step block-causal video generator on prompted moving digits (no teacher).

The generator is trained directly as a few-step model: every block of a clip gets its own noise level,
drawn from the sampler's few-step schedule, and the Wan transformer regresses the flow velocity
v = noise - x0 of every noisy block at once, with the clean frames as context (the teacher-forcing layout
of :func:`genrl.models.ar_video.teacher_forcing_layout`: the same sink + window context the cached sampler
gives a block). Multi-prompt clips teach prompt switches: the clip is cut at the end of segment s, the
whole history is seen under segment s's prompt (what the sampler's re-cache at a switch produces), and
only segment s's frames are in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from genrl.cache import cached_artifact, resolve_recipe_path
from genrl.config.validate import option
from genrl.data.moving_digits import motion_prompts, render_clips
from genrl.models.ar_video import ARVideoConfig
from genrl.pretrain.optim import PretrainOptimizer
from genrl.progress import progress as progress_bar
from genrl.rng import Purpose, keyed_generator


@dataclass
class ARVideoPretrainRecipe:
    """``recipes/pretrain/moving_digits_video.yaml``: how the KVPO base generator is made."""

    kind: Literal["ar_video"] = option(help="Artifact kind; must be ar_video.")
    split: Literal["generator", "reward", "judge"] = option(default="generator", help="Digits split of the clips.")
    seed: int = option(default=0, help="Seed of initialisation, data, batches and noise.")
    model: ARVideoConfig = option(default_factory=ARVideoConfig, help="Transformer size and block layout.")
    num_steps: int = option(default=4, help="Few-step schedule the model is trained for (and samples with).")
    shift: float = option(default=1.0, help="Timestep shift of the schedule.")
    clips: int = option(default=2000, help="Distinct clips of each kind (single-prompt and multi-prompt).")
    single_frames: int = option(default=16, help="Frames of a single-prompt clip.")
    segments: int = option(default=3, help="Segments of a multi-prompt clip.")
    segment_frames: int = option(default=8, help="Frames per segment of a multi-prompt clip.")
    multi_share: float = option(default=0.5, help="Share of steps that train on a prompt switch.")
    first_block_share: float = option(
        default=0.0, help="Share of steps that train only the first block (the prompt alone must make it: one "
                          "block in eight of a clip would give it little signal), at first_block_batch clips.")
    first_block_batch: int = option(default=64, help="Clips per first-block step (cheap: one block, no context).")
    start: Literal["random", "centred"] = option(
        default="random", help="Start position of the clips: random, or centred on the path (only the handwriting varies).")
    steps: int = option(default=1000, help="Optimizer steps.")
    batch_size: int = option(default=16, help="Clips per step.")
    lr: float = option(default=1e-3, help="Peak AdamW learning rate (linear warm-up, cosine decay).")
    warmup_steps: int = option(default=50, help="Warm-up steps.")
    ema_decay: float = option(default=0.995, help="EMA of the weights that is saved as the model; 0 = no EMA.")

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.clips < 1:
            raise ValueError("steps: steps, batch_size and clips must be >= 1")
        fpb = self.model.frames_per_block
        if self.single_frames % fpb or self.segment_frames % fpb:
            raise ValueError(f"segment_frames: clip and segment lengths must be multiples of frames_per_block ({fpb}) "
                             "so that prompt switches fall on block boundaries")
        if not 0 <= self.multi_share <= 1:
            raise ValueError("multi_share: expected a share in [0, 1]")
        if not 0 <= self.first_block_share < 1 or self.first_block_batch < 1:
            raise ValueError("first_block_share: expected a share in [0, 1) and first_block_batch >= 1")


def training_clips(config: ARVideoPretrainRecipe) -> dict[str, tuple[list, torch.Tensor]]:
    """The two clip pools (prompts, clips in [-1, 1] as [n, 1, F, H, W]); deterministic in the seed."""
    size = config.model.canvas
    pools = {}
    for name, segments, seg_frames in (("single", 1, config.single_frames),
                                       ("multi", config.segments, config.segment_frames)):
        prompts = motion_prompts(config.clips, segments=segments, segment_frames=seg_frames, size=size, seed=config.seed)
        clips = render_clips(prompts, size=size, seed=config.seed, split=config.split, start=config.start)
        pools[name] = (prompts, clips.unsqueeze(1) * 2 - 1)
    return pools


def build_ar_video_base(config: ARVideoPretrainRecipe, out_dir: Path, *, progress: bool = True) -> None:
    from genrl.models.ar_video import few_step_sigmas
    from genrl.policies.ar_video import ARVideoPolicy

    torch.manual_seed(config.seed)
    policy = ARVideoPolicy(ARVideoPolicy.Config(model=config.model, num_steps=config.num_steps, shift=config.shift,
                                                forward_chunk=config.batch_size))
    model, encoder = policy.transformer, policy.prompt_encoder
    encoder.requires_grad_(True)
    params = list(model.parameters()) + list(encoder.parameters())
    optim = PretrainOptimizer(params, lr=config.lr, steps=config.steps, warmup=config.warmup_steps,
                              ema_decay=config.ema_decay)
    pools = training_clips(config)
    levels = torch.tensor(few_step_sigmas(config.num_steps, config.shift)[:-1])
    fpb = config.model.frames_per_block
    model.train()
    bar = progress_bar(range(config.steps), desc="pretrain AR video generator", disable=not progress)
    for step in bar:
        g = keyed_generator(config.seed, Purpose.DATA, step)
        first = bool(torch.rand((), generator=g) < config.first_block_share)
        multi = not first and bool(torch.rand((), generator=g) < config.multi_share) and config.segments > 1
        prompts, clips = pools["multi" if multi else "single"]
        idx = torch.randint(len(clips), (config.first_block_batch if first else config.batch_size,), generator=g)
        seg = int(torch.randint(1, config.segments, (), generator=g)) if multi else 0
        end = fpb if first else (seg + 1) * config.segment_frames if multi else clips.shape[2]
        x0 = clips[idx, :, :end]
        cond = torch.stack([prompts[i].conditions()[end - 1] for i in idx.tolist()])
        loss_frames = torch.zeros(len(idx), end, dtype=torch.bool)
        loss_frames[:, (seg * config.segment_frames if multi else 0):end] = True
        blocks = end // fpb
        sigmas = levels[torch.randint(len(levels), (len(idx), blocks), generator=g)].repeat_interleave(fpb, 1)
        noise = torch.randn(x0.shape, generator=g)
        loss = policy.teacher_forcing_loss(model, x0, cond, sigmas, noise, loss_frames)
        optim.step(loss)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    optim.apply_ema()
    from genrl.hashing import tensors_sha256

    data = {"source": f"sklearn-digits:{config.split} moving (seed {config.seed})",
            "sha256": tensors_sha256(pools["single"][1], pools["multi"][1])}
    policy.save_base(out_dir, extra_meta={"data": data, "trained_steps": config.steps, "base_checkpoint": None,
                                          "final_loss": float(loss.item()), "shift": config.shift})


def ar_video_base_from_recipe(recipe: str, *, referenced_from: str | None = None, key: str = "") -> Path:
    path = resolve_recipe_path(recipe, referenced_from=referenced_from, key=key)
    return cached_artifact(path, ARVideoPretrainRecipe, "ar_video", build_ar_video_base)
