"""Batched scene checks in the ego frame: collisions, off-road, progress, comfort, time to collision.

All functions take generated futures ``states [B, A, F, 4]`` (x, y, heading, speed; row 0 = the ego)
and context fields of the same batch (see ``genrl.drive.scene``), and are vectorised over scenes,
agents and steps: the labeller checks thousands of pairs and the planner S candidates per decision.
They are the measurable half of Gen-Drive's preference cascade and of the PDM-style rule scorer.
"""

from __future__ import annotations

import torch

from genrl.drive.scene import SceneSpec, wrap_angle

OFF_ROAD_MARGIN = 0.5  # m beyond half a lane width before a position counts as off the road


# ------------------------------------------------------------------ boxes
def _axes(heading: torch.Tensor) -> torch.Tensor:
    """[..., 2, 2]: the box's unit axes (along the heading, then its left normal)."""
    c, s = torch.cos(heading), torch.sin(heading)
    return torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)


def _overlap(pose_a: torch.Tensor, half_a: torch.Tensor, pose_b: torch.Tensor, half_b: torch.Tensor) -> torch.Tensor:
    """Separating-axis test of oriented rectangles (broadcasting): poses [..., 3] (x, y, heading),
    half extents [..., 2] (half length, half width) -> [...] bool, True where the interiors overlap.

    Two convex boxes are disjoint iff one of the four box axes separates their projections:
    |d . u| >= h_a(u) + h_b(u) with h(u) = hl |e1 . u| + hw |e2 . u|.
    """
    ax_a, ax_b = _axes(pose_a[..., 2]), _axes(pose_b[..., 2])  # [..., 2, 2]
    axes = torch.cat(torch.broadcast_tensors(ax_a, ax_b), dim=-2)  # [..., 4, 2]
    d = (pose_b[..., :2] - pose_a[..., :2]).unsqueeze(-2)  # [..., 1, 2]

    def half(ax: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # projection radius on each of the 4 axes
        proj = (axes.unsqueeze(-2) * ax.unsqueeze(-3)).sum(-1).abs()  # [..., 4, 2]
        return (proj * h.unsqueeze(-2)).sum(-1)

    gap = (d * axes).sum(-1).abs() - half(ax_a, half_a) - half(ax_b, half_b)  # [..., 4]
    return (gap < 0).all(-1)


def collisions(states: torch.Tensor, size: torch.Tensor, agent_mask: torch.Tensor) -> torch.Tensor:
    """[B, A, A, F] bool: boxes of agents i and j overlap at step f (valid agents only, i != j)."""
    pose, half = states[..., :3], (size / 2)[:, :, None, :].expand(*states.shape[:3], 2)
    hit = _overlap(pose[:, :, None], half[:, :, None], pose[:, None], half[:, None])  # [B, A, A, F]
    a = states.shape[1]
    valid = agent_mask.bool()[:, :, None] & agent_mask.bool()[:, None, :] & ~torch.eye(a, dtype=torch.bool,
                                                                                         device=states.device)
    return hit & valid[..., None]


def ego_collisions(states: torch.Tensor, size: torch.Tensor, agent_mask: torch.Tensor) -> torch.Tensor:
    """[B, F] bool: the ego (row 0) overlaps some other valid agent at step f."""
    pose, half = states[..., :3], (size / 2)[:, :, None, :].expand(*states.shape[:3], 2)
    hit = _overlap(pose[:, :1], half[:, :1], pose[:, 1:], half[:, 1:])  # [B, A-1, F]
    return (hit & agent_mask.bool()[:, 1:, None]).any(1)


def ego_collision(states: torch.Tensor, size: torch.Tensor, agent_mask: torch.Tensor) -> torch.Tensor:
    """[B] bool: the ego collides with anyone during the future."""
    return ego_collisions(states, size, agent_mask).any(-1)


def first_collision_step(states: torch.Tensor, size: torch.Tensor, agent_mask: torch.Tensor) -> torch.Tensor:
    """[B] long: the first future step (0-based) at which the ego collides, -1 when it never does."""
    hit = ego_collisions(states, size, agent_mask)
    step = torch.argmax(hit.int(), dim=-1)
    return torch.where(hit.any(-1), step, torch.full_like(step, -1))


# ------------------------------------------------------------------ lanes
def lane_distance(points: torch.Tensor, lanes: torch.Tensor, lane_mask: torch.Tensor) -> torch.Tensor:
    """Distance of points [B, ..., 2] to the nearest lane centre-line segment -> [B, ...] (inf: no lane).

    Segments join neighbouring real points of a lane piece; a real point whose successor is padding
    is kept as a zero-length segment, so one-point pieces still count.
    """
    b = points.shape[0]
    pts = points.reshape(b, -1, 1, 2)  # [B, N, 1, 2]
    start = lanes[..., :2]  # [B, L, P, 2]
    nxt = torch.cat([start[:, :, 1:], start[:, :, -1:]], 2)
    nxt_ok = torch.cat([lane_mask[:, :, 1:], torch.zeros_like(lane_mask[:, :, :1])], 2).bool()
    end = torch.where(nxt_ok[..., None], nxt, start)
    start, end = start.reshape(b, 1, -1, 2), end.reshape(b, 1, -1, 2)  # [B, 1, S, 2]
    valid = lane_mask.bool().reshape(b, 1, -1)
    seg = end - start
    t = ((pts - start) * seg).sum(-1) / (seg * seg).sum(-1).clamp_min(1e-9)
    closest = start + t.clamp(0, 1)[..., None] * seg
    dist = (pts - closest).norm(dim=-1).masked_fill(~valid, float("inf"))  # [B, N, S]
    return dist.amin(-1).reshape(points.shape[:-1]) if dist.shape[-1] else torch.full(points.shape[:-1], float("inf"))


def off_road(states: torch.Tensor, lanes: torch.Tensor, lane_mask: torch.Tensor, spec: SceneSpec, *,
             margin: float = OFF_ROAD_MARGIN, agent_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B, A, F] bool: the agent's centre is farther than lane_width / 2 + margin from every lane centre line."""
    out = lane_distance(states[..., :2], lanes, lane_mask) > spec.lane_width / 2 + margin
    return out if agent_mask is None else out & agent_mask.bool()[:, :, None]


def ego_off_road(states: torch.Tensor, lanes: torch.Tensor, lane_mask: torch.Tensor, spec: SceneSpec, *,
                 margin: float = OFF_ROAD_MARGIN) -> torch.Tensor:
    """[B] bool: the ego leaves the road at some future step."""
    return off_road(states[:, :1], lanes, lane_mask, spec, margin=margin)[:, 0].any(-1)


# ------------------------------------------------------------------ route progress
def route_arclength(points: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
    """Arc length [B] along the route polyline [B, R, 2] of each point [B, 2]'s projection on it.

    Zero-length segments (padding that repeats the last point) are skipped; the first and last real
    segments extend beyond the ends, so a point before the start or past the end still gets a signed,
    growing arc length instead of being clamped.
    """
    seg = route[:, 1:] - route[:, :-1]  # [B, R-1, 2]
    length = seg.norm(dim=-1)
    real = length > 1e-6
    if route.shape[1] < 2 or not real.any(-1).all():
        raise ValueError("route: every scene needs at least two distinct route points")
    s0 = torch.cat([torch.zeros_like(length[:, :1]), torch.cumsum(length, 1)[:, :-1]], 1)
    t = ((points[:, None] - route[:, :-1]) * seg).sum(-1) / (length**2).clamp_min(1e-12)
    idx = torch.arange(seg.shape[1], device=route.device).expand_as(length)
    first = torch.where(real, idx, seg.shape[1]).amin(-1, keepdim=True)
    last = torch.where(real, idx, -1).amax(-1, keepdim=True)
    lo = torch.where(idx == first, -float("inf"), 0.0)
    hi = torch.where(idx == last, float("inf"), 1.0)
    t = torch.maximum(torch.minimum(t, hi), lo)
    proj = route[:, :-1] + t[..., None] * seg
    dist = (points[:, None] - proj).norm(dim=-1).masked_fill(~real, float("inf"))
    k = dist.argmin(-1, keepdim=True)
    return (s0 + t * length).gather(1, k).squeeze(1)


def progress(states: torch.Tensor, route: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """[B] ego progress (m) along the route: arc length of the final ego position minus that of ``start``
    [B, 2] (default: the ego's current position, the origin of the ego frame)."""
    start = torch.zeros_like(states[:, 0, 0, :2]) if start is None else start
    return route_arclength(states[:, 0, -1, :2], route) - route_arclength(start, route)


# ------------------------------------------------------------------ comfort
def ego_kinematics(states: torch.Tensor, dt: float, history: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
    """Ego longitudinal acceleration [B, F], jerk [B, F] and lateral acceleration (v * yaw rate) [B, F] by
    finite differences. ``history``: the ego's observed states [B, H, 4] (or the current one [B, 4]); its
    last state anchors the first difference and, with H >= 2, the current acceleration makes the jerk of
    the first step count too (default: the first future state, i.e. no acceleration into step 1)."""
    ego = states[:, 0]  # [B, F, 4]
    if history is None:
        history = ego[:, :1]
    elif history.dim() == 2:
        history = history[:, None]
    prev = torch.cat([history[:, -1:], ego[:, :-1]], 1)
    lon_acc = (ego[..., 3] - prev[..., 3]) / dt
    yaw_rate = wrap_angle(ego[..., 2] - prev[..., 2]) / dt
    acc0 = (history[:, -1, 3] - history[:, -2, 3]) / dt if history.shape[1] >= 2 else lon_acc[:, 0]
    jerk = (lon_acc - torch.cat([acc0[:, None], lon_acc[:, :-1]], 1)) / dt
    return {"lon_acc": lon_acc, "lon_jerk": jerk, "lat_acc": ego[..., 3] * yaw_rate}


def comfort(states: torch.Tensor, dt: float, history: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """[B] each: max |longitudinal jerk| (m/s^3), max |lateral acceleration| (m/s^2), and the min / max
    longitudinal acceleration (m/s^2) of the ego plan (``history`` as in :func:`ego_kinematics`)."""
    k = ego_kinematics(states, dt, history)
    return {"max_lon_jerk": k["lon_jerk"].abs().amax(-1), "max_lat_acc": k["lat_acc"].abs().amax(-1),
            "min_lon_acc": k["lon_acc"].amin(-1), "max_lon_acc": k["lon_acc"].amax(-1)}


# ------------------------------------------------------------------ time to collision
def time_to_collision(states: torch.Tensor, size: torch.Tensor, agent_mask: torch.Tensor, spec: SceneSpec
                      ) -> torch.Tensor:
    """[B] smallest time to collision (s) of the ego with an agent ahead in its lane, over the future steps.

    At each step the other agents are seen in the ego's frame; one whose centre is ahead and within half
    a lane width laterally is "in the lane". With constant velocities, the bumper gap
    dx - (L_ego + L_j) / 2 closes at v_ego - v_j cos(psi_j - psi_ego); TTC = gap / closing speed when it
    closes, 0 when the boxes already touch, inf otherwise.
    """
    ego = states[:, :1]  # [B, 1, F, 4]
    d = states[..., :2] - ego[..., :2]
    c, s = torch.cos(ego[..., 2]), torch.sin(ego[..., 2])
    dx, dy = c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]  # [B, A, F]
    ahead = (dx > 0) & (dy.abs() < spec.lane_width / 2) & agent_mask.bool()[:, :, None]
    ahead[:, 0] = False
    gap = dx - (size[:, :1, 0] + size[:, :, 0])[..., None] / 2
    closing = ego[..., 3] - states[..., 3] * torch.cos(states[..., 2] - ego[..., 2])
    ttc = torch.where(closing > 1e-6, gap.clamp_min(0) / closing.clamp_min(1e-6), float("inf"))
    ttc = torch.where(gap <= 0, torch.zeros_like(ttc), ttc)
    return ttc.masked_fill(~ahead, float("inf")).flatten(1).amin(-1)


# ------------------------------------------------------------------ plan discrepancy
def plan_discrepancy(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ADE, FDE) [P] between the ego plans of two scene batches [P, A, F, 4]: mean and final
    displacement (m) of the ego positions."""
    dist = (a[:, 0, :, :2] - b[:, 0, :, :2]).norm(dim=-1)
    return dist.mean(-1), dist[:, -1]
