"""``genrl drive curve RUN_DIR RECIPE``: the over-optimisation curve of a Gen-Drive fine-tuning run.

Every kept checkpoint of the run (and the base, as step 0) plans closed-loop episodes on the recipe's
seeds, which must be validation seeds, never the test seeds of the table. The combined score per step
is plotted beside the learned reward the run optimised; the checkpoint with the best mean score is
*selected* and copied to ``RUN_DIR/checkpoints/best`` (recorded in ``RUN_DIR/eval/curve_selection.json``; the
checkpoint folder itself stays exactly as written, checksums and all), which is what the
table's fine-tuned rows evaluate on the held-out seeds. Gen-Drive saw its score peak and then fall
with more fine-tuning steps; this is where that shows.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from genrl.config.validate import build, to_dict
from genrl.drive.evaluate import EXPERT_ROW, DriveEvalRecipe, run_eval
from genrl.drive.planner import PlannerRow


def checkpoint_rows(run_dir: Path, *, samples: int, selector: str, evaluator: str | None) -> list[tuple[int, PlannerRow]]:
    """(step, planner row) for the base and every kept checkpoint of ``run_dir``."""
    from genrl.trainer.checkpoint import list_checkpoints, read_json

    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise FileNotFoundError(f"{run_dir}: no checkpoints (expected checkpoints/step_XXXXXXXX from `genrl train`)")
    base = read_json(ckpts[0] / "checkpoint.json").get("base_checkpoint")
    if not base:
        raise ValueError(f"{ckpts[0]}: records no base checkpoint to compare against")
    found = [(0, base)] + [(int(read_json(c / "checkpoint.json")["step"]), str(c)) for c in ckpts]
    extra = {"samples": samples, "selector": selector, **({"evaluator": evaluator} if evaluator else {})}
    return [(step, build(PlannerRow, {"name": f"step_{step:05d}", "planner": "generator", "generator": path, **extra},
                         key="rows")) for step, path in found]


def over_optimisation_curve(run_dir: str | Path, recipe: DriveEvalRecipe, *, recipe_file: str | None = None,
                            samples: int = 1, selector: str = "first", evaluator: str | None = None,
                            select: bool = True, progress: bool = True) -> dict:
    """Evaluate every checkpoint, write curve.json / curve.md / curve.png into the recipe's out folder,
    and (``select``) copy the best one to ``RUN_DIR/checkpoints/best``."""
    run_dir = Path(run_dir).expanduser().resolve()
    rows = checkpoint_rows(run_dir, samples=samples, selector=selector, evaluator=evaluator)
    expert = [r for r in recipe.rows if r.name == EXPERT_ROW]
    recipe.rows = expert + [row for _, row in rows]
    table = run_eval(recipe, recipe_file=recipe_file, progress=progress)
    rewards = _logged_rewards(run_dir)
    points = []
    for step, row in rows:
        per_family = table["rows"][row.name]
        n = sum(m["episodes"] for m in per_family.values())
        score = sum(m["score"] * m["episodes"] for m in per_family.values()) / n
        collision = sum(m["collision_rate"] * m["episodes"] for m in per_family.values()) / n
        points.append({"step": step, "checkpoint": row.generator, "score": score, "collision_rate": collision,
                       "per_family": {f: m["score"] for f, m in per_family.items()},
                       "train_reward": rewards.get(step + 1)})  # the rollout made with these weights
    best = max(points, key=lambda p: (p["score"], -p["step"]))  # ties go to the earlier checkpoint
    out = Path(recipe.out).expanduser().resolve()
    result = {"run_dir": str(run_dir), "points": points, "selected": best, "seeds": to_dict(recipe.seeds),
              "families": recipe.families, "samples": samples, "selector": selector}
    (out / "curve.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "curve.md").write_text(_markdown(points, best) + "\n")
    _plot(out / "curve.png", points, best)
    if select and best["step"] > 0:
        _copy_selected(run_dir, Path(best["checkpoint"]), best)
    return result


def _logged_rewards(run_dir: Path) -> dict[int, float]:
    """Mean training reward (the learned evaluator's, batch before the update) per logged step."""
    f = run_dir / "metrics.jsonl"
    out: dict[int, float] = {}
    if f.is_file():
        for line in f.read_text().splitlines():
            row = json.loads(line)
            if "reward/total/mean" in row:
                out[int(row["step"])] = float(row["reward/total/mean"])
    return out


def _copy_selected(run_dir: Path, checkpoint: Path, point: dict) -> None:
    """``checkpoints/best`` = a copy of the selected checkpoint (atomic: tmp folder, rename)."""
    dest = run_dir / "checkpoints" / "best"
    tmp = dest.with_name(".best.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(checkpoint, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    record = run_dir / "eval" / "curve_selection.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"selected_by": "genrl drive curve", "copied_to": str(dest), **point}, indent=2) + "\n")


def _markdown(points: list[dict], best: dict) -> str:
    lines = ["| fine-tuning step | closed-loop score | collision rate | training reward (evaluator) |",
             "|---|---|---|---|"]
    for p in points:
        mark = " **(selected)**" if p is best else ""
        reward = "" if p["train_reward"] is None else f"{p['train_reward']:.3f}"
        lines.append(f"| {p['step']}{mark} | {p['score']:.3f} | {p['collision_rate']:.1%} | {reward} |")
    return "\n".join(lines)


def _plot(path: Path, points: list[dict], best: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    steps = [p["step"] for p in points]
    ax.plot(steps, [p["score"] for p in points], "o-", color="tab:blue", label="closed-loop score (validation seeds)")
    ax.plot([best["step"]], [best["score"]], "*", color="tab:red", markersize=14, label="selected checkpoint")
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("combined score")
    logged = [(p["step"], p["train_reward"]) for p in points if p["train_reward"] is not None]
    if logged:
        ax2 = ax.twinx()
        ax2.plot(*zip(*logged), "s--", color="tab:gray", alpha=0.7, label="training reward (learned evaluator)")
        ax2.set_ylabel("training reward")
        ax2.legend(loc="lower right", fontsize=7)
    ax.legend(loc="lower left", fontsize=7)
    ax.set_title("Gen-Drive fine-tuning: over-optimisation")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
