"""A training's life in the registry, the same for every backend.

`start_training` opens the run's train.log, starts the training process and records
the run as running with its command; `record_exit` records how the process ended: a
run recorded as cancelled stays cancelled whatever its process did; exit 0 is done; a
signal is an interruption (the next start resumes from the last checkpoint); the
training entry's non-finite-loss exit code gives the loss line as the reason; any
other code is a failure with a reason from the log's tail. `record_cancel` marks a
run cancelled before its backend stops it.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from aqr_exp import registry
from aqr_exp.launch.base import EXIT_NONFINITE, NONFINITE_MARK, TrainJob


def start_training(
    job: TrainJob,
    command: Sequence[str],
    env: Mapping[str, str],
    header: str,
    log: IO[bytes],
    launcher: Mapping[str, Any] | None = None,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start a run's training with its output appended to `log` (the work dir's
    train.log, opened by the caller), and record it running."""
    log.write(f"\n=== {registry.now()} {header} {shlex.join(command)}\n".encode())
    log.flush()
    proc = subprocess.Popen(
        list(command),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(env),
        **popen,
    )
    info = {**(launcher or {}), "pid": proc.pid}
    registry.add_launcher_info(job.run_dir, **info)
    registry.transition(
        job.run_dir,
        "running",
        started=registry.now(),
        command=f"{header} {shlex.join(command)}".strip(),
        reason=None,
    )
    return proc


def failure_reason(code: int, tail: list[str]) -> str:
    """A one-line reason from the exit code and the log's last lines."""
    if code == EXIT_NONFINITE:
        marked = [line for line in tail if NONFINITE_MARK in line]
        return (
            marked[-1][marked[-1].index(NONFINITE_MARK) :]
            if marked
            else "non-finite (NaN/inf) loss"
        )
    errors = [
        line.strip() for line in tail if line.strip() and ("Error" in line or "Exception" in line)
    ]
    detail = f": {errors[-1]}" if errors else ""
    return f"training exited with code {code}{detail}"


def record_exit(
    run_dir: Path,
    code: int,
    log_path: Path,
    interrupted_reason: str,
    stop_signal: str | None = None,
) -> str:
    """Record the end of a run's training process; returns the run's new status.

    `interrupted_reason` may name the signal as {signal}; `stop_signal` is a
    signal the backend knows stopped the run even when the exit code does not
    show it (e.g. srun's own exit code).
    """
    signame = stop_signal or (signal.Signals(-code).name if code < 0 else None)
    tail = registry.log_tail(log_path)
    ended = {"exit_code": code, "finished": registry.now(), "log_tail": tail}
    record = registry.read(run_dir)
    if record is not None and record.status == "cancelled":
        registry.update(run_dir, signal=signame, **ended)
        return "cancelled"
    if code == 0:
        registry.transition(run_dir, "done", reason=None, **ended)
        return "done"
    if signame is not None:
        reason = interrupted_reason.format(signal=signame)
        registry.transition(run_dir, "interrupted", reason=reason, signal=signame, **ended)
        return "interrupted"
    registry.transition(run_dir, "failed", reason=failure_reason(code, tail), **ended)
    return "failed"


def record_cancel(run_dir: Path, reason: str) -> tuple[registry.RunRecord, str]:
    """Record a planned, queued or running run as cancelled (before its backend stops
    it, so the process's end keeps it cancelled); returns the record and the
    status it had."""
    before = registry.read(run_dir)
    cancelled = registry.transition(run_dir, "cancelled", reason=reason, finished=registry.now())
    return cancelled, before.status if before else "planned"
