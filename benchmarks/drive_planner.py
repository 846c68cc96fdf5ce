"""Benchmark: Gen-Drive planner latency per decision, and generator cost as the number of agents doubles.

    python benchmarks/drive_planner.py [--samples 1,4,16,32] [--agents 4,8,16] [--repeats 20] [--record]

A benchmark, not a test: it prints figures (``--record`` appends them to docs/benchmarks.md) and asserts
nothing. Models are built at the sizes of the shipped recipes (recipes/pretrain/scene_diffusion.yaml,
reward_models/scene_evaluator/train.yaml) with random weights: latency does not depend on the weights.
The context is a real highway-env scene (the ego's view at a fixed time of seed 0).

1. Planner latency: one decision = generate S scenes (K DDPM steps over all agents) + score them
   (learned evaluator, or the PDM-style rule scorer) + pick the ego plan. Variants interleaved in one
   process, median over ``--repeats`` decisions each.
2. Cost growth in agents: one S = 16 decision at A = 4, 8, 16 agents (the rest of the scene fixed);
   "per doubling" = the time ratio per doubling of A (attention over agents is quadratic, the rest linear).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.flow_grpo_step import cpu_model, median, quiet_single_thread, record_entry  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", default="1,4,16,32", help="S values (scenes per decision)")
    ap.add_argument("--agents", default="4,8,16", help="A values for the cost-growth table")
    ap.add_argument("--repeats", type=int, default=20, help="decisions per variant (median)")
    ap.add_argument("--record", action="store_true", help="append the figures to docs/benchmarks.md")
    return ap.parse_args(argv)


def build(num_agents: int):
    """(policy, evaluator, spec, context) at the recipes' sizes with ``num_agents`` agents."""
    import torch

    from genrl.config.load import load_yaml
    from genrl.config.validate import build as build_config
    from genrl.drive.scene import SceneSpec
    from genrl.drive.world import current_context, make_env, recorder, tick, ticks_per_step, use_expert_ego
    from genrl.models.scene_diffusion import SceneDiffusionConfig
    from genrl.policies.scene_diffusion import SceneDiffusionPolicy
    from genrl.preference.models.base import build_reward_model
    from genrl.preference.models.scene import SceneEvaluator

    pre = load_yaml(ROOT / "recipes/pretrain/scene_diffusion.yaml")
    collect = load_yaml(ROOT / "recipes/drive/collect.yaml")
    spec = build_config(SceneSpec, {**collect["spec"], "num_agents": num_agents}, key="spec")
    torch.manual_seed(0)
    policy = SceneDiffusionPolicy(SceneDiffusionPolicy.Config(model=build_config(SceneDiffusionConfig, pre["model"]),
                                                              scene=spec, forward_chunk=64))
    rm = load_yaml(ROOT / "reward_models/scene_evaluator/train.yaml")["model"]
    cfg = build_config(SceneEvaluator.Config, {k: v for k, v in rm.items() if k != "name"}, key="model")
    evaluator = build_reward_model("scene_evaluator", cfg, spec.sample_shape).eval()
    env = make_env("highway", 0)
    use_expert_ego(env)
    rec = recorder(env, spec)
    for _ in range(spec.history_steps * ticks_per_step(10, spec.dt)):
        tick(env, 10)
        rec.record()
    return policy, evaluator, spec, current_context(env, spec)


def main(argv: list[str] | None = None) -> int:
    quiet_single_thread()
    import torch

    from genrl.drive.planner import ScenePlanner, make_selector

    args = parse_args(argv)
    samples = [int(s) for s in args.samples.split(",")]
    agents = [int(a) for a in args.agents.split(",")]
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]

    policy, evaluator, spec, context = build(8)
    pdm = make_selector("pdm", spec)

    def learned(states, packed, key):
        with torch.no_grad():
            return int(torch.argmax(evaluator(states, packed)))

    variants = {f"S={s} {name}": ScenePlanner(policy, spec, samples=s, choose=fn)
                for s in samples for name, fn in (("evaluator", learned), ("pdm", pdm)) if s > 1 or name == "evaluator"}
    times: dict[str, list[float]] = {k: [] for k in variants}
    gen_times: dict[str, list[float]] = {k: [] for k in variants}
    for planner in variants.values():  # warm-up
        planner(context)
    for _ in range(args.repeats):
        for k, planner in variants.items():
            t0 = time.perf_counter()
            planner.plan_scenes(context)
            t1 = time.perf_counter()
            planner(context)
            t2 = time.perf_counter()
            gen_times[k].append(t1 - t0)
            times[k].append(t2 - t1)
    lines = [f"**Planner latency per decision** (A = {spec.num_agents} agents, F = {spec.future_steps} steps, "
             f"K = {policy.schedule.K} DDPM steps, generator d_model {policy.model_config.d_model}, "
             f"{sum(p.numel() for p in policy.model.parameters()) / 1e6:.2f} M parameters; evaluator "
             f"{sum(p.numel() for p in evaluator.parameters()) / 1e6:.2f} M; median of {args.repeats}):", "",
             "| S scenes | selector | decision (ms) | of which generation (ms) | per scene (ms) |", "|---|---|---|---|---|"]
    for k in variants:
        s, name = k.split(" ")
        n = int(s[2:])
        d, g = median(times[k]) * 1e3, median(gen_times[k]) * 1e3
        lines.append(f"| {n} | {'first (single sample)' if n == 1 else name} | {d:.1f} | {g:.1f} | {d / n:.2f} |")

    rows = []
    for a in agents:
        pol, ev, sp, ctx = build(a)

        def choose(states, packed, key, ev=ev):
            with torch.no_grad():
                return int(torch.argmax(ev(states, packed)))

        planner = ScenePlanner(pol, sp, samples=16, choose=choose)
        planner(ctx)
        rows.append((a, median([_timed(planner, ctx) for _ in range(max(5, args.repeats // 2))])))
    lines += ["", "**Cost growth in agents** (one S = 16 decision with the learned evaluator):", "",
              "| agents A | decision (ms) | per doubling |", "|---|---|---|"]
    for i, (a, t) in enumerate(rows):
        per = "" if i == 0 else f"{(t / rows[0][1]) ** (1 / math.log2(a / rows[0][0])):.2f}x"
        lines.append(f"| {a} | {t * 1e3:.1f} | {per} |")
    lines += ["", f"benchmark wall time {time.perf_counter() - t_start:.0f} s; 1-min load average {load_start:.1f} at "
                  f"start, {os.getloadavg()[0]:.1f} at end"]
    print("\n".join(lines))
    if args.record:
        record_entry("drive_planner", lines, hardware=f"{cpu_model()}, {os.cpu_count()} logical cores; torch "
                     f"{torch.__version__}, {torch.get_num_threads()} intra-op thread(s), CPU")
    return 0


def _timed(planner, context) -> float:
    t0 = time.perf_counter()
    planner(context)
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
