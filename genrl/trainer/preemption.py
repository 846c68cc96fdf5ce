"""Preemption: finish the step, agree, save, requeue, exit — resume later from the checkpoint.

SLURM can warn a job before its time limit (``--signal=USR1@120``) and sends SIGTERM when it
preempts or cancels it. On either signal every rank finishes the step it is in; the ranks then
agree (an all-reduce of the flag, so no rank stops a step earlier than another), the state is saved
atomically, the main process asks SLURM to requeue the job (``scontrol requeue``), and the
requeued job resumes from the latest checkpoint automatically.
"""

from __future__ import annotations

import os
import signal
import subprocess

import torch

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionWatcher:
    def __init__(self, signals=SIGNALS) -> None:
        self.received: int | None = None
        self._previous = {}
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner's worker thread)
                pass

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, accelerator) -> bool:
        """True on every rank if any rank got a signal (checked once per step)."""
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, "max")
        return bool(flag.item() > 0)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a peer rank's signal"


def requeue_slurm_job() -> str | None:
    """Requeue the current SLURM batch job; returns what went wrong, if anything (None outside SLURM).

    SLURM cancels the running job as soon as it is requeued (SIGTERM to every process), so what is
    to be logged must be logged before: the announcement is printed first.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    print(f"[genrl] requeueing SLURM job {job} (scontrol requeue); it resumes from the checkpoint", flush=True)
    try:
        subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"scontrol requeue {job} failed: {exc}"
    return None
