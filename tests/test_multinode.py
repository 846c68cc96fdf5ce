"""Multi-node without a cluster: two network namespaces joined by a veth pair are two nodes.

Each namespace has its own address (10.x.y.1 and 10.x.y.2) and sees the other one only over the veth
link. The per-node command of a multi-node job (``genrl launch RECIPE --nnodes 2 --rdzv-endpoint
HEAD:PORT ...``) is started once per namespace; the two torchrun agents rendezvous (c10d) at node A's
address, the two workers all-reduce over gloo across the link, and the run must equal the
single-node 2-process run of the same recipe.

Needs root (``ip netns``) and iproute2; skipped, saying why, elsewhere.

Nothing but the launch command and the usual environment is given to a node: both namespaces share
this machine's hostname (which resolves to loopback), so ``genrl launch`` itself must work out which
node hosts the rendezvous store, which address each node advertises and which interface gloo binds
to (``genrl/launch.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from genrl.trainer.checkpoint import latest_checkpoint, load_tensors
from tests.helpers import SMOKE

OVERRIDES = ["trainer.steps=2"]
RDZV_PORT = 29400  # free for sure: node A's namespace is new
TIMEOUT_S = 300

_GENRL = Path(sys.executable).parent / "genrl"
GENRL = [str(_GENRL)] if _GENRL.is_file() else [sys.executable, "-m", "genrl.cli"]

_apt_tried = False


@dataclass(frozen=True)
class Node:
    ns: str
    ifname: str
    addr: str


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60)


def _have_ip() -> bool:
    global _apt_tried
    if shutil.which("ip") is None and not _apt_tried and shutil.which("apt-get"):
        _apt_tried = True
        subprocess.run(["apt-get", "install", "-y", "iproute2"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("ip") is not None


def _kill_namespace_processes(ns: str) -> None:
    """Whatever still runs inside our own namespace was started by this test."""
    pids = _ip("netns", "pids", ns).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@pytest.fixture
def two_nodes():
    """Two network namespaces joined by a veth pair: ``Node`` A (10.x.y.1) and B (10.x.y.2)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are Linux only")
    if os.geteuid() != 0:
        pytest.skip("needs root: the two 'nodes' are network namespaces made with `ip netns` (run as root)")
    if not _have_ip():
        pytest.skip("needs iproute2 (`ip`), which is missing and could not be installed with apt-get")
    pid = os.getpid()
    tag = f"{pid % 100000}"
    subnet = f"10.{200 + pid % 50}.{(pid // 50) % 250 + 1}"
    a = Node(f"genrl_a{tag}", f"gva{tag}", f"{subnet}.1")
    b = Node(f"genrl_b{tag}", f"gvb{tag}", f"{subnet}.2")
    made: list[str] = []
    try:
        for node in (a, b):
            r = _ip("netns", "add", node.ns)
            if r.returncode != 0:
                pytest.skip(f"cannot create a network namespace (`ip netns add`): {r.stderr.strip()}")
            made.append(node.ns)
        steps = [("link", "add", a.ifname, "type", "veth", "peer", "name", b.ifname)]
        for node in (a, b):
            steps += [("link", "set", node.ifname, "netns", node.ns),
                      ("-n", node.ns, "addr", "add", f"{node.addr}/24", "dev", node.ifname),
                      ("-n", node.ns, "link", "set", "lo", "up"),
                      ("-n", node.ns, "link", "set", node.ifname, "up")]
        for step in steps:
            r = _ip(*step)
            if r.returncode != 0:
                pytest.skip(f"cannot set up the veth pair (`ip {' '.join(step)}`): {r.stderr.strip()}")
        yield a, b
    finally:
        for ns in made:
            _kill_namespace_processes(ns)
            _ip("netns", "del", ns)  # deleting a namespace deletes the veth end inside it (and its peer)
        if _ip("link", "show", a.ifname).returncode == 0:  # still in the root namespace after a failed step
            _ip("link", "del", a.ifname)


def _launch(run_dir: Path, nproc: int, *, endpoint: str | None = None, rdzv_id: str = "genrl") -> list[str]:
    argv = [*GENRL, "launch", str(SMOKE), "--cpu", "--num-processes", str(nproc), "--run-dir", str(run_dir)]
    if endpoint:
        argv += ["--nnodes", "2", "--rdzv-endpoint", endpoint, "--rdzv-id", rdzv_id]
    return argv + OVERRIDES


def _base_env(cache: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "GENRL_CACHE": str(cache), "CUDA_VISIBLE_DEVICES": "",
            "PYTHONUNBUFFERED": "1"}


def _node_env(node: Node, *, head: bool, cache: Path) -> dict[str, str]:
    return _base_env(cache)  # no PET_* / GLOO_SOCKET_IFNAME hints: `genrl launch` finds them itself


def _tail(path: Path, n: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(line for line in text.splitlines() if not line.startswith("frame #"))[-n:]


def _run_nodes(nodes: tuple[Node, Node], run_dir: Path, work: Path, cache: Path) -> None:
    """Start the per-node launch command in each namespace; wait for both (killing both on timeout)."""
    head = nodes[0]
    argv = _launch(run_dir, 1, endpoint=f"{head.addr}:{RDZV_PORT}", rdzv_id=f"genrl-test-{os.getpid()}")
    procs = []
    for node in nodes:
        out, err = work / f"{node.ns}.out", work / f"{node.ns}.err"
        env = _node_env(node, head=node is head, cache=cache)
        with open(out, "w") as fo, open(err, "w") as fe:
            procs.append((node, subprocess.Popen(["ip", "netns", "exec", node.ns, *argv], env=env, cwd=work,
                                                 stdout=fo, stderr=fe, start_new_session=True), out, err))
    deadline = time.monotonic() + TIMEOUT_S
    timed_out = False
    for _, proc, _, _ in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            break
    if timed_out:
        for _, proc, _, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    failed = timed_out or any(proc.returncode != 0 for _, proc, _, _ in procs)
    if failed:
        what = f"timed out after {TIMEOUT_S} s" if timed_out else "failed"
        report = [f"multi-node run {what}: ip netns exec NS {' '.join(argv)}"]
        for node, proc, out, err in procs:
            report.append(f"----- node {node.ns} ({node.addr} on {node.ifname}), exit {proc.returncode}\n"
                          f"stdout:\n{_tail(out, 1500)}\nstderr:\n{_tail(err)}")
        print("\n".join(report))
        pytest.fail("\n".join(report), pytrace=False)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_namespaces_rendezvous_over_veth_and_match_the_single_node_run(two_nodes, tmp_path):
    cache = tmp_path / "genrl_cache"
    multi, single = tmp_path / "multi_node", tmp_path / "single_node"
    t0 = time.monotonic()
    _run_nodes(two_nodes, multi, tmp_path, cache)
    t_multi = time.monotonic() - t0

    t0 = time.monotonic()
    proc = subprocess.run(_launch(single, 2), env=_base_env(cache), cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    t_single = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"\n[multinode] 2 nodes x 1 process over veth: {t_multi:.1f} s; 1 node x 2 processes: {t_single:.1f} s")

    for run in (multi, single):
        world = json.loads((run / "manifest.json").read_text())["hardware"]["world_size"]
        assert world == 2, f"{run.name}: manifest world_size {world}, expected one 2-process job"
    m_multi, m_single = _metrics(multi), _metrics(single)
    # One writer (global rank 0): one line per step, not one per process.
    assert [m["step"] for m in m_multi] == [1, 2], [m["step"] for m in m_multi]
    assert [m["step"] for m in m_single] == [1, 2], [m["step"] for m in m_single]

    # Keyed noise: step 1 draws the very same samples on any layout, hence bit-identical rewards.
    reward_keys = sorted(k for k in m_single[0] if k.startswith("reward/"))
    assert reward_keys
    for k in reward_keys:
        assert m_multi[0][k] == m_single[0][k], (k, m_multi[0][k], m_single[0][k])
    total = m_single[1]["reward/total/mean"]
    assert abs(m_multi[1]["reward/total/mean"] - total) <= 1e-5 * abs(total)

    w_multi = load_tensors(latest_checkpoint(multi) / "policy.safetensors")
    w_single = load_tensors(latest_checkpoint(single) / "policy.safetensors")
    assert latest_checkpoint(multi).name == "step_00000002"
    assert w_multi.keys() == w_single.keys()
    for k in w_multi:
        assert torch.allclose(w_multi[k], w_single[k], rtol=1e-5, atol=1e-7), k
    same = [k for k in w_multi if torch.equal(w_multi[k], w_single[k])]
    step2_same = all(m_multi[1][k] == m_single[1][k] for k in reward_keys)
    print(f"[multinode] final policy tensors bit-identical: {len(same)}/{len(w_multi)}; "
          f"step-2 rewards bit-identical: {step2_same}")
