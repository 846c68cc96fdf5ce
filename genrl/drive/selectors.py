"""Scorers that pick one of S generated scenes (generation-then-evaluation planning), and the rule judge.

* ``random_choice``: a keyed random candidate (the baseline with no evaluator).
* ``pdm_score``: a PDM-style rule score (nuPlan's planning metrics, as in PDM-Closed)::

      score = no_ego_collision * drivable * (w_p * progress + w_t * ttc_ok + w_c * comfortable) / (w_p + w_t + w_c)

  progress = route progress / the best progress among the candidates that pass both multipliers
  (all candidates when none does; 1 for everyone when the best is under ``min_progress`` metres);
  ttc_ok = the time to collision with the agent ahead stays above ``ttc_threshold``; comfortable =
  max |lon jerk| <= 4.13 m/s^3, max |lat acc| <= 4.89 m/s^2, lon acc in [-4.05, 2.40] m/s^2.
* ``comfort_progress_judge``: a deterministic stand-in for Gen-Drive's VLM judge, usable through the
  ``python_judge`` labelling rule (``file: genrl/drive/selectors.py``, ``function: comfort_progress_judge``).

The learned alternative is the ``scene_evaluator`` reward model (``genrl.preference.models.scene``).
"""

# No ``from __future__ import annotations``: python_judge executes this file as an unregistered module,
# where dataclasses cannot resolve string annotations.
from dataclasses import dataclass

import torch

from genrl.config.validate import option
from genrl.drive import geometry as geo
from genrl.drive.scene import SceneSpec, unpack_context
from genrl.rng import Purpose, keyed_generator


@dataclass
class PDMConfig:
    """Thresholds and weights of :func:`pdm_score` (nuPlan's defaults)."""

    max_lon_jerk: float = option(default=4.13, help="Comfort: max |longitudinal jerk| (m/s^3).")
    max_lat_acc: float = option(default=4.89, help="Comfort: max |lateral acceleration| (m/s^2).")
    min_lon_acc: float = option(default=-4.05, help="Comfort: min longitudinal acceleration (m/s^2).")
    max_lon_acc: float = option(default=2.40, help="Comfort: max longitudinal acceleration (m/s^2).")
    ttc_threshold: float = option(default=0.95, help="TTC ok when the smallest time to collision exceeds this (s).")
    min_progress: float = option(default=5.0, help="Below this best progress (m) every candidate gets full progress.")
    off_road_margin: float = option(default=geo.OFF_ROAD_MARGIN, help="Metres beyond half a lane width = off road.")
    w_progress: float = option(default=5.0, help="Weight of progress in the weighted mean.")
    w_ttc: float = option(default=5.0, help="Weight of TTC ok.")
    w_comfort: float = option(default=2.0, help="Weight of comfort ok.")

    def validate(self) -> None:
        if min(self.w_progress, self.w_ttc, self.w_comfort) < 0 or not (self.w_progress + self.w_ttc + self.w_comfort):
            raise ValueError("w_progress: weights must be >= 0 and not all zero")
        if self.min_lon_acc > self.max_lon_acc:
            raise ValueError("min_lon_acc: must be <= max_lon_acc")


def as_context(context, spec: SceneSpec, n: int) -> dict[str, torch.Tensor]:
    """A packed context [C], [1, C] or [n, C], or an unpacked dict (batch 1 or n) -> unpacked, batch n."""
    if not isinstance(context, dict):
        flat = torch.as_tensor(context, dtype=torch.float32)
        context = unpack_context(spec, flat.reshape(1, -1) if flat.dim() == 1 else flat)
    out = {}
    for k, v in context.items():
        if len(v) not in (1, n):
            raise ValueError(f"scene context field {k!r}: batch {len(v)}, expected 1 or {n} (one per candidate)")
        out[k] = v.expand(n, *v.shape[1:]) if len(v) == 1 else v
    return out


def pdm_components(states: torch.Tensor, context, spec: SceneSpec, config: PDMConfig | None = None
                   ) -> dict[str, torch.Tensor]:
    """Every term of :func:`pdm_score` for candidates [S, A, F, 4] of one scene (each [S])."""
    cfg = config or PDMConfig()
    states = states.float()
    ctx = as_context(context, spec, len(states))
    no_collision = ~geo.ego_collision(states, ctx["size"], ctx["agent_mask"])
    drivable = ~geo.ego_off_road(states, ctx["lanes"], ctx["lane_mask"], spec, margin=cfg.off_road_margin)
    prog = geo.progress(states, ctx["route"], ctx["history"][:, 0, -1, :2])
    ok = no_collision & drivable
    best = (prog[ok] if ok.any() else prog).max()
    progress = torch.ones_like(prog) if best < cfg.min_progress else (prog / best).clamp(0, 1)
    ttc = geo.time_to_collision(states, ctx["size"], ctx["agent_mask"], spec)
    c = geo.comfort(states, spec.dt, ctx["history"][:, 0])
    comfortable = ((c["max_lon_jerk"] <= cfg.max_lon_jerk) & (c["max_lat_acc"] <= cfg.max_lat_acc)
                   & (c["min_lon_acc"] >= cfg.min_lon_acc) & (c["max_lon_acc"] <= cfg.max_lon_acc))
    return {"no_collision": no_collision.float(), "drivable": drivable.float(), "progress": progress,
            "progress_m": prog, "ttc": ttc, "ttc_ok": (ttc > cfg.ttc_threshold).float(),
            "comfortable": comfortable.float()}


def pdm_score(states: torch.Tensor, context, spec: SceneSpec, config: PDMConfig | None = None) -> torch.Tensor:
    """[S] PDM-style score in [0, 1] of S candidate scenes [S, A, F, 4] sharing one context (module docstring)."""
    cfg = config or PDMConfig()
    t = pdm_components(states, context, spec, cfg)
    mean = (cfg.w_progress * t["progress"] + cfg.w_ttc * t["ttc_ok"] + cfg.w_comfort * t["comfortable"]) / (
        cfg.w_progress + cfg.w_ttc + cfg.w_comfort)
    return t["no_collision"] * t["drivable"] * mean


def random_choice(num_candidates: int, seed: int, key: int) -> int:
    """A keyed uniform index in [0, S): the same (seed, key) always picks the same candidate."""
    if num_candidates < 1:
        raise ValueError("num_candidates: must be >= 1")
    return int(torch.randint(num_candidates, (1,), generator=keyed_generator(seed, Purpose.EVAL, key)))


# ------------------------------------------------------------------ the rule judge
JUDGE_JERK = 4.13  # m/s^3: comfort term reaches 0 at nuPlan's jerk limit
JUDGE_LAT_ACC = 4.89  # m/s^2
JUDGE_TTC_CAP = 4.0  # s: a TTC margin beyond this earns nothing more
JUDGE_TIE_BAND = 0.005


def judge_scores(a: torch.Tensor, b: torch.Tensor, contexts, spec: SceneSpec | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The judge's score J in [0, 1] of both scenes of each pair [P]::

        comfort  = 1 - 0.5 min(1, max|jerk| / 4.13) - 0.5 min(1, max|lat acc| / 4.89)
        ttc      = min(TTC, 4 s) / 4 s
        progress = progress / max(progress_a, progress_b, 1 m), clamped to [0, 1]
        J        = (comfort + ttc + progress) / 3
    """
    a, b = a.float(), b.float()
    contexts = torch.as_tensor(contexts, dtype=torch.float32)
    if spec is None:
        spec = SceneSpec(num_agents=a.shape[1], future_steps=a.shape[2])
    if contexts.shape[-1] != spec.context_dim:
        raise ValueError(f"comfort_progress_judge: contexts have {contexts.shape[-1]} values, the default scene spec "
                         f"packs {spec.context_dim}; pass spec= (the scene labelling job binds it)")
    ctx = unpack_context(spec, contexts)
    start, ego_history = ctx["history"][:, 0, -1, :2], ctx["history"][:, 0]

    def terms(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = geo.comfort(x, spec.dt, ego_history)
        comfort = 1 - 0.5 * (c["max_lon_jerk"] / JUDGE_JERK).clamp(max=1) - 0.5 * (
            c["max_lat_acc"] / JUDGE_LAT_ACC).clamp(max=1)
        ttc = geo.time_to_collision(x, ctx["size"], ctx["agent_mask"], spec).clamp(max=JUDGE_TTC_CAP) / JUDGE_TTC_CAP
        return comfort, ttc, geo.progress(x, ctx["route"], start)

    (ca, ta, pa), (cb, tb, pb) = terms(a), terms(b)
    best = torch.maximum(torch.maximum(pa, pb), torch.ones_like(pa))
    ja = (ca + ta + (pa / best).clamp(0, 1)) / 3
    jb = (cb + tb + (pb / best).clamp(0, 1)) / 3
    return ja, jb


def comfort_progress_judge(a: torch.Tensor, b: torch.Tensor, contexts, spec: SceneSpec | None = None,
                           tie_band: float = JUDGE_TIE_BAND) -> list[str]:
    """``python_judge`` callable: "a" / "b" for the higher :func:`judge_scores`, "tie" within ``tie_band``."""
    ja, jb = judge_scores(a, b, contexts, spec)
    d = (ja - jb).tolist()
    return ["tie" if abs(x) < tie_band else ("a" if x > 0 else "b") for x in d]
