"""Benchmark: how the training step's time grows with the work — group size, image size, video frames,
response length — one small table per domain.

    python benchmarks/cost_growth.py [--repeats 3] [--steps-window 2] [--quick] [--domains image video vlm]
                                     [--record]

A benchmark, not a test: it prints figures (``--record`` appends them to docs/benchmarks.md) and asserts
nothing. Every variant of every domain is a ``Trainer`` built once in THIS process from a smoke recipe
(tiny random-initialised models: the shapes, not the weights, set the cost), and the variants' timed
windows are interleaved (A, B, C, A, B, C, ...); figures are medians over the repetitions and ratios are
medians of the per-repetition ratios to the smallest variant.

Domains and axes (everything else fixed):
  image   recipes/smoke/flow_grpo_tiny.yaml: group size 4 -> 8 -> 16 (2 prompts per step, one optimizer
          update per step); image side 8 -> 16 -> 32 px (pixels x4 per doubling of the side)
  video   recipes/smoke/video_sde_tiny.yaml: frames per video 8 -> 16 -> 32 (2, 2, 4 prompt segments);
          group size 4 -> 8
  vlm     recipes/smoke/vlm_grpo_tiny.yaml (GRPO, the tiny SFT base, cached): response length 8 -> 16 -> 32
          tokens; group size 2 -> 4 -> 8
  agents  (driving scenes): measured by benchmarks/drive_planner.py (planner decision vs A)

"per doubling" = time ratio ** (1 / log2(work ratio)): the cost of doubling the work, target <= ~2x
(linear growth gives 2.0; fixed per-step costs give less; attention over more tokens gives more).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
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

QUIET = ["logging.tensorboard=false", "logging.progress=false", "trainer.checkpoint_every=0"]
SMOKE = ROOT / "recipes" / "smoke"


def image_variants(quick: bool) -> dict[str, dict[str, tuple[float, list[str]]]]:
    """axis -> label -> (work, overrides) on the flow smoke recipe."""
    groups = (4, 8) if quick else (4, 8, 16)
    sides = (8, 16) if quick else (8, 16, 32)
    base = ["trainer.prompts_per_step=2", "trainer.inner_epochs=1", "policy.forward_chunk=8"]
    return {
        "group size": {f"G={g}": (g, [*base, f"trainer.group_size={g}", f"trainer.minibatch_size={2 * g}",
                                      f"trainer.micro_batch_size={2 * g}"]) for g in groups},
        "image side (px)": {f"{s}x{s}": (s * s, [*base, "trainer.group_size=4", "trainer.minibatch_size=8",
                                                 "trainer.micro_batch_size=8", f"policy.model.sample_size={s}"])
                            for s in sides},
    }


def video_variants(quick: bool) -> dict[str, dict[str, tuple[float, list[str]]]]:
    frames = (8, 16) if quick else (8, 16, 32)
    base = ["trainer.prompts_per_step=2", "trainer.inner_epochs=1", "policy.forward_chunk=4"]
    return {
        # a segment moves at most canvas - 1 px: longer videos get more segments (8 frames each at most)
        "frames": {f"{f} frames": (f, [*base, "trainer.group_size=4", "trainer.minibatch_size=8",
                                       "trainer.micro_batch_size=8", f"prompts.segments={max(2, f // 8)}",
                                       f"prompts.segment_frames={f // max(2, f // 8)}"]) for f in frames},
        "group size": {f"G={g}": (g, [*base, f"trainer.group_size={g}", f"trainer.minibatch_size={2 * g}",
                                      f"trainer.micro_batch_size={2 * g}", "prompts.segments=2",
                                      "prompts.segment_frames=4"]) for g in (4, 8)},
    }


def vlm_variants(quick: bool) -> dict[str, dict[str, tuple[float, list[str]]]]:
    lengths = (8, 16) if quick else (8, 16, 32)
    groups = (2, 4) if quick else (2, 4, 8)
    base = ["trainer.prompts_per_step=2", "trainer.inner_epochs=1", "policy.forward_chunk=4",
            "explorer={name: sampling}", "objective={name: grpo}"]
    return {
        "response tokens": {f"{n} tokens": (n, [*base, "trainer.group_size=4", "trainer.minibatch_size=8",
                                                "trainer.micro_batch_size=4", f"policy.max_new_tokens={n}"])
                            for n in lengths},
        "group size": {f"G={g}": (g, [*base, f"trainer.group_size={g}", f"trainer.minibatch_size={2 * g}",
                                      "trainer.micro_batch_size=4", "policy.max_new_tokens=12"]) for g in groups},
    }


DOMAINS = {
    "image": (SMOKE / "flow_grpo_tiny.yaml", image_variants),
    "video": (SMOKE / "video_sde_tiny.yaml", video_variants),
    "vlm": (SMOKE / "vlm_grpo_tiny.yaml", vlm_variants),
}


def per_doubling(time_ratio: float, work_ratio: float) -> float:
    return time_ratio ** (1 / math.log2(work_ratio)) if work_ratio > 1 else float("nan")


def measure(domain: str, axes, recipe: Path, args, tmp: str) -> list[str]:
    runners: dict[tuple[str, str], StepRunner] = {}
    for axis, variants in axes.items():
        for label, (_, overrides) in variants.items():
            run_dir = os.path.join(tmp, f"{domain}-{axis}-{label}".replace(" ", "_").replace("/", "_"))
            runners[(axis, label)] = StepRunner(build_trainer(str(recipe), [*QUIET, *overrides], run_dir))
    for run in runners.values():
        for _ in range(args.warmup):
            run(1)
    samples: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
    for rep in range(args.repeats):
        for key, run in runners.items():
            samples[key].append(run(args.steps_window)["step"])
        print(f"[bench] {domain}: repetition {rep + 1}/{args.repeats}", flush=True)
    lines = [f"**{domain}** (`{os.path.relpath(recipe, ROOT)}`)", "",
             "| axis | variant | work | step | time ratio | work ratio | per doubling |", "|---|---|---:|---:|---:|---:|---:|"]
    for axis, variants in axes.items():
        labels = list(variants)
        first = labels[0]
        w0 = variants[first][0]
        for label in labels:
            w = variants[label][0]
            ratio = median([a / b for a, b in zip(samples[(axis, label)], samples[(axis, first)], strict=True)])
            pd = per_doubling(ratio, w / w0)
            lines.append(f"| {axis} | {label} | {w:g} | {median(samples[(axis, label)]) * 1e3:.0f} ms | {ratio:.2f} | "
                         f"{w / w0:g} | {'-' if math.isnan(pd) else f'{pd:.2f}'} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repetitions of every variant")
    ap.add_argument("--steps-window", type=int, default=2, help="consecutive steps timed per repetition (their mean)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps of every variant first")
    ap.add_argument("--quick", action="store_true", help="two sizes per axis instead of three")
    ap.add_argument("--record", action="store_true", help="append a dated entry to docs/benchmarks.md (or $GENRL_BENCHMARK_DOC)")
    args = ap.parse_args(argv)
    quiet_single_thread()
    t0 = time.perf_counter()
    lines = [f"repeats {args.repeats} x steps-window {args.steps_window} (per-step means), interleaved, medians; "
             "tiny random-initialised models from the smoke recipes", ""]
    with tempfile.TemporaryDirectory(prefix="genrl-growth-") as tmp:
        for domain in args.domains:
            recipe, variants = DOMAINS[domain]
            lines += measure(domain, variants(args.quick), recipe, args, tmp)
    lines += ["**agents** (driving scenes): see `benchmarks/drive_planner.py` (one planner decision as A doubles)", "",
              f"peak RSS {peak_rss_mib():.0f} MiB; benchmark wall time {time.perf_counter() - t0:.0f} s"]
    print("\n" + "\n".join(lines))
    if args.record:
        record_entry("cost_growth", lines, hardware=f"{cpu_model()}, 1 torch thread")
    return 0


if __name__ == "__main__":
    sys.exit(main())
