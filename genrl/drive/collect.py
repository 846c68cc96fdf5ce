"""``genrl drive collect RECIPE``: log expert highway-env episodes and cut them into a scene data set.

    for split in (train, validation, test), family in families, seed in the split's seed range:
        run the IDM/MOBIL expert ego for duration_s (stop at its crash or the map's end), recording at 1/dt Hz
        every scene_every steps t (with H steps of history and F of future recorded):
            cut the scene centred on the ego (and on every other vehicle if center_on_others)
            drop it if any of its agents is crashed within the window t-H+1 .. t+F

``test`` holds seeds never used for train / validation, so closed-loop evaluation runs on unseen traffic.
Episodes run in ``workers`` processes, one pool per family (one environment type per process: some
highway-env environments rewrite class constants on reset). Same recipe -> the same rows, bit for bit.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from genrl.config.validate import option, to_dict
from genrl.drive.dataset import META_COLUMNS, SPLITS, rows_to_dataset, save_scenes
from genrl.drive.scene import SCENE_KEYS, SceneSpec
from genrl.drive.world import FAMILIES


@dataclass
class SeedRange:
    """Simulator seeds start .. start + count - 1 (one episode per seed and family)."""

    start: int = option(default=0, help="First simulator seed.")
    count: int = option(default=1, help="Number of seeds.")

    def validate(self) -> None:
        if self.start < 0 or self.count < 1:
            raise ValueError(f"count: expected start >= 0 and count >= 1, got start={self.start}, count={self.count}")

    def seeds(self) -> range:
        return range(self.start, self.start + self.count)


@dataclass
class CollectRecipe:
    """A scene collection recipe (``recipes/drive/collect.yaml``)."""

    kind: Literal["drive_collect"] = option(help="Recipe kind; must be drive_collect.")
    spec: SceneSpec = option(default_factory=SceneSpec, help="Scene layout of every row.")
    families: list[str] = option(default_factory=lambda: list(FAMILIES), help=f"Scenario families, of {FAMILIES}.")
    train: SeedRange = option(default_factory=lambda: SeedRange(0, 80), help="Seeds of the train split.")
    validation: SeedRange = option(default_factory=lambda: SeedRange(80, 10), help="Seeds of the validation split.")
    test: SeedRange = option(default_factory=lambda: SeedRange(10_000, 50),
                             help="Held-out seeds (never train / validation): closed-loop evaluation's.")
    duration_s: float = option(default=20.0, help="Simulated seconds per episode (less at a crash or the map's end).")
    scene_every: int = option(default=2, help="Scene steps between cut scenes.")
    center_on_others: bool = option(default=True, help="Also cut scenes centred on every other vehicle.")
    sim_hz: int = option(default=10, help="Simulation rate (a multiple of 1/spec.dt).")
    workers: int = option(default=2, help="Processes per family; 0 = run in this process (tests, debugging).")
    num_threads: int = option(default=1, help="torch threads per process.")
    out: str = option(default="data/drive_scenes", help="Output folder (the DatasetDict + collect.json).")
    description: str = option(default="", help="Free text.")
    tags: list[str] = field(default_factory=list, metadata={"help": "Free-form labels."})

    def validate(self) -> None:
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or not self.families or len(set(self.families)) != len(self.families):
            raise ValueError(f"families: expected distinct names of {list(FAMILIES)}, got {self.families}")
        ranges = {s: set(getattr(self, s).seeds()) for s in SPLITS}
        for i, a in enumerate(SPLITS):
            for b in SPLITS[i + 1:]:
                if ranges[a] & ranges[b]:
                    raise ValueError(f"{b}: seeds overlap those of {a} ({sorted(ranges[a] & ranges[b])[:3]}...)")
        if self.scene_every < 1 or self.workers < 0 or self.num_threads < 1:
            raise ValueError("scene_every: scene_every and num_threads must be >= 1, workers >= 0")
        steps = self.duration_s / self.spec.dt
        if steps < self.spec.history_steps + self.spec.future_steps - 1:
            raise ValueError(f"duration_s: {self.duration_s} s is too short for one scene of "
                             f"{self.spec.history_steps} + {self.spec.future_steps} - 1 steps of {self.spec.dt} s")
        from genrl.drive.world import ticks_per_step

        ticks_per_step(self.sim_hz, self.spec.dt)


def _on_road_matrix(rec) -> list[np.ndarray]:
    from genrl.drive.world import on_road

    return [np.array([on_road(rec.network, p) for p in st[:, :2]], dtype=bool) for st in rec.states]


def collect_episode(recipe: CollectRecipe, family: str, seed: int) -> tuple[list[dict], dict]:
    """(scene rows, stats) of one expert episode."""
    from genrl.drive.world import SceneRecorder, at_road_end, make_env, tick, ticks_per_step, use_expert_ego

    spec = recipe.spec
    H, F = spec.history_steps, spec.future_steps
    env = make_env(family, seed, sim_hz=recipe.sim_hz)
    ego = use_expert_ego(env)
    network = env.unwrapped.road.network
    rec = SceneRecorder(env, spec)
    rec.record()
    n_ticks, ended = ticks_per_step(recipe.sim_hz, spec.dt), False
    for _ in range(int(round(recipe.duration_s / spec.dt))):
        for _ in range(n_ticks):
            tick(env, recipe.sim_hz)
            if ego.crashed or at_road_end(network, ego):
                ended = True
                break
        rec.record()
        if ended:
            break
    on_road = _on_road_matrix(rec)
    rows, dropped = [], 0
    for t in range(H - 1, rec.now - F + 1, recipe.scene_every):
        centres = range(rec.present(t)) if recipe.center_on_others else [0]
        for c in centres:
            window = range(t - H + 1, t + F + 1)
            if not all(c < len(on_road[k]) and on_road[k][c] for k in window):
                continue  # e.g. a vehicle that drives past the end of the merge map
            if rec.window_crashed(rec.agents(c, t), t):
                dropped += 1
                continue
            scene = rec.scene(c, with_future=True, t=t)
            row = {k: scene[k][0].numpy().astype(np.float32) for k in SCENE_KEYS}
            row.update(family=family, seed=seed, episode_step=t, agent_id=c)
            rows.append(row)
    stats = {"ego_crashed": bool(ego.crashed), "dropped_crash": dropped, "steps": rec.now, "scenes": len(rows)}
    return rows, stats


def _init_worker(num_threads: int) -> None:
    import torch

    torch.set_num_threads(num_threads)


def _run(args: tuple[CollectRecipe, str, int]) -> tuple[list[dict], dict]:
    return collect_episode(*args)


def _columns(spec: SceneSpec, rows: list[dict]) -> dict:
    shapes = spec.shapes()
    cols: dict = {k: (np.stack([r[k] for r in rows]) if rows else np.zeros((0, *shapes[k]), np.float32))
                  for k in SCENE_KEYS}
    cols.update({k: [r[k] for r in rows] for k in META_COLUMNS})
    return cols


def collect(recipe: CollectRecipe, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Run every episode, write the scene ``DatasetDict`` to ``out_dir`` and ``collect.json``; return the report."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", str(recipe.num_threads))
    _init_worker(recipe.num_threads)
    results: dict[tuple[str, str], list] = {}
    for family in recipe.families:
        tasks = [(recipe, family, seed) for split in SPLITS for seed in getattr(recipe, split).seeds()]
        if recipe.workers == 0:
            outs = [_run(task) for task in tasks]
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(recipe.workers, initializer=_init_worker, initargs=(recipe.num_threads,)) as pool:
                outs = pool.map(_run, tasks, chunksize=1)
        at = 0
        for split in SPLITS:
            n = getattr(recipe, split).count
            results[(split, family)] = outs[at:at + n]
            at += n
        if progress:
            got = sum(len(r) for r, _ in outs)
            print(f"[genrl] drive collect: {family}: {len(tasks)} episodes -> {got} scenes "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
    splits, report = {}, {"scenes": {}, "episodes": {}, "ego_crashes": {}, "dropped_crash_windows": {}}
    for split in SPLITS:
        rows = [row for family in recipe.families for rs, _ in results[(split, family)] for row in rs]
        splits[split] = rows_to_dataset(recipe.spec, _columns(recipe.spec, rows))
        for key in report:
            report[key][split] = {}
        for family in recipe.families:
            res = results[(split, family)]
            report["scenes"][split][family] = sum(len(rs) for rs, _ in res)
            report["episodes"][split][family] = len(res)
            report["ego_crashes"][split][family] = sum(int(st["ego_crashed"]) for _, st in res)
            report["dropped_crash_windows"][split][family] = sum(st["dropped_crash"] for _, st in res)
    out_dir = Path(out_dir)
    save_scenes(recipe.spec, splits, out_dir)
    report.update(seeds={s: [getattr(recipe, s).start, getattr(recipe, s).count] for s in SPLITS},
                  seconds=round(time.perf_counter() - t0, 2), recipe=to_dict(recipe))
    (out_dir / "collect.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "checkpoint.json").write_text(json.dumps({"kind": "drive_collect"}) + "\n")
    return report


def collect_from_recipe(recipe_file: str, overrides: list[str], out: str | None) -> Path:
    """Load (and validate) a collection recipe with ``key=value`` overrides, collect, return the data set folder."""
    from genrl.config.load import load_recipe

    recipe, _ = load_recipe(recipe_file, CollectRecipe, overrides)
    path = Path(out or recipe.out).expanduser().resolve()
    collect(recipe, path)
    return path


def scenes_from_recipe(recipe: str, *, referenced_from: str | None = None, key: str = "") -> Path:
    """Cache folder of the scene data set that a collection recipe makes (collected now if not cached)."""
    from genrl.cache import cached_artifact, resolve_recipe_path

    path = resolve_recipe_path(recipe, referenced_from=referenced_from, key=key)
    return cached_artifact(path, CollectRecipe, "drive_scenes", lambda cfg, out: collect(cfg, out, progress=False))
