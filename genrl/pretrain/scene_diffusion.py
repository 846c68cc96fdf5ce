"""Pretrain Gen-Drive's scene generator (behaviour diffusion over joint agent actions) on logged scenes.

Per batch: the logged actions a = actions_from_states(current, future, dt) (exact on speed and heading),
normalised and clipped, are noised to a random DDPM step k; the denoiser predicts x0_hat and the loss is
SmoothL1 between the unicycle states of x0_hat and the logged future states (masked by future_mask and
agent_mask), plus ``action_loss_weight`` x SmoothL1 in the normalised action space. Encoder and denoiser
train together. The saved weights are the EMA.

Validation (written into checkpoint.json under ``validation`` and printed): the same loss at fixed keyed
steps/noise before and after training, and displacement errors of full DDPM samples against the logged
future — ego and all agents, ADE/FDE of one sample and minADE/minFDE over ``eval_samples`` samples (the
all-agents minimum is over joint scenes: the best sample by its mean over agents).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from genrl.cache import cached_artifact, resolve_recipe_path
from genrl.config.validate import option
from genrl.drive.dataset import SceneDataError, load_scenes, read_spec, scene_data_folder
from genrl.drive.scene import SceneSpec, actions_from_states
from genrl.models.scene_diffusion import (
    DDPMSchedule,
    SceneDiffusionConfig,
    SceneDiffusionModel,
    actions_to_states,
    sample_chain,
    state_regression_loss,
)
from genrl.pretrain.optim import PretrainOptimizer
from genrl.progress import progress as progress_bar
from genrl.rng import Purpose, keyed_generator


@dataclass
class SceneDataOptions:
    path: str | None = option(default=None, help="Scene data set folder (genrl.drive.dataset: DatasetDict + "
                                                 "scene_spec.json), written by `genrl drive collect`; relative paths "
                                                 "are looked up from the working directory, then the project root.")
    collect_recipe: str | None = option(default=None, help="Instead of path: a `kind: drive_collect` recipe; its "
                                                           "data set is collected once and cached under $GENRL_CACHE.")
    split: str = option(default="train", help="Split to train on.")
    validation_split: str = option(default="validation", help="Split of the validation metrics.")
    limit: int | None = option(default=None, help="Use at most this many training scenes (null = all).")
    validation_limit: int | None = option(default=256, help="Validation scenes scored (null = all).")

    def validate(self) -> None:
        if (self.path is None) == (self.collect_recipe is None):
            raise ValueError("path: give exactly one of path and collect_recipe")
        for name in ("limit", "validation_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1 or null")

    def folder(self, *, referenced_from: str | None = None, key: str = "data") -> Path:
        return scene_data_folder(self.path, self.collect_recipe, referenced_from=referenced_from, key=key)


@dataclass
class SceneDiffusionPretrainRecipe:
    """``recipes/pretrain/scene_diffusion.yaml``: how Gen-Drive's base scene generator is made."""

    kind: Literal["scene_diffusion"] = option(help="Artifact kind; must be scene_diffusion.")
    data: SceneDataOptions = option(help="The logged scenes.")
    model: SceneDiffusionConfig = option(default_factory=SceneDiffusionConfig, help="Network and DDPM sizes.")
    seed: int = option(default=0, help="Seed of initialisation, batches, steps and noise.")
    num_threads: int = option(default=1, help="torch intra-op threads (1 is fastest on small CPUs).")
    steps: int = option(default=2000, help="Optimizer steps.")
    batch_size: int = option(default=64, help="Scenes per step.")
    lr: float = option(default=1e-3, help="Peak AdamW learning rate (linear warm-up, cosine decay).")
    warmup_steps: int = option(default=100, help="Warm-up steps.")
    weight_decay: float = option(default=1e-4, help="AdamW weight decay.")
    ema_decay: float = option(default=0.999, help="EMA of the weights that is saved as the model; 0 = no EMA.")
    smooth_l1_beta: float = option(default=1.0, help="SmoothL1 transition point (m, rad, m/s) of the state loss.")
    action_loss_weight: float = option(default=0.1, help="Weight of the extra SmoothL1 in normalised action space.")
    action_clip: float = option(default=12.0, help="Logged actions are clipped to +-action_clip x the action scale "
                                                  "(log noise, lane-change kinks).")
    eval_samples: int = option(default=6, help="S: samples per validation scene for minADE/minFDE.")
    log_every: int = option(default=50, help="Progress-bar loss every N steps.")

    def validate(self) -> None:
        if min(self.steps, self.batch_size, self.eval_samples, self.num_threads, self.log_every) < 1:
            raise ValueError("steps: steps, batch_size, eval_samples, num_threads and log_every must be >= 1")
        if self.model.num_steps < 2:
            raise ValueError("model.num_steps: must be >= 2")
        if self.action_clip <= 0 or self.smooth_l1_beta <= 0:
            raise ValueError("action_clip: action_clip and smooth_l1_beta must be > 0")


def target_actions(scene: dict[str, torch.Tensor], cfg: SceneDiffusionConfig, dt: float, clip: float) -> torch.Tensor:
    """Logged actions, normalised and clipped, [B, A, F, 2]; 0 where the logged future is missing."""
    acts = actions_from_states(scene["history"][:, :, -1], scene["future"], dt) / cfg.action_scale()
    valid = (scene["future_mask"] & scene["agent_mask"][:, :, None])[..., None]
    return torch.where(valid, acts.clamp(-clip, clip), torch.zeros_like(acts))


def diffusion_loss(model: SceneDiffusionModel, schedule: DDPMSchedule, scene: dict[str, torch.Tensor],
                   k: torch.Tensor, noise: torch.Tensor, *, dt: float, clip: float, beta: float,
                   action_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, state loss) of one batch at DDPM steps ``k`` [B] with ``noise`` [B, A, F, 2]."""
    x0 = target_actions(scene, model.cfg, dt, clip)
    enc = model.encoder(scene)
    x0_hat = model.denoiser(schedule.q_sample(x0, k, noise), k, enc)
    mask = scene["future_mask"] & scene["agent_mask"][:, :, None]
    states = actions_to_states(x0_hat, scene["history"][:, :, -1], model.cfg, dt)
    state_loss = state_regression_loss(states, scene["future"], mask, beta)
    w = mask[..., None].float().expand_as(x0)
    action_loss = (F.smooth_l1_loss(x0_hat, x0, reduction="none") * w).sum() / w.sum().clamp(min=1)
    return state_loss + action_weight * action_loss, state_loss


def _batch(scene: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in scene.items()}


@torch.no_grad()
def validation_loss(model, schedule, scene, config: SceneDiffusionPretrainRecipe, dt: float) -> float:
    """The training loss on the validation scenes at fixed keyed steps and noise (comparable across runs)."""
    g = keyed_generator(config.seed, Purpose.EVAL, 0)
    n = len(scene["history"])
    k = torch.randint(1, schedule.K + 1, (n,), generator=g)
    noise = torch.randn((n, *model.spec.action_shape), generator=g)
    total, count = 0.0, 0
    for s in range(0, n, 256):
        idx = torch.arange(s, min(s + 256, n))
        loss, _ = diffusion_loss(model, schedule, _batch(scene, idx), k[idx], noise[idx], dt=dt, clip=config.action_clip,
                                 beta=config.smooth_l1_beta, action_weight=config.action_loss_weight)
        total, count = total + float(loss) * len(idx), count + len(idx)
    return total / max(count, 1)


@torch.no_grad()
def displacement_metrics(model, schedule, scene, *, samples: int, seed: int, dt: float) -> dict[str, float]:
    """ADE/FDE of DDPM samples vs the logged future (xy, valid steps only): ego and all agents, 1 and S samples."""
    n = len(scene["history"])
    ade, fde = [], []  # per sample: [n, A]
    mask = scene["future_mask"] & scene["agent_mask"][:, :, None]  # [n, A, F]
    for s in range(samples):
        g = keyed_generator(seed, Purpose.EVAL, 1, s)
        x_K = torch.randn((n, *model.spec.action_shape), generator=g)
        noise = [torch.randn(x_K.shape, generator=g) for _ in range(schedule.K)]
        chain = []
        for lo in range(0, n, 256):
            idx = torch.arange(lo, min(lo + 256, n))
            enc = model.encoder(_batch(scene, idx))
            chain.append(sample_chain(model.denoiser, schedule, enc, x_K[idx], [z[idx] for z in noise])[0][:, -1])
        states = actions_to_states(torch.cat(chain), scene["history"][:, :, -1], model.cfg, dt)
        err = (states[..., :2] - scene["future"][..., :2]).norm(dim=-1)  # [n, A, F]
        m = mask.float()
        ade.append((err * m).sum(-1) / m.sum(-1).clamp(min=1))
        last = mask.float().cumsum(-1).argmax(-1, keepdim=True)  # last valid future step
        fde.append(err.gather(-1, last)[..., 0])
    ade_t, fde_t = torch.stack(ade), torch.stack(fde)  # [S, n, A]
    valid = mask.any(-1)  # agents with a logged future
    ego = valid[:, 0]
    vf = valid.float()

    def scene_mean(x: torch.Tensor) -> torch.Tensor:  # [S, n, A] -> [S, n], mean over valid agents
        return (x * vf).sum(-1) / vf.sum(-1).clamp(min=1)

    out = {"ego_ade": ade_t[0, ego, 0].mean(), "ego_fde": fde_t[0, ego, 0].mean(),
           f"ego_min_ade@{samples}": ade_t[:, ego, 0].min(0).values.mean(),
           f"ego_min_fde@{samples}": fde_t[:, ego, 0].min(0).values.mean()}
    has = valid.any(-1)
    all_ade, all_fde = scene_mean(ade_t)[:, has], scene_mean(fde_t)[:, has]
    out.update({"all_ade": all_ade[0].mean(), "all_fde": all_fde[0].mean(),
                f"all_min_ade@{samples}": all_ade.min(0).values.mean(),
                f"all_min_fde@{samples}": all_fde.min(0).values.mean()})
    return {k: float(v) for k, v in out.items()}


def build_scene_diffusion_base(config: SceneDiffusionPretrainRecipe, out_dir: Path, *, progress: bool = True) -> dict:
    """Train and write a base folder (checkpoint.json + model.safetensors); returns the validation metrics."""
    from genrl.hashing import path_sha256
    from genrl.policies.scene_diffusion import SceneDiffusionPolicy

    torch.set_num_threads(config.num_threads)
    data_path = config.data.folder()
    spec: SceneSpec = read_spec(data_path)
    train, _ = load_scenes(data_path, config.data.split, limit=config.data.limit)
    val, _ = load_scenes(data_path, config.data.validation_split, limit=config.data.validation_limit)
    if len(train["history"]) == 0 or len(val["history"]) == 0:
        raise SceneDataError(f"{data_path}: empty split ({config.data.split!r} or {config.data.validation_split!r})")
    torch.manual_seed(config.seed)
    policy = SceneDiffusionPolicy(SceneDiffusionPolicy.Config(model=config.model, scene=spec))
    model = policy.model
    model.encoder.requires_grad_(True)
    schedule = DDPMSchedule(config.model.num_steps)
    params = list(model.parameters())
    optim = PretrainOptimizer(params, lr=config.lr, steps=config.steps, warmup=config.warmup_steps,
                              weight_decay=config.weight_decay, ema_decay=config.ema_decay)
    model.eval()
    val_before = validation_loss(model, schedule, val, config, spec.dt)
    model.train()
    n = len(train["history"])
    bar = progress_bar(range(config.steps), desc="pretrain scene generator", disable=not progress)
    loss = torch.tensor(float("nan"))
    for step in bar:
        g = keyed_generator(config.seed, Purpose.DATA, step)
        idx = torch.randint(n, (config.batch_size,), generator=g)
        k = torch.randint(1, schedule.K + 1, (config.batch_size,), generator=g)
        noise = torch.randn((config.batch_size, *spec.action_shape), generator=g)
        loss, state_loss = diffusion_loss(model, schedule, _batch(train, idx), k, noise, dt=spec.dt,
                                          clip=config.action_clip, beta=config.smooth_l1_beta,
                                          action_weight=config.action_loss_weight)
        optim.step(loss)
        if step % config.log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", state=f"{state_loss.item():.4f}", refresh=False)
    optim.apply_ema()
    model.eval()
    metrics = {"val_loss_before": val_before, "val_loss": validation_loss(model, schedule, val, config, spec.dt),
               **displacement_metrics(model, schedule, val, samples=config.eval_samples, seed=config.seed, dt=spec.dt)}
    if progress:
        print("[genrl] scene generator validation: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    data = {"path": str(data_path), "sha256": path_sha256(data_path), "split": config.data.split,
            "scenes": n, "validation_scenes": len(val["history"])}
    policy.save_base(out_dir, extra_meta={"data": data, "trained_steps": config.steps, "base_checkpoint": None,
                                          "final_loss": float(loss.detach()), "validation": metrics})
    return metrics


def scene_diffusion_base_from_recipe(recipe: str, *, referenced_from: str | None = None, key: str = "") -> Path:
    """The base folder a ``kind: scene_diffusion`` recipe makes, built once and cached under $GENRL_CACHE."""
    path = resolve_recipe_path(recipe, referenced_from=referenced_from, key=key)
    return cached_artifact(path, SceneDiffusionPretrainRecipe, "scene_diffusion", build_scene_diffusion_base)

