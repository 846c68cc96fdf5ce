"""Block-causal video generation on diffusers' Wan transformer, with an explicit KV cache.

Self-Forcing-style autoregressive (AR) video: frames are grouped in blocks; a block attends to an
attention *sink* (the first ``sink_frames`` frames) + a rolling local *window* of the ``window_frames``
frames just before it + itself. Each block is denoised in a few steps, then a clean pass (timestep 0)
writes its keys/values into the cache, so the next block never recomputes the history.

The model is a stock ``WanTransformer3DModel`` (so Wan2.1-architecture weights can initialise it); two
things are swapped in, both on public hooks of diffusers 0.42:

* each block's self-attention ``attn1`` gets :class:`BlockCausalProcessor` (via ``set_processor``);
* ``transformer.rope`` becomes :class:`FrameRope`, whose frame positions are given explicitly, so a
  block generated alone gets the rotary phase of its true frame index and cached keys keep theirs.

``WanTransformerBlock`` passes no mask or kwargs to attention, so the processors read a shared
:class:`BlockCausalState`: the mode (``cached``: the current block against gathered cache frames;
``full``: a whole frame sequence with an explicit frame-level mask), the cache, and which cached
frames each row attends to. That per-row *context* is what KVPO's routing edits — routing is a plain
index operation on :class:`KVCache`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from torch import nn


@dataclass
class ARVideoConfig:
    """Sizes of the tiny AR video model (the same classes scale to Wan2.1 sizes by config)."""

    canvas: int = 24  # frame height = width, pixels (an 8x8 digit moves 16 px at most)
    channels: int = 1
    patch: int = 6  # spatial patch; tokens per frame = (canvas / patch)^2 = 16
    layers: int = 3
    heads: int = 2
    head_dim: int = 32
    ffn_dim: int = 256
    text_dim: int = 32  # width of the prompt tokens (UMT5's 4096 in Wan2.1)
    freq_dim: int = 64
    num_digits: int = 10
    num_directions: int = 4
    frames_per_block: int = 2
    sink_frames: int = 2
    window_frames: int = 4

    @property
    def tokens_per_frame(self) -> int:
        return (self.canvas // self.patch) ** 2


def build_transformer(cfg: ARVideoConfig) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, cfg.patch, cfg.patch), num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.channels, out_channels=cfg.channels, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.layers, cross_attn_norm=True, rope_max_seq_len=256,
    )


class VideoPromptEncoder(nn.Module):
    """(digit, direction) -> two prompt tokens; index ``num_*`` is the null (unconditional) token.

    Stands in for Wan's frozen UMT5: the transformer's ``condition_embedder`` projects these tokens
    exactly as it projects T5 states."""

    def __init__(self, cfg: ARVideoConfig) -> None:
        super().__init__()
        self.digit = nn.Embedding(cfg.num_digits + 1, cfg.text_dim)
        self.direction = nn.Embedding(cfg.num_directions + 1, cfg.text_dim)
        nn.init.normal_(self.digit.weight, std=1.0)
        nn.init.normal_(self.direction.weight, std=1.0)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """``cond`` [B, 2] (digit, direction) -> tokens [B, 2, text_dim]."""
        return torch.stack([self.digit(cond[:, 0]), self.direction(cond[:, 1])], 1)


# ----------------------------------------------------------------------------- the cache
@dataclass
class KVCache:
    """Keys/values per layer and frame: ``keys[l]`` is ``[B, F_max, T, H, D]`` (after norm and RoPE).

    ``length`` frames are written (all rows generate in lockstep). Nothing is evicted: the window is a
    choice of frames at read time, and the older frames form the pool KVPO routes from."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(cls, rows: int, frames: int, cfg: ARVideoConfig, *, device, dtype=torch.float32) -> KVCache:
        shape = (rows, frames, cfg.tokens_per_frame, cfg.heads, cfg.head_dim)
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.layers)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.layers)])

    def write(self, layer: int, rows: torch.Tensor, frames: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store ``k``/``v`` ``[len(rows), len(frames)*T, H, D]`` at those rows and frames."""
        T = self.keys[layer].shape[2]
        k = k.unflatten(1, (len(frames), T)).to(self.keys[layer].dtype)
        v = v.unflatten(1, (len(frames), T)).to(self.values[layer].dtype)
        self.keys[layer][rows[:, None], frames[None, :]] = k
        self.values[layer][rows[:, None], frames[None, :]] = v

    def gather(self, layer: int, rows: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of ``frames`` [len(rows), C] (one context per row) -> [len(rows), C*T, H, D] each."""
        idx = rows[:, None]
        return self.keys[layer][idx, frames].flatten(1, 2), self.values[layer][idx, frames].flatten(1, 2)

    def select(self, rows: torch.Tensor) -> KVCache:
        """A copy holding only ``rows`` (in that order; repeats allowed: a fork copies its prefix)."""
        return KVCache([k[rows].clone() for k in self.keys], [v[rows].clone() for v in self.values], self.length)


def window_context(start: int, cfg: ARVideoConfig) -> list[int]:
    """Cached frames a block starting at frame ``start`` attends to: sink + the last ``window_frames``."""
    sink = range(min(cfg.sink_frames, start))
    recent = range(max(0, start - cfg.window_frames), start)
    return sorted(set(sink) | set(recent))


def block_causal_mask(frames: int, cfg: ARVideoConfig) -> torch.Tensor:
    """Frame-level ``allowed[q, k]`` of a whole clean sequence: what the cached generation computes."""
    allowed = torch.zeros(frames, frames, dtype=torch.bool)
    fpb = cfg.frames_per_block
    for start in range(0, frames, fpb):
        end = min(start + fpb, frames)
        allowed[start:end, window_context(start, cfg)] = True
        allowed[start:end, start:end] = True
    return allowed


def teacher_forcing_layout(frames: int, cfg: ARVideoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [2F], allowed [2F, 2F]) for [clean frames; noisy frames]: noisy block b sees the clean
    context a cached generation would give it and itself; clean frames are block-causal among themselves.
    One forward trains every block (the Self-Forcing / CausVid teacher-forcing layout)."""
    clean = block_causal_mask(frames, cfg)
    allowed = torch.zeros(2 * frames, 2 * frames, dtype=torch.bool)
    allowed[:frames, :frames] = clean
    fpb = cfg.frames_per_block
    for start in range(0, frames, fpb):
        end = min(start + fpb, frames)
        allowed[frames + start:frames + end, window_context(start, cfg)] = True
        allowed[frames + start:frames + end, frames + start:frames + end] = True
    positions = torch.cat([torch.arange(frames), torch.arange(frames)])
    return positions, allowed


# ----------------------------------------------------------------------------- processors
@dataclass
class BlockCausalState:
    """What the attention processors of one model read for the current forward."""

    mode: str = "full"  # "full" | "cached"
    positions: torch.Tensor | None = None  # [F_in] rotary frame index of each input frame
    allowed: torch.Tensor | None = None  # full mode: [F_in, F_in] frame-level mask
    cache: KVCache | None = None
    rows: torch.Tensor | None = None  # cache rows of this forward's batch rows
    context: torch.Tensor | None = None  # cached mode: [B, C] frames each row attends to
    write: bool = False  # store this forward's keys/values at ``positions``
    real_rows: int | None = None  # rows beyond this are padding: never written
    tokens_per_frame: int = 1
    record: list = field(default_factory=list)  # optional: (layer, context) pairs, for inspection in tests


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding on [B, L, H, D] with freqs [1, L, 1, D]."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)
    return out.type_as(x)


class BlockCausalProcessor:
    """Self-attention of one Wan block under the shared :class:`BlockCausalState`."""

    def __init__(self, layer: int, state: BlockCausalState) -> None:
        self.layer, self.state = layer, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        st = self.state
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        q, k = _rope(q, *rotary_emb), _rope(k, *rotary_emb)
        if st.write:
            n = st.real_rows if st.real_rows is not None else len(k)
            st.cache.write(self.layer, st.rows[:n], st.positions, k[:n].detach(), v[:n].detach())
        mask = None
        if st.mode == "cached":
            if st.context is not None and st.context.shape[1]:
                ck, cv = st.cache.gather(self.layer, st.rows, st.context)
                k, v = torch.cat([ck.to(k.dtype), k], 1), torch.cat([cv.to(v.dtype), v], 1)
            if st.record is not None and self.layer == 0:
                st.record.append(st.context.clone() if st.context is not None else None)
        else:
            T = st.tokens_per_frame
            mask = st.allowed.repeat_interleave(T, 0).repeat_interleave(T, 1).to(q.device)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


class FrameRope(WanRotaryPosEmbed):
    """Wan's 3-D RoPE with explicit frame positions (``state.positions``) instead of 0..F-1."""

    def __init__(self, original: WanRotaryPosEmbed, state: BlockCausalState) -> None:
        nn.Module.__init__(self)
        self.attention_head_dim, self.patch_size = original.attention_head_dim, original.patch_size
        self.max_seq_len = original.max_seq_len
        self.t_dim, self.h_dim, self.w_dim = original.t_dim, original.h_dim, original.w_dim
        self.register_buffer("freqs_cos", original.freqs_cos, persistent=False)
        self.register_buffer("freqs_sin", original.freqs_sin, persistent=False)
        self.state = state

    def forward(self, hidden_states: torch.Tensor):
        _, _, frames, height, width = hidden_states.shape
        _, p_h, p_w = self.patch_size
        h, w = height // p_h, width // p_w
        pos = self.state.positions
        if pos is None or len(pos) != frames:
            raise ValueError(f"FrameRope: expected {frames} frame positions in the state, got {None if pos is None else len(pos)}")
        if int(pos.max()) >= self.max_seq_len:
            raise ValueError(f"frame index {int(pos.max())} exceeds rope_max_seq_len {self.max_seq_len}")
        sizes = [self.t_dim, self.h_dim, self.w_dim]
        outs = []
        for table in (self.freqs_cos, self.freqs_sin):
            ft, fh, fw = table.split(sizes, dim=1)
            ft = ft[pos.to(ft.device)].view(frames, 1, 1, -1).expand(frames, h, w, -1)
            fh = fh[:h].view(1, h, 1, -1).expand(frames, h, w, -1)
            fw = fw[:w].view(1, 1, w, -1).expand(frames, h, w, -1)
            outs.append(torch.cat([ft, fh, fw], -1).reshape(1, frames * h * w, 1, -1))
        return outs[0], outs[1]


def install_block_causal(transformer: WanTransformer3DModel, cfg: ARVideoConfig) -> BlockCausalState:
    """Swap in the block-causal processors and the frame RoPE; returns the state they share."""
    state = BlockCausalState(tokens_per_frame=cfg.tokens_per_frame, record=None)
    for i, block in enumerate(transformer.blocks):
        block.attn1.set_processor(BlockCausalProcessor(i, state))
    transformer.rope = FrameRope(transformer.rope, state)
    return state


def flow_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """Wan's timestep for noise level sigma (flow matching: t = 1000 sigma)."""
    return sigma * 1000.0


def few_step_sigmas(steps: int, shift: float = 1.0) -> list[float]:
    """The few-step schedule 1 -> 0 (``steps`` denoising steps, then 0), with the SD3/Wan timestep shift."""
    raw = [1 - i / steps for i in range(steps)]
    return [shift * s / (1 + (shift - 1) * s) for s in raw] + [0.0]

