"""A real single-node SLURM cluster for the tests (Debian's ``slurm-wlm`` + ``munge``).

``SlurmCluster.start()`` installs the packages when they are missing (root + apt), creates the munge
key if there is none (``/etc/munge/munge.key``, owner munge, mode 400), starts a private ``munged``
(as the munge user, with its own socket), writes a ``slurm.conf`` into a temporary folder (private
ports, state, spool, logs and pid files there; one node = this machine, one default
partition), starts ``slurmctld`` and ``slurmd`` in the foreground as children of the test process
and waits until ``sinfo`` shows the node idle. ``stop()`` cancels the jobs left and ends exactly
the processes it started. Every client call (``sbatch``, ``squeue``, ``scontrol``) must run with
``cluster.env`` (``SLURM_CONF`` points at the private configuration); jobs inherit it, so a job's
own ``scontrol requeue`` reaches the same controller.

``SlurmUnavailable`` means the cluster cannot be had here (not root, no apt, install failed): the
fixture turns it into a skip with the reason. A cluster that is installed but does not come up is
an error, with the daemons' log tails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "slurmctld", "slurmd", "munged", "munge")
MUNGE_KEY = Path("/etc/munge/munge.key")


class SlurmUnavailable(RuntimeError):
    """No SLURM can be had on this machine (the reason says why)."""


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _missing_binaries() -> list[str]:
    return [b for b in BINARIES if not (shutil.which(b) or Path("/usr/sbin", b).exists())]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def ensure_installed() -> None:
    """Install slurm-wlm + munge with apt when a binary is missing (root only)."""
    missing = _missing_binaries()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"SLURM binaries missing ({', '.join(missing)}) and not root: cannot install "
                               f"{' '.join(PACKAGES)}")
    if not shutil.which("apt-get"):
        raise SlurmUnavailable(f"SLURM binaries missing ({', '.join(missing)}) and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        proc = _run(cmd, env=env, timeout=900)
        if proc.returncode != 0:
            raise SlurmUnavailable(f"`{' '.join(cmd)}` failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-800:]}")
    missing = _missing_binaries()
    if missing:
        raise SlurmUnavailable(f"installed {' '.join(PACKAGES)} but still missing: {', '.join(missing)}")


def _munge_works(socket_path: Path) -> bool:
    try:
        enc = _run(["munge", "-n", f"--socket={socket_path}"], timeout=10)
        return enc.returncode == 0 and _run(["unmunge", f"--socket={socket_path}"], input=enc.stdout,
                                            timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(int(line.split()[1]) // 1024 - 512, 256)
    return 1024


class SlurmCluster:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.conf = self.root / "slurm.conf"
        self._procs: list[subprocess.Popen] = []
        self._munged: subprocess.Popen | None = None
        self.munge_dir: Path | None = None
        self.munge_socket: Path | None = None
        self._logs: list = []

    @property
    def env(self) -> dict[str, str]:
        """The current environment with ``SLURM_CONF`` pointing at this cluster (read at each call, so
        a test's own settings such as ``GENRL_CACHE`` reach the jobs: sbatch exports them)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------------ set-up
    def start(self, timeout: float = 60.0) -> SlurmCluster:
        if os.geteuid() != 0:
            raise SlurmUnavailable("the test cluster runs its daemons as root (SlurmUser=root); not root here")
        ensure_installed()
        self._start_munge()
        self._write_conf()
        for daemon in ("slurmctld", "slurmd"):
            log = open(self.root / f"{daemon}.stdout", "w")  # noqa: SIM115 (closed in stop())
            self._logs.append(log)
            self._procs.append(subprocess.Popen([_binary(daemon), "-D", "-f", str(self.conf)], env=self.env,
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            dead = [p for p in self._procs if p.poll() is not None]
            if dead:
                break
            proc = _run(["sinfo", "-h", "-n", self.host, "-o", "%T"], env=self.env, timeout=30)
            state = proc.stdout.strip()
            if proc.returncode == 0 and state == "idle":
                return self
            time.sleep(0.5)
        logs = self.log_tails()
        self.stop()
        raise RuntimeError(f"the test SLURM did not come up (node state {state!r}):\n{logs}")

    def _start_munge(self) -> None:
        """A private ``munged`` (own socket, pid, log and seed files) run as the munge user with the
        shared key: concurrent test sessions and a system munged are left alone."""
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        if not MUNGE_KEY.is_file() or MUNGE_KEY.stat().st_size < 32:
            MUNGE_KEY.write_bytes(os.urandom(1024))
        shutil.chown(MUNGE_KEY.parent, "munge", "munge")
        MUNGE_KEY.parent.chmod(0o700)
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
        # munged refuses a socket directory others can write to, and the munge user cannot enter
        # pytest's root-only temporary folders: a folder of its own under /tmp (sticky bit)
        self.munge_dir = Path(tempfile.mkdtemp(prefix="genrl-munge-"))
        shutil.chown(self.munge_dir, "munge", "munge")
        self.munge_dir.chmod(0o755)
        self.munge_socket = self.munge_dir / "munge.socket"
        d = self.munge_dir
        args = [_binary("munged"), "--foreground", f"--socket={self.munge_socket}", f"--key-file={MUNGE_KEY}",
                f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'munged.log'}", f"--seed-file={d / 'munged.seed'}"]
        if shutil.which("runuser"):
            cmd = ["runuser", "-u", "munge", "--", *args]
        else:
            cmd = ["su", "-s", "/bin/sh", "munge", "-c", " ".join(args)]
        log = open(self.root / "munged.stdout", "w")  # noqa: SIM115 (closed in stop())
        self._logs.append(log)
        self._munged = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(100):
            if _munge_works(self.munge_socket):
                return
            if self._munged.poll() is not None:
                break
            time.sleep(0.1)
        log.flush()
        logs = (self.root / "munged.stdout").read_text()[-1500:]
        if (d / "munged.log").is_file():
            logs += (d / "munged.log").read_text()[-1500:]
        raise RuntimeError(f"munged did not start: {logs}")

    def _write_conf(self) -> None:
        for d in ("state", "spool"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(f"""\
# genrl test cluster: one node (this machine), written by tests/slurm_cluster.py
ClusterName=genrltest
SlurmctldHost={self.host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire seconds before it may start again (default 120)
AuthInfo=socket={self.munge_socket},cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=600
InactiveLimit=0
Waittime=0
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldDebug=info
SlurmdDebug=info
NodeName={self.host} CPUs={self.cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")

    # ------------------------------------------------------------------ use
    def job_info(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, RestartCnt, ExitCode, ...); {} if unknown."""
        proc = _run(["scontrol", "show", "job", "-o", str(job_id)], env=self.env, timeout=30)
        if proc.returncode != 0:
            return {}
        info = {}
        for tok in proc.stdout.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                info.setdefault(k, v)
        return info

    def wait_for(self, job_id: str, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                            "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"),
                 timeout: float = 300.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job_info(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} not in {states} after {timeout:.0f} s: {info}\n{self.log_tails()}")

    def log_tails(self, n: int = 3000) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log", "slurmctld.stdout", "slurmd.stdout", "munged.stdout"):
            p = self.root / name
            if p.is_file():
                out.append(f"--- {name}\n{p.read_text(errors='replace')[-n:]}")
        return "\n".join(out)

    # ------------------------------------------------------------------ tear-down
    def stop(self) -> None:
        if self._procs and all(p.poll() is None for p in self._procs):
            _run(["scancel", "--full", "--user", "root"], env=self.env, timeout=30)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                q = _run(["squeue", "-h", "-o", "%i"], env=self.env, timeout=30)
                if q.returncode != 0 or not q.stdout.strip():
                    break
                time.sleep(0.5)
        for proc in reversed(self._procs + ([self._munged] if self._munged else [])):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        self._procs, self._munged = [], None
        for log in self._logs:
            log.close()
        self._logs = []
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
            self.munge_dir = None
