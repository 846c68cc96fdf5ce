"""Gen-Drive's behaviour-diffusion scene generator: a scene encoder, a joint-action denoiser and the DDPM chain.

A generated scene is the joint future *actions* of all A agents, x0 = [A, F, 2] (acceleration, yaw rate),
divided by a per-channel scale so that both channels are O(1); states follow by
:func:`genrl.drive.scene.unicycle_rollout` from each agent's current state, so every generated future is
kinematically feasible by construction.

* :class:`SceneEncoder` (query-centric transformer): one token per agent (its history in its *own* frame,
  plus its pose in the ego frame), one per lane piece (PointNet: per-point MLP, max-pool over the real
  points), one for the route (pooled route points); a few self-attention layers over all tokens, with
  padded agents/lanes masked out as keys so they never reach a real token.
* :class:`Denoiser`: one token per agent future (noisy action sequence [F*2] + diffusion-step embedding +
  that agent's scene token), blocks of self-attention over agents (masked), cross-attention to the scene
  tokens and, for the ego row only, cross-attention to the route points. It predicts x0.
* :class:`DDPMSchedule` (cosine, K steps) and :func:`ddpm_step`: THE step function of rollout, re-scoring
  and evaluation (Flow-GRPO's design): x_{k-1} ~ q(x_{k-1} | x_k, x0_hat), a Gaussian policy per step.
  With abar_0 = 1 the last step (k = 1) has std 0: it lands on x0_hat deterministically and has no density.

Attention is written out (no fused / nested-tensor fast paths), so a row's numbers are the same in train
and eval mode, with and without grad: the first importance ratio of RL is exactly 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrl.config.validate import option
from genrl.drive.scene import SceneSpec, unicycle_rollout, wrap_angle

POS_SCALE, LOCAL_SCALE, SPEED_SCALE, SIZE_SCALE = 50.0, 10.0, 20.0, 5.0  # input normalisation (m, m, m/s, m)


@dataclass
class SceneDiffusionConfig:
    """Sizes of the generator and of its diffusion process."""

    d_model: int = option(default=64, help="Token width of encoder and denoiser.")
    heads: int = option(default=4, help="Attention heads (must divide d_model).")
    encoder_layers: int = option(default=2, help="Transformer layers of the scene encoder.")
    denoiser_layers: int = option(default=2, help="Denoiser blocks (agent self-attn + scene cross-attn + ego-route).")
    ffn_mult: int = option(default=2, help="Feed-forward width = ffn_mult x d_model.")
    num_steps: int = option(default=10, help="K: DDPM steps (Gen-Drive: 10), cosine schedule.")
    accel_scale: float = option(default=0.5, help="m/s^2 that map to 1 in the normalised action space: about the "
                                                  "data's std (highway-env traffic: 0.36), so that the DDPM noise "
                                                  "and the behaviour's spread have the same scale.")
    yaw_rate_scale: float = option(default=0.05, help="rad/s that map to 1 in the normalised action space (about the "
                                                      "data's std; highway-env traffic: 0.033).")

    def validate(self) -> None:
        if min(self.d_model, self.heads, self.encoder_layers, self.denoiser_layers, self.ffn_mult, self.num_steps) < 1:
            raise ValueError("d_model: d_model, heads, encoder_layers, denoiser_layers, ffn_mult and num_steps must be >= 1")
        if self.d_model % self.heads:
            raise ValueError(f"heads: must divide d_model ({self.d_model}), got {self.heads}")
        if self.accel_scale <= 0 or self.yaw_rate_scale <= 0:
            raise ValueError("accel_scale: accel_scale and yaw_rate_scale must be > 0")

    def action_scale(self, device=None) -> torch.Tensor:
        return torch.tensor([self.accel_scale, self.yaw_rate_scale], device=device)


# ----------------------------------------------------------------------------- building blocks
def mlp(d_in: int, d: int, d_out: int | None = None) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d), nn.GELU(), nn.Linear(d, d_out or d))


class Attention(nn.Module):
    """Multi-head attention with a key-validity mask; masked keys get exactly zero weight."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        B, Tq, d = x.shape
        h, dh = self.heads, d // self.heads
        q = self.q(x).view(B, Tq, h, dh).transpose(1, 2)
        k = self.k(ctx).view(B, -1, h, dh).transpose(1, 2)
        v = self.v(ctx).view(B, -1, h, dh).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
        # finfo.min rather than -inf: a row with no valid key gets uniform weights instead of NaN
        att = att.masked_fill(~key_valid[:, None, None, :], torch.finfo(att.dtype).min).softmax(-1)
        return self.o((att @ v).transpose(1, 2).reshape(B, Tq, d))


class FeedForward(nn.Module):
    def __init__(self, d: int, mult: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, mult * d), nn.GELU(), nn.Linear(mult * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, mult: int) -> None:
        super().__init__()
        self.norm, self.attn, self.ff = nn.LayerNorm(d), Attention(d, heads), FeedForward(d, mult)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return self.ff(x + self.attn(y, y, valid))


def masked_max(x: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """Max over ``dim`` of the valid entries (PointNet pooling); 0 where none is valid."""
    pooled = x.masked_fill(~valid.unsqueeze(-1), torch.finfo(x.dtype).min).amax(dim)
    return torch.where(valid.any(dim).unsqueeze(-1), pooled, torch.zeros_like(pooled))


def pose_features(state: torch.Tensor) -> torch.Tensor:
    """[..., 4] (x, y, heading, speed) in the ego frame -> [..., 5] normalised pose features."""
    return torch.stack([state[..., 0] / POS_SCALE, state[..., 1] / POS_SCALE, torch.cos(state[..., 2]),
                        torch.sin(state[..., 2]), state[..., 3] / SPEED_SCALE], -1)


# ----------------------------------------------------------------------------- the scene encoder
class SceneEncoder(nn.Module):
    """Scene context (unpacked, :func:`genrl.drive.scene.unpack_context`) -> scene tokens.

    Returns a dict: ``tokens`` [B, A+L+1, d] (agents, lanes, route), ``valid`` [B, A+L+1] bool,
    ``route`` [B, R, d] (route-point tokens for the ego's route attention)."""

    def __init__(self, cfg: SceneDiffusionConfig, spec: SceneSpec) -> None:
        super().__init__()
        d = cfg.d_model
        self.agent_history = mlp(spec.history_steps * 6 + 2, d)
        self.agent_pose = mlp(5, d)
        self.lane_point = mlp(4, d)
        self.lane_out = mlp(d + 4, d)  # pooled points + the piece's mean pose
        self.route_point = mlp(2, d)
        self.route_index = nn.Parameter(torch.zeros(spec.route_points, d))
        self.kind = nn.Parameter(torch.randn(3, d) * 0.02)  # agent / lane / route token types
        self.layers = nn.ModuleList(EncoderLayer(d, cfg.heads, cfg.ffn_mult) for _ in range(cfg.encoder_layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, ctx: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hist, hmask, amask = ctx["history"], ctx["history_mask"], ctx["agent_mask"]
        cur = hist[:, :, -1]  # [B, A, 4]
        # Query-centric agent features: the history in the agent's own current frame (x along its heading).
        d_xy = hist[..., :2] - cur[:, :, None, :2]
        c, s = torch.cos(cur[..., 2])[..., None], torch.sin(cur[..., 2])[..., None]
        lx, ly = c * d_xy[..., 0] + s * d_xy[..., 1], -s * d_xy[..., 0] + c * d_xy[..., 1]
        dpsi = wrap_angle(hist[..., 2] - cur[..., 2:3])
        m = hmask.float()
        steps = torch.stack([lx / LOCAL_SCALE, ly / LOCAL_SCALE, torch.cos(dpsi), torch.sin(dpsi),
                             hist[..., 3] / SPEED_SCALE, torch.ones_like(lx)], -1) * m[..., None]
        agent_in = torch.cat([steps.flatten(2), ctx["size"] / SIZE_SCALE], -1) * amask[..., None].float()
        agents = self.agent_history(agent_in) + self.agent_pose(pose_features(cur) * amask[..., None].float())

        lanes, lmask = ctx["lanes"], ctx["lane_mask"]
        pts = torch.stack([lanes[..., 0] / POS_SCALE, lanes[..., 1] / POS_SCALE, torch.cos(lanes[..., 2]),
                           torch.sin(lanes[..., 2])], -1) * lmask[..., None].float()
        pooled = masked_max(self.lane_point(pts), lmask, 2)  # [B, L, d]
        mean_pose = pts.sum(2) / lmask.float().sum(2, keepdim=True).clamp(min=1)
        lane_tokens = self.lane_out(torch.cat([pooled, mean_pose], -1))
        lane_valid = lmask.any(-1)

        route = self.route_point(ctx["route"] / POS_SCALE) + self.route_index  # [B, R, d]
        route_token = route.amax(1, keepdim=True)

        tokens = torch.cat([agents + self.kind[0], lane_tokens + self.kind[1], route_token + self.kind[2]], 1)
        valid = torch.cat([amask, lane_valid, torch.ones_like(amask[:, :1])], 1)
        for layer in self.layers:
            tokens = layer(tokens, valid)
        return {"tokens": self.norm(tokens), "valid": valid, "route": route}


# ----------------------------------------------------------------------------- the denoiser
def step_embedding(k: torch.Tensor, d: int) -> torch.Tensor:
    """Sinusoidal embedding of the diffusion step k [B] -> [B, d]."""
    half = d // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=k.device, dtype=torch.float32) / half)
    ang = k.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(ang), torch.cos(ang), torch.zeros(len(k), d - 2 * half, device=k.device)], -1)


class DenoiserBlock(nn.Module):
    def __init__(self, d: int, heads: int, mult: int) -> None:
        super().__init__()
        self.n1, self.self_attn = nn.LayerNorm(d), Attention(d, heads)
        self.n2, self.scene_attn = nn.LayerNorm(d), Attention(d, heads)
        self.n3, self.route_attn = nn.LayerNorm(d), Attention(d, heads)
        self.ff = FeedForward(d, mult)

    def forward(self, h: torch.Tensor, agent_valid: torch.Tensor, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        y = self.n1(h)
        h = h + self.self_attn(y, y, agent_valid)
        h = h + self.scene_attn(self.n2(h), enc["tokens"], enc["valid"])
        route = enc["route"]
        ego = self.route_attn(self.n3(h[:, :1]), route, torch.ones(route.shape[:2], dtype=torch.bool, device=h.device))
        h = torch.cat([h[:, :1] + ego, h[:, 1:]], 1)  # ego-to-route: the ego row only
        return self.ff(h)


class Denoiser(nn.Module):
    """(noisy normalised actions x_k [B, A, F, 2], step k [B], encoding) -> x0_hat [B, A, F, 2]."""

    def __init__(self, cfg: SceneDiffusionConfig, spec: SceneSpec) -> None:
        super().__init__()
        d, n = cfg.d_model, spec.future_steps * 2
        self.d = d
        self.inp = mlp(n, d)
        self.step = mlp(d, d)
        self.agent = nn.Linear(d, d)
        self.blocks = nn.ModuleList(DenoiserBlock(d, cfg.heads, cfg.ffn_mult) for _ in range(cfg.denoiser_layers))
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, n))
        self.num_agents = spec.num_agents

    def forward(self, x_k: torch.Tensor, k: torch.Tensor, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        B, A, Fs, _ = x_k.shape
        agent_tokens, agent_valid = enc["tokens"][:, :A], enc["valid"][:, :A]
        h = self.inp(x_k.reshape(B, A, -1)) + self.step(step_embedding(k, self.d))[:, None] + self.agent(agent_tokens)
        for block in self.blocks:
            h = block(h, agent_valid, enc)
        return self.out(h).view(B, A, Fs, 2)


class SceneDiffusionModel(nn.Module):
    """Encoder + denoiser, as pretrained; RL freezes the encoder and trains the denoiser."""

    def __init__(self, cfg: SceneDiffusionConfig, spec: SceneSpec) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.encoder = SceneEncoder(cfg, spec)
        self.denoiser = Denoiser(cfg, spec)


# ----------------------------------------------------------------------------- DDPM
class DDPMSchedule:
    """Cosine DDPM (Nichol & Dhariwal) with K steps; index k = 0..K, abar_0 = 1 (clean)."""

    def __init__(self, num_steps: int, s: float = 0.008) -> None:
        K = num_steps
        t = torch.arange(K + 1, dtype=torch.float64) / K
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        abar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
        self.K = K
        self.abar = abar.tolist()
        self.betas = [0.0, *betas.tolist()]
        # Posterior q(x_{k-1} | x_k, x0) = N(c0 x0 + ck x_k, var) for k = 1..K (index 0 unused)
        self.c0, self.ck, self.var = [0.0], [0.0], [0.0]
        for k in range(1, K + 1):
            b, a_prev, a = self.betas[k], abar[k - 1].item(), abar[k].item()
            self.c0.append(math.sqrt(a_prev) * b / (1 - a))
            self.ck.append(math.sqrt(1 - b) * (1 - a_prev) / (1 - a))
            self.var.append(b * (1 - a_prev) / (1 - a))

    def q_sample(self, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps, per-row step ``k`` [B]."""
        abar = torch.tensor(self.abar, dtype=x0.dtype, device=x0.device)[k].view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def std(self, k: int) -> float:
        return math.sqrt(self.var[k])


def ddpm_step(model: nn.Module, x_k: torch.Tensor, k: int, enc: dict[str, torch.Tensor],
              noise: torch.Tensor | None = None, *, schedule: DDPMSchedule
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One denoising step from x_k (diffusion step k in 1..K) with the denoiser ``model``.

    Returns ``(x_prev, mean, std, x0_hat)``: the posterior q(x_{k-1} | x_k, x0_hat) has mean
    c0 x0_hat + ck x_k and std sqrt(var_k); x_prev = mean + std * noise (``noise`` None: x_prev = mean, the
    re-scoring call, which reads x_prev from the stored chain instead). Used by rollout, score and evaluation.
    """
    x0_hat = model(x_k, torch.full((len(x_k),), k, device=x_k.device, dtype=torch.long), enc).float()
    mean = schedule.c0[k] * x0_hat + schedule.ck[k] * x_k.float()
    std = torch.tensor(schedule.std(k), device=x_k.device)
    x_prev = mean if noise is None or schedule.var[k] == 0 else mean + std * noise.float()
    return x_prev, mean, std, x0_hat


def step_log_prob(x_prev: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x_prev; mean, std^2 I) summed over the last two dims (F, 2): [B, A], one per agent."""
    lp = -((x_prev.float() - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.sum((-1, -2))


def sample_chain(model: nn.Module, schedule: DDPMSchedule, enc: dict[str, torch.Tensor], x_K: torch.Tensor,
                 step_noise: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole chain x_K..x_0 [B, K+1, A, F, 2] and the ego's per-step log-probs [B, K] (0 on the
    deterministic last step, which has no density). ``step_noise[j]`` drives the step from x_{K-j}."""
    chain, lps, x = [x_K.float()], [], x_K.float()
    for j in range(schedule.K):
        k = schedule.K - j
        x, mean, std, _ = ddpm_step(model, x, k, enc, step_noise[j], schedule=schedule)
        lps.append(step_log_prob(x, mean, std)[:, 0] if schedule.var[k] > 0 else torch.zeros(len(x), device=x.device))
        chain.append(x)
    return torch.stack(chain, 1), torch.stack(lps, 1)


# ----------------------------------------------------------------------------- actions <-> states
def actions_to_states(actions_norm: torch.Tensor, current: torch.Tensor, cfg: SceneDiffusionConfig,
                      dt: float) -> torch.Tensor:
    """Normalised actions [B, ..., A, F, 2] -> states [B, ..., A, F, 4] from current states [B, A, 4]."""
    extra = actions_norm.dim() - 4
    cur = current.view(current.shape[0], *([1] * extra), *current.shape[1:]).expand(*actions_norm.shape[:-2], 4)
    return unicycle_rollout(cur, actions_norm * cfg.action_scale(actions_norm.device), dt)


def state_regression_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                          beta: float = 1.0) -> torch.Tensor:
    """SmoothL1 between predicted and logged states [..., A, F, 4] (heading error wrapped), mean over the
    valid (``mask`` [..., A, F]) state entries; 0 if nothing is valid."""
    diff = pred - target
    diff = torch.cat([diff[..., :2], wrap_angle(diff[..., 2:3]), diff[..., 3:]], -1)
    err = F.smooth_l1_loss(diff, torch.zeros_like(diff), reduction="none", beta=beta).sum(-1)
    w = mask.float().expand_as(err)
    return (err * w).sum() / (w.sum() * 4).clamp(min=1)
