"""``genrl drive eval RECIPE``: closed-loop evaluation of planner rows on held-out seeds, in parallel, resumable.

    for row in rows, family in families, seed in seeds:          # sharded over `workers` processes
        out/episodes/<row>/<family>/seed_<seed>.json             # written atomically; present = done
    table = per (row, family): the combined score (genrl/drive/score.py) and its raw rates

An interrupted evaluation re-run with the same recipe skips every finished episode, so it resumes where
it stopped; a changed recipe (other rows' planners, duration, seeds) is refused rather than mixed with
old episodes. Progress is scored against the IDM expert's progress on the same family and seed, so
the ``idm`` row is always evaluated.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from genrl.config.validate import option, to_dict
from genrl.drive.collect import SeedRange
from genrl.drive.planner import PlannerRow
from genrl.drive.scene import SceneSpec
from genrl.drive.score import episode_score, mean_ci

EXPERT_ROW = "idm_expert"


@dataclass
class EvalSeeds(SeedRange):
    """The collection's seed range with both fields required: an evaluation names its seeds explicitly."""

    start: int = option(help="First simulator seed.")
    count: int = option(help="Number of consecutive seeds (episodes per family and row).")


@dataclass
class DriveEvalRecipe:
    """A closed-loop evaluation recipe (``recipes/drive/eval*.yaml``)."""

    kind: Literal["drive_eval"] = option(help="Recipe kind; must be drive_eval.")
    rows: list[PlannerRow] = option(help="The planners compared (one table row each).")
    seeds: EvalSeeds = option(help="Simulator seeds of the episodes (held out from the training data).")
    families: list[str] = option(default_factory=lambda: ["highway", "merge"], help="Scenario families.")
    spec: SceneSpec = option(default_factory=SceneSpec, help="Scene layout of the rule planners' context "
                                                             "(generator rows use their model's own).")
    duration_s: float = option(default=20.0, help="Episode length in simulated seconds (shorter on a crash).")
    replan_every: int = option(default=1, help="Policy steps (at 1/spec.dt Hz) between re-plans.")
    workers: int = option(default=2, help="Processes running episodes in parallel.")
    seed: int = option(default=0, help="Seed of the planners' sampling noise and random selector.")
    out: str = option(default="runs/drive_eval", help="Output folder (episodes/, table.md, table.json).")
    heldout_from: str | None = option(default=None, help="The collection recipe whose train/validation seeds these "
                                                         "seeds must not overlap (checked).")

    def validate(self) -> None:
        from genrl.drive.world import FAMILIES

        names = [r.name for r in self.rows]
        if len(set(names)) != len(names):
            raise ValueError(f"rows: row names must be unique, got {names}")
        if EXPERT_ROW not in names or next(r for r in self.rows if r.name == EXPERT_ROW).planner != "idm":
            raise ValueError(f"rows: need a row named {EXPERT_ROW!r} with planner idm (progress is scored against it)")
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or not self.families:
            raise ValueError(f"families: expected a non-empty subset of {list(FAMILIES)}, got {self.families}")
        if self.duration_s <= 0 or self.replan_every < 1 or self.workers < 1:
            raise ValueError("duration_s: duration_s must be > 0, replan_every and workers >= 1")


def _episode_file(out: Path, row: str, family: str, seed: int) -> Path:
    return out / "episodes" / row / family / f"seed_{seed:06d}.json"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _run_task(task: dict) -> int:
    """One worker task: one row, one family, some seeds. Returns episodes written."""
    import torch

    from genrl.config.validate import build
    from genrl.drive.closed_loop import run_episode
    from genrl.drive.planner import ScenePlanner, build_planner

    torch.set_num_threads(1)
    row = build(PlannerRow, task["row"], key="rows")
    spec = build(SceneSpec, task["spec"], key="spec")
    planner = build_planner(row, seed=task["seed"])
    if isinstance(planner, ScenePlanner):
        spec = planner.spec
    out, written = Path(task["out"]), 0
    for seed in task["seeds"]:
        path = _episode_file(out, row.name, task["family"], seed)
        if path.is_file():
            continue
        if isinstance(planner, ScenePlanner):
            planner.reset(seed)
        t0 = time.perf_counter()
        metrics = run_episode(task["family"], seed, planner, spec=spec, duration_s=task["duration_s"],
                              replan_every=task["replan_every"])
        metrics.update(row=row.name, family=task["family"], seed=seed, wall_s=round(time.perf_counter() - t0, 3))
        _write_json(path, metrics)
        written += 1
    return written


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse to mix episodes of different settings in one folder (resuming needs the same recipe)."""
    f = out / "settings.json"
    if f.is_file():
        old = json.loads(f.read_text())
        for key in ("families", "duration_s", "replan_every", "seed", "spec"):
            if old.get(key) != settings.get(key):
                raise ValueError(f"{out}: holds episodes run with {key} = {old.get(key)!r}, the recipe says "
                                 f"{settings.get(key)!r}; use another out folder")
        old_rows = {r["name"]: r for r in old.get("rows", [])}
        for r in settings["rows"]:
            if r["name"] in old_rows and old_rows[r["name"]] != r:
                raise ValueError(f"{out}: row {r['name']!r} was run with {old_rows[r['name']]}, the recipe now says "
                                 f"{r}; rename the row or use another out folder")
        settings = {**settings, "rows": list({**old_rows, **{r["name"]: r for r in settings["rows"]}}.values())}
    _write_json(f, settings)


def check_heldout(recipe: DriveEvalRecipe, recipe_file: str | None) -> None:
    """The evaluation seeds must not be seeds the training or validation scenes came from."""
    if recipe.heldout_from is None:
        return
    from genrl.cache import resolve_recipe_path
    from genrl.config import load_recipe
    from genrl.config.validate import RecipeError
    from genrl.drive.collect import CollectRecipe

    path = resolve_recipe_path(recipe.heldout_from, referenced_from=recipe_file, key="heldout_from")
    collect, _ = load_recipe(path, CollectRecipe)
    used = set(collect.train.seeds()) | set(collect.validation.seeds())
    overlap = sorted(used & set(recipe.seeds.seeds()))
    if overlap:
        raise RecipeError(recipe_file, "seeds", f"seeds {overlap[:5]}... were used for training/validation scenes "
                                                f"in {path}; evaluate on its test seeds")


def run_eval(recipe: DriveEvalRecipe, *, recipe_file: str | None = None, out: str | None = None,
             rows: list[str] | None = None, progress: bool = True) -> dict:
    """Run every missing episode (in ``workers`` processes), then write and return the table."""
    import multiprocessing as mp

    from genrl.progress import progress as bar

    check_heldout(recipe, recipe_file)
    out_dir = Path(out or recipe.out).expanduser().resolve()
    resolved = to_dict(recipe)
    _check_settings(out_dir, {k: resolved[k] for k in ("families", "duration_s", "replan_every", "seed", "spec", "rows")})
    chosen = [r for r in recipe.rows if rows is None or r.name in rows or r.name == EXPERT_ROW]
    tasks = []
    chunk = max(1, -(-recipe.seeds.count // (2 * recipe.workers)))  # >= 2 tasks per worker per row and family
    for row in chosen:
        for family in recipe.families:
            todo = [s for s in recipe.seeds.seeds() if not _episode_file(out_dir, row.name, family, s).is_file()]
            for i in range(0, len(todo), chunk):
                tasks.append({"row": to_dict(row), "family": family, "seeds": todo[i:i + chunk], "spec": resolved["spec"],
                              "duration_s": recipe.duration_s, "replan_every": recipe.replan_every,
                              "seed": recipe.seed, "out": str(out_dir)})
    t0 = time.perf_counter()
    if tasks:
        if recipe.workers == 1:
            for task in bar(tasks, desc="closed-loop episodes", disable=not progress):
                _run_task(task)
        else:
            # Spawned (not forked) workers: no torch/thread state is inherited. highway and merge may share a
            # process; intersection-v0 would not (its reset rewrites IDM class constants for the process).
            with mp.get_context("spawn").Pool(recipe.workers) as pool:
                for _ in bar(pool.imap_unordered(_run_task, tasks), total=len(tasks), desc="closed-loop episodes",
                             disable=not progress):
                    pass
    table = write_table(out_dir, [r.name for r in chosen], recipe.families, recipe.seeds.seeds())
    table["seconds"] = round(time.perf_counter() - t0, 1)
    return table


def summarize(episodes: list[dict], reference: dict[int, float]) -> dict:
    """Mean score (95 % interval) and raw rates of one row and family."""
    scored = [episode_score(e, reference[e["seed"]]) for e in episodes]
    score, ci = mean_ci([s["score"] for s in scored])
    n = len(episodes)

    def share(key: str, per: list[dict]) -> float:
        return sum(float(p[key]) for p in per) / n

    return {"episodes": n, "score": score, "score_ci95": ci,
            "collision_rate": share("collision", episodes), "off_road_rate": share("off_road", episodes),
            "progress": share("progress", scored), "progress_m": share("progress_m", episodes),
            "comfortable": share("comfortable", scored), "ttc_ok": share("ttc_ok", scored),
            "mean_speed": share("mean_speed", episodes),
            "planner_ms": share("planner_ms", episodes)}


def write_table(out_dir: Path, rows: list[str], families: list[str], seeds: list[int]) -> dict:
    """Read the episode files and write ``table.json`` + ``table.md`` (missing episodes are an error)."""
    results: dict = {"rows": {}, "families": families, "seeds": [seeds[0], seeds[-1]] if seeds else []}
    for family in families:
        reference = {}
        for s in seeds:
            f = _episode_file(out_dir, EXPERT_ROW, family, s)
            if not f.is_file():
                raise FileNotFoundError(f"{f}: the expert episode is missing (progress is scored against it)")
            reference[s] = float(json.loads(f.read_text())["progress_m"])
        for row in rows:
            files = [_episode_file(out_dir, row, family, s) for s in seeds]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"{out_dir}: row {row!r}, {family}: {len(missing)} episodes missing "
                                        f"(e.g. {missing[:3]}); run the evaluation again to finish them")
            results["rows"].setdefault(row, {})[family] = summarize([json.loads(f.read_text()) for f in files], reference)
    (out_dir / "table.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "table.md").write_text(markdown_table(results) + "\n")
    return results


def markdown_table(results: dict) -> str:
    lines = ["| row | family | episodes | score (95 % CI) | collision | off-road | progress | comfortable | TTC ok "
             "| mean speed (m/s) | planner ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, per_family in results["rows"].items():
        for family, m in per_family.items():
            lines.append(f"| {row} | {family} | {m['episodes']} | {m['score']:.3f} ± {m['score_ci95']:.3f} "
                         f"| {m['collision_rate']:.1%} | {m['off_road_rate']:.1%} | {m['progress']:.3f} "
                         f"| {m['comfortable']:.1%} | {m['ttc_ok']:.1%} | {m['mean_speed']:.1f} | {m['planner_ms']:.1f} |")
    return "\n".join(lines)

