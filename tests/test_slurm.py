"""``genrl slurm submit`` and the sbatch templates, on a real single-node SLURM (tests/slurm_cluster.py).

* a 2-process quick-start job submitted with ``genrl slurm submit`` completes and writes its
  metrics and checkpoint;
* preemption: ``scancel --signal=USR1`` mid-run → the job checkpoints, requeues itself, resumes
  and ends with the weights of an uninterrupted run;
* the multi-node script: rendezvous arguments from the node list, one launcher per node, no
  ``$SLURM_PROCID`` outside srun (executed with stub ``scontrol``/``srun``: one node here).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from genrl.trainer.checkpoint import latest_checkpoint, load_tensors
from tests.helpers import ROOT, SMOKE
from tests.slurm_cluster import SlurmCluster, SlurmUnavailable

QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
QUICK = ["trainer.steps=2", "eval=null", "trainer.prompts_per_step=4", "trainer.group_size=4",
         "trainer.minibatch_size=8", "trainer.micro_batch_size=4", "logging.progress=false"]
SMOKE_LONG = ["trainer.steps=40", "trainer.checkpoint_every=0", "logging.tensorboard=false"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    except SlurmUnavailable as exc:
        pytest.skip(f"no SLURM cluster here: {exc}")
    yield cluster
    cluster.stop()


def _genrl(env: dict, *args, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "genrl.cli", *map(str, args)], env={**env, "OMP_NUM_THREADS": "1"},
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _submit(slurm: SlurmCluster, recipe: Path, run: Path, *args: str) -> str:
    proc = _genrl(slurm.env, "slurm", "submit", recipe, "--run-dir", run, *args)
    job = proc.stdout.strip().splitlines()[-1]
    assert job.isdigit(), proc.stdout
    assert f"log: {run / 'slurm' / (job + '.out')}" in proc.stdout
    return job


def _finished(slurm: SlurmCluster, job: str, run: Path, timeout: float) -> tuple[dict, str]:
    info = slurm.wait_for(job, timeout=timeout)
    log = (run / "slurm" / f"{job}.out").read_text(errors="replace")
    brief = {k: info.get(k) for k in ("JobState", "Reason", "ExitCode", "Restarts", "RunTime")}
    assert info["JobState"] == "COMPLETED", f"job {job}: {brief}\n--- job log\n{log[-4000:]}"
    return info, log


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _assert_two_processes(run: Path, log: str) -> None:
    world = _manifest(run)["hardware"]["world_size"]
    assert world == 2, (f"the job's 2 training processes ran as {world} independent process(es): "
                        f"Accelerate did not set up torch.distributed on CPU\n{log[-2000:]}")


def test_submit_runs_the_quick_start_with_two_processes(slurm, tmp_path):
    run = tmp_path / "run"
    job = _submit(slurm, QUICKSTART, run, "--nodes", "1", "--processes-per-node", "2", *QUICK)
    _, log = _finished(slurm, job, run, timeout=600)
    assert (run / "slurm" / "job.sbatch").is_file()
    assert f"[genrl-slurm] job {job} restart 0" in log
    assert "--nproc_per_node 2" in log  # the launcher line genrl launch prints
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert latest_checkpoint(run).name == "step_00000002"
    assert (latest_checkpoint(run) / "policy.safetensors").is_file()
    manifest = _manifest(run)
    assert manifest["slurm"]["SLURM_JOB_ID"] == job
    _assert_two_processes(run, log)


def test_usr1_checkpoints_requeues_resumes_and_ends_like_an_uninterrupted_run(slurm, tmp_path):
    run = tmp_path / "run"
    job = _submit(slurm, SMOKE, run, "--processes-per-node", "2", *SMOKE_LONG)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        info = slurm.job_info(job)
        assert info.get("JobState") in ("PENDING", "RUNNING", "CONFIGURING"), info
        assert time.monotonic() < deadline, "the job wrote no metrics in 300 s"
        time.sleep(0.3)
    # SLURM's warning signal, as --signal=USR1@S sends it before the time limit: to every process of
    # the job's steps (the torchrun agent included, which must survive it), not to the batch shell.
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm.env, check=True, timeout=30)
    info, log = _finished(slurm, job, run, timeout=400)
    assert info["Restarts"] == "1", info
    assert f"requeueing SLURM job {job}" in log and f"[genrl-slurm] job {job} restart 1" in log

    sessions = _manifest(run)["sessions"]
    assert len(sessions) == 2, sessions
    stopped = sessions[1]["resumed_from_step"]
    assert 3 <= stopped < 40
    assert f"preempted by SIGUSR1 after step {stopped}" in sessions[0]["notes"]
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == list(range(1, 41))
    _assert_two_processes(run, log)

    # the same recipe, seed and process count, uninterrupted and outside SLURM
    clean = tmp_path / "clean"
    env = {k: v for k, v in slurm.env.items() if not k.startswith("SLURM_")}
    _genrl(env, "launch", SMOKE, "--num-processes", "2", "--run-dir", clean, *SMOKE_LONG)
    a = load_tensors(latest_checkpoint(run) / "policy.safetensors")
    b = load_tensors(latest_checkpoint(clean) / "policy.safetensors")
    assert latest_checkpoint(run).name == latest_checkpoint(clean).name == "step_00000040"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- the multi-node script
def _render(tmp_path: Path, *args: str) -> str:
    from genrl.cli import main

    assert main(["slurm", "submit", str(SMOKE), "--run-dir", str(tmp_path / "run"), "--dry-run", *args]) == 0
    return (tmp_path / "run" / "slurm" / "job.sbatch").read_text()


def _outside_single_quotes(script: str) -> str:
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    return re.sub(r"'[^']*'", "''", code)


def test_the_multi_node_script_meets_in_a_c10d_rendezvous_on_the_first_node(tmp_path, capsys):
    script = _render(tmp_path, "--nodes", "2", "--processes-per-node", "2", "--time", "01:00:00",
                     "--partition", "gpu", "--gpus-per-node", "2", "--sbatch-arg=--account=rl", "trainer.steps=5")
    assert capsys.readouterr().out == script  # --dry-run prints what it wrote
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --gres=gpu:2", "#SBATCH --partition=gpu", "#SBATCH --time=01:00:00",
                 "#SBATCH --account=rl", "#SBATCH --signal=USR1@120", "#SBATCH --requeue",
                 "#SBATCH --open-mode=append", f"#SBATCH --output={tmp_path / 'run' / 'slurm'}/%j.out",
                 'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
                 'srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --cpus-per-task=2'):
        assert line in script.splitlines() or line + " \\" in script.splitlines(), line
    assert """bash -c 'trap "" USR1; exec "$@"'""" in script
    assert '--nnodes "$SLURM_NNODES" --rdzv-endpoint "${HEAD}:${PORT}" --rdzv-id "$SLURM_JOB_ID"' in script
    code = _outside_single_quotes(script)
    assert "$SLURM_PROCID" not in code and "${SLURM_PROCID" not in code
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0

    # Execute it for a 2-node allocation with stub scontrol/srun (srun runs its command with
    # --dry-run): every node's launcher gets the c10d rendezvous on the first node of the list.
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "scontrol").write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames localhost,nodeB" ] && printf "localhost\\nnodeB\\n"\n')
    (stubs / "srun").write_text('#!/bin/sh\necho "SRUN $*"\nwhile [ "${1#-}" != "$1" ]; do shift; done\n'
                                'exec "$@" --dry-run\n')
    for f in stubs.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "localhost,nodeB",
           "SLURM_NNODES": "2", "SLURM_JOB_ID": "4321", "SLURM_PROCID": "7"}
    proc = subprocess.run(["bash", str(tmp_path / "run" / "slurm" / "job.sbatch")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'SRUN --nodes=2 --ntasks-per-node=1 --cpus-per-task=2 bash -c trap "" USR1; exec "$@"' in proc.stdout
    launched = [line for line in proc.stdout.splitlines() if line.startswith("[genrl] ") and "genrl.cli train" in line]
    assert len(launched) == 1, proc.stdout
    port = 29500 + 4321 % 1000
    for part in ("--nnodes 2", "--nproc_per_node 2", "--rdzv_id 4321"):
        assert part in launched[0], launched[0]
    assert f"--rdzv_endpoint localhost:{port}" in launched[0] and "nodeB" not in launched[0]
    assert "7" not in launched[0].split()  # SLURM_PROCID (7 here) is not used anywhere
    assert launched[0].endswith(f"--run-dir {tmp_path / 'run'}") and "trainer.steps=5" in launched[0]


def test_single_node_script_and_recipe_errors(tmp_path, capsys):
    from genrl.cli import main

    script = _render(tmp_path, "--processes-per-node", "2")
    assert "#SBATCH --nodes=1" in script and "--gres" not in script and "rdzv" not in script
    assert "srun --nodes=1 --ntasks=1 --cpus-per-task=2" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    capsys.readouterr()
    # the recipe is validated before anything is written or queued: exit 2 with the reason
    out = tmp_path / "bad"
    assert main(["slurm", "submit", str(SMOKE), "--run-dir", str(out), "trainer.stepz=3"]) == 2
    assert "trainer.stepz: unknown key" in capsys.readouterr().err
    assert main(["slurm", "submit", str(SMOKE), "--run-dir", str(out), "--processes-per-node", "3"]) == 2
    assert "divide over 3 processes" in capsys.readouterr().err
    assert not out.exists()
