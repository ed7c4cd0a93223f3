"""Slurm's command-line tools (sbatch, squeue, scancel, scontrol) as small functions.

Nothing here knows about runs: it submits scripts, reads Slurm's view of jobs
and cancels or requeues them. Slurm without accounting has no `sacct`, so a
job's state comes from `squeue --states=all`, which keeps finished jobs for
a few minutes (MinJobAge); after that the run's own status file is the record.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aqr_exp.errors import AqrError

# Slurm job states by what they mean for a run (squeue's %T).
PENDING = frozenset(
    {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
)
RUNNING = frozenset(
    {"RUNNING", "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING", "RESIZING", "STAGE_OUT"}
)
ENDING = frozenset({"COMPLETING", "COMPLETED"})
# Everything else (CANCELLED, FAILED, TIMEOUT, NODE_FAIL, PREEMPTED, OUT_OF_MEMORY, ...) ended.

_QUEUE_FORMAT = "%i|%T|%r|%N"


@dataclass(frozen=True)
class SlurmJob:
    """One job (or array task) as squeue shows it."""

    job_id: str  # "123", or "123_4" for an array task
    state: str
    reason: str
    nodes: str

    def describe(self) -> str:
        why = f" ({self.reason})" if self.reason and self.reason != "None" else ""
        return f"{self.state}{why}"


def available() -> bool:
    return shutil.which("sbatch") is not None and shutil.which("squeue") is not None


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    if shutil.which(command[0]) is None:
        raise AqrError(f"{command[0]} not found: the slurm launcher runs where Slurm's tools are")
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _failed(what: str, result: subprocess.CompletedProcess[str]) -> AqrError:
    message = (result.stderr or result.stdout).strip().splitlines()
    return AqrError(f"{what} failed (exit {result.returncode}): {' '.join(message) or 'no output'}")


def sbatch(script: Path) -> str:
    """Submit a batch script; returns the job id (the array's id for an array)."""
    result = _run(["sbatch", "--parsable", str(script)])
    if result.returncode != 0:
        raise _failed(f"sbatch {script}", result)
    return result.stdout.strip().split(";")[0]


def parse_queue(text: str) -> dict[str, SlurmJob]:
    """squeue -r -h -o '%i|%T|%r|%N' output → jobs by id."""
    jobs = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        job_id, state, reason, nodes = [*line.split("|"), "", "", ""][:4]
        jobs[job_id] = SlurmJob(job_id.strip(), state.strip(), reason.strip(), nodes.strip())
    return jobs


def queue() -> dict[str, SlurmJob] | None:
    """Every job Slurm knows (recently finished ones included); None when Slurm
    cannot be asked (no squeue here, controller down): then nobody may conclude
    that a job is gone.

    Asked afresh on every call: a cached view older than the run's status file
    would show a job that has just started as still pending."""
    if shutil.which("squeue") is None:
        return None
    result = subprocess.run(
        ["squeue", "-r", "-h", "--states=all", "-o", _QUEUE_FORMAT],
        capture_output=True,
        text=True,
        check=False,
    )
    return parse_queue(result.stdout) if result.returncode == 0 else None


def scancel(job_id: str) -> None:
    result = _run(["scancel", job_id])
    if result.returncode != 0:
        raise _failed(f"scancel {job_id}", result)


def requeue(job_id: str) -> None:
    """Put a running job back in the queue (Slurm stops it first)."""
    result = _run(["scontrol", "requeue", job_id])
    if result.returncode != 0:
        raise _failed(f"scontrol requeue {job_id}", result)
