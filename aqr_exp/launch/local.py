"""The local backend: a pool of N concurrent trainings on this machine.

Each run gets its own GPUs (CUDA_VISIBLE_DEVICES) and a free master port, or
an equal share of the CPU cores when there is no GPU; a run with several GPUs
goes through torchrun. Each training is a `python -m aqr_exp.train`
subprocess in its own session (Ctrl-C of the pool does not reach it; the
pool stops it and records why), with stdout+stderr appended to the work dir's
train.log.

`python -m aqr_exp.launch.local RUN_DIR...` is the same pool running
detached (`--detach`): it outlives the command that started it, and
`aqr-exp status` reads the registry it keeps up to date.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from aqr_exp import registry
from aqr_exp.errors import AqrError
from aqr_exp.launch import backends
from aqr_exp.launch.base import (
    SAFE_PATH_ENV,
    Backend,
    Launcher,
    RunHandle,
    TrainJob,
    job_of,
    run_all,
    stop_on_sigterm,
)
from aqr_exp.launch.lifecycle import record_cancel, record_exit, start_training
from aqr_exp.registry import RunRecord
from aqr_exp.spec import LauncherSettings

STOP_GRACE_S = 10.0


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [gpu.strip() for gpu in env.split(",") if gpu.strip() and gpu.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(
        ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return listing.stdout.split() if listing.returncode == 0 else []


def pid_alive(pid: int) -> bool:
    """Whether a process is still there for its launcher.

    A zombie counts as alive while its parent (the pool, which records the exit
    when it reaps it) lives; an orphaned zombie nobody reaps counts as gone.
    """
    if Path("/proc/self").exists():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return False
        state, parent = fields[0], int(fields[1])
        if state in ("Z", "X"):
            return parent > 1 and Path(f"/proc/{parent}").exists()
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_port(taken: set[int]) -> int:
    """A TCP port free right now and not handed to another run of this pool."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            return port


def stop_process_group(pid: int, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM a run's process group (torchrun and its workers too), SIGKILL if it lingers."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


class LocalHandle(RunHandle):
    def __init__(self, job: TrainJob, launcher: LocalLauncher) -> None:
        super().__init__(job)
        self.launcher = launcher
        self.status = "queued"
        self.proc: subprocess.Popen[bytes] | None = None
        self.gpus: list[str] = []
        self.port: int | None = None
        self.started_at: float | None = None
        self.log_file: IO[bytes] | None = None

    def state(self) -> str:
        return self.status

    def cancel(self, reason: str = "cancelled by the user") -> None:
        self.launcher.stop(self, reason)


class LocalLauncher(Launcher):
    """Runs jobs as local subprocesses, at most `max_concurrent` at a time."""

    def __init__(
        self,
        max_concurrent: int = 1,
        gpus_per_run: int | None = None,
        gpu_ids: Sequence[str] | None = None,
        torchrun: bool = False,
        cpu_count: int | None = None,
    ) -> None:
        self.gpu_ids = list(visible_gpus() if gpu_ids is None else gpu_ids)
        self.gpus_per_run = (1 if self.gpu_ids else 0) if gpus_per_run is None else gpus_per_run
        if self.gpus_per_run > len(self.gpu_ids):
            raise AqrError(
                f"{self.gpus_per_run} GPU(s) per run requested, {len(self.gpu_ids)} visible "
                "(set --gpus-per-run 0 to train on the CPU)"
            )
        slots = len(self.gpu_ids) // self.gpus_per_run if self.gpus_per_run else max_concurrent
        self.max_concurrent = max(1, min(max_concurrent, slots))
        self.torchrun = torchrun or self.gpus_per_run > 1
        self.cpu_count = cpu_count or os.cpu_count() or 1
        self.free_gpus = list(self.gpu_ids)
        self.queue: list[LocalHandle] = []
        self.running: list[LocalHandle] = []
        self.ports: set[int] = set()

    def describe(self) -> str:
        where = (
            f"{self.gpus_per_run} GPU(s) per run of {len(self.gpu_ids)}"
            if self.gpus_per_run
            else f"CPU, {self._threads()} thread(s) per run"
        )
        return f"local pool: {self.max_concurrent} run(s) at a time, {where}"

    def _threads(self) -> int:
        return max(1, self.cpu_count // self.max_concurrent)

    def submit(self, job: TrainJob) -> LocalHandle:
        handle = LocalHandle(job, self)
        record = registry.read(job.run_dir)
        if record is not None and record.status == "cancelled":  # cancelled before it was queued
            handle.status = "cancelled"
            return handle
        registry.claim(job.run_dir, self._launcher_info(os.getpid()))  # RunHeld: another's
        self.queue.append(handle)
        return handle

    def submit_all(self, jobs: Sequence[TrainJob]) -> list[RunHandle]:
        """Queue the jobs; when another process holds one of them (a second `run` or
        `sweep` on the study), give back the ones queued so far and start none."""
        handles: list[RunHandle] = []
        try:
            for job in jobs:
                handles.append(self.submit(job))
        except registry.RunHeld as err:
            self.shutdown(f"not started: {err}")
            raise
        return handles

    def _launcher_info(self, pid: int) -> dict[str, Any]:
        kind = "torchrun" if self.torchrun else "local"
        return {"type": kind, "host": socket.gethostname(), "pid": pid, "job_id": None}

    def _command(self, handle: LocalHandle) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ, **SAFE_PATH_ENV, PYTHONUNBUFFERED="1")
        env["CUDA_VISIBLE_DEVICES"] = ",".join(handle.gpus)
        env["MASTER_PORT"] = str(handle.port)
        if not handle.gpus:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self._threads())
        if self.torchrun:
            return torchrun_command(handle.job, max(1, self.gpus_per_run), handle.port or 0), env
        return [sys.executable, *handle.job.train_args()], env

    def _start(self, handle: LocalHandle) -> None:
        record = registry.read(handle.job.run_dir)
        if record is not None and record.status == "cancelled":  # `aqr-exp cancel` while queued
            handle.status = "cancelled"
            return
        handle.gpus = [self.free_gpus.pop(0) for _ in range(self.gpus_per_run)]
        handle.port = free_port(self.ports)
        self.ports.add(handle.port)
        command, env = self._command(handle)
        shown_env = {k: env[k] for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS") if k in env}
        shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in shown_env.items())
        handle.job.work_dir.mkdir(parents=True, exist_ok=True)
        # Stays open while the run lives; `_release` closes it.
        handle.log_file = open(handle.job.log_path, "ab")  # noqa: SIM115
        handle.proc = start_training(
            handle.job,
            command,
            env,
            shown,
            handle.log_file,
            self._launcher_info(0),
            start_new_session=True,  # Ctrl-C of the pool does not reach it: the pool stops it
        )
        handle.started_at = time.monotonic()
        handle.status = "running"
        self.running.append(handle)

    def _release(self, handle: LocalHandle) -> None:
        self.running.remove(handle)
        self.free_gpus.extend(handle.gpus)
        self.ports.discard(handle.port or 0)
        if handle.log_file is not None:
            handle.log_file.close()

    def _finish(self, handle: LocalHandle, code: int) -> None:
        self._release(handle)
        handle.status = record_exit(
            handle.job.run_dir,
            code,
            handle.job.log_path,
            "killed by {signal}; running it again resumes from its last checkpoint",
        )

    def update(self) -> None:
        for handle in list(self.running):
            code = handle.proc.poll() if handle.proc is not None else None
            if code is not None:
                self._finish(handle, code)
        while self.queue and len(self.running) < self.max_concurrent:
            self._start(self.queue.pop(0))

    def stop(self, handle: LocalHandle, reason: str) -> None:
        """Cancel one run: drop it from the queue, or stop its processes."""
        if handle.status == "queued":
            self.queue.remove(handle)
            registry.transition(
                handle.job.run_dir, "cancelled", reason=reason, finished=registry.now()
            )
            handle.status = "cancelled"
        elif handle.status == "running" and handle.proc is not None:
            record = registry.read(handle.job.run_dir)
            if record is not None and record.status == "running":
                registry.transition(handle.job.run_dir, "cancelled", reason=reason)
            stop_process_group(handle.proc.pid)
            self._finish(handle, handle.proc.wait())

    def shutdown(self, reason: str) -> None:
        for handle in [*self.queue, *self.running]:
            self.stop(handle, reason)


def torchrun_command(job: TrainJob, nproc: int, master_port: int) -> list[str]:
    """`python -m torch.distributed.run` with an explicit master port, so several
    runs on one host never collide on the default 29500 (mmengine launcher `pytorch`)."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(master_port),
        *job.train_args(launcher="pytorch"),
    ]  # fmt: skip


@backends.register
class LocalBackend(Backend):
    """Trainings as processes of this machine, recorded with their pid and host."""

    name = "local"

    def launcher(self, settings: LauncherSettings, study: str, dry_run: bool) -> Launcher:
        return LocalLauncher(settings.max_concurrent, settings.gpus_per_run)

    def observe(self, record: RunRecord) -> tuple[str, str | None]:
        """An active run whose process on this host is gone (SIGKILL, OOM killer,
        reboot) is interrupted, whatever run.yaml says."""
        launcher = record.launcher or {}
        pid = launcher.get("pid")
        here = launcher.get("host") == socket.gethostname()
        if record.status in registry.ACTIVE and pid and here and not pid_alive(int(pid)):
            return "interrupted", (
                f"the process (pid {pid}) is gone while the run was {record.status}: "
                "killed (e.g. SIGKILL, out of memory) or the machine restarted"
            )
        return record.status, record.reason

    def cancel(self, run_dir: Path, reason: str) -> RunRecord:
        """Record it, stop its processes. The pool that owns it sees the record when the
        process exits (or before starting a queued run) and keeps it cancelled."""
        record, was = record_cancel(run_dir, reason)
        launcher = record.launcher or {}
        if (
            was == "running"
            and launcher.get("pid")
            and launcher.get("host") == socket.gethostname()
        ):
            stop_process_group(int(launcher["pid"]))
        return record


def spawn_detached(jobs: Sequence[TrainJob], launcher: LocalLauncher, log_path: Path) -> int:
    """Start this pool in the background; returns its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "aqr_exp.launch.local",
        "--max-concurrent", str(launcher.max_concurrent),
        "--gpus-per-run", str(launcher.gpus_per_run),
        *(["--torchrun"] if launcher.torchrun else []),
        *(str(job.run_dir) for job in jobs),
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, **SAFE_PATH_ENV),
            start_new_session=True,
        )
    return proc.pid


def main(argv: Sequence[str] | None = None) -> int:
    """The detached pool: train the given registry runs, keep their status."""
    parse = argparse.ArgumentParser(prog="python -m aqr_exp.launch.local", description=main.__doc__)
    parse.add_argument("run_dirs", nargs="+", type=Path)
    parse.add_argument("--max-concurrent", type=int, default=1)
    parse.add_argument("--gpus-per-run", type=int, default=None)
    parse.add_argument("--torchrun", action="store_true")
    args = parse.parse_args(argv)
    stop_on_sigterm()
    launcher = LocalLauncher(args.max_concurrent, args.gpus_per_run, torchrun=args.torchrun)
    try:
        handles = run_all(launcher, [job_of(run_dir) for run_dir in args.run_dirs])
    except KeyboardInterrupt:
        return 130
    return 0 if all(handle.state() == "done" for handle in handles) else 1


if __name__ == "__main__":
    sys.exit(main())
