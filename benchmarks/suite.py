"""The benchmark suite: every benchmark script under one command, with its peak memory.

    python -m benchmarks list
    python -m benchmarks run [NAME ...] [--quick] [--no-record] [--doc FILE]

``run`` starts each benchmark as its own process (``python benchmarks/<script>.py ... --record``), shows
its output as it comes, and measures the process's wall time and peak resident memory (``wait4``'s
``ru_maxrss``: the largest of the process and the children it waited for). Each script records its own
figures (ratios measured side by side in one process run, interleaved, medians) as a dated entry in
docs/benchmarks.md; the suite then appends one more entry: the machine, the versions, and per benchmark
the exact command, exit status, wall time and peak memory. ``--doc`` sends every record elsewhere
(``GENRL_BENCHMARK_DOC`` for the scripts). Benchmarks assert nothing: a failing one is reported, the
others still run. GPU figures come from ``benchmarks/gpu.sh`` (never part of CI).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Benchmark:
    script: str
    what: str
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)


SUITE: dict[str, Benchmark] = {
    "flow_grpo_step": Benchmark(
        "flow_grpo_step.py", "Flow-GRPO step vs its compute floor (target <= 1.15); timestep-window speed-up",
        quick_args=("--repeats", "3", "--steps-window", "2")),
    "cost_growth": Benchmark(
        "cost_growth.py", "step time as group size, image size and video frames double (target ~2x per doubling)",
        quick_args=("--repeats", "2", "--quick")),
    "vlm_grpo_vs_trl": Benchmark(
        "vlm_grpo_vs_trl.py", "VLM GRPO step vs trl GRPOTrainer (target <= 1.0); VOGUE overhead over GRPO",
        quick_args=("--repeats", "3", "--steps-window", "4")),
    "video_rollout": Benchmark(
        "video_rollout.py", "AR video sampler: KV cache vs full recompute; KVPO vs SDE-GRPO step",
        quick_args=("--repeats", "3", "--no-train")),
    "rm_vs_trl": Benchmark(
        "image_text_rm_vs_trl.py", "reward-model training epoch vs trl RewardTrainer (same pairs, same split)",
        quick_args=("--quick",)),
    "drive_planner": Benchmark(
        "drive_planner.py", "Gen-Drive planner latency per decision (S scenes) and cost growth in agents",
        quick_args=("--repeats", "5", "--samples", "1,16", "--agents", "4,8")),
    "async_reward": Benchmark(
        "async_reward.py", "a slow reward scored while the rollout is generated (reward_chunks)",
        quick_args=("--repeats", "3")),
}


def command(name: str, *, quick: bool, record: bool) -> list[str]:
    b = SUITE[name]
    return [sys.executable, str(ROOT / "benchmarks" / b.script), *(b.quick_args if quick else b.args),
            *(["--record"] if record else [])]


def run_one(cmd: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    """(exit status, wall seconds, peak RSS in MiB) of one benchmark process; its output goes to ours."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_kib = usage.ru_maxrss  # KiB on Linux
    return proc.returncode, time.perf_counter() - t0, rss_kib / 1024


def versions() -> str:
    import importlib.metadata as md

    names = ("torch", "diffusers", "transformers", "accelerate", "trl", "peft", "deepspeed", "datasets")
    out = []
    for n in names:
        try:
            out.append(f"{n} {md.version(n)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(out)


def summary_lines(rows: list[dict]) -> list[str]:
    lines = ["| benchmark | what | exit | wall | peak RSS | command |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {SUITE[r['name']].what} | {r['rc']} | {r['wall']:.0f} s | "
                     f"{r['rss']:.0f} MiB | `{r['cmd']}` |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the benchmarks and what each measures")
    r = sub.add_parser("run", help="run benchmarks (all, or the NAMEs given)")
    r.add_argument("names", nargs="*", metavar="NAME", help=f"any of {list(SUITE)} (default: all)")
    r.add_argument("--quick", action="store_true", help="fewer repetitions / smaller sizes (minutes, not tens)")
    r.add_argument("--no-record", action="store_true", help="print only; append nothing to the records")
    r.add_argument("--doc", default=None, help="where records go (default docs/benchmarks.md)")
    args = ap.parse_args(argv)
    if args.action == "list":
        for name, b in SUITE.items():
            print(f"{name:<18} {b.what}")
        return 0
    unknown = [n for n in args.names if n not in SUITE]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; expected any of {list(SUITE)}")
    names = args.names or list(SUITE)
    record = not args.no_record
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    if args.doc:
        env["GENRL_BENCHMARK_DOC"] = str(Path(args.doc).resolve())
        os.environ["GENRL_BENCHMARK_DOC"] = env["GENRL_BENCHMARK_DOC"]
    rows = []
    for name in names:
        cmd = command(name, quick=args.quick, record=record)
        print(f"\n[suite] {name}: {shlex.join(cmd)}", flush=True)
        rc, wall, rss = run_one(cmd, {**env, **SUITE[name].extra_env})
        shown = shlex.join(["python", os.path.relpath(cmd[1], ROOT), *cmd[2:]])
        rows.append({"name": name, "rc": rc, "wall": wall, "rss": rss, "cmd": shown})
        print(f"[suite] {name}: exit {rc}, {wall:.0f} s, peak RSS {rss:.0f} MiB", flush=True)
    lines = summary_lines(rows)
    print("\n" + "\n".join(lines))
    if record:
        from benchmarks.flow_grpo_step import cpu_model, record_entry

        record_entry("benchmark suite", [f"- versions: {versions()}",
                                         f"- `python -m benchmarks run {' '.join(args.names)}"
                                         f"{' --quick' if args.quick else ''}` (each benchmark's figures: its own "
                                         "entry above)", "", *lines],
                     hardware=f"{cpu_model()}, {os.cpu_count()} logical CPUs, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, "
                              f"{platform.machine()}")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
