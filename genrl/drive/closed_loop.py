"""One closed-loop episode: a planner drives the ego in highway-env among reactive IDM/MOBIL traffic.

The first H-1 scene steps (the history a scene needs, 2 s) are driven by the IDM expert for every planner, as
nuPlan starts a closed-loop episode from the logged history; then every ``replan_every`` scene steps (2 Hz)
the planner sees the ego's current scene context and returns an ego plan (future states in the ego frame),
and a ``PlanTracker`` follows it at the simulation rate (10 Hz). Metrics cover the ``duration_s`` after the
hand-over. The episode's raw metrics are read from the simulator; scoring them is ``genrl.drive.score``'s job.

Same seed + same planner outputs -> the same metrics, bit for bit (only ``planner_ms``, a wall time, varies).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from genrl.drive.scene import SceneSpec
from genrl.drive.world import (
    at_road_end,
    current_context,
    make_env,
    on_road,
    recorder,
    tick,
    ticks_per_step,
    use_expert_ego,
    use_plan_tracker,
)

Planner = Callable[[dict[str, torch.Tensor]], torch.Tensor]
SMOOTH_TICKS = 5  # moving-average window (ticks) on accelerations and yaw rates before differencing
# IDM approaches a lane's speed limit from above asymptotically (merge starts at 30 m/s on 20 m/s lanes):
# a tick counts as speeding only beyond this margin.
SPEED_TOLERANCE = 0.5  # m/s


def constant_velocity_planner(context: dict[str, torch.Tensor], future_steps: int = 10,
                              dt: float = 0.5) -> torch.Tensor:
    """The ego keeps its current speed and heading: plan [F, 4] in the ego frame (the simplest baseline)."""
    v = float(context["history"][0, 0, -1, 3])
    k = torch.arange(1, future_steps + 1, dtype=torch.float32)
    return torch.stack([v * dt * k, torch.zeros_like(k), torch.zeros_like(k), torch.full_like(k, v)], dim=-1)


def plan_to_world(plan: torch.Tensor, ego_state: np.ndarray) -> np.ndarray:
    """Ego-frame plan [F, 4] -> world frame, given the ego's world (x, y, heading, speed) now."""
    p = torch.as_tensor(plan).detach().to("cpu", torch.float64).numpy()
    if p.ndim != 2 or p.shape[1] != 4 or len(p) < 1:
        raise ValueError(f"planner: expected a plan of shape [F, 4] (x, y, heading, speed; ego frame), "
                         f"got {list(p.shape)}")
    if not np.isfinite(p).all():
        raise ValueError("planner: returned non-finite states")
    x0, y0, h0 = ego_state[0], ego_state[1], ego_state[2]
    c, s = math.cos(h0), math.sin(h0)
    out = p.copy()
    out[:, 0] = x0 + c * p[:, 0] - s * p[:, 1]
    out[:, 1] = y0 + s * p[:, 0] + c * p[:, 1]
    out[:, 2] = p[:, 2] + h0
    return out


def _ttc(road, ego) -> float:
    """Time to collision with the leader in the ego's lane at the current speeds (inf if none / opening)."""
    front, _ = road.neighbour_vehicles(ego, ego.lane_index)
    if front is None:
        return math.inf
    gap = ego.lane_distance_to(front) - (ego.LENGTH + front.LENGTH) / 2
    closing = ego.speed - front.speed
    if gap <= 0:
        return 0.0
    return gap / closing if closing > 0 else math.inf


def _smooth(x: np.ndarray) -> np.ndarray:
    if len(x) < SMOOTH_TICKS:
        return x
    return np.convolve(x, np.ones(SMOOTH_TICKS) / SMOOTH_TICKS, mode="valid")


def run_episode(family: str, seed: int, planner: str | Planner, *, spec: SceneSpec, duration_s: float,
                replan_every: int = 1, sim_hz: int = 10) -> dict:
    """Drive one episode of ``family`` / ``seed`` with ``planner`` ("idm" = the expert) and return raw metrics."""
    if replan_every < 1:
        raise ValueError(f"replan_every: must be >= 1, got {replan_every}")
    if not (planner == "idm" or callable(planner)):
        raise ValueError(f"planner: expected 'idm' or a callable context -> plan, got {planner!r}")
    env = make_env(family, seed, sim_hz=sim_hz)
    u = env.unwrapped
    n_ticks, tick_s = ticks_per_step(sim_hz, spec.dt), 1.0 / sim_hz
    ego = use_expert_ego(env)
    rec = recorder(env, spec)
    for _ in range(spec.history_steps - 1):  # the logged history: every planner starts from the same 2 s
        for _ in range(n_ticks):
            tick(env, sim_hz)
        rec.record()
    if planner != "idm":
        ego = use_plan_tracker(env, dt=spec.dt)
    network = u.road.network
    speeds, headings, ttcs = [float(ego.speed)], [float(ego.heading)], []
    off_road = crashed = ended = False
    over_ticks = ticks = 0
    progress = 0.0
    calls, planner_s = 0, 0.0
    for step in range(int(round(duration_s / spec.dt))):
        if planner != "idm" and step % replan_every == 0:
            context = current_context(env, spec)
            t0 = time.perf_counter()
            plan = planner(context)
            planner_s += time.perf_counter() - t0
            calls += 1
            ego.set_plan(plan_to_world(plan, np.array([*ego.position, ego.heading, ego.speed])), u.time)
        for _ in range(n_ticks):
            lane, before = ego.lane, ego.position.copy()
            tick(env, sim_hz)
            ticks += 1
            if ego.crashed:
                crashed = True
                break
            progress += lane.local_coordinates(ego.position)[0] - lane.local_coordinates(before)[0]
            speeds.append(float(ego.speed))
            headings.append(float(ego.heading))
            limit = getattr(ego.lane, "speed_limit", None)
            over_ticks += int(limit is not None and ego.speed > limit + SPEED_TOLERANCE)
            ttcs.append(_ttc(u.road, ego))
            if at_road_end(network, ego):
                ended = True
                break
            off_road = off_road or not on_road(network, ego.position)
        rec.record()
        if crashed or ended:
            break
    v = np.asarray(speeds)
    acc = _smooth(np.diff(v) / tick_s) if len(v) > 1 else np.zeros(1)
    jerk = np.diff(acc) / tick_s if len(acc) > 1 else np.zeros(1)
    yaw_rate = np.diff(np.unwrap(np.asarray(headings))) / tick_s if len(headings) > 1 else np.zeros(1)
    lat = _smooth(v[1:] * yaw_rate) if len(v) > 1 else np.zeros(1)
    return {
        "collision": bool(crashed),
        "off_road": bool(off_road),
        "end_of_road": bool(ended),
        "progress_m": float(progress),
        "duration_s": float(ticks / sim_hz),
        "mean_speed": float(v.mean()),
        "max_abs_jerk": float(np.abs(jerk).max()),
        "rms_jerk": float(np.sqrt(np.mean(jerk**2))),
        "max_abs_lat_acc": float(np.abs(lat).max()),
        "min_acc": float(acc.min()),
        "max_acc": float(acc.max()),
        "min_ttc": float(min(ttcs)) if ttcs else math.inf,
        "speed_over_limit_share": float(over_ticks / max(1, len(speeds) - 1)),
        "decisions": int(calls),
        "planner_ms": float(1000.0 * planner_s / calls) if calls else 0.0,
    }
