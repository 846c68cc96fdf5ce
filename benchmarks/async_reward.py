"""Benchmark: a slow reward scored while the rollout is still being generated (``trainer.reward_chunks``).

    python benchmarks/async_reward.py [--reward-s 0.5] [--chunks 4] [--repeats 5] [--steps-window 2]
                                      [--executor local|thread|process] [--record] [key=value ...]

A benchmark, not a test: it prints figures (``--record`` appends them to docs/benchmarks.md) and
asserts nothing. The quick start's flow policy (recipes/quickstart.yaml, eval off) is trained with
one reward, ``bench_slow_crispness``: stroke crispness after a sleep of ``--reward-s`` seconds per
step, spread over the samples (a call on b of the step's N samples sleeps reward_s * b / N, as a
reward model's latency grows with its batch), so every variant waits the same total per step.

Variants, built once and interleaved in ONE process (A, B, C, A, B, C, ...), medians reported:
  no_latency  reward_chunks=1 and no sleep: the step without reward latency (the floor);
  serial      reward_chunks=1: generate everything, then wait for the whole reward;
  overlap     reward_chunks=--chunks: piece k is scored while piece k+1 is generated, so only the
              last piece's scoring is left to wait for (ideal: reward_s / chunks).

The share of reward latency hidden is (serial - overlap) / (serial - no_latency), from paired
per-repetition step times; the loop's own ``time/reward`` (wait) and ``time/reward_hidden`` are
printed too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: reuse the shared helpers of benchmarks/
    sys.path.insert(0, str(ROOT))

from benchmarks.flow_grpo_step import (  # noqa: E402
    BASE_OVERRIDES,
    build_trainer,
    cpu_model,
    fmt,
    median,
    record_entry,
)
from genrl.config.validate import option  # noqa: E402
from genrl.registry import REWARDS  # noqa: E402
from genrl.rewards.base import RewardConfig  # noqa: E402

KEYS = ("time/rollout", "time/reward", "time/reward_hidden", "time/update", "time/step")

if "bench_slow_crispness" not in REWARDS:  # top level: a process worker imports this module to build it

    @REWARDS.register("bench_slow_crispness")
    class SlowCrispness:
        """Stroke crispness after an artificial latency proportional to the batch (benchmarks only)."""

        @dataclass
        class Config(RewardConfig):
            seconds_per_sample: float = option(default=0.0, help="Sleep per scored sample.")

        def __init__(self, config: Config, **_: object) -> None:
            self.config = config
            self.__name__ = "bench_slow_crispness"

        def __call__(self, images, prompts):
            from genrl.eval.image_metrics import stroke_crispness

            time.sleep(self.config.seconds_per_sample * len(images))
            return stroke_crispness(images.float().cpu())


class StepRunner:
    """Consecutive ``train_step`` calls of one trainer; per-step means of the loop's timings."""

    def __init__(self, trainer) -> None:
        self.trainer, self.step = trainer, 0

    def __call__(self, n: int) -> dict[str, float]:
        sums = dict.fromkeys(KEYS, 0.0)
        for _ in range(n):
            m = self.trainer.train_step(self.step)
            self.step += 1
            for k in KEYS:
                sums[k] += m[k]
        return {k.removeprefix("time/"): v / n for k, v in sums.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reward-s", type=float, default=0.5, help="reward latency per step (seconds, all samples)")
    ap.add_argument("--chunks", type=int, default=4, help="trainer.reward_chunks of the overlap variant")
    ap.add_argument("--executor", choices=("local", "thread", "process"), default="local",
                    help="executor of the slow reward (every variant)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repetitions of every variant")
    ap.add_argument("--steps-window", type=int, default=2, help="consecutive steps timed per repetition (their mean)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps of every variant first")
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"), help="training recipe")
    ap.add_argument("--record", action="store_true", help="append a dated entry to docs/benchmarks.md (or $GENRL_BENCHMARK_DOC)")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, dotted.key=value (applied to every trainer)")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.steps_window < 1 or args.warmup < 0 or args.chunks < 2 or args.reward_s <= 0:
        ap.error("expected --repeats/--steps-window >= 1, --warmup >= 0, --chunks >= 2, --reward-s > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    import torch

    torch.set_num_threads(1)
    from genrl.config.load import load_recipe
    from genrl.recipe import TrainRecipe

    base, _ = load_recipe(args.recipe, TrainRecipe, [*BASE_OVERRIDES, *args.overrides])
    n = base.trainer.prompts_per_step * base.trainer.group_size
    per_sample = args.reward_s / n

    def reward(seconds: float) -> str:
        return f"rewards=[{{name: bench_slow_crispness, seconds_per_sample: {seconds!r}, executor: {args.executor}}}]"

    specs = {"no_latency": [reward(0.0), "trainer.reward_chunks=1"],
             "serial": [reward(per_sample), "trainer.reward_chunks=1"],
             "overlap": [reward(per_sample), f"trainer.reward_chunks={args.chunks}"]}
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in specs}
    with tempfile.TemporaryDirectory(prefix="genrl-bench-") as tmp:
        runners = {k: StepRunner(build_trainer(args.recipe, [*args.overrides, *o], os.path.join(tmp, k)))
                   for k, o in specs.items()}
        for run in runners.values():
            if args.warmup:
                run(args.warmup)
        for rep in range(args.repeats):
            for name, run in runners.items():
                samples[name].append(run(args.steps_window))
            print(f"[bench] repetition {rep + 1}/{args.repeats}: "
                  + ", ".join(f"{k} {fmt(v[-1]['step'])}" for k, v in samples.items()), flush=True)
        trainer = runners["overlap"].trainer
        for run in runners.values():
            run.trainer.rewards.close()

    def med(name: str, key: str) -> float:
        return median([s[key] for s in samples[name]])

    ratio = median([o["step"] / s["step"] for o, s in zip(samples["overlap"], samples["serial"], strict=True)])
    hidden = median([(s["step"] - o["step"]) / (s["step"] - z["step"]) for s, o, z in
                     zip(samples["serial"], samples["overlap"], samples["no_latency"], strict=True)])
    tc, pc = trainer.recipe.trainer, trainer.policy.config
    piece = n // args.chunks
    lines = [
        f"recipe: {os.path.relpath(args.recipe, ROOT)}  overrides: {' '.join([*BASE_OVERRIDES, *args.overrides])}",
        f"batch {n} = {tc.prompts_per_step} prompts x {tc.group_size}, num_steps {pc.num_steps}, forward_chunk "
        f"{pc.forward_chunk}; reward latency {args.reward_s * 1000:.0f} ms per step ({per_sample * 1e3:.2f} ms per "
        f"sample, executor {args.executor}); overlap: reward_chunks {args.chunks} (about {piece} samples a piece)",
        f"repeats {args.repeats} x steps-window {args.steps_window} (per-step means), medians; "
        "ratios = medians of paired per-repetition ratios",
        "",
        "| variant | reward_chunks | rollout | reward wait (time/reward) | reward hidden | update | step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, chunks in (("no_latency", 1), ("serial", 1), ("overlap", args.chunks)):
        lines.append(f"| {name} | {chunks} | {fmt(med(name, 'rollout'))} | {fmt(med(name, 'reward'))} | "
                     f"{fmt(med(name, 'reward_hidden'))} | {fmt(med(name, 'update'))} | {fmt(med(name, 'step'))} |")
    lines += [
        "",
        f"step time: serial {fmt(med('serial', 'step'))}, overlap {fmt(med('overlap', 'step'))}: "
        f"overlap / serial = {ratio:.2f}",
        f"reward latency hidden behind generation: {hidden:.0%} of the {args.reward_s * 1000:.0f} ms "
        f"(ideal {1 - 1 / args.chunks:.0%}: the last piece's scoring is always waited for)",
        f"benchmark wall time {time.perf_counter() - t_start:.0f} s; 1-min load average {load_start:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end (other work on the machine slows every variant alike)",
    ]
    print("\n" + "\n".join(lines))

    if args.record:
        record_entry("async_reward", lines, hardware=f"{cpu_model()}, {os.cpu_count()} logical cores; torch "
                     f"{torch.__version__}, {torch.get_num_threads()} intra-op thread(s), device {trainer.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
