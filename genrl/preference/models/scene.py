"""Gen-Drive's scene evaluator: a Bradley–Terry reward model over generated driving scenes.

    tokens  = agents (history + generated future, in the agent's own frame, plus its pose and its
              displacement from the ego at every future step), lane pieces, the route
    h       = transformer encoder over the tokens (padding masked)
    e       = [h_ego, masked mean of the agent tokens]           the scene embedding
    R(x)    = MLP(e)                                             the reward
    aux     = SmoothL1(MLP_plan(e), ego plan / scale)            "ego_plan": reconstruct the ego's future

Samples are future states [B, A, F, 4] and contexts packed scenes [B, C] (``genrl.drive.scene``);
A and F come from the sample shape, the other sizes of the scene spec from the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genrl.config.validate import option
from genrl.drive.scene import SceneSpec, unpack_context, wrap_angle
from genrl.preference.models.base import RewardModel
from genrl.registry import REWARD_MODELS


def _mlp(inp: int, width: int, out: int | None = None) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, width), nn.SiLU(), nn.Linear(width, out or width))


def _local(states: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """States [..., T, 4] in the frame of ``origin`` [..., 4] -> [..., T, 5] (x, y, cos, sin, speed), scaled."""
    c, s = torch.cos(origin[..., 2:3]), torch.sin(origin[..., 2:3])
    d = states[..., :2] - origin[..., None, :2]
    x, y = c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]
    dpsi = wrap_angle(states[..., 2] - origin[..., 2:3])
    return torch.stack([x, y, torch.cos(dpsi), torch.sin(dpsi), states[..., 3]], -1)


@REWARD_MODELS.register("scene_evaluator")
class SceneEvaluator(RewardModel):
    """Generated scenes ``[B, A, F, 4]`` with packed scene contexts ``[B, C]``."""

    modality = "scene"
    context_kinds = ("array",)

    @dataclass
    class Config:
        width: int = option(default=128, help="Token width of the transformer.")
        layers: int = option(default=3, help="Transformer encoder layers.")
        heads: int = option(default=4, help="Attention heads (must divide width).")
        dropout: float = option(default=0.0, help="Dropout in the encoder (training only).")
        history_steps: int = option(default=5, help="H of the scene spec (A and F come from the samples).")
        num_lanes: int = option(default=12, help="L of the scene spec: lane pieces per scene.")
        lane_points: int = option(default=10, help="P of the scene spec: points per lane piece.")
        route_points: int = option(default=10, help="R of the scene spec: route points.")
        pos_scale: float = option(default=20.0, help="Metres per unit in the inputs and the ego-plan target.")
        speed_scale: float = option(default=10.0, help="m/s per unit in the inputs and the ego-plan target.")

        def validate(self) -> None:
            for name in ("width", "layers", "heads", "history_steps", "num_lanes", "lane_points", "route_points"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name}: must be >= 1")
            if self.width % self.heads:
                raise ValueError("heads: must divide width")
            if not 0 <= self.dropout < 1:
                raise ValueError("dropout: must be in [0, 1)")
            if self.pos_scale <= 0 or self.speed_scale <= 0:
                raise ValueError("pos_scale: pos_scale and speed_scale must be > 0")

    def __init__(self, config: Config, *, sample_shape: tuple[int, ...]) -> None:
        super().__init__(config, sample_shape=sample_shape)
        if len(self.sample_shape) != 3 or self.sample_shape[2] != 4:
            raise ValueError(f"scene_evaluator: samples must be future states [A, F, 4], got {list(sample_shape)}")
        a, f = self.sample_shape[:2]
        self.spec = SceneSpec(num_agents=a, future_steps=f, history_steps=config.history_steps,
                              num_lanes=config.num_lanes, lane_points=config.lane_points,
                              route_points=config.route_points)
        w, h = config.width, config.history_steps
        self.agent_traj = _mlp((h + f) * 6, w)  # own-frame trajectory (5 features + mask per step)
        self.agent_pose = _mlp(5 + 2 + f * 3, w)  # pose at t=0 in the ego frame, size, offset from the ego
        self.lane = _mlp(config.lane_points * 5, w)
        self.route = _mlp(config.route_points * 2, w)
        self.kind = nn.Embedding(4, w)  # ego, agent, lane, route
        layer = nn.TransformerEncoderLayer(w, config.heads, 2 * w, config.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(w)
        self.head = _mlp(2 * w, w, 1)
        self.plan_head = _mlp(2 * w, w, f * 4)

    # ------------------------------------------------------------ encoding
    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        """[..., 5] (x, y, cos, sin, speed) -> scaled."""
        s = x.new_tensor([self.config.pos_scale, self.config.pos_scale, 1.0, 1.0, self.config.speed_scale])
        return x / s

    def embed(self, samples: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """Scene embedding [B, 2 * width]."""
        self.check_samples(samples)
        contexts = torch.as_tensor(contexts, dtype=torch.float32, device=samples.device)
        if contexts.dim() != 2 or contexts.shape[1] != self.spec.context_dim:
            raise ValueError(f"scene_evaluator: contexts must be packed scenes [B, {self.spec.context_dim}] for "
                             f"A={self.spec.num_agents}, F={self.spec.future_steps} and the config's history_steps, "
                             f"num_lanes, lane_points, route_points; got {list(contexts.shape)}")
        ctx = unpack_context(self.spec, contexts)
        x = samples.float()
        b, a, f = x.shape[:3]
        agent_mask = ctx["agent_mask"]
        current = ctx["history"][:, :, -1]  # [B, A, 4]
        traj = torch.cat([ctx["history"], x], 2)  # [B, A, H+F, 4]
        step_mask = torch.cat([ctx["history_mask"], agent_mask[:, :, None].expand(b, a, f)], 2).float()
        own = self._scale(_local(traj, current)) * step_mask[..., None]  # query-centric: each agent's own frame
        own = torch.cat([own, step_mask[..., None]], -1).flatten(2)
        ego_frame = self._scale(_local(current, torch.zeros_like(current[:, 0])))  # [B, A, 5]: pose at t=0
        offset = (x[..., :2] - x[:, :1, :, :2]) / self.config.pos_scale  # displacement from the ego per step
        dist = offset.norm(dim=-1, keepdim=True)
        pose = torch.cat([ego_frame, ctx["size"] / 5.0, torch.cat([offset, dist], -1).flatten(2)], -1)
        agents = self.agent_traj(own) + self.agent_pose(pose)
        kind = torch.ones(b, a, dtype=torch.long, device=x.device)
        kind[:, 0] = 0
        agents = agents + self.kind(kind)

        lanes = ctx["lanes"]
        lane_feat = torch.stack([lanes[..., 0], lanes[..., 1], torch.cos(lanes[..., 2]), torch.sin(lanes[..., 2]),
                                 torch.zeros_like(lanes[..., 0])], -1)
        lane_feat = self._scale(lane_feat)
        lane_feat[..., 4] = ctx["lane_mask"].float()
        lane_feat = lane_feat * ctx["lane_mask"][..., None].float()
        lane_tok = self.lane(lane_feat.flatten(2)) + self.kind.weight[2]
        route_tok = (self.route((ctx["route"] / self.config.pos_scale).flatten(1)) + self.kind.weight[3])[:, None]

        tokens = torch.cat([agents, lane_tok, route_tok], 1)
        pad = torch.cat([~agent_mask, ~ctx["lane_mask"].any(-1), torch.zeros(b, 1, dtype=torch.bool,
                                                                               device=x.device)], 1)
        pad[:, 0] = False  # the ego token is always attended (even in a malformed all-padding scene)
        h = self.norm(self.encoder(tokens, src_key_padding_mask=pad))
        m = agent_mask.float().clone()
        m[:, 0] = 1.0
        pooled = (h[:, :a] * m[..., None]).sum(1) / m.sum(1, keepdim=True)
        return torch.cat([h[:, 0], pooled], -1)

    def forward(self, samples: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(samples, contexts)).squeeze(-1)

    # ------------------------------------------------------------ auxiliary loss
    def plan_target(self, samples: torch.Tensor) -> torch.Tensor:
        """The ego plan [B, F, 4] as the reconstruction target: x, y / pos_scale, heading, speed / speed_scale."""
        ego = samples[:, 0].float()
        return torch.stack([ego[..., 0] / self.config.pos_scale, ego[..., 1] / self.config.pos_scale,
                            wrap_angle(ego[..., 2]), ego[..., 3] / self.config.speed_scale], -1)

    def reconstruct_plan(self, samples: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """Predicted ego plan [B, F, 4] in target units (see :meth:`plan_target`)."""
        return self.plan_head(self.embed(samples, contexts)).view(len(samples), self.spec.future_steps, 4)

    def aux_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Gen-Drive's ego-plan reconstruction: SmoothL1 between the plan decoded from the scene embedding
        and the ego's generated future, on chosen and rejected scenes alike."""
        x = torch.cat([batch["chosen"], batch["rejected"]])
        ctx = torch.cat([batch["contexts"], batch["contexts"]])
        return {"ego_plan": F.smooth_l1_loss(self.reconstruct_plan(x, ctx), self.plan_target(x))}

