"""A real single-node Slurm for the tests: munged + slurmctld + slurmd in a temp dir.

Everything the cluster needs (munge key and socket, slurm.conf, state, spool,
logs) lives in one folder, on ports of its own, so it never touches a Slurm
the machine may already run. Clients find it through SLURM_CONF. Needs root
(slurmd starts jobs as their user) and Debian's slurm-wlm and munge.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
INSTALL_HINT = "apt-get install slurm-wlm munge (as root), or run scripts/install-slurm.sh"


def missing() -> str | None:
    """Why a test Slurm cannot start here, or None."""
    absent = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
    if absent:
        return f"Slurm is not installed ({', '.join(absent)} not found): {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "a test Slurm needs root (slurmd starts jobs as their user)"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 512
    raise RuntimeError("no MemTotal in /proc/meminfo")


@dataclass
class SlurmCluster:
    root: Path
    node: str

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def command(self, *args: str) -> str:
        """Run a Slurm client against this cluster; its stdout (raises on failure)."""
        result = subprocess.run(args, capture_output=True, text=True, env=self.env(), check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def release(self, job_id: str, timeout_s: float = 180.0) -> None:
        """Start a requeued job now instead of after Slurm's requeue delay.

        A requeued job shows COMPLETING until its old batch step has ended, then
        PENDING (BeginTime) for about two minutes. Releasing it earlier lets the old
        step's late exit end the new start, so this waits for BeginTime twice in a row.
        The timeout outlasts the requeue delay: on a loaded machine the release may not
        take, and the job then starts when the delay ends."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        states: list[str] = []
        while time.monotonic() < deadline:
            state = self.command("squeue", "-h", "-j", job_id, "-o", "%T|%r").strip()
            if state.startswith("RUNNING"):
                return
            if not states or states[-1] != state:
                states.append(state)
            seen = seen + 1 if state == "PENDING|BeginTime" else 0
            if seen >= 2:
                subprocess.run(
                    ["scontrol", "update", f"JobId={job_id}", "StartTime=now"],
                    capture_output=True,
                    env=self.env(),
                    check=False,  # the job may start between squeue and this
                )
            time.sleep(0.5)
        raise AssertionError(
            f"job {job_id} did not start again within {timeout_s} s; its states: {states}"
        )

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.root / "log" / name
            tail = path.read_text().splitlines()[-30:] if path.is_file() else ["(none)"]
            parts.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Cancel what still runs (a failed test may leave jobs), then stop the daemons."""
        if (self.root / "slurmctld.pid").is_file():
            subprocess.run(["scancel", "--user=root"], env=self.env(), check=False)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self._jobs_active():
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            pid_file = self.root / f"{name}.pid"
            if pid_file.is_file():
                with contextlib.suppress(ProcessLookupError):  # already stopped
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)

    def _jobs_active(self) -> bool:
        states = subprocess.run(
            ["squeue", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env()
        ).stdout.split()
        return any(state in ("RUNNING", "COMPLETING", "CONFIGURING") for state in states)


def _slurm_conf(root: Path, node: str, ctld_port: int, slurmd_port: int) -> str:
    return f"""\
ClusterName=aqrtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=600
KillWait=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def start(root: Path, timeout_s: float = 60.0) -> SlurmCluster:
    """Start munged, slurmctld and slurmd in `root`; returns once the node is idle."""
    for folder in ("munge", "state", "spool", "log"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = socket.gethostname().split(".")[0]
    cluster = SlurmCluster(root, node)
    cluster.conf.write_text(_slurm_conf(root, node, *_free_ports(2)))
    munge = root / "munge"
    starts = [
        ["munged", "--force", f"--key-file={key}", f"--socket={munge / 'munge.socket'}",
         f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'log' / 'munged.log'}",
         f"--seed-file={munge / 'munged.seed'}"],
        ["slurmctld", "-f", str(cluster.conf)],
        ["slurmd", "-f", str(cluster.conf)],
    ]  # fmt: skip
    for command in starts:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            cluster.stop()
            raise RuntimeError(f"{command[0]} did not start: {result.stderr}\n{cluster.logs()}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=cluster.env()
        ).stdout.strip()
        if state == "idle":
            return cluster
        time.sleep(0.5)
    cluster.stop()
    raise RuntimeError(f"the test Slurm node is not idle after {timeout_s} s\n{cluster.logs()}")
