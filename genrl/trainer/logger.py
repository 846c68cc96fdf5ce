"""Metrics go to RUN_DIR/metrics.jsonl, TensorBoard (default) and optionally Weights & Biases."""

from __future__ import annotations

import json
from pathlib import Path


class MetricLogger:
    def __init__(self, run_dir: Path, *, tensorboard: bool, wandb: bool, wandb_project: str, config: dict,
                 enabled: bool) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = self.wb = None
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
        if wandb:
            try:
                import wandb as wb
            except ImportError as exc:
                raise RuntimeError("logging.wandb is true but wandb is not installed: pip install wandb") from exc
            self.wb = wb.init(project=wandb_project, dir=str(run_dir), config=config)

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines of steps after the checkpoint (they will be redone identically)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
        if self.wb is not None:
            self.wb.log(metrics, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()
