"""Benchmark: GRPO vs NoisyRollout vs VOGUE on the visual arithmetic task, over seeds, against the base.

    python benchmarks/vlm_exploration_comparison.py [--seeds 0 1 2] [--jobs 2] [--out docs/vlm_comparison]
                                                    [--runs-root runs/vlm_comparison] [--reuse] [--record]
                                                    [key=value ...]

A benchmark, not a test: it trains, writes a table, asserts nothing. Each arm is one recipe with the same
base model (recipes/pretrain/vlm_arith_sft.yaml), data, rewards, group size, steps and evaluation; only
the exploration and the advantage shaping differ:

  grpo            recipes/vlm_grpo.yaml           token sampling only
  noisy_rollout   recipes/vlm_noisy_rollout.yaml  half of each group on an annealed noisy image, no bonus
  vogue           recipes/vlm_vogue.yaml          noisy groups with p(s) + uncertainty / entropy bonuses

Every run is ``genrl train RECIPE seed=S`` (+ overrides) in its own process, ``--jobs`` at a time (1 torch
thread each). The metrics are fixed before the runs: held-out pass@1 (share of correct sampled answers,
200 questions of unseen handwriting x 4 samples, temperature 1) and pass@4 (a question counts if any of
its 4 samples is right), from RUN_DIR/eval/{before,after}.json; "base" is the SFT model (the ``before``
evaluation, identical for every run). Reported as mean ± std over seeds, plus seconds per training step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.flow_grpo_step import cpu_model, record_entry, utc_date  # noqa: E402

ARMS = {"grpo": "recipes/vlm_grpo.yaml", "noisy_rollout": "recipes/vlm_noisy_rollout.yaml",
        "vogue": "recipes/vlm_vogue.yaml"}
METRICS = ("accuracy", "pass@4", "format")


def run_one(arm: str, seed: int, runs_root: Path, overrides: list[str], reuse: bool) -> Path:
    run = runs_root / f"{arm}_seed{seed}"
    if reuse and (run / "eval" / "after.json").is_file():
        return run
    cmd = [sys.executable, "-m", "genrl.cli", "train", ARMS[arm], "--run-dir", str(run), "--fresh",
           f"seed={seed}", "logging.progress=false", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = runs_root / f"{arm}_seed{seed}.log"
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{arm} seed {seed} failed; see {log}")
    return run


def summarize(runs: dict[tuple[str, int], Path]) -> dict:
    out: dict = {"base": {}, "arms": {}}
    base_vals = {m: [] for m in METRICS}
    for (arm, _seed), run in sorted(runs.items()):
        before = json.loads((run / "eval" / "before.json").read_text())
        after = json.loads((run / "eval" / "after.json").read_text())
        steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        entry = out["arms"].setdefault(arm, {m: [] for m in (*METRICS, "s_per_step")})
        for m in METRICS:
            entry[m].append(after[m])
            base_vals[m].append(before[m])
        entry["s_per_step"].append(float(np.mean([s["time/step"] for s in steps])))
    out["base"] = {m: base_vals[m][0] for m in METRICS}  # identical for every run (same model, eval seed)
    return out


def table(summary: dict, seeds: list[int]) -> str:
    def ms(v: list[float]) -> str:
        return f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.3f}"

    lines = [f"Held-out visual arithmetic (200 questions, 4 samples each, T=1), {len(seeds)} seeds {seeds}; "
             "mean ± std over seeds.", "",
             "| arm | pass@1 | pass@4 | format | s / step |", "|---|---|---|---|---|",
             f"| base (SFT) | {summary['base']['accuracy']:.3f} | {summary['base']['pass@4']:.3f} | "
             f"{summary['base']['format']:.3f} | – |"]
    for arm, v in summary["arms"].items():
        lines.append(f"| {arm} | {ms(v['accuracy'])} | {ms(v['pass@4'])} | {ms(v['format'])} | {ms(v['s_per_step'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="docs/vlm_comparison")
    ap.add_argument("--runs-root", default="runs/vlm_comparison")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs (eval/after.json present)")
    ap.add_argument("--record", action="store_true", help="append the table to docs/benchmarks.md")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = ap.parse_args()
    runs_root = (ROOT / args.runs_root).resolve()
    runs_root.mkdir(parents=True, exist_ok=True)
    # Build the shared SFT base once before the parallel runs (they would wait on its cache lock anyway).
    subprocess.run([sys.executable, "-m", "genrl.cli", "pretrain", "recipes/pretrain/vlm_arith_sft.yaml"],
                   cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {job: pool.submit(run_one, *job, runs_root, args.overrides, args.reuse) for job in jobs}
        runs = {job: f.result() for job, f in futures.items()}
    summary = summarize(runs)
    text = table(summary, args.seeds)
    print(text)
    out = (ROOT / args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"seeds": args.seeds, "overrides": args.overrides, **summary},
                                                 indent=2))
    (out / "README.md").write_text(f"# VLM exploration comparison ({utc_date()}, {cpu_model()})\n\n"
                                   f"`python benchmarks/vlm_exploration_comparison.py "
                                   f"{' '.join(args.overrides)}`\n\n{text}\n")
    if args.record:
        record_entry("VLM exploration: GRPO vs NoisyRollout vs VOGUE", text.splitlines(),
                     hardware=f"{cpu_model()}, {args.jobs} runs in parallel, 1 torch thread each")


if __name__ == "__main__":
    main()
