"""Benchmark: Flow-GRPO vs Flow-GRPO + GRPO-Guard vs DiffusionNFT on the quick start's digits task.

    python benchmarks/objective_comparison.py [--seeds 0 1 2] [--steps 80] [--out docs/objective_comparison]
                                              [--runs-root runs/objective_comparison] [--reuse] [--quick]
                                              [--record] [key=value ...]

A benchmark, not a test: it trains, writes figures and a table, and asserts nothing. Each method is one
recipe with the same base model, rewards and evaluation (only the sampler and the objective differ):

  flow_grpo        recipes/quickstart.yaml
  flow_grpo_guard  recipes/flow_grpo_guard.yaml  (RatioNorm + 1/dt reweighting)
  diffusion_nft    recipes/diffusion_nft.yaml

Every run is one ``genrl train`` subprocess with ``seed=S trainer.steps=N eval_schedule.every=N//4
logging.progress=false`` (+ the extra ``key=value`` overrides), run SEQUENTIALLY (wall-clock is measured)
in an order interleaved by seed (seed 0: all methods, seed 1: all methods, ...), so that load on a shared
machine hits all methods alike.

Measured per run, from RUN_DIR/metrics.jsonl and RUN_DIR/eval/{before,after}.json:
  training seconds   cumulative sum of the loop's ``time/step`` (rollout + reward + update): the
                     periodic evaluations, checkpoints and process start-up are NOT counted;
  generated images   step x trainer.prompts_per_step x trainer.group_size (from RUN_DIR/recipe.yaml);
  reward             ``reward/total/mean`` of each step's rollout batch;
  eval points        judge accuracy, diversity, stroke crispness at step 0 (before.json), at every
                     ``eval_schedule.every`` steps and at the end (after.json).

Outputs in ``--out``: curves.png (mean over seeds per method, band = min..max over seeds), results.json
(all raw data) and README.md (mean ± 95 % Student-t interval over seeds per method). ``--record`` also
appends the table to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: reuse the shared helpers of benchmarks/
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from benchmarks.flow_grpo_step import cpu_model, record_entry, utc_date  # noqa: E402
from genrl.eval.stats import t_interval  # noqa: E402

METHODS: dict[str, str] = {
    "flow_grpo": "recipes/quickstart.yaml",
    "flow_grpo_guard": "recipes/flow_grpo_guard.yaml",
    "diffusion_nft": "recipes/diffusion_nft.yaml",
}
COLORS = {"flow_grpo": "tab:blue", "flow_grpo_guard": "tab:orange", "diffusion_nft": "tab:green"}
ACC_TARGET = 0.95
EVAL_KEYS = {  # name in the outputs -> key in metrics.jsonl eval lines / before.json / after.json
    "judge_accuracy": ("eval/judge_accuracy/mean", "judge_accuracy"),
    "diversity": ("eval/diversity/mean", "diversity"),
    "stroke_crispness": ("eval/stroke_crispness/mean", "stroke_crispness"),
    "frechet_judge_features": ("eval/frechet_judge_features/mean", "frechet_judge_features"),
}


# ----------------------------------------------------------------------------- running
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--out", default="docs/objective_comparison")
    p.add_argument("--runs-root", default="runs/objective_comparison")
    p.add_argument("--reuse", action="store_true", help="skip runs whose eval/after.json exists")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 seed, 6 steps, eval every 3 steps, eval.n_per_prompt=20")
    p.add_argument("--record", action="store_true", help="append the table to docs/benchmarks.md")
    p.add_argument("overrides", nargs="*", help="extra key=value recipe overrides for every run")
    args = p.parse_args(argv)
    args.every = max(1, args.steps // 4)
    if args.quick:
        args.seeds, args.steps, args.every = [args.seeds[0]], 6, 3
        args.overrides = ["eval.n_per_prompt=20", *args.overrides]
    return args


def run_one(method: str, seed: int, args: argparse.Namespace, runs_root: Path) -> tuple[Path, float | None]:
    """Train one (method, seed) in a subprocess; returns its run dir and wall seconds (None if reused)."""
    run_dir = runs_root / method / f"seed{seed}"
    if args.reuse and (run_dir / "eval" / "after.json").exists():
        print(f"[bench] {method} seed {seed}: reusing {run_dir}", flush=True)
        return run_dir, None
    if run_dir.exists():  # a leftover (partial) run would be resumed: start from scratch
        shutil.rmtree(run_dir)
    log = runs_root / "logs" / f"{method}_seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "genrl.cli", "train", METHODS[method], "--run-dir", str(run_dir), "--fresh",
           f"seed={seed}", f"trainer.steps={args.steps}", f"eval_schedule.every={args.every}",
           "logging.progress=false", *args.overrides]
    print(f"[bench] {method} seed {seed}: {shlex.join(cmd[1:])}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"{method} seed {seed} failed (exit {rc}); log {log}:\n{tail}")
    print(f"[bench] {method} seed {seed}: done in {wall:.0f} s wall (log {log})", flush=True)
    return run_dir, wall


def collect(method: str, seed: int, run_dir: Path, wall: float | None) -> dict[str, Any]:
    """Curves and eval points of one finished run."""
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    images_per_step = int(recipe["trainer"]["prompts_per_step"]) * int(recipe["trainer"]["group_size"])
    train_rows: dict[int, dict] = {}
    eval_rows: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "time/step" in row:
            train_rows[int(row["step"])] = row  # last write wins (a resumed step overwrites)
        if any(k.startswith("eval/") for k in row):
            eval_rows[int(row["step"])] = row
    steps = sorted(train_rows)
    seconds = np.cumsum([float(train_rows[s]["time/step"]) for s in steps]).tolist()
    sec_at = dict(zip(steps, seconds, strict=True))
    before = json.loads((run_dir / "eval" / "before.json").read_text())
    after = json.loads((run_dir / "eval" / "after.json").read_text())

    def point(step: int, src: dict, key_idx: int) -> dict[str, float]:
        pt = {"step": step, "seconds": sec_at.get(step, 0.0), "images": step * images_per_step}
        for name, keys in EVAL_KEYS.items():
            if keys[key_idx] in src:
                pt[name] = float(src[keys[key_idx]])
        return pt

    evals = [point(0, before, 1)] + [point(s, eval_rows[s], 0) for s in sorted(eval_rows) if s > 0]
    last = steps[-1] if steps else 0
    if evals[-1]["step"] != last:  # the final evaluation was not logged as a periodic one
        evals.append(point(last, after, 1))
    return {
        "method": method, "seed": seed, "recipe": METHODS[method], "run_dir": str(run_dir),
        "images_per_step": images_per_step, "wall_s": wall,
        "steps": steps, "seconds": seconds, "images": [s * images_per_step for s in steps],
        "reward": [float(train_rows[s]["reward/total/mean"]) for s in steps],
        "evals": evals, "before": before, "after": after,
    }


# ----------------------------------------------------------------------------- summaries
def first_reaching(run: dict, target: float = ACC_TARGET) -> dict | None:
    """First eval point whose judge accuracy is >= target (None if none)."""
    return next((e for e in run["evals"] if e.get("judge_accuracy", -1.0) >= target), None)


def per_seed_values(run: dict) -> dict[str, float]:
    tail = max(1, len(run["reward"]) // 10)
    total_s = run["seconds"][-1] if run["seconds"] else float("nan")
    acc_gain = run["after"]["judge_accuracy"] - run["before"]["judge_accuracy"]
    return {
        "judge_accuracy": run["after"]["judge_accuracy"],
        "stroke_crispness": run["after"]["stroke_crispness"],
        "diversity": run["after"]["diversity"],
        "final_reward": float(np.mean(run["reward"][-tail:])),
        "training_s": total_s,
        "s_per_step": total_s / max(1, len(run["steps"])),
        "acc_gain_per_min": 60.0 * acc_gain / total_s,
    }


def summarise(runs: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        vals = [per_seed_values(r) for r in mine]
        summ = {k: t_interval([v[k] for v in vals]).to_dict() for k in vals[0]}
        reached = [first_reaching(r) for r in mine]
        hit = [e["seconds"] for e in reached if e is not None]
        summ["s_to_target"] = {
            "target": ACC_TARGET, "reached": len(hit), "n": len(mine),
            "per_seed": [None if e is None else e["seconds"] for e in reached],
            **({"summary": t_interval(hit).to_dict()} if hit else {}),
        }
        out[method] = summ
    return out


def fmt_ci(d: dict, digits: int = 3) -> str:
    if d["ci95"] is None:
        return f"{d['mean']:.{digits}f} (n={d['n']})"
    half = (d["ci95"][1] - d["ci95"][0]) / 2
    return f"{d['mean']:.{digits}f} ± {half:.{digits}f}"


def fmt_target(d: dict) -> str:
    if not d["reached"]:
        return "not reached"
    s = d["summary"]
    txt = f"{s['mean']:.0f}" if s["ci95"] is None else f"{s['mean']:.0f} ± {(s['ci95'][1] - s['ci95'][0]) / 2:.0f}"
    return txt if d["reached"] == d["n"] else f"{txt} ({d['reached']}/{d['n']} seeds; others not reached)"


def overlap(a: dict, b: dict) -> bool | None:
    if a["ci95"] is None or b["ci95"] is None:
        return None
    return a["ci95"][0] <= b["ci95"][1] and b["ci95"][0] <= a["ci95"][1]


def verdict(summary: dict[str, dict]) -> list[str]:
    """Which method gains judge accuracy fastest per training second, phrased from the data."""
    key = "acc_gain_per_min"
    ranked = sorted(summary, key=lambda m: summary[m][key]["mean"], reverse=True)
    if len(ranked) < 2:
        return []
    best, second = ranked[0], ranked[1]
    a, b = summary[best][key], summary[second][key]
    diff = a["mean"] - b["mean"]
    ov = overlap(a, b)
    noise = ("the 95% intervals overlap, so this difference is within the seed noise" if ov
             else "the 95% intervals do not overlap" if ov is False
             else "with one seed there is no interval, so nothing can be said about seed noise")
    lines = [
        f"**Judge accuracy per training second:** `{best}` gains the most judge accuracy per training minute "
        f"({a['mean']:+.4f}/min vs {b['mean']:+.4f}/min for `{second}`, difference {diff:+.4f}/min); {noise}.",
    ]
    reached = {m: summary[m]["s_to_target"] for m in summary if summary[m]["s_to_target"]["reached"]}
    if reached:
        fastest = min(reached, key=lambda m: reached[m]["summary"]["mean"])
        lines.append(f"Fastest to judge accuracy {ACC_TARGET} (first eval point at or above it): `{fastest}` "
                     f"at {reached[fastest]['summary']['mean']:.0f} training s "
                     f"({reached[fastest]['reached']}/{reached[fastest]['n']} seeds).")
    else:
        lines.append(f"No method reached judge accuracy {ACC_TARGET} at an eval point.")
    return lines


def table(summary: dict[str, dict]) -> list[str]:
    head = ["method", "judge acc", "crispness", "diversity", "final reward", "training s", "s / step",
            f"s to acc {ACC_TARGET}", "Δacc / training min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, s in summary.items():
        cells = [f"`{m}`", fmt_ci(s["judge_accuracy"]), fmt_ci(s["stroke_crispness"]), fmt_ci(s["diversity"]),
                 fmt_ci(s["final_reward"]), fmt_ci(s["training_s"], 1), fmt_ci(s["s_per_step"], 2),
                 fmt_target(s["s_to_target"]), fmt_ci(s["acc_gain_per_min"], 4)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ----------------------------------------------------------------------------- figure
def _aligned(runs: list[dict], xkey: str, ykey: str, evals: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                            np.ndarray] | None:
    """Mean x, mean y, min y, max y over seeds, on the steps common to all seeds."""
    series = []
    for r in runs:
        if evals:
            pts = {e["step"]: (e[xkey], e[ykey]) for e in r["evals"] if ykey in e}
        else:
            pts = {s: (x, y) for s, x, y in zip(r["steps"], r[xkey], r[ykey], strict=True)}
        series.append(pts)
    common = sorted(set.intersection(*(set(s) for s in series))) if series else []
    if not common:
        return None
    x = np.array([[s[k][0] for k in common] for s in series], dtype=np.float64)
    y = np.array([[s[k][1] for k in common] for s in series], dtype=np.float64)
    return x.mean(0), y.mean(0), y.min(0), y.max(0)


def plot(runs: list[dict], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [  # (x, y, from eval points, y label)
        ("seconds", "reward", False, "reward/total/mean"),
        ("images", "reward", False, "reward/total/mean"),
        ("seconds", "judge_accuracy", True, "judge accuracy"),
        ("images", "judge_accuracy", True, "judge accuracy"),
        ("images", "diversity", True, "diversity"),
        ("images", "stroke_crispness", True, "stroke crispness"),
    ]
    xlabels = {"seconds": "training seconds (eval excluded)", "images": "generated images"}
    fig = Figure(figsize=(15, 8.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    for ax, (xk, yk, ev, ylabel) in zip(axes.flat, panels, strict=True):
        for method in METHODS:
            mine = [r for r in runs if r["method"] == method]
            res = _aligned(mine, xk, yk, ev)
            if res is None:
                continue
            x, y, lo, hi = res
            ax.plot(x, y, marker="o" if ev else None, ms=3, color=COLORS[method], label=f"{method} (n={len(mine)})")
            ax.fill_between(x, lo, hi, color=COLORS[method], alpha=0.2, linewidth=0)
        if yk == "judge_accuracy":
            ax.axhline(ACC_TARGET, color="grey", ls=":", lw=1)
        ax.set_xlabel(xlabels[xk])
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} vs {xk}")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(loc="best", fontsize=8)
    fig.suptitle(title + "  —  line: mean over seeds, band: min..max over seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


# ----------------------------------------------------------------------------- main
def command_line() -> str:
    cmd = "python " + shlex.join([os.path.relpath(sys.argv[0], ROOT) if sys.argv[0] else "", *sys.argv[1:]])
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "GENRL_CACHE") if k in os.environ)
    return f"{env} {cmd}" if env else cmd


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out, runs_root = Path(args.out), Path(args.runs_root)
    out = out if out.is_absolute() else ROOT / out
    runs_root = runs_root if runs_root.is_absolute() else ROOT / runs_root
    hardware = f"{cpu_model()}, {os.cpu_count()} logical CPUs, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    date, cmd = utc_date(), command_line()

    runs = []
    for seed in args.seeds:  # interleaved: seed 0 (all methods), seed 1 (all methods), ...
        for method in METHODS:
            run_dir, wall = run_one(method, seed, args, runs_root)
            runs.append(collect(method, seed, run_dir, wall))

    summary = summarise(runs)
    before = sorted({round(r["before"]["judge_accuracy"], 4) for r in runs})
    title = f"objective comparison: {len(args.seeds)} seed(s) x {args.steps} steps"
    plot(runs, out / "curves.png", title)
    results = {
        "command": cmd, "date": date, "hardware": hardware,
        "config": {"seeds": args.seeds, "steps": args.steps, "eval_every": args.every, "quick": args.quick,
                   "overrides": args.overrides, "methods": METHODS, "acc_target": ACC_TARGET},
        "summary": summary, "runs": runs,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))

    tab = table(summary)
    notes = [
        f"Mean ± half-width of the 95% Student-t interval over seeds (n = {len(args.seeds)}; with one seed no "
        "interval: `(n=1)`). Judge accuracy, crispness and diversity are the final evaluation "
        "(RUN_DIR/eval/after.json); final reward is the mean `reward/total/mean` of the last 10% of steps; "
        "training s is the cumulative sum of the loop's `time/step` (rollout + reward + update): "
        "**evaluation time (and checkpoints, start-up) is excluded**. "
        f"`s to acc {ACC_TARGET}` is the training seconds at the first eval point (every {args.every} steps) "
        f"at or above {ACC_TARGET}; `Δacc / training min` is (final - base) judge accuracy per training minute. "
        f"Base model judge accuracy (before.json): {', '.join(f'{b:.4f}' for b in before)}.",
    ]
    verdict_lines = verdict(summary)
    readme = [
        "# Objective comparison: Flow-GRPO vs Flow-GRPO + GRPO-Guard vs DiffusionNFT", "",
        "Same digits task, base model, rewards and evaluation; only the sampler and the objective differ "
        f"({', '.join(f'`{m}` = `{r}`' for m, r in METHODS.items())}). Runs are sequential, one subprocess "
        "each, interleaved by seed. Produced by `benchmarks/objective_comparison.py`.", "",
        f"- command: `{cmd}`", f"- date: {date}", f"- hardware: {hardware}",
        f"- per run: `seed=S trainer.steps={args.steps} eval_schedule.every={args.every} logging.progress=false"
        + (" " + " ".join(args.overrides) if args.overrides else "") + "`", "",
        *tab, "", *notes, "", *verdict_lines, "",
        "![curves](curves.png)", "",
        "Curves: line = mean over seeds, band = min..max over seeds; x = cumulative training seconds "
        "(eval excluded) or generated images (step x prompts_per_step x group_size). Raw data: results.json.",
        "",
    ]
    (out / "README.md").write_text("\n".join(readme))
    print("\n".join(["", *tab, "", *verdict_lines, "", f"[bench] wrote {out}/curves.png, results.json, README.md"]))
    if args.record:
        record_entry("objective_comparison", [*tab, "", *notes, "", *verdict_lines], hardware=hardware)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
