"""Build the command that starts a genrl training job on one node, with the existing launchers.

* GPUs: ``accelerate launch --config_file ENGINE`` (DDP, DeepSpeed ZeRO-2/3 or FSDP from
  ``recipes/accelerate/``), which sets up the engine for ``Accelerator()`` inside the loop;
* CPU: ``python -m torch.distributed.run`` (``accelerate launch --cpu`` starts a single process),
  gloo backend.

Multi-node: every node runs the same command; node ranks are assigned by the c10d rendezvous at
``rdzv_endpoint`` (the head node), so no per-node rank has to be computed by the caller. Each node
works out for itself, from the endpoint, (a) whether it hosts the rendezvous store (torchrun's own
guess compares hostnames, which fails when hostnames resolve to loopback), (b) the address it
advertises (rank 0's becomes MASTER_ADDR) and (c) the network interface gloo binds to.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LaunchSpec:
    recipe: str
    overrides: list[str] = field(default_factory=list)
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None  # host:port of the head node (multi-node)
    rdzv_id: str = "genrl"
    accelerate_config: str | None = None
    use_gpu: bool = False
    run_dir: str | None = None
    python: str = sys.executable

    def train_args(self) -> list[str]:
        args = ["train", self.recipe, *self.overrides]
        if self.run_dir:
            args += ["--run-dir", self.run_dir]
        return args


def is_local_address(host: str) -> bool:
    """Whether ``host`` is an address of this machine (binding to it succeeds)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((socket.gethostbyname(host), 0))
        return True
    except OSError:
        return False


def route_address(host: str, port: int) -> str:
    """The local address this machine uses to reach ``host`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((socket.gethostbyname(host), port))
        return s.getsockname()[0]


def interface_of(address: str) -> str | None:
    try:
        import psutil
    except ImportError:
        return None
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == address for a in addrs):
            return name
    return None


def node_environment(spec: LaunchSpec) -> dict[str, str]:
    """Environment for a multi-node node: gloo's interface, the one that reaches the head node."""
    if spec.nnodes <= 1:
        return {}
    host, port = spec.rdzv_endpoint.rsplit(":", 1)
    iface = interface_of(route_address(host, int(port)))
    return {"GLOO_SOCKET_IFNAME": iface, "TP_SOCKET_IFNAME": iface} if iface else {}


def launch_command(spec: LaunchSpec) -> list[str]:
    """The argv that starts ``genrl train`` under the right launcher on this node."""
    if spec.nnodes > 1 and not spec.rdzv_endpoint:
        raise ValueError("multi-node launch needs rdzv_endpoint (the head node's host:port)")
    if spec.use_gpu and spec.accelerate_config:
        cmd = [spec.python, "-m", "accelerate.commands.launch", "--config_file", str(Path(spec.accelerate_config)),
               "--num_processes", str(spec.nproc_per_node * spec.nnodes), "--num_machines", str(spec.nnodes)]
        if spec.nnodes > 1:
            host, port = spec.rdzv_endpoint.rsplit(":", 1)
            cmd += ["--rdzv_backend", "c10d", "--main_process_ip", host, "--main_process_port", port]
        return [*cmd, "-m", "genrl.cli", *spec.train_args()]
    cmd = [spec.python, "-m", "torch.distributed.run", "--nproc_per_node", str(spec.nproc_per_node),
           "--nnodes", str(spec.nnodes)]
    if spec.nnodes > 1:
        host, port = spec.rdzv_endpoint.rsplit(":", 1)
        cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", spec.rdzv_endpoint, "--rdzv_id", spec.rdzv_id,
                "--rdzv_conf", f"is_host={int(is_local_address(host))}",
                "--local_addr", route_address(host, int(port))]
    else:
        cmd += ["--standalone"]
    return [*cmd, "-m", "genrl.cli", *spec.train_args()]
