"""The driving world: highway-env environments, an IDM/MOBIL expert ego, a plan-tracking ego and a scene recorder.

Why not ``env.step``: its reward code fails on array actions (merge, roundabout) and its Kinematics observation
is clipped to the nearest few vehicles. The world is read in full from ``env.unwrapped.road`` and advanced
tick by tick as ``AbstractEnv._simulate`` does (``road.act(); road.step(1 / sim_hz)``). Scenes are sampled
at 1/``spec.dt`` Hz (2 Hz), so the simulation rate must be a multiple of it (10 Hz by default).

Vehicles are identified by their index in ``road.vehicles`` (0 = the ego): highway and merge never remove a
vehicle, and the ego's replacements (expert, plan tracker) take its slot, so an index is stable over an episode.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from genrl.drive.scene import CONTEXT_KEYS, SceneSpec, empty_scene

FAMILIES = ("highway", "merge")
_ENV_IDS = {"highway": "highway-v0", "merge": "merge-v0"}
# Dense-ish three-lane traffic of IDM/MOBIL drivers; the ego starts behind the pack (highway-env spawns
# every other vehicle ahead of the last one).
_FAMILY_CONFIG: dict[str, dict[str, Any]] = {
    "highway": {"lanes_count": 3, "vehicles_count": 25, "vehicles_density": 1.2, "duration": 3600},
    "merge": {},
}
PIECE_M = 40.0  # lane centre lines are cut into pieces of this length
LANE_RADIUS_M = 80.0  # lane pieces farther than this from the scene's path region are not kept
BEHIND_M = 20.0  # the path region starts this far behind the centre ...
# ... and ends where the centre would be after F dt seconds at max(speed, speed limit): the lanes must cover
# the future that is generated and judged there (collision / off-road checks), not just the current position.
AGENT_RADIUS_M = 100.0  # vehicles farther than this from the scene centre are not in its scene
_FIELDS = 6  # recorded per vehicle: x, y, heading, speed, length, width


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


# Driver styles are drawn per vehicle (IDM / MOBIL parameters), so that the same 2 s of history can go on in
# several ways (a faster or slower target, an earlier or later lane change): the behaviour the generator
# learns is multi-modal, as human traffic is, instead of one deterministic IDM response.
DRIVER_STYLE = {"target_speed": (20.0, 30.0), "TIME_WANTED": (1.0, 2.0), "POLITENESS": (0.0, 0.5),
                "LANE_CHANGE_MIN_ACC_GAIN": (0.05, 0.4), "COMFORT_ACC_MAX": (2.0, 4.0)}


def draw_driver_style(rng) -> dict[str, float]:
    return {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in DRIVER_STYLE.items()}


def apply_driver_style(vehicle, style: dict[str, float]) -> None:
    """Instance attributes shadow the IDM/MOBIL class constants for this vehicle only."""
    for name, value in style.items():
        setattr(vehicle, name, value)


def make_env(family: str, seed: int, *, sim_hz: int = 10, randomize_drivers: bool = True, **overrides):
    """A reset highway-env environment of ``family`` (``FAMILIES``), simulated at ``sim_hz``; the other
    vehicles' driver styles are drawn from the environment's seeded generator (``DRIVER_STYLE``)."""
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {list(FAMILIES)}, got {family!r}")
    import gymnasium
    import highway_env  # noqa: F401  (registers the environments)

    config = {"simulation_frequency": sim_hz, "policy_frequency": 2, **_FAMILY_CONFIG[family], **overrides}
    with warnings.catch_warnings():  # "merge-v0 is out of date": v0 is the version with IDM traffic on the ramp
        warnings.simplefilter("ignore", DeprecationWarning)
        env = gymnasium.make(_ENV_IDS[family], config=config)
    env.reset(seed=seed)
    if randomize_drivers:
        from highway_env.vehicle.behavior import IDMVehicle

        u = env.unwrapped
        # The ego slot's style is drawn too (used if an IDM expert drives it), so that every planner of a
        # seed meets the same traffic.
        u._genrl_ego_style = draw_driver_style(u.np_random)
        for v in u.road.vehicles:
            if v is not u.vehicle and isinstance(v, IDMVehicle):
                apply_driver_style(v, draw_driver_style(u.np_random))
    return env


def ticks_per_step(sim_hz: int, dt: float) -> int:
    """Simulation ticks per scene step; refuses rates that would not align 1/dt Hz samples."""
    n = sim_hz * dt
    if n < 1 or abs(n - round(n)) > 1e-9:
        raise ValueError(f"sim_hz: {sim_hz} Hz does not give a whole number of ticks per {dt} s scene step")
    return int(round(n))


def tick(env, sim_hz: int) -> None:
    """Advance the world by one simulation tick (every vehicle acts, then moves; collisions are resolved)."""
    u = env.unwrapped
    u.road.act()
    u.road.step(1.0 / sim_hz)
    u.steps += 1
    u.time += 1.0 / sim_hz


def replace_ego(env, vehicle) -> None:
    """Put ``vehicle`` in the ego's slot of ``road.vehicles`` and make it ``env.unwrapped.vehicle``."""
    u = env.unwrapped
    i = next(k for k, v in enumerate(u.road.vehicles) if v is u.vehicle)
    u.road.vehicles[i] = vehicle
    u.vehicle = vehicle


def use_expert_ego(env):
    """Replace the controlled vehicle by highway-env's IDM + MOBIL driver at the same state, with a drawn
    driver style; returns it."""
    from highway_env.vehicle.behavior import IDMVehicle

    old = env.unwrapped.vehicle
    expert = IDMVehicle.create_from(old)
    expert.target_speed = old.target_speed
    apply_driver_style(expert, getattr(env.unwrapped, "_genrl_ego_style", {}))  # drawn per episode by make_env
    replace_ego(env, expert)
    return expert


def _tracker_class():
    from highway_env.vehicle.kinematics import Vehicle

    class _PlanTracker(Vehicle):
        """An ego that follows a plan of future states: speed feedback + pure pursuit on the plan's path.

        The plan is time-stamped: states[k] is due at t0 + (k+1) dt. Speed: acceleration = the plan's own
        acceleration + a proportional pull toward the planned speed now. Steering: pure pursuit toward the point
        ``lookahead`` metres ahead on the planned path gives a yaw rate omega = 2 v sin(alpha) / lookahead,
        turned into highway-env's bicycle steering by beta = asin(omega L / 2v), delta = atan(2 tan beta).
        """

        KP_SPEED = 2.0  # 1/s
        ACC_LIMITS = (-8.0, 6.0)  # m/s^2
        MAX_STEERING = math.pi / 4
        LOOKAHEAD_S, LOOKAHEAD_MIN_M = 0.5, 5.0

        def __init__(self, road, position, heading: float = 0.0, speed: float = 0.0, *, dt: float = 0.5,
                     clock: float = 0.0) -> None:
            super().__init__(road, position, heading, speed)
            self.plan_dt = dt
            self.clock = clock
            self.plan: np.ndarray | None = None
            self.plan_t0 = clock

        @classmethod
        def create_from(cls, vehicle, *, dt: float = 0.5, clock: float = 0.0):
            return cls(vehicle.road, vehicle.position, vehicle.heading, vehicle.speed, dt=dt, clock=clock)

        def set_plan(self, states_world, t0: float) -> None:
            """Follow ``states_world`` [F, 4] (x, y, heading, speed; world frame) due at t0 + dt, t0 + 2dt, ..."""
            states = np.asarray(states_world, dtype=np.float64).reshape(-1, 4)
            if not np.isfinite(states).all():
                raise ValueError("plan: non-finite states")
            start = np.array([*self.position, self.heading, self.speed])
            self.plan = np.concatenate([start[None], states])
            self.plan_t0 = float(t0)

        def _target(self) -> tuple[float, float, np.ndarray]:
            """(planned speed now, planned acceleration now, look-ahead point)."""
            p = self.plan
            times = self.plan_t0 + self.plan_dt * np.arange(len(p))
            t = min(max(self.clock, times[0]), times[-1])
            v_ref = float(np.interp(t, times, p[:, 3]))
            k = min(int((t - times[0]) / self.plan_dt), len(p) - 2) if len(p) > 1 else 0
            a_ref = float((p[k + 1, 3] - p[k, 3]) / self.plan_dt) if len(p) > 1 and self.clock < times[-1] else 0.0
            # Path: plan points + a straight extension along the final heading, so there is always a point ahead.
            ext = p[-1, :2] + 50.0 * np.array([math.cos(p[-1, 2]), math.sin(p[-1, 2])])
            path = np.concatenate([p[:, :2], ext[None]])
            seg = np.diff(path, axis=0)
            seg_len = np.linalg.norm(seg, axis=1)
            rel = self.position - path[:-1]
            u = np.clip(np.einsum("ij,ij->i", rel, seg) / np.maximum(seg_len**2, 1e-9), 0.0, 1.0)
            foot = path[:-1] + u[:, None] * seg
            i = int(np.argmin(np.linalg.norm(foot - self.position, axis=1)))
            remain = max(self.LOOKAHEAD_MIN_M, self.LOOKAHEAD_S * abs(self.speed))
            # Walk ``remain`` metres along the path from the foot point.
            left = seg_len[i] * (1 - u[i])
            while remain > left and i < len(seg) - 1:
                remain -= left
                i += 1
                left = seg_len[i]
                u[i] = 0.0
            frac = u[i] + remain / max(seg_len[i], 1e-9)
            return v_ref, a_ref, path[i] + frac * seg[i]

        def act(self, action=None) -> None:
            if self.crashed or self.plan is None:
                super().act({"steering": 0.0, "acceleration": 0.0} if self.plan is None else None)
                return
            v_ref, a_ref, target = self._target()
            acc = float(np.clip(a_ref + self.KP_SPEED * (v_ref - self.speed), *self.ACC_LIMITS))
            d = target - self.position
            dist = float(np.linalg.norm(d))
            alpha = math.atan2(d[1], d[0]) - self.heading
            alpha = (alpha + math.pi) % (2 * math.pi) - math.pi
            v = max(abs(self.speed), 0.1)
            omega = 2.0 * v * math.sin(alpha) / max(dist, 1e-3)
            beta = math.asin(float(np.clip(omega * self.LENGTH / (2.0 * v), -1.0, 1.0)))
            delta = float(np.clip(math.atan(2.0 * math.tan(beta)), -self.MAX_STEERING, self.MAX_STEERING))
            super().act({"steering": delta, "acceleration": acc})

        def step(self, dt: float) -> None:
            self.clock += dt
            super().step(dt)

    _PlanTracker.__name__ = _PlanTracker.__qualname__ = "PlanTracker"
    return _PlanTracker


def __getattr__(name: str):
    """``PlanTracker`` subclasses highway-env's ``Vehicle``; it is built on first use, so that importing this
    module (for ``FAMILIES``, in recipe validation) does not import highway-env (~0.7 s)."""
    if name == "PlanTracker":
        return plan_tracker_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def plan_tracker_class() -> type:
    if "PlanTracker" not in globals():
        globals()["PlanTracker"] = _tracker_class()
    return globals()["PlanTracker"]


def use_plan_tracker(env, *, dt: float = 0.5):
    """Replace the controlled vehicle by a ``PlanTracker`` at the same state; returns it."""
    tracker = plan_tracker_class().create_from(env.unwrapped.vehicle, dt=dt, clock=float(env.unwrapped.time))
    replace_ego(env, tracker)
    return tracker


# ---------------------------------------------------------------------------------------------- lanes

_PIECES: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _network_key(network) -> tuple:
    return tuple((k, type(lane).__name__, repr(lane.to_config())) for k, lane in network.lanes_dict().items())


def _segment_distance(points: np.ndarray, origin: np.ndarray, heading: float, back: float, ahead: float) -> np.ndarray:
    """Distance of ``points`` [..., 2] to the segment from ``back`` to ``ahead`` metres along ``heading``."""
    d = np.array([math.cos(heading), math.sin(heading)])
    rel = points - origin
    s = np.clip(rel @ d, back, ahead)
    return np.linalg.norm(rel - s[..., None] * d, axis=-1)


def lane_pieces(network, points: int) -> tuple[np.ndarray, np.ndarray]:
    """(pieces [K, P, 3]: every lane centre line cut into ~PIECE_M metre pieces of P points (x, y, heading;
    world frame), their points [K, P, 2] for the nearest-piece search); cached per map and P."""
    key = (_network_key(network), points)
    if key not in _PIECES:
        pieces = []
        for lane in network.lanes_dict().values():
            n = max(1, math.ceil(lane.length / PIECE_M - 1e-6))
            edges = np.linspace(0.0, lane.length, n + 1)
            for a, b in zip(edges[:-1], edges[1:]):
                s = np.linspace(a, b, points)
                pieces.append([[*lane.position(si, 0.0), lane.heading_at(si)] for si in s])
        arr = np.asarray(pieces, dtype=np.float64)
        _PIECES[key] = (arr, arr[..., :2])
    return _PIECES[key]


def route_points(network, lane_index, position, count: int, spacing: float) -> np.ndarray:
    """[count, 2] world points every ``spacing`` metres ahead of ``position`` along its lane, continuing on the
    lane the road network leads to at each lane end (merge ramp -> main road); past the last lane, straight on."""
    lane = network.get_lane(lane_index)
    s0, _ = lane.local_coordinates(position)
    cur, offset, out = lane_index, 0.0, []  # offset: route distance at which ``lane``'s coordinate 0 lies
    for k in range(1, count + 1):
        target = s0 + k * spacing
        while target - offset > lane.length:
            end = lane.position(lane.length, 0.0)
            nxt = network.next_lane(cur, position=end)
            if nxt == cur:
                break
            nxt_lane = network.get_lane(nxt)
            offset += lane.length - nxt_lane.local_coordinates(end)[0]
            cur, lane = nxt, nxt_lane
        out.append(lane.position(target - offset, 0.0))
    return np.asarray(out, dtype=np.float64)


def on_road(network, position) -> bool:
    """Whether a position lies within half a lane width of some lane's centre line (ends included)."""
    return any(lane.on_lane(position) for lane in network.lanes_dict().values())


def at_road_end(network, vehicle) -> bool:
    """Whether the vehicle has driven past the end of a lane that leads nowhere (the map's end: an episode
    ends there rather than counting the empty world beyond as off-road)."""
    index = vehicle.lane_index
    lane = network.get_lane(index)
    s, _ = lane.local_coordinates(vehicle.position)
    return s > lane.length and not network.graph.get(index[1])


# ---------------------------------------------------------------------------------------------- recorder


class SceneRecorder:
    """Every vehicle's state at each scene step of an episode, and the scenes cut from it.

    ``record()`` is called once per scene step (and once right after reset); sample ``t`` is time ``t * dt``.
    """

    def __init__(self, env, spec: SceneSpec) -> None:
        self.env, self.spec = env, spec
        self.network = env.unwrapped.road.network
        self.states: list[np.ndarray] = []  # per sample: [N_t, 6]
        self.crashed: list[np.ndarray] = []  # per sample: [N_t] bool
        self.lane_index: list[list] = []  # per sample: lane index of every vehicle
        self.speed_limit: list[np.ndarray] = []
        self._pieces = lane_pieces(self.network, spec.lane_points)

    def record(self) -> int:
        """Log the current state of every vehicle; returns the new sample's index."""
        vs = self.env.unwrapped.road.vehicles
        self.states.append(np.array([[v.position[0], v.position[1], v.heading, v.speed, v.LENGTH, v.WIDTH]
                                     for v in vs], dtype=np.float64).reshape(-1, _FIELDS))
        self.crashed.append(np.array([bool(v.crashed) for v in vs], dtype=bool))
        self.lane_index.append([v.lane_index for v in vs])
        self.speed_limit.append(np.array([getattr(v.lane, "speed_limit", None) or 30.0 for v in vs]))
        return len(self.states) - 1

    @property
    def now(self) -> int:
        return len(self.states) - 1

    def present(self, t: int) -> int:
        """How many vehicles exist at sample ``t`` (indices 0 .. n-1)."""
        return len(self.states[t])

    def _state(self, vid: int, t: int) -> np.ndarray | None:
        if 0 <= t < len(self.states) and vid < len(self.states[t]):
            return self.states[t][vid]
        return None

    def agents(self, center: int, t: int | None = None) -> list[int]:
        """The scene's rows at sample ``t``: ``center``, then up to A-1 nearest vehicles within AGENT_RADIUS_M."""
        t = self.now if t is None else t
        pos = self.states[t][:, :2]
        d = np.linalg.norm(pos - pos[center], axis=1)
        order = [int(i) for i in np.argsort(d, kind="stable") if i != center and d[i] <= AGENT_RADIUS_M]
        return [center, *order[: self.spec.num_agents - 1]]

    def window_crashed(self, ids: list[int], t: int) -> bool:
        """Whether any of ``ids`` is crashed at some sample of the window t-H+1 .. t+F (what is recorded of it)."""
        last = min(t + self.spec.future_steps, self.now)
        for k in range(max(0, t - self.spec.history_steps + 1), last + 1):
            c = self.crashed[k]
            if any(c[i] for i in ids if i < len(c)):
                return True
        return False

    def scene(self, center: int, spec: SceneSpec | None = None, *, with_future: bool,
              t: int | None = None) -> dict[str, torch.Tensor]:
        """The scene centred on vehicle ``center`` at sample ``t`` (default: the latest), batch of 1.

        All positions and headings are in ``center``'s frame at ``t``; rows with no observation are masked.
        """
        spec = spec or self.spec
        t = self.now if t is None else t
        if not 0 <= t <= self.now:
            raise ValueError(f"t: no recorded sample {t} (have 0 .. {self.now})")
        if center >= self.present(t):
            raise ValueError(f"center: no vehicle {center} at sample {t}")
        A, H, F = spec.num_agents, spec.history_steps, spec.future_steps
        out = {k: v[0].numpy() for k, v in empty_scene(spec).items()}
        origin = self.states[t][center]
        c, s = math.cos(origin[2]), math.sin(origin[2])
        rot = np.array([[c, s], [-s, c]])  # world -> centre frame

        def local(st: np.ndarray) -> np.ndarray:
            xy = rot @ (st[:2] - origin[:2])
            return np.array([xy[0], xy[1], _wrap(st[2] - origin[2]), st[3]])

        ids = self.agents(center, t)[:A]
        for row, vid in enumerate(ids):
            out["agent_mask"][row] = True
            out["size"][row] = self.states[t][vid][4:6]
            for h in range(H):
                st = self._state(vid, t - (H - 1) + h)
                if st is not None:
                    out["history"][row, h], out["history_mask"][row, h] = local(st), True
            if with_future:
                for f in range(F):
                    st = self._state(vid, t + 1 + f)
                    if st is not None:
                        out["future"][row, f], out["future_mask"][row, f] = local(st), True
        # Lanes: the L pieces nearest to the centre's path region (a segment along its heading, from BEHIND_M
        # behind to its reach over the horizon), nearest first.
        pieces, pts = self._pieces
        reach = F * spec.dt * max(float(self.speed_limit[t][center]), float(self.states[t][center][3]))
        dist = _segment_distance(pts, origin[:2], origin[2], -BEHIND_M, reach).min(axis=1)
        near = [i for i in np.argsort(dist, kind="stable")[: spec.num_lanes] if dist[i] <= LANE_RADIUS_M]
        for row, i in enumerate(near):
            xy = (pieces[i, :, :2] - origin[:2]) @ rot.T
            out["lanes"][row] = np.concatenate([xy, _wrap(pieces[i, :, 2:3] - origin[2])], axis=1)
            out["lane_mask"][row] = True
        # Route: R points along the centre's lane ahead, covering F dt seconds at the speed limit.
        spacing = F * spec.dt * float(self.speed_limit[t][center]) / spec.route_points
        route = route_points(self.network, self.lane_index[t][center], origin[:2], spec.route_points, spacing)
        out["route"] = (route - origin[:2]) @ rot.T
        return {k: torch.from_numpy(np.asarray(v, dtype=np.float32 if v.dtype != bool else bool))[None]
                for k, v in out.items()}


def recorder(env, spec: SceneSpec) -> SceneRecorder:
    """The recorder attached to ``env`` (made, and its first sample taken, on first use)."""
    u = env.unwrapped
    rec = getattr(u, "_genrl_recorder", None)
    if rec is None or rec.spec.to_dict() != spec.to_dict():
        rec = SceneRecorder(env, spec)
        rec.record()
        u._genrl_recorder = rec
    return rec


def current_context(env, spec: SceneSpec) -> dict[str, torch.Tensor]:
    """The ego's scene now, without future (CONTEXT_KEYS only, batch 1): what a planner sees.

    The history comes from the recorder attached to ``env`` (see :func:`recorder`); without one, only the
    present is observed.
    """
    scene = recorder(env, spec).scene(0, spec, with_future=False)
    return {k: scene[k] for k in CONTEXT_KEYS}
