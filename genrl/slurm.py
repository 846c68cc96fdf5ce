"""``genrl slurm submit``: render an sbatch script from ``slurm/*.sbatch`` and submit it.

The job runs ``genrl launch`` (torchrun on CPU, accelerate launch on GPUs) as **one SLURM task per
node**; the launcher starts the node's training processes. Several nodes meet in a c10d
rendezvous on the first node of the allocation (``scontrol show hostnames`` of the node list), so
node ranks come from the rendezvous and no per-task rank (``$SLURM_PROCID``) is needed.

Every job asks for SLURM's warning signal (``--signal=USR1@S``) and is requeueable
(``--requeue``); logs go to ``RUN_DIR/slurm/%j.out`` in append mode, so the log of a requeued job
continues the same file. On the signal the training processes finish their step, checkpoint,
``scontrol requeue`` the job and return; the requeued job resumes from the checkpoint (see
``genrl/trainer/preemption.py``). SLURM signals every process of the job step, so the launcher is
started with SIGUSR1 ignored (torchrun/accelerate would die of it); the training processes
install their own handler.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from genrl.cache import PROJECT_ROOT

TEMPLATE_DIR = PROJECT_ROOT / "slurm"
SINGLE_NODE = "single_node.sbatch"
MULTI_NODE = "multi_node.sbatch"
PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
#: head-node port of the c10d rendezvous when none is given: spread by job id so two jobs that
#: share a head node do not collide
DEFAULT_RDZV_PORT = "$((29500 + SLURM_JOB_ID % 1000))"


class SlurmError(ValueError):
    """A submit request that cannot work (bad counts, template, sbatch missing)."""


@dataclass
class SlurmJob:
    recipe: str  # absolute path of the recipe file
    run_dir: str  # absolute run directory
    overrides: list[str] = field(default_factory=list)
    nodes: int = 1
    gpus_per_node: int = 0
    processes_per_node: int | None = None  # default: gpus_per_node, or 1 without GPUs
    cpus_per_task: int | None = None  # the one task per node runs all its processes; default = processes
    partition: str | None = None
    time: str | None = None
    job_name: str | None = None
    accelerate_config: str | None = None
    signal_seconds: int = 120
    rdzv_port: int | None = None
    sbatch_args: list[str] = field(default_factory=list)  # extra `#SBATCH` options, e.g. --account=X
    template: str | None = None  # a custom template file (default: slurm/{single,multi}_node.sbatch)
    workdir: str | None = None  # where the job runs (relative recipe references resolve here)
    python: str = sys.executable

    def __post_init__(self) -> None:
        if self.processes_per_node is None:
            self.processes_per_node = self.gpus_per_node or 1
        if self.cpus_per_task is None:
            self.cpus_per_task = self.processes_per_node
        for name in ("nodes", "processes_per_node", "cpus_per_task", "signal_seconds"):
            if getattr(self, name) < 1:
                raise SlurmError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise SlurmError(f"--gpus-per-node: expected 0 or more, got {self.gpus_per_node}")
        if self.workdir is None:
            self.workdir = str(Path.cwd())
        if self.job_name is None:
            self.job_name = "genrl-" + Path(self.recipe).stem

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node

    @property
    def slurm_dir(self) -> Path:
        return Path(self.run_dir) / "slurm"

    @property
    def script_path(self) -> Path:
        return self.slurm_dir / "job.sbatch"

    def log_path(self, job_id: str = "%j") -> Path:
        return self.slurm_dir / f"{job_id}.out"


def _template_file(job: SlurmJob) -> Path:
    if job.template:
        path = Path(job.template)
        if not path.is_file():
            raise FileNotFoundError(f"--template: {job.template} does not exist")
        return path
    return TEMPLATE_DIR / (MULTI_NODE if job.nodes > 1 else SINGLE_NODE)


def launch_args(job: SlurmJob) -> list[str]:
    """The options of ``genrl launch`` common to every node (the overrides follow them; multi-node
    templates put the rendezvous options in between)."""
    args = [job.recipe, "--num-processes", str(job.processes_per_node), "--run-dir", job.run_dir]
    if job.accelerate_config:
        args += ["--accelerate-config", job.accelerate_config]
    return args


def render(job: SlurmJob) -> str:
    """The sbatch script of ``job`` (placeholders ``{{name}}`` of the template filled in)."""
    extra = []
    if job.gpus_per_node > 0:
        extra.append(f"--gres=gpu:{job.gpus_per_node}")
    if job.partition:
        extra.append(f"--partition={job.partition}")
    if job.time:
        extra.append(f"--time={job.time}")
    for arg in job.sbatch_args:
        if not arg.startswith("-") or "\n" in arg:
            raise SlurmError(f"--sbatch-arg: expected one sbatch option such as --account=NAME, got {arg!r}")
        extra.append(arg)
    values = {
        "job_name": job.job_name,
        "nodes": str(job.nodes),
        "cpus_per_task": str(job.cpus_per_task),
        "workdir": job.workdir,
        "output": str(job.log_path()),
        "signal": f"USR1@{job.signal_seconds}",
        "sbatch_extra": "\n".join(f"#SBATCH {a}" for a in extra),
        "python": shlex.quote(job.python),
        "launch_args": " ".join(shlex.quote(a) for a in launch_args(job)),
        "overrides": " ".join(shlex.quote(a) for a in job.overrides),
        "rdzv_port": str(job.rdzv_port) if job.rdzv_port else DEFAULT_RDZV_PORT,
        "world_size": str(job.world_size),
    }
    for key in ("job_name", "workdir", "output"):
        if any(c.isspace() for c in values[key]):
            raise SlurmError(f"{key.replace('_', ' ')} {values[key]!r}: #SBATCH lines cannot hold whitespace")
    text = _template_file(job).read_text()
    unknown = sorted({m.group(1) for m in PLACEHOLDER.finditer(text)} - values.keys())
    if unknown:
        raise SlurmError(f"{_template_file(job)}: unknown placeholders {unknown}; known: {sorted(values)}")
    text = PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
    return re.sub(r"\n{3,}", "\n\n", text)


def validate(recipe: str, overrides: list[str], *, world_size: int) -> dict:
    """Load and validate the training recipe (and what it refers to) before anything is queued.

    Raises ``RecipeError`` (exit 2 in the CLI); returns the resolved recipe."""
    from genrl.cache import check_references
    from genrl.config.load import load_recipe
    from genrl.config.validate import RecipeError
    from genrl.recipe import TrainRecipe

    config, resolved = load_recipe(recipe, TrainRecipe, overrides)
    check_references(resolved, recipe)
    tc = config.trainer
    if tc.minibatch_size % world_size or (tc.prompts_per_step * tc.group_size) % world_size:
        raise RecipeError(recipe, "trainer.minibatch_size",
                          f"expected the minibatch ({tc.minibatch_size}) and the rollout batch "
                          f"({tc.prompts_per_step * tc.group_size}) to divide over {world_size} processes "
                          f"(nodes x processes per node)")
    return resolved


def write_script(job: SlurmJob) -> Path:
    text = render(job)
    job.slurm_dir.mkdir(parents=True, exist_ok=True)
    job.script_path.write_text(text)
    job.script_path.chmod(0o755)
    return job.script_path


def submit(job: SlurmJob, *, sbatch: str = "sbatch") -> str:
    """``sbatch --parsable`` the rendered script; returns the job id."""
    exe = shutil.which(sbatch)
    if exe is None:
        raise SlurmError(f"{sbatch} not found: is this a SLURM login node? (--dry-run only writes the script)")
    script = write_script(job)
    proc = subprocess.run([exe, "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise SlurmError(f"sbatch failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip().split(";")[0]  # "<id>" or "<id>;<cluster>"
