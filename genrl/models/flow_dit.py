"""The class-conditional flow-matching transformer: a diffusers ``SD3Transformer2DModel`` plus a
tiny prompt encoder that maps a class id to the (token, pooled) embeddings SD3 expects.

Using the SD3 transformer class means a real SD3 checkpoint's ``transformer/`` folder loads
through exactly the same code (``from_pretrained``); only the prompt encoder differs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel
from safetensors.torch import load_file, save_file
from torch import nn

from genrl.config.validate import option


@dataclass
class FlowDiTConfig:
    """Size of a from-scratch flow transformer (ignored when weights are loaded from a checkpoint)."""

    sample_size: int = option(default=8, help="Image side in pixels (the digits are 8x8).")
    channels: int = option(default=1, help="Image channels.")
    patch_size: int = option(default=2, help="Patch side; tokens = (sample_size / patch_size)^2.")
    num_layers: int = option(default=4, help="Transformer blocks.")
    num_heads: int = option(default=4, help="Attention heads.")
    head_dim: int = option(default=16, help="Channels per head (width = num_heads * head_dim).")
    cond_dim: int = option(default=64, help="Width of the prompt embeddings fed to the transformer.")
    cond_tokens: int = option(default=1, help="Number of prompt tokens per class.")
    num_classes: int = option(default=10, help="Number of prompt classes; one more 'null' class serves CFG.")

    def validate(self) -> None:
        if self.sample_size % self.patch_size:
            raise ValueError("patch_size: must divide sample_size")


class ClassPromptEncoder(nn.Module):
    """Class id -> (encoder_hidden_states [B, L, D], pooled [B, D]); id ``num_classes`` is the null prompt."""

    def __init__(self, num_classes: int, cond_tokens: int, cond_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.tokens = nn.Parameter(torch.randn(num_classes + 1, cond_tokens, cond_dim) * 0.02)
        self.pooled = nn.Parameter(torch.randn(num_classes + 1, cond_dim) * 0.02)

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[labels], self.pooled[labels]


def build_transformer(cfg: FlowDiTConfig) -> SD3Transformer2DModel:
    return SD3Transformer2DModel(
        sample_size=cfg.sample_size, patch_size=cfg.patch_size, in_channels=cfg.channels,
        out_channels=cfg.channels, num_layers=cfg.num_layers, attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.num_heads, joint_attention_dim=cfg.cond_dim,
        caption_projection_dim=cfg.num_heads * cfg.head_dim, pooled_projection_dim=cfg.cond_dim,
        pos_embed_max_size=cfg.sample_size // cfg.patch_size,
    )


def save_prompt_encoder(encoder: ClassPromptEncoder, path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}, str(path))


def load_prompt_encoder(path: Path, cfg: FlowDiTConfig) -> ClassPromptEncoder:
    enc = ClassPromptEncoder(cfg.num_classes, cfg.cond_tokens, cfg.cond_dim)
    enc.load_state_dict(load_file(str(path)))
    return enc


def config_dict(cfg: FlowDiTConfig) -> dict:
    return asdict(cfg)
