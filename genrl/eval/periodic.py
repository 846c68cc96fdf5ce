"""Evaluation during training: run the recipe's benchmark every few steps and track the best checkpoint.

The training loop owns *when* (every ``eval_every`` steps, main process, EMA weights applied); this
module owns *what*: the same :func:`genrl.eval.runner.evaluate` that ``genrl eval`` runs, written to
``RUN_DIR/eval/step_XXXXXXXX/metrics.json`` (the format ``genrl compare`` reads), and a
:class:`BestCheckpoint` record in ``RUN_DIR/eval/best.json`` that survives resumption.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genrl.eval.runner import EvalResult, evaluate, write_metrics


class BestCheckpoint:
    """The best value of one metric seen so far, and the step and checkpoint that reached it.

    State lives in a JSON file, so a resumed run keeps comparing against the best of the whole run.
    When ``keep_dir`` is given, each new best checkpoint folder is copied there atomically (copy to a
    temporary folder, then rename), outside the rotating ``checkpoints/step_*`` that pruning deletes.
    """

    def __init__(self, state_file: str | Path, metric: str, *, higher_is_better: bool,
                 keep_dir: str | Path | None = None) -> None:
        self.state_file = Path(state_file)
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.keep_dir = Path(keep_dir) if keep_dir is not None else None
        self.best: dict[str, Any] | None = None
        if self.state_file.is_file():
            state = json.loads(self.state_file.read_text())
            if state.get("metric") != metric:
                raise ValueError(f"{self.state_file} tracks {state.get('metric')!r}, not {metric!r}")
            self.best = state.get("best")

    def is_better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best["value"] if self.higher_is_better else value < self.best["value"]

    def update(self, step: int, value: float, checkpoint: str | Path | None = None) -> bool:
        """Record ``value`` at ``step``; returns whether it is a new best (ties keep the earlier step)."""
        if not self.is_better(value):
            return False
        kept = None
        if checkpoint is not None and self.keep_dir is not None:
            kept = str(_copy_atomic(Path(checkpoint), self.keep_dir))
        self.best = {"step": int(step), "value": float(value),
                     "checkpoint": None if checkpoint is None else str(checkpoint), "kept_at": kept}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(f".{self.state_file.name}.tmp")
        tmp.write_text(json.dumps({"metric": self.metric, "higher_is_better": self.higher_is_better,
                                   "best": self.best}, indent=2))
        os.replace(tmp, self.state_file)
        return True


def _copy_atomic(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        old = dest.with_name(f".{dest.name}.old")
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


class PeriodicEvaluator:
    """Evaluate a policy at a training step, write ``out_dir/step_XXXXXXXX/metrics.json`` and update the
    best-checkpoint record on ``select`` (a metric name; its direction comes from the benchmark's
    MetricSpec, or pass ``higher_is_better``)."""

    def __init__(self, benchmark: Any, out_dir: str | Path, *, name: str, seeds: Sequence[int],
                 select: str | None = None, higher_is_better: bool | None = None,
                 keep_best_dir: str | Path | None = None) -> None:
        self.benchmark, self.name, self.seeds = benchmark, name, list(seeds)
        self.out_dir = Path(out_dir)
        self.best: BestCheckpoint | None = None
        if select is not None:
            known = {s.name: s for s in benchmark.metrics}
            base = select.split("/pass@")[0]
            if base not in known:
                raise ValueError(f"select: unknown metric {select!r} of benchmark {name!r}; expected one of {sorted(known)}")
            direction = known[base].higher_is_better if higher_is_better is None else higher_is_better
            self.best = BestCheckpoint(self.out_dir / "best.json", select, higher_is_better=direction,
                                       keep_dir=keep_best_dir)

    def __call__(self, policy: Any, *, step: int, checkpoint: str | Path | None = None) -> tuple[EvalResult, bool]:
        """Evaluate now; returns the result and whether it is a new best."""
        info = {"path": None if checkpoint is None else str(checkpoint), "step": int(step)}
        result = evaluate(self.benchmark, policy, self.seeds, name=self.name, checkpoint=info)
        write_metrics(result, self.out_dir / f"step_{step:08d}" / "metrics.json")
        improved = False
        if self.best is not None:
            improved = self.best.update(step, result.metrics[self.best.metric]["mean"], checkpoint)
        return result, improved
