"""The driving scene: one fixed-shape layout shared by the data, the generator, the evaluator and the planner.

A scene is seen from the ego vehicle at the current time t = 0: the ego sits at the origin heading along
+x. Everything is in metres, radians and m/s, at ``dt`` seconds per step (2 Hz by default)::

    history       [A, H, 4]   x, y, heading, speed of every agent at t = -(H-1)dt .. 0 (row 0 = the ego)
    history_mask  [A, H]      1 where the agent was observed
    future        [A, F, 4]   the same at t = dt .. F dt (the logged future; zeros in generated-only scenes)
    future_mask   [A, F]      1 where the logged future exists
    size          [A, 2]      length, width
    agent_mask    [A]         1 for a real agent (observed at t = 0); padding rows are 0
    lanes         [L, P, 3]   lane centre-line pieces: x, y, heading per point
    lane_mask     [L, P]      1 for a real point
    route         [R, 2]      points along the ego's intended path ahead (its lane, or the road it merges into)

``SceneSpec`` fixes A, H, F, L, P, R and dt. ``pack_context`` flattens everything but the future into
one float vector (the *context* a generated future is conditioned on and judged against), so that
scenes travel through ``datasets`` columns, rollouts and preference pairs as plain arrays.

Agents move by a unicycle model on actions (acceleration, yaw rate)::

    v_k = v_{k-1} + a_k dt,  psi_k = psi_{k-1} + omega_k dt,
    x_k = x_{k-1} + v_k cos(psi_k) dt,  y_k = y_{k-1} + v_k sin(psi_k) dt

(semi-implicit Euler: the new speed and heading move the position), and ``actions_from_states`` is its
exact inverse on speed and heading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from genrl.config.validate import option

STATE_DIM = 4  # x, y, heading, speed
ACTION_DIM = 2  # acceleration, yaw rate
LANE_DIM = 3  # x, y, heading
CONTEXT_KEYS = ("history", "history_mask", "size", "agent_mask", "lanes", "lane_mask", "route")
SCENE_KEYS = (*CONTEXT_KEYS, "future", "future_mask")


@dataclass
class SceneSpec:
    """Shapes of a scene; a data set, a generator and an evaluator must agree on it."""

    num_agents: int = option(default=8, help="A: the ego + up to A-1 nearest agents (padded).")
    history_steps: int = option(default=5, help="H: observed steps, the current one included (2 s at 2 Hz).")
    future_steps: int = option(default=10, help="F: predicted / planned steps (5 s at 2 Hz).")
    dt: float = option(default=0.5, help="Seconds per step.")
    num_lanes: int = option(default=12, help="L: lane centre-line pieces kept (nearest first).")
    lane_points: int = option(default=10, help="P: points per lane piece.")
    route_points: int = option(default=10, help="R: points of the ego route ahead.")
    lane_width: float = option(default=4.0, help="Lane width (m): off-road = farther than half of it from every lane.")

    def validate(self) -> None:
        for name in ("num_agents", "history_steps", "future_steps", "num_lanes", "lane_points", "route_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")
        if self.dt <= 0 or self.lane_width <= 0:
            raise ValueError("dt: dt and lane_width must be > 0")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-scene shape of every field."""
        A, H, F = self.num_agents, self.history_steps, self.future_steps
        L, P, R = self.num_lanes, self.lane_points, self.route_points
        return {"history": (A, H, STATE_DIM), "history_mask": (A, H), "size": (A, 2), "agent_mask": (A,),
                "lanes": (L, P, LANE_DIM), "lane_mask": (L, P), "route": (R, 2),
                "future": (A, F, STATE_DIM), "future_mask": (A, F)}

    @property
    def context_dim(self) -> int:
        return sum(math.prod(s) for k, s in self.shapes().items() if k in CONTEXT_KEYS)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """What a generated scene is: the future states of every agent."""
        return (self.num_agents, self.future_steps, STATE_DIM)

    @property
    def action_shape(self) -> tuple[int, int, int]:
        return (self.num_agents, self.future_steps, ACTION_DIM)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def pack_context(spec: SceneSpec, scene: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, C] float vector of a batch of scenes (every context field, flattened in CONTEXT_KEYS order)."""
    shapes = spec.shapes()
    parts = []
    for k in CONTEXT_KEYS:
        v = torch.as_tensor(scene[k])
        if tuple(v.shape[1:]) != shapes[k]:
            raise ValueError(f"scene field {k!r}: expected shape [B, {', '.join(map(str, shapes[k]))}], "
                             f"got {list(v.shape)}")
        parts.append(v.float().reshape(len(v), -1))
    return torch.cat(parts, dim=1)


def unpack_context(spec: SceneSpec, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_context`; masks come back as bool."""
    if flat.dim() != 2 or flat.shape[1] != spec.context_dim:
        raise ValueError(f"packed scene context: expected shape [B, {spec.context_dim}] for this SceneSpec, "
                         f"got {list(flat.shape)}")
    out, at = {}, 0
    shapes = spec.shapes()
    for k in CONTEXT_KEYS:
        n = math.prod(shapes[k])
        v = flat[:, at:at + n].reshape(len(flat), *shapes[k])
        out[k] = v > 0.5 if k.endswith("mask") else v
        at += n
    return out


def wrap_angle(a: torch.Tensor) -> torch.Tensor:
    """Angle in (-pi, pi]."""
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


def unicycle_rollout(current: torch.Tensor, actions: torch.Tensor, dt: float) -> torch.Tensor:
    """States [..., F, 4] after actions [..., F, 2] (acceleration, yaw rate) from ``current`` [..., 4].

    Differentiable (the generator is trained on the states it implies); speed is not clipped, so
    that the map from actions to states stays smooth and invertible.
    """
    accel, yaw_rate = actions[..., 0], actions[..., 1]
    speed = current[..., 3:4] + torch.cumsum(accel, dim=-1) * dt
    heading = current[..., 2:3] + torch.cumsum(yaw_rate, dim=-1) * dt
    x = current[..., 0:1] + torch.cumsum(speed * torch.cos(heading) * dt, dim=-1)
    y = current[..., 1:2] + torch.cumsum(speed * torch.sin(heading) * dt, dim=-1)
    return torch.stack([x, y, heading, speed], dim=-1)


def actions_from_states(current: torch.Tensor, future: torch.Tensor, dt: float) -> torch.Tensor:
    """Actions [..., F, 2] that reproduce ``future``'s speeds and headings from ``current`` (exact inverse
    of :func:`unicycle_rollout` on those two; positions then follow the unicycle, not the log)."""
    prev = torch.cat([current[..., None, :], future[..., :-1, :]], dim=-2)
    accel = (future[..., 3] - prev[..., 3]) / dt
    yaw_rate = wrap_angle(future[..., 2] - prev[..., 2]) / dt
    return torch.stack([accel, yaw_rate], dim=-1)


def to_ego_frame(xy: torch.Tensor, origin: torch.Tensor, heading: float | torch.Tensor) -> torch.Tensor:
    """Points [..., 2] in world coordinates -> the frame at ``origin`` [2] rotated by ``heading``."""
    heading = torch.as_tensor(heading, dtype=xy.dtype)
    c, s = torch.cos(heading), torch.sin(heading)
    d = xy - origin
    return torch.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], dim=-1)


def empty_scene(spec: SceneSpec, batch: int = 1) -> dict[str, torch.Tensor]:
    """All-zero (all-masked) scenes of the spec's shapes: the padding a reader fills in."""
    return {k: torch.zeros(batch, *s, dtype=torch.bool if k.endswith("mask") else torch.float32)
            for k, s in spec.shapes().items()}
