"""Benchmark: the autoregressive video sampler with its KV cache vs recomputing the context, and the
training step of KVPO vs noise-based GRPO (Flow-GRPO SDE exploration) on the same video model.

    python benchmarks/video_rollout.py [--repeats 5] [--videos 16] [--frames 16 24] [--steps-window 2]
                                       [--model DIR] [--no-train] [--record]

A benchmark, not a test: it prints figures (``--record`` appends them to docs/benchmarks.md) and asserts
nothing.

1. **Sampler**: ``ARVideoPolicy.generate`` on ``--videos`` prompts at each length in ``--frames``, with the
   KV cache (each block attends to cached keys/values of the sink + window frames; a clean pass writes the
   block) and with ``use_cache=False`` (every denoising step of every block re-runs the whole clean history
   under the block-causal mask: the same videos — checked — at a cost that grows with the square of the
   length). Frames per second = videos x frames / seconds.
2. **Training step**: ``Trainer.train_step`` of ``recipes/kvpo_single.yaml`` and
   ``recipes/video_sde_grpo_single.yaml`` (same model, rewards, prompts, videos per step), rollout, rewards
   and update timed separately.

The model is the recipe's architecture with random weights unless ``--model`` names a trained base (the
cost does not depend on the weights). Every comparison is interleaved (A, B, A, B, ...), ``--repeats``
times; figures are medians, ratios medians of the paired ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.flow_grpo_step import (  # noqa: E402
    StepRunner,
    build_trainer,
    cpu_model,
    median,
    peak_rss_mib,
    quiet_single_thread,
    record_entry,
)

TARGET_CACHE_SPEEDUP = 3.0
TRAIN_RECIPES = {"kvpo": "recipes/kvpo_single.yaml", "sde_grpo": "recipes/video_sde_grpo_single.yaml"}


def sampler_rows(policy, videos: int, frames_list: list[int], repeats: int) -> tuple[list[str], dict]:
    import torch

    from genrl.data.moving_digits import motion_prompts

    lines = ["| frames | videos | KV cache: s | fps | recompute: s | fps | speed-up |", "|---:|---:|---:|---:|---:|---:|---:|"]
    speedups = {}
    canvas = policy.model_config.canvas
    for frames in frames_list:
        seg = 8 if frames % 8 == 0 and frames > 16 else frames  # long videos: prompt switches every 8 frames
        items = motion_prompts(videos, segments=frames // seg, segment_frames=seg, size=canvas, seed=0)
        ids = torch.arange(videos)
        cached = policy.generate(items, ids, seed=0)  # warm-up, and the equality check
        full = policy.generate(items, ids, seed=0, use_cache=False)
        diff = float((cached - full).abs().max())
        t_cache, t_full = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            policy.generate(items, ids, seed=0)
            t1 = time.perf_counter()
            policy.generate(items, ids, seed=0, use_cache=False)
            t2 = time.perf_counter()
            t_cache.append(t1 - t0)
            t_full.append(t2 - t1)
        ratio = median([b / a for a, b in zip(t_cache, t_full)])
        speedups[frames] = ratio
        n = videos * frames
        lines.append(f"| {frames} | {videos} | {median(t_cache):.3f} | {n / median(t_cache):.0f} | "
                     f"{median(t_full):.3f} | {n / median(t_full):.0f} | **{ratio:.2f}x** |")
        lines.append(f"|  | max abs difference of the videos (cache vs recompute) | {diff:.1e} | | | | |")
    return lines, speedups


def train_rows(model_dir: str | None, repeats: int, window: int, runs: Path) -> list[str]:
    base = [f"policy.base_checkpoint={model_dir}", "policy.base_recipe=null"] if model_dir else ["policy.base_recipe=null"]
    runners = {name: StepRunner(build_trainer(recipe, base, str(runs / name))) for name, recipe in TRAIN_RECIPES.items()}
    for r in runners.values():  # warm-up step
        r(1)
    times: dict[str, list[dict]] = {n: [] for n in runners}
    for _ in range(repeats):
        for name, r in runners.items():
            times[name].append(r(window))
    tc = runners["kvpo"].trainer.recipe.trainer
    videos = tc.prompts_per_step * tc.group_size
    lines = [f"{videos} videos per step ({tc.prompts_per_step} prompts x {tc.group_size}), single-prompt 16-frame videos",
             "", "| per step | KVPO | SDE-GRPO |", "|---|---:|---:|"]
    for key in ("rollout", "reward", "update", "step"):
        lines.append(f"| {key} | " + " | ".join(f"{median([t[key] for t in times[n]]):.2f} s" for n in runners) + " |")
    ratio = median([a["step"] / b["step"] for a, b in zip(times["kvpo"], times["sde_grpo"])])
    lines += ["", f"KVPO / SDE-GRPO s/step = {ratio:.2f}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--frames", type=int, nargs="+", default=[16, 24])
    ap.add_argument("--steps-window", type=int, default=2, help="consecutive training steps per repetition")
    ap.add_argument("--model", default=None, help="a trained ar_video base folder (default: random weights)")
    ap.add_argument("--no-train", action="store_true", help="sampler only")
    ap.add_argument("--runs", default="/tmp/genrl_video_bench")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    quiet_single_thread()
    import torch

    from genrl.policies.ar_video import ARVideoPolicy

    t_start = time.perf_counter()
    torch.manual_seed(0)
    if args.model:
        policy = ARVideoPolicy.from_checkpoint(args.model)
    else:
        policy = ARVideoPolicy(ARVideoPolicy.Config())
    c = policy.model_config
    lines = [f"Sampler: {c.layers}-layer Wan transformer ({sum(p.numel() for p in policy.transformer.parameters()) / 1e6:.2f} M "
             f"parameters), {c.canvas}x{c.canvas} frames, {c.tokens_per_frame} tokens per frame, blocks of "
             f"{c.frames_per_block} frames, sink {c.sink_frames} + window {c.window_frames} frames, "
             f"{policy.config.num_steps} denoising steps per block, forward_chunk {policy.config.forward_chunk}; "
             f"median of {args.repeats} interleaved repetitions.", ""]
    rows, speedups = sampler_rows(policy, args.videos, args.frames, args.repeats)
    lines += rows
    at = max(speedups)
    ok = "OK" if speedups[at] >= TARGET_CACHE_SPEEDUP else "MISSED"
    lines += ["", f"KV cache speed-up at {at} frames = {speedups[at]:.2f}x (target >= {TARGET_CACHE_SPEEDUP:.0f}x: {ok})"]
    if not args.no_train:
        lines += ["", "Training step (interleaved windows of "
                  f"{args.steps_window} steps, median of {args.repeats}):", ""]
        lines += train_rows(args.model, args.repeats, args.steps_window, Path(args.runs))
    lines += ["", f"peak RSS {peak_rss_mib():.0f} MiB; benchmark wall time {time.perf_counter() - t_start:.0f} s"]
    print("\n".join(lines))
    if args.record:
        record_entry("AR video: KV-cache sampler vs recompute; KVPO vs SDE-GRPO step", lines,
                     hardware=f"{cpu_model()}, 1 torch thread")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
