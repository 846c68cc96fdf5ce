"""Benchmark: KVPO vs noise-based GRPO (SDE-GRPO) on the autoregressive moving-digit video model, over seeds,
at equal numbers of generated videos and at equal training wall time.

    python benchmarks/video_exploration_comparison.py [--settings single multi] [--seeds 0 1 2] [--steps 40]
        [--checkpoint-every 5] [--calibrate-steps 3] [--jobs 2] [--eval-seeds 1] [--eval-prompts N]
        [--out docs/video_comparison] [--runs-root runs/video_comparison] [--reuse] [--record] [key=value ...]

A benchmark, not a test: it trains, evaluates, writes tables, asserts nothing. Four arms, (kvpo | sde_grpo)
x (single | multi), all on the same base (recipes/pretrain/moving_digits_video.yaml, built once and cached),
prompts, reward scorers, rollout batch and evaluation; only the exploration and the objective differ:

  kvpo      recipes/kvpo_{single,multi}.yaml             KV-history routing after a fork, TVE softmax policy
  sde_grpo  recipes/video_sde_grpo_{single,multi}.yaml   Flow-GRPO's SDE noise on the sampler's re-noise steps

  single: single-prompt 16-frame videos; multi: 3-prompt 24-frame videos (re-cache at each prompt switch).

1. Calibration (per setting): each arm runs ``--calibrate-steps`` steps (seed 0, no evaluation); its speed
   is the median ``time/step`` over the steps after the first (the first includes warm-up).
2. Training: per setting, seed and arm one run of ``genrl train RECIPE seed=S`` in its own process
   (``--jobs`` at a time, 1 torch thread each). The slower arm runs ``--steps`` steps, the faster one
   ``steps_equal_time = round(steps x t_slow / t_fast)``, rounded up to a multiple of ``--checkpoint-every``.
   Every ``--checkpoint-every`` steps is checkpointed (all kept). The LR schedule is constant, and every
   draw is keyed by (seed, step), so the faster arm's step-``steps`` checkpoint is the one a run stopped
   there would have written.
3. Evaluation (fixed before the runs, written to OUT/README.md first): the held-out ``moving_digits_video``
   benchmark with the recipe's ``eval:`` settings, ``--eval-seeds`` generation seeds (1234, 1235, ...), of
   the base (once per setting), every run at step ``steps`` (equal videos) and the faster arm's runs at
   ``steps_equal_time`` (equal time; the slower arm's equal-time point is its step-``steps`` checkpoint).
   Each evaluation is a worker process (``--eval-one CKPT SETTING OUT.json``), ``--jobs`` at a time; it
   stores every video's values.
4. Report: per setting and comparison point, arm | text_alignment | motion_alignment | quality | s/step |
   videos generated | training wall time, each as the mean over seeds with a 95% t-interval over seeds.

Use ``policy.base_checkpoint=DIR policy.base_recipe=null`` to train from an existing base instead of building one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.flow_grpo_step import cpu_model, record_entry, utc_date  # noqa: E402

ARMS = {"kvpo": "recipes/kvpo_{setting}.yaml", "sde_grpo": "recipes/video_sde_grpo_{setting}.yaml"}
SETTINGS = {"single": "single-prompt 16-frame videos", "multi": "multi-prompt 24-frame videos (3 prompts x 8 frames)"}
METRICS = ("text_alignment", "motion_alignment", "quality")
PRETRAIN = "recipes/pretrain/moving_digits_video.yaml"
POINTS = {"equal_videos": "equal number of generated videos", "equal_time": "equal training wall time"}
# Two-sided 95% Student-t quantiles t_{0.975, dof} (scipy is not a dependency).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042}


def log(msg: str) -> None:
    print(f"[video-cmp] {msg}", flush=True)


def rel(path: Path | str) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def recipe_of(arm: str, setting: str) -> str:
    return ARMS[arm].format(setting=setting)


def worker_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------------- statistics
def t_quantile(dof: int) -> float:
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, dof))
    except ImportError:
        return T975.get(dof, 1.96)


def mean_ci(values: list[float]) -> dict:
    """Mean and 95% t-interval mean ± t_{0.975, n-1} · s / sqrt(n) (s: sample std, ddof 1); None for n = 1."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return {"mean": m, "ci95": None, "n": len(v)}
    half = t_quantile(len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return {"mean": m, "ci95": [m - half, m + half], "n": len(v)}


def fmt_ci(s: dict, digits: int = 3, mark: str = "") -> str:
    if s["ci95"] is None:
        return f"{s['mean']:.{digits}f}"
    lo, hi = s["ci95"]
    return f"{s['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]{mark}"


# ---------------------------------------------------------------------------------------------- recipes
def train_overrides(user: list[str], *, seed: int, steps: int, checkpoint_every: int) -> list[str]:
    """The user's overrides, then the protocol's (which win)."""
    keep = steps // checkpoint_every + 1 if checkpoint_every else 1
    return [f"seed={seed}", "logging.progress=false", *user, f"trainer.steps={steps}",
            f"trainer.checkpoint_every={checkpoint_every}", f"trainer.keep_last={keep}", "eval=null"]


def resolve(recipe: str, overrides: list[str]):
    from genrl.config.load import load_recipe
    from genrl.recipe import TrainRecipe

    return load_recipe(ROOT / recipe, TrainRecipe, overrides)


def eval_overrides(user: list[str], eval_prompts: int | None) -> list[str]:
    return [*user, *([f"eval.prompts={eval_prompts}"] if eval_prompts else [])]


# ---------------------------------------------------------------------------------------------- training
def read_steps(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["step"])


def finished(run: Path, steps: int, expected: dict) -> bool:
    """A complete run of exactly this recipe (resolved, run_dir aside) with its final checkpoint."""
    import yaml

    if not (run / "checkpoints" / f"step_{steps:08d}" / "checkpoint.json").is_file():
        return False
    try:
        resolved = yaml.safe_load((run / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    strip = lambda d: {k: v for k, v in d.items() if k != "run_dir"}  # noqa: E731
    return strip(resolved) == strip(expected) and [r["step"] for r in read_steps(run)][-1:] == [steps]


def train_one(setting: str, arm: str, seed: int, steps: int, run: Path, args, *, checkpoint_every: int) -> dict:
    """One ``genrl train`` process; returns its run dir and process wall time."""
    overrides = train_overrides(args.overrides, seed=seed, steps=steps, checkpoint_every=checkpoint_every)
    recipe = recipe_of(arm, setting)
    _, expected = resolve(recipe, overrides)
    if args.reuse and finished(run, steps, expected):
        log(f"reuse {rel(run)} ({steps} steps)")
        return {"run": run, "process_wall_s": None, "reused": True}
    if run.exists():  # stale checkpoints of an earlier (longer) run must not survive next to the new ones
        shutil.rmtree(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "genrl.cli", "train", recipe, "--run-dir", str(run), "--fresh", *overrides]
    logfile = run.parent / f"{run.name}.log"
    log(f"train {setting}/{arm} seed {seed}: {steps} steps -> {rel(run)}")
    t0 = time.monotonic()
    with open(logfile, "w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=worker_env(), stdout=fh, stderr=subprocess.STDOUT)
    wall = time.monotonic() - t0
    if proc.returncode:
        raise RuntimeError(f"{setting}/{arm} seed {seed} failed (exit {proc.returncode}); see {logfile}")
    log(f"done  {setting}/{arm} seed {seed} in {wall:.0f} s")
    return {"run": run, "process_wall_s": wall, "reused": False}


def timing(run: Path, upto: int) -> dict:
    """Training time of steps 1..upto as logged by the trainer (rollout + reward + update per step)."""
    t = [r["time/step"] for r in read_steps(run) if r["step"] <= upto]
    if len(t) != upto:
        raise RuntimeError(f"{run}/metrics.jsonl: {len(t)} logged steps, expected {upto}")
    return {"s_per_step": float(np.mean(t)), "wall_s": float(np.sum(t))}


# ---------------------------------------------------------------------------------------------- evaluation
def checkpoint_id(ckpt: str) -> str:
    """What an evaluation's reuse is keyed on: the trained weights' hash, or the base folder."""
    sums = Path(ckpt) / "checksums.json"
    if sums.is_file():
        return json.loads(sums.read_text()).get("policy.safetensors", str(ckpt))
    return str(ckpt)


def base_path(recipe, recipe_file: str) -> Path | None:
    from genrl.policies.ar_video import ARVideoPolicy

    return ARVideoPolicy.resolve_base(recipe.policy.config, recipe_file=str(ROOT / recipe_file), key="policy")


def base_id(recipe, recipe_file: str) -> str:
    """What a base evaluation's reuse is keyed on: the base folder and the sampler settings."""
    from genrl.config.validate import to_dict

    base = base_path(recipe, recipe_file)
    return json.dumps({"base": str(base), "policy": to_dict(recipe.policy.config)}, sort_keys=True, default=str)


def eval_one(ckpt: str, setting: str, out: str, eval_seeds: int, eval_prompts: int | None, user: list[str]) -> None:
    """Worker: evaluate one checkpoint ("base" = the setting's base policy) and write every video's values."""
    import torch

    from genrl.config.validate import to_dict
    from genrl.policies.ar_video import ARVideoPolicy
    from genrl.registry import BENCHMARKS
    from genrl.trainer.loop import enable_deterministic_mode

    torch.set_num_threads(1)
    enable_deterministic_mode()  # as the trainer does on CPU
    recipe_file = recipe_of("kvpo", setting)  # the eval section is the same in both arms' recipes
    recipe, _ = resolve(recipe_file, eval_overrides(user, eval_prompts))
    if recipe.eval is None:
        raise SystemExit(f"{recipe_file}: no eval section (do not override eval=null)")
    t0 = time.monotonic()
    if ckpt == "base":
        base = base_path(recipe, recipe_file)
        torch.manual_seed(recipe.seed)
        policy = ARVideoPolicy(recipe.policy.config, base_dir=base)
        source = str(base)
    else:
        policy = ARVideoPolicy.from_checkpoint(ckpt)
        source = str(Path(ckpt).resolve())
    bench = BENCHMARKS.get(recipe.eval.name)(recipe.eval.config, recipe_file=str(ROOT / recipe_file))
    seeds = [recipe.eval.config.seed + i for i in range(eval_seeds)]
    per_video, prompts = {}, None
    for seed in seeds:
        result = bench.run(policy, seed)
        prompts = result.groups
        per_video[str(seed)] = {m: [round(float(x), 6) for x in result.per_sample[m]] for m in METRICS}
    data = {"checkpoint": source, "checkpoint_id": checkpoint_id(ckpt) if ckpt != "base" else base_id(recipe, recipe_file),
            "setting": setting, "eval": {"name": recipe.eval.name, **to_dict(recipe.eval.config)}, "seeds": seeds,
            "mean": {m: float(np.mean([v for s in seeds for v in per_video[str(s)][m]])) for m in METRICS},
            "prompts": prompts, "per_video": per_video, "eval_wall_s": time.monotonic() - t0}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, out)


def eval_job(ckpt: str, setting: str, out: Path, plan: dict, args) -> dict:
    expected_eval = plan["eval"]
    if args.reuse and out.is_file():
        old = json.loads(out.read_text())
        ident = checkpoint_id(ckpt) if ckpt != "base" else plan["base_id"]
        if old.get("eval") == expected_eval and len(old.get("seeds", [])) == args.eval_seeds \
                and old.get("checkpoint_id") == ident:
            log(f"reuse {rel(out)}")
            return old
    cmd = [sys.executable, str(Path(__file__).resolve()), "--eval-one", ckpt, setting, str(out),
           "--eval-seeds", str(args.eval_seeds), *(["--eval-prompts", str(args.eval_prompts)] if args.eval_prompts else []),
           *args.overrides]
    logfile = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"eval  {setting}: {rel(ckpt) if ckpt != 'base' else 'base'} -> {rel(out)}")
    with open(logfile, "w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=worker_env(), stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"evaluation of {ckpt} ({setting}) failed (exit {proc.returncode}); see {logfile}")
    return json.loads(out.read_text())


def per_model_means(ev: dict) -> dict:
    """One number per metric for one model: the mean over all its evaluated videos (all eval seeds)."""
    return {m: float(np.mean([v for s in ev["seeds"] for v in ev["per_video"][str(s)][m]])) for m in METRICS}


# ---------------------------------------------------------------------------------------------- report
def protocol_text(args, plan: dict) -> str:
    from genrl.eval.moving_digits_video import MovingDigitsVideoBenchmark

    helps = {m.name: m.help for m in MovingDigitsVideoBenchmark.metrics}
    lines = ["## Protocol (fixed before the runs)", "",
             "- Arms: `kvpo` (recipes/kvpo_SETTING.yaml: KV-history routing after a fork, TVE softmax policy, "
             "anchor-relative local + 0.5 x global advantages) vs `sde_grpo` (recipes/video_sde_grpo_SETTING.yaml: "
             "Flow-GRPO's SDE noise on the sampler's re-noise steps, group-relative advantages); same base "
             f"({'from the override' if base_overridden(args.overrides) else PRETRAIN}), prompts, reward scorers, "
             "rollout batch and evaluation.",
             f"- Settings: {', '.join(f'`{s}` = {SETTINGS[s]}' for s in args.settings)}.",
             f"- Training seeds: {args.seeds}; `--steps` {args.steps}; checkpoints every {args.checkpoint_every} "
             f"steps; {args.jobs} processes in parallel, 1 torch thread each; overrides for every run: "
             f"`{' '.join(args.overrides) or '(none)'}`.",
             "- Videos generated per step (prompts_per_step x group_size of the resolved recipes; KVPO's count "
             "includes the anchor of each fork group): "
             + "; ".join(f"{s}: " + ", ".join(f"{a} {n}" for a, n in plan[s]["videos_per_step"].items())
                         for s in args.settings) + ".",
             f"- Speed calibration: each arm {args.calibrate_steps} steps (seed 0, no evaluation, run alongside "
             f"the other arm's calibration at the same parallelism); speed = median `time/step` over steps 2.."
             f"{args.calibrate_steps}. The slower arm trains `--steps` steps, the faster arm `steps_equal_time` = "
             "round(steps x t_slow / t_fast), rounded up to a multiple of the checkpoint interval.",
             "- Comparison points: **equal videos** = every arm's checkpoint at step `steps`; **equal time** = the "
             "slower arm's checkpoint at step `steps`, the faster arm's at `steps_equal_time` (constant LR and "
             "keyed draws: the step-`steps` checkpoint of the longer run is the one a run stopped there writes).",
             "- Evaluation: benchmark `moving_digits_video` (held-out prompt split, judged by the independent digit "
             "judge, recipes/eval/digit_judge.yaml, not the reward classifier), settings "
             + "; ".join(f"{s}: " + ", ".join(f"{k} {v}" for k, v in plan[s]["eval"].items()
                                                if k in ("prompts", "n_per_prompt", "segments", "segment_frames",
                                                         "canvas"))
                         for s in args.settings)
             + f"; generation seeds {plan[args.settings[0]]['eval_seeds']}. Models: the base (once per setting), "
             "each run at the comparison points.",
             "- Metrics (per video, higher is better):"]
    lines += [f"  - `{m}`: {helps[m]}" for m in METRICS]
    lines += ["- Statistics: per run (= per training seed) the mean of a metric over all its evaluated videos; "
              "the table gives the mean over seeds and the 95% t-interval over seeds, mean ± t_{0.975, n-1} · "
              "s / sqrt(n) (s: sample std over the n seeds). With one seed no interval is given. The base is one "
              "model: its interval (†) is the 95% t-interval over its evaluated videos instead.",
              "- Timing: `s/step` = mean over the run's steps 1..N of the trainer's `time/step` (rollout + reward + "
              "update); `train wall` = the sum over those steps (no process start-up, checkpoint writing or "
              "evaluation); both as mean [95% t-interval] over seeds. `videos` = N x videos per step, per run."]
    return "\n".join(lines)


def base_overridden(overrides: list[str]) -> bool:
    return any(o.split("=", 1)[0].strip() == "policy.base_checkpoint" and o.split("=", 1)[1].strip() not in ("", "null")
               for o in overrides)


def tables(summary: dict, args) -> list[str]:
    lines = []
    for setting in args.settings:
        s = summary["settings"][setting]
        cal = ", ".join(f"{a} {c['median_s_per_step']:.2f} s/step" for a, c in s["calibration"].items())
        lines += [f"### {setting}: {SETTINGS[setting]}", "",
                  f"Calibration ({args.calibrate_steps} steps, median after the first): {cal}; faster arm "
                  f"`{s['faster_arm']}` trains {s['steps'][s['faster_arm']]} steps, `{s['slower_arm']}` "
                  f"{s['steps'][s['slower_arm']]}.", ""]
        base = s["base"]
        for point, title in POINTS.items():
            lines += [f"**{title}** ({len(args.seeds)} seeds {args.seeds}; mean [95% t-interval over seeds])", "",
                      "| arm | step | text_alignment | motion_alignment | quality | s/step | videos | train wall (s) |",
                      "|---|---|---|---|---|---|---|---|",
                      "| base | 0 | " + " | ".join(fmt_ci(base["summary"][m], mark="†") for m in METRICS)
                      + " | – | 0 | – |"]
            for arm, a in s["points"][point].items():
                sm = a["summary"]
                lines.append(f"| {arm} | {a['step']} | " + " | ".join(fmt_ci(sm[m]) for m in METRICS)
                             + f" | {fmt_ci(sm['s_per_step'], 2)} | {a['videos']} | {fmt_ci(sm['wall_s'], 0)} |")
            lines.append("")
        f = s["kvpo_forks"]
        lines += [f"KVPO fork groups over all training steps and seeds ({f['groups']} groups): reward spread > 0 in "
                  f"{f['spread_share']:.1%}; some branch beats the anchor in {f['beats_anchor_share']:.1%}; "
                  f"protect rule engaged in {f['protected_share']:.1%} of branch rows.", ""]
    lines.append("† base: one model; interval over its evaluated videos, not over seeds.")
    return lines


def fork_stats(runs: list[Path]) -> dict:
    """KVPO's fork groups as logged by the trainer: the share with any reward spread (routing changed the
    rewards), with a branch beating the anchor, and of branch rows under the protect rule."""
    import yaml

    rows = [r for run in runs for r in read_steps(run)]
    groups = sum(len(read_steps(run)) * yaml.safe_load((run / "recipe.yaml").read_text())["trainer"]["prompts_per_step"]
                 for run in runs)
    return {"groups": groups,
            "spread_share": float(np.mean([1 - r["adv/zero_std_group_share"] for r in rows])),
            "beats_anchor_share": float(np.mean([r["adv/beats_anchor_share"] for r in rows])),
            "protected_share": float(np.mean([r["kvpo/protected_share"] for r in rows]))}


def write_readme(out: Path, command: str, protocol: str, body: list[str] | None) -> None:
    text = [f"# Video exploration comparison: KVPO vs SDE-GRPO ({utc_date()}, {cpu_model()})", "",
            f"`{command}`", "", protocol, "", "## Results", ""]
    text += body if body is not None else ["(pending: the runs are in progress)"]
    (out / "README.md").write_text("\n".join(text) + "\n")


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=40, help="training steps of the slower arm (equal-videos point)")
    ap.add_argument("--checkpoint-every", type=int, default=5)
    ap.add_argument("--calibrate-steps", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2, help="processes in parallel (training and evaluation)")
    ap.add_argument("--eval-seeds", type=int, default=1, help="generation seeds per evaluation (1234, 1235, ...)")
    ap.add_argument("--eval-prompts", type=int, default=None, help="held-out prompts (default: the recipe's, 64)")
    ap.add_argument("--out", default="docs/video_comparison")
    ap.add_argument("--runs-root", default="runs/video_comparison")
    ap.add_argument("--reuse", action="store_true", help="keep finished runs and evaluations of the same config")
    ap.add_argument("--record", action="store_true", help="append the tables to docs/benchmarks.md")
    ap.add_argument("--eval-one", nargs=3, metavar=("CKPT", "SETTING", "OUT_JSON"),
                    help="worker mode: evaluate one checkpoint (or 'base') and write OUT_JSON")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = ap.parse_args()
    if args.eval_one:
        ckpt, setting, out = args.eval_one
        return eval_one(ckpt, setting, out, args.eval_seeds, args.eval_prompts, args.overrides)
    if args.calibrate_steps < 2:
        ap.error("--calibrate-steps: at least 2 (the first step is warm-up and not timed)")
    if args.checkpoint_every < 1 or args.steps % args.checkpoint_every:
        ap.error("--steps must be a multiple of --checkpoint-every (the equal-videos checkpoint must exist)")

    runs_root = (ROOT / args.runs_root).resolve()
    out = (ROOT / args.out).resolve()
    runs_root.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "GENRL_CACHE") if k in os.environ)
    command = (env + " " if env else "") + "python " + shlex.join([rel(sys.argv[0]), *sys.argv[1:]])

    # 0. The shared base, built once before the parallel runs (they would wait on its cache lock anyway).
    if not base_overridden(args.overrides):
        subprocess.run([sys.executable, "-m", "genrl.cli", "pretrain", PRETRAIN], cwd=ROOT, env=worker_env(),
                       check=True)

    # The resolved recipes: videos per step, the LR schedule and the evaluation settings.
    from genrl.config.validate import to_dict

    plan: dict = {}
    for setting in args.settings:
        p = plan[setting] = {"videos_per_step": {}}
        for arm in ARMS:
            cfg, _ = resolve(recipe_of(arm, setting), train_overrides(args.overrides, seed=0, steps=args.steps,
                                                                      checkpoint_every=args.checkpoint_every))
            tc = cfg.trainer
            p["videos_per_step"][arm] = tc.prompts_per_step * tc.group_size
            if tc.lr_schedule != "constant":
                raise SystemExit(f"{setting}/{arm}: trainer.lr_schedule is {tc.lr_schedule!r}; the equal-videos "
                                 "checkpoint of the longer run equals a shorter run only under a constant LR")
            log(f"{setting}/{arm}: {tc.prompts_per_step} prompts x {tc.group_size} = "
                f"{p['videos_per_step'][arm]} videos per step, lr {tc.lr} ({tc.lr_schedule})")
        if len(set(p["videos_per_step"].values())) > 1:
            log(f"WARNING {setting}: the arms generate different numbers of videos per step "
                f"{p['videos_per_step']}; 'equal videos' then means equal steps")
        ecfg, _ = resolve(recipe_of("kvpo", setting), eval_overrides(args.overrides, args.eval_prompts))
        p["base_id"] = base_id(ecfg, recipe_of("kvpo", setting))
        p["eval"] = {"name": ecfg.eval.name, **to_dict(ecfg.eval.config)}
        p["eval_seeds"] = [ecfg.eval.config.seed + i for i in range(args.eval_seeds)]
    protocol = protocol_text(args, plan)
    write_readme(out, command, protocol, None)  # the metrics and the protocol are on disk before any run
    results: dict = {"date": utc_date(), "cpu": cpu_model(), "command": command, "protocol": protocol,
                     "metrics": list(METRICS), "interval": "95% t-interval over training seeds of the per-run means "
                     "over evaluated videos; base: over its videos", "args": {k: v for k, v in vars(args).items()
                                                                            if k != "eval_one"}}
    (out / "results.json").write_text(json.dumps(results, indent=2))

    # 1. Calibration: both arms of every setting, at the benchmark's parallelism.
    with ThreadPoolExecutor(args.jobs) as pool:
        cal_futures = {(s, arm): pool.submit(train_one, s, arm, 0, args.calibrate_steps,
                                             runs_root / s / f"calibrate_{arm}", args, checkpoint_every=0)
                       for s in args.settings for arm in ARMS}
        cal_runs = {k: f.result()["run"] for k, f in cal_futures.items()}
    summary: dict = {"settings": {}}
    for setting in args.settings:
        cal = {}
        for arm in ARMS:
            t = [r["time/step"] for r in read_steps(cal_runs[setting, arm])][1:]
            cal[arm] = {"median_s_per_step": float(np.median(t)), "timed_steps_s": t}
        slow, fast = sorted(ARMS, key=lambda a: cal[a]["median_s_per_step"], reverse=True)
        ratio = cal[slow]["median_s_per_step"] / cal[fast]["median_s_per_step"]
        ce = args.checkpoint_every
        eq = max(args.steps, math.ceil(round(args.steps * ratio) / ce) * ce)
        summary["settings"][setting] = {"videos_per_step": plan[setting]["videos_per_step"], "eval": plan[setting]["eval"],
                                        "eval_seeds": plan[setting]["eval_seeds"], "calibration": cal,
                                        "slower_arm": slow, "faster_arm": fast, "speed_ratio": ratio,
                                        "steps": {slow: args.steps, fast: eq}, "steps_equal_time": eq}
        log(f"{setting}: {slow} {cal[slow]['median_s_per_step']:.2f} s/step, {fast} "
            f"{cal[fast]['median_s_per_step']:.2f} s/step (x{ratio:.2f}) -> {slow} {args.steps} steps, {fast} {eq} steps")

    # 2. Training (and the base evaluations, which need no run).
    evals_root = runs_root / "evals"
    with ThreadPoolExecutor(args.jobs) as pool:
        base_f = {s: pool.submit(eval_job, "base", s, evals_root / s / "base.json", plan[s], args)
                  for s in args.settings}
        train_f = {(s, seed, arm): pool.submit(train_one, s, arm, seed, summary["settings"][s]["steps"][arm],
                                               runs_root / s / f"{arm}_seed{seed}", args,
                                               checkpoint_every=args.checkpoint_every)
                   for seed in args.seeds for s in args.settings for arm in ARMS}
        trained = {k: f.result() for k, f in train_f.items()}
        base_ev = {s: f.result() for s, f in base_f.items()}

    # 3. Evaluation of every run at its comparison points.
    points: dict = {}  # (setting, point, arm) -> step
    for s in args.settings:
        st = summary["settings"][s]
        for arm in ARMS:
            points[s, "equal_videos", arm] = args.steps
            points[s, "equal_time", arm] = st["steps"][arm]
    todo = sorted({(s, seed, arm, step) for (s, _pt, arm), step in points.items() for seed in args.seeds})
    with ThreadPoolExecutor(args.jobs) as pool:
        ev_f = {(s, seed, arm, step): pool.submit(
            eval_job, str(trained[s, seed, arm]["run"] / "checkpoints" / f"step_{step:08d}"), s,
            evals_root / s / f"{arm}_seed{seed}_step{step}.json", plan[s], args)
            for s, seed, arm, step in todo}
        evals = {k: f.result() for k, f in ev_f.items()}

    # 4. Report.
    per_video: dict = {}
    for s in args.settings:
        st = summary["settings"][s]
        bev = base_ev[s]
        pooled = {m: [v for seed in bev["seeds"] for v in bev["per_video"][str(seed)][m]] for m in METRICS}
        st["base"] = {"checkpoint": bev["checkpoint"], "mean": per_model_means(bev),
                      "summary": {m: mean_ci(pooled[m]) for m in METRICS}, "eval_file": rel(evals_root / s / "base.json")}
        per_video[f"{s}/base"] = bev["per_video"]
        st["points"] = {}
        for point in POINTS:
            st["points"][point] = {}
            for arm in ARMS:
                step = points[s, point, arm]
                per_seed = {}
                for seed in args.seeds:
                    run = trained[s, seed, arm]["run"]
                    ev = evals[s, seed, arm, step]
                    per_seed[str(seed)] = {**per_model_means(ev), **timing(run, step),
                                           "videos": step * st["videos_per_step"][arm], "run": rel(run),
                                           "eval_file": rel(evals_root / s / f"{arm}_seed{seed}_step{step}.json")}
                    per_video[f"{s}/{arm}_seed{seed}_step{step}"] = ev["per_video"]
                keys = (*METRICS, "s_per_step", "wall_s")
                st["points"][point][arm] = {
                    "step": step, "videos": step * st["videos_per_step"][arm], "per_seed": per_seed,
                    "summary": {k: mean_ci([per_seed[str(seed)][k] for seed in args.seeds]) for k in keys}}
        st["process_wall_s"] = {f"{arm}_seed{seed}": trained[s, seed, arm]["process_wall_s"]
                                for seed in args.seeds for arm in ARMS}
        st["kvpo_forks"] = fork_stats([trained[s, seed, "kvpo"]["run"] for seed in args.seeds])
    body = tables(summary, args)
    print("\n".join(body))
    write_readme(out, command, protocol, body)
    results.update(summary)
    results["per_video"] = per_video  # every evaluated video's values, per model and generation seed
    (out / "results.json").write_text(json.dumps(results, indent=1))
    log(f"wrote {rel(out / 'README.md')} and {rel(out / 'results.json')}")
    if args.record:
        record_entry("Video exploration: KVPO vs SDE-GRPO (equal videos, equal wall time)", body,
                     hardware=f"{cpu_model()}, {args.jobs} processes in parallel, 1 torch thread each")


if __name__ == "__main__":
    main()
