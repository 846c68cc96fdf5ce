"""Run a benchmark on a policy over several seeds, summarise, and write ``metrics.json`` + the report.

This is the part every benchmark shares: ``genrl eval`` (:func:`plan_eval` then :func:`run_eval`)
and periodic evaluation during training (:mod:`genrl.eval.periodic`) both call :func:`evaluate`,
which calls the benchmark's ``run(policy, seed)`` once per seed. :func:`plan_eval` does every check
that can fail — benchmark name, options, data folder, checkpoint type — before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genrl.config.validate import RecipeError, build, to_dict
from genrl.eval.benchmark import (
    EvalError,
    MetricSpec,
    SeedResult,
    benchmark_class,
    check_data_folder,
    check_policy_type,
)
from genrl.eval.report import Image, Report, Section, Table, Text, write_report
from genrl.eval.stats import (
    CI_RULE,
    COMPARE_RULE,
    Summary,
    binary_summary,
    pass_at_k,
    pass_at_k_summary,
    t_interval,
)

FORMAT = "genrl-eval/1"


@dataclass
class EvalResult:
    """Everything one evaluation produced; :meth:`to_json` is ``metrics.json``."""

    benchmark: str
    config: dict
    checkpoint: dict
    seeds: list[int]
    seed_results: list[SeedResult]
    metrics: dict[str, dict] = field(default_factory=dict)
    per_group: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self, metric: str) -> Summary:
        return Summary.from_dict(self.metrics[metric])

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "benchmark": {"name": self.benchmark, "config": self.config},
            "checkpoint": self.checkpoint,
            "seeds": self.seeds,
            "samples_per_seed": len(self.seed_results[0].groups) if self.seed_results else 0,
            "rules": {"ci": CI_RULE, "compare": COMPARE_RULE},
            "metrics": self.metrics,
            "per_group": self.per_group,
            "notes": self.notes,
        }


def _group_counts(seed_results: Sequence[SeedResult], metric: str) -> dict[str, tuple[int, int]]:
    """``group -> (samples, successes)`` of a binary per-sample metric, pooled over seeds."""
    counts: dict[str, list[int]] = {}
    for r in seed_results:
        for g, v in zip(r.groups, r.per_sample[metric]):
            c = counts.setdefault(g, [0, 0])
            c[0] += 1
            c[1] += int(v)
    return {g: (n, c) for g, (n, c) in counts.items()}


def summarize(specs: Sequence[MetricSpec], seed_results: Sequence[SeedResult],
              pass_k: Sequence[int] = ()) -> tuple[dict[str, dict], dict[str, dict], list[str]]:
    """Summaries of every metric (see :mod:`genrl.eval.stats` for which interval), pass@k of binary
    per-sample metrics, per-group means; and notes on anything skipped."""
    if not seed_results:
        raise ValueError("summarize needs at least one seed's results")
    metrics: dict[str, dict] = {}
    notes: list[str] = []
    groups: dict[str, dict] = {}
    for g in [g for r in seed_results for g in r.groups]:
        groups.setdefault(g, {"n": 0})
    for r in seed_results:
        for g in r.groups:
            groups[g]["n"] += 1
    for spec in specs:
        meta = {"unit": spec.unit, "binary": spec.binary, "higher_is_better": spec.higher_is_better}
        if spec.unit == "seed":
            values = [r.per_seed[spec.name] for r in seed_results]
            metrics[spec.name] = {**t_interval(values).to_dict(), **meta, "per_seed": values}
            continue
        pooled = np.concatenate([r.per_sample[spec.name] for r in seed_results])
        summary = binary_summary(pooled) if spec.binary else t_interval(pooled)
        per_seed = [float(r.per_sample[spec.name].mean()) for r in seed_results]
        metrics[spec.name] = {**summary.to_dict(), **meta, "per_seed": per_seed}
        all_groups = np.array([g for r in seed_results for g in r.groups], dtype=object)
        for g, entry in groups.items():
            entry[spec.name] = float(pooled[all_groups == g].mean())
        if not spec.binary:
            continue
        counts = _group_counts(seed_results, spec.name)
        fewest = min(n for n, _ in counts.values())
        for k in pass_k:
            name = f"{spec.name}/pass@{k}"
            if k > fewest:
                notes.append(f"{name} skipped: needs >= {k} samples per prompt, the smallest prompt has {fewest}")
                continue
            s = pass_at_k_summary(list(counts.values()), k)
            metrics[name] = {**s.to_dict(), "unit": "prompt", "binary": False,
                             "higher_is_better": spec.higher_is_better}
            for g, (n, c) in counts.items():
                groups[g][name] = pass_at_k(n, c, k)
    return metrics, groups, notes


@torch.no_grad()
def evaluate(benchmark: Any, policy: Any, seeds: Sequence[int], *, name: str,
             checkpoint: dict | None = None) -> EvalResult:
    """Run ``benchmark`` on ``policy`` once per seed and summarise (the shared evaluation entry point)."""
    if not seeds:
        raise ValueError("evaluate needs at least one seed")
    results = [benchmark.run(policy, int(s)) for s in seeds]
    specs = tuple(benchmark.metrics)
    declared = {s.name for s in specs}
    for r in results:
        produced = set(r.per_sample) | set(r.per_seed)
        if produced != declared:
            raise ValueError(f"benchmark {name!r} seed {r.seed}: produced metrics {sorted(produced)}, "
                             f"declared {sorted(declared)} (its MetricSpec list and run() must agree)")
    metrics, groups, notes = summarize(specs, results, getattr(benchmark.config, "pass_k", ()))
    return EvalResult(name, to_dict(benchmark.config), dict(checkpoint or {}), [int(s) for s in seeds],
                      results, metrics, groups, notes)


def write_metrics(result: EvalResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n")
    return path


# ----------------------------------------------------------------------------- report
def fmt(x: float | None) -> str:
    """Numbers for tables: 4 significant digits (accuracies, distances and tiny stds alike)."""
    return "–" if x is None else f"{x:.4g}"


def _ci(entry: dict) -> str:
    ci = entry.get("ci95")
    return "n/a (1 value)" if ci is None else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def standard_sections(result: EvalResult) -> list[Section]:
    """The sections every report has: what was evaluated, the metrics with intervals, per seed, per prompt."""
    ck = result.checkpoint
    run = Table(["field", "value"], [
        ["benchmark", result.benchmark],
        ["checkpoint", str(ck.get("path", "?"))],
        ["policy", str(ck.get("policy", "?"))],
        ["training step", "– (not an RL checkpoint)" if ck.get("step") is None else str(ck["step"])],
        ["weights", "EMA" if ck.get("ema") else "raw"],
        ["seeds", ", ".join(map(str, result.seeds))],
        ["samples per seed", str(len(result.seed_results[0].groups))],
    ])
    rows = []
    for name, m in result.metrics.items():
        rows.append([name, fmt(m["mean"]), fmt(m["std"]), _ci(m), str(m["n"]),
                     f"{m['ci_method']} over {m['unit']}s", "higher" if m["higher_is_better"] else "lower"])
    metrics = Table(["metric", "mean", "std", "95% CI", "n", "interval", "better"], rows)
    seed_names = [n for n, m in result.metrics.items() if "per_seed" in m]
    per_seed = Table(["seed", *seed_names],
                     [[str(s), *[fmt(result.metrics[n]["per_seed"][i]) for n in seed_names]]
                      for i, s in enumerate(result.seeds)])
    cols = [k for k in next(iter(result.per_group.values())) if k != "n"] if result.per_group else []
    per_group = Table(["prompt", "n", *cols],
                      [[g, str(e["n"]), *[fmt(e.get(c)) for c in cols]] for g, e in result.per_group.items()])
    sections = [
        Section("Evaluated", [run]),
        Section("Metrics", [metrics, Text(CI_RULE), *[Text(n) for n in result.notes]]),
        Section("Per seed", [per_seed]),
        Section("Per prompt", [per_group]),
    ]
    return sections


def write_eval_report(result: EvalResult, benchmark: Any, out_dir: str | Path) -> tuple[Path, Path]:
    """``report.md`` + ``report.html`` (and ``assets/``): the standard sections, then the benchmark's."""
    out_dir = Path(out_dir)
    assets = out_dir / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    extra = benchmark.report_sections(result, assets)
    for section in extra:  # benchmark pictures are written into assets/; make their paths report-relative
        for block in section.blocks:
            if isinstance(block, Image) and Path(block.path).is_absolute():
                block.path = Path(block.path).relative_to(out_dir.resolve()).as_posix()
    title = f"{result.benchmark} evaluation of {Path(str(result.checkpoint.get('path', '?'))).name}"
    return write_report(Report(title, standard_sections(result) + extra), out_dir)


# ----------------------------------------------------------------------------- genrl eval
@dataclass
class EvalPlan:
    """A checked evaluation request: nothing has been loaded yet."""

    name: str
    cls: type
    config: Any
    checkpoint: Path
    meta: dict
    seeds: list[int]
    run_dir: Path | None


def _checkpoint(path: str | Path) -> tuple[Path, dict, Path | None]:
    from genrl.trainer.checkpoint import latest_checkpoint

    p = Path(path).expanduser()
    if not p.exists():
        raise EvalError(f"{p}: no such run directory or checkpoint (expected a run directory with "
                        "checkpoints/ or a checkpoint folder with checkpoint.json)")
    if (p / "checkpoint.json").is_file():
        ckpt, run_dir = p.resolve(), None
    else:
        ckpt = latest_checkpoint(p)
        if ckpt is None:
            raise EvalError(f"{p}: neither a checkpoint (checkpoint.json) nor a run directory with checkpoints/")
        ckpt, run_dir = ckpt.resolve(), p.resolve()
    try:
        meta = json.loads((ckpt / "checkpoint.json").read_text())
    except json.JSONDecodeError as e:
        raise EvalError(f"{ckpt / 'checkpoint.json'}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise EvalError(f"{ckpt / 'checkpoint.json'}: expected a JSON object")
    return ckpt, meta, run_dir


def plan_eval(path: str | Path, benchmark: str, *, n: int | None = None, seeds: int = 1,
              seed: int | None = None, data: str | None = None, overrides: Sequence[str] = ()) -> EvalPlan:
    """Check everything about an evaluation request without loading a model (fails with :class:`EvalError`)."""
    from genrl.config.load import apply_overrides

    cls = benchmark_class(benchmark)
    if seeds < 1:
        raise EvalError(f"--seeds: expected a positive number of seeds, got {seeds}")
    where = f"benchmark {benchmark!r}"
    try:
        data_cfg = apply_overrides({}, overrides, file=None)
        takes_data = "data_dir" in {f.name for f in dataclasses.fields(cls.Config)}
        for key, value in (("n_per_prompt", n), ("seed", seed), ("data_dir", data if takes_data else None)):
            if value is not None:
                data_cfg[key] = value
        config = build(cls.Config, data_cfg, file=None)
    except RecipeError as e:
        raise EvalError(f"{where} option {e.key}: {e.message}") from None
    check_data_folder(benchmark, cls, data if data is not None else getattr(config, "data_dir", None))
    ckpt, meta, run_dir = _checkpoint(path)
    check_policy_type(benchmark, cls, ckpt, meta)
    try:
        cls.check_inputs(config)
    except RecipeError as e:
        raise EvalError(f"{where} option {e.key}: {e.message}") from None
    except (FileNotFoundError, ValueError) as e:
        raise EvalError(f"{where}: {e}") from None
    base = getattr(config, "seed", 0)
    return EvalPlan(benchmark, cls, config, ckpt, meta, [base + i for i in range(seeds)], run_dir)


def default_out_dir(plan: EvalPlan) -> Path:
    """``RUN_DIR/eval/<benchmark>/<step dir>`` for a run directory, else ``eval/<benchmark>/<checkpoint name>``."""
    if plan.run_dir is not None:
        return plan.run_dir / "eval" / plan.name / plan.checkpoint.name
    return Path("eval") / plan.name / plan.checkpoint.name


def run_eval(plan: EvalPlan, out_dir: str | Path | None = None, *, use_ema: bool = True) -> tuple[EvalResult, Path]:
    """Load the benchmark's scorers and the policy, evaluate, write ``metrics.json`` and the report."""
    from genrl.sampling import load_policy_for_sampling

    out = Path(out_dir) if out_dir is not None else default_out_dir(plan)
    benchmark = plan.cls(plan.config)
    policy, ckpt = load_policy_for_sampling(plan.checkpoint, use_ema=use_ema)
    info = {"path": str(ckpt), "policy": plan.meta.get("policy"), "step": plan.meta.get("step"),
            "ema": bool(use_ema and (ckpt / "ema.safetensors").is_file()),
            "recipe_hash": plan.meta.get("recipe_hash")}
    result = evaluate(benchmark, policy, plan.seeds, name=plan.name, checkpoint=info)
    write_metrics(result, out / "metrics.json")
    write_eval_report(result, benchmark, out)
    return result, out
