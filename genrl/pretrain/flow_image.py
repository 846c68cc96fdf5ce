"""Pretrain the class-conditional flow-matching generator on the digits' generator split.

Plain rectified-flow training: x_s = (1 - s) x0 + s n, the transformer regresses v = n - x0, with
the prompt dropped to the null class 10 % of the time so that the model also supports CFG.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from genrl.cache import cached_artifact, resolve_recipe_path
from genrl.config.validate import option
from genrl.data.digits import digit_split
from genrl.models.flow_dit import FlowDiTConfig
from genrl.policies.flow_image import FlowImagePolicy
from genrl.pretrain.optim import PretrainOptimizer
from genrl.progress import progress as progress_bar
from genrl.rng import Purpose, keyed_generator


@dataclass
class FlowPretrainRecipe:
    """``recipes/pretrain/digits_flow.yaml``: how the quick start's base generator is made."""

    kind: Literal["flow_image"] = option(help="Artifact kind; must be flow_image.")
    split: Literal["generator", "reward", "judge"] = option(default="generator", help="Digits split to train on.")
    data_file: str | None = option(
        default=None, help="Your own images instead of the digits: .npz (images [N,H,W], labels [N]) or .jsonl."
    )
    seed: int = option(default=0, help="Seed of initialisation, batches and noise.")
    model: FlowDiTConfig = option(default_factory=FlowDiTConfig, help="Transformer size.")
    steps: int = option(default=3000, help="Optimizer steps.")
    batch_size: int = option(default=128, help="Images per step.")
    lr: float = option(default=1e-3, help="Peak AdamW learning rate (linear warm-up, cosine decay).")
    warmup_steps: int = option(default=100, help="Warm-up steps.")
    weight_decay: float = option(default=0.0, help="AdamW weight decay.")
    label_dropout: float = option(default=0.1, help="Share of prompts replaced by the null class (CFG support).")
    ema_decay: float = option(default=0.999, help="EMA of the weights that is saved as the model; 0 = no EMA.")
    num_steps: int = option(default=10, help="Sampler steps stored with the model (its default).")


def build_flow_base(config: FlowPretrainRecipe, out_dir: Path, *, progress: bool = True) -> None:
    torch.manual_seed(config.seed)
    policy = FlowImagePolicy(FlowImagePolicy.Config(model=config.model, num_steps=config.num_steps))
    model, encoder = policy.transformer, policy.prompt_encoder
    encoder.requires_grad_(True)
    params = list(model.parameters()) + list(encoder.parameters())
    optim = PretrainOptimizer(params, lr=config.lr, steps=config.steps, warmup=config.warmup_steps,
                              weight_decay=config.weight_decay, ema_decay=config.ema_decay)
    if config.data_file:
        from genrl.data.image_files import load_image_dataset

        images, labels = load_image_dataset(config.data_file, size=config.model.sample_size,
                                            num_classes=config.model.num_classes)
    else:
        images, labels = digit_split(config.split)
    x_all = images.unsqueeze(1) * 2 - 1
    n_cls = config.model.num_classes
    model.train()
    bar = progress_bar(range(config.steps), desc="pretrain flow generator", disable=not progress)
    for step in bar:
        g = keyed_generator(config.seed, Purpose.DATA, step)
        idx = torch.randint(len(x_all), (config.batch_size,), generator=g)
        x0, y = x_all[idx], labels[idx].clone()
        y[torch.rand(len(y), generator=g) < config.label_dropout] = n_cls
        noise = torch.randn(x0.shape, generator=g)
        s = torch.rand(len(x0), generator=g)
        xs = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise
        tokens, pooled = encoder(y)
        v = model(hidden_states=xs, encoder_hidden_states=tokens, pooled_projections=pooled,
                  timestep=s * 1000, return_dict=False)[0]
        loss = torch.mean((v - (noise - x0)) ** 2)
        optim.step(loss)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    optim.apply_ema()
    policy.save_base(out_dir)
    from genrl.hashing import tensors_sha256

    data = {"source": config.data_file or f"sklearn-digits:{config.split}", "sha256": tensors_sha256(images, labels)}
    meta = {"format": "genrl-checkpoint/1", "policy": "flow_image", "weights": "full_base", "data": data,
            "model": asdict(config.model), "num_steps": config.num_steps, "trained_steps": config.steps,
            "base_checkpoint": None, "final_loss": float(loss.item())}
    (out_dir / "checkpoint.json").write_text(json.dumps(meta, indent=2))


def flow_base_from_recipe(recipe: str, *, referenced_from: str | None = None, key: str = "") -> Path:
    path = resolve_recipe_path(recipe, referenced_from=referenced_from, key=key)
    return cached_artifact(path, FlowPretrainRecipe, "flow_image", build_flow_base)
