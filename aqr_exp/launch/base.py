"""The launcher interfaces, as submitit separates its core from its backends.

A `Backend` (one module each: local, torchrun, slurm; chosen by name through
`aqr_exp.launch.backends`) makes a `Launcher` for a plan and knows, from any
process, what a recorded run of its kind is doing (`observe`) and how to stop it
(`cancel`). A `Launcher` takes `TrainJob`s and returns `RunHandle`s (state, cancel,
log). A backend records each state change in the run registry itself, which is what
`aqr-exp status` reads later, after the submitting process is gone.
"""

from __future__ import annotations

import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from aqr_exp import registry
from aqr_exp.registry import FINAL_STATES, RunRecord

if TYPE_CHECKING:
    from aqr_exp.spec import LauncherSettings

LOG_NAME = "train.log"  # stdout + stderr of every attempt, in the work dir
# The training entry's side of the contract: how it says a run hit a NaN/inf loss.
EXIT_NONFINITE = 3
# Training and pool subprocesses must import the aqr_exp that launched them, not an
# `aqr_exp/` folder in their working directory: Python >= 3.11 leaves the working
# directory off sys.path when this is set (`python -m` would put it first).
SAFE_PATH_ENV = {"PYTHONSAFEPATH": "1"}
NONFINITE_MARK = "Non-finite loss"


@dataclass(frozen=True)
class TrainJob:
    """What a backend needs to train one run of the registry."""

    run_id: str
    run_dir: Path  # holds run.yaml and the resolved config.py
    work_dir: Path
    train_len: tuple[str, int] | None = None  # ('epoch'|'iter', max): for progress only

    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.py"

    @property
    def log_path(self) -> Path:
        return self.work_dir / LOG_NAME

    def train_args(self, launcher: str = "none") -> list[str]:
        """`-m aqr_exp.train ...`: always `--resume`, which starts fresh when the
        work dir has no checkpoint and otherwise continues from the last one."""
        return [
            "-m", "aqr_exp.train", str(self.config_path),
            "--work-dir", str(self.work_dir), "--resume", "--launcher", launcher,
        ]  # fmt: skip


def job_of(run_dir: Path) -> TrainJob:
    """The job of an existing registry entry (a detached pool, a Slurm job)."""
    record = registry.read(run_dir)
    if record is None:
        raise registry.TransitionError(f"no {registry.RUN_FILE} in {run_dir}")
    return TrainJob(run_id=record.run_id, run_dir=run_dir, work_dir=Path(record.work_dir))


class RunHandle(ABC):
    """A submitted run, as its backend sees it."""

    def __init__(self, job: TrainJob) -> None:
        self.job = job

    @property
    def log_path(self) -> Path:
        return self.job.log_path

    @abstractmethod
    def state(self) -> str:
        """queued | running | done | failed | interrupted | cancelled."""

    @abstractmethod
    def cancel(self, reason: str = "cancelled by the user") -> None:
        """Stop the run (or drop it from the queue) and record it as cancelled."""

    @property
    def finished(self) -> bool:
        return self.state() in FINAL_STATES


class Launcher(ABC):
    """Takes jobs, runs them, records their states in the registry."""

    # False for a scheduler (Slurm) that owns the jobs once submitted: the
    # submitting command returns at once and `aqr-exp status` follows them.
    runs_here: ClassVar[bool] = True

    @abstractmethod
    def describe(self) -> str:
        """One line for the plan: where and how the runs will train."""

    @abstractmethod
    def submit(self, job: TrainJob) -> RunHandle:
        """Queue a job (recorded as queued); it starts when the backend has room."""

    def submit_all(self, jobs: Sequence[TrainJob]) -> list[RunHandle]:
        """Queue several jobs (a backend may submit them together, e.g. a job array)."""
        return [self.submit(job) for job in jobs]

    def scripts(self, jobs: Sequence[TrainJob]) -> dict[Path, str]:
        """Files a submission of these jobs would write (shown by --dry-run)."""
        return {}

    @abstractmethod
    def update(self) -> None:
        """Advance: record finished runs, start queued ones that fit (non-blocking)."""

    @abstractmethod
    def shutdown(self, reason: str) -> None:
        """Stop every run this launcher owns and record why."""


class Backend(ABC):
    """One way to run trainings, registered under `name` (`launcher.type` in specs and
    in each run's record): a launcher for a plan, and the view of a recorded run."""

    name: ClassVar[str]
    # A scheduler (Slurm) owns the runs once submitted: no local GPUs to hand out, and
    # nothing to wait for or detach from.
    scheduler: ClassVar[bool] = False

    @abstractmethod
    def launcher(self, settings: LauncherSettings, study: str, dry_run: bool) -> Launcher:
        """The launcher of a plan (a dry run only describes it and shows its scripts)."""

    def observe(self, record: RunRecord) -> tuple[str, str | None]:
        """(status, reason) as the run really is, which may differ from its record (its
        process or job gone): by default, the record's own."""
        return record.status, record.reason

    @abstractmethod
    def cancel(self, run_dir: Path, reason: str) -> RunRecord:
        """Record a run as cancelled and stop it, from any process."""

    def queue_states(self, records: Sequence[RunRecord]) -> list[str]:
        """A scheduler's own word on each run's job for `status` ('12_0 RUNNING'), asked
        once for all; "" where there is none (not a scheduler)."""
        return [""] * len(records)


def run_all(
    launcher: Launcher,
    jobs: Sequence[TrainJob],
    on_tick: Callable[[list[RunHandle]], None] | None = None,
    poll_s: float = 1.0,
) -> list[RunHandle]:
    """Submit every job and wait in the foreground until all have finished.

    Ctrl-C (or SIGTERM, see `stop_on_sigterm`) stops the runs and records them
    as cancelled; a later sweep resumes them from their checkpoints.
    """
    handles = launcher.submit_all(jobs)
    try:
        while True:
            launcher.update()
            if on_tick is not None:
                on_tick(handles)
            if all(handle.finished for handle in handles):
                return handles
            time.sleep(poll_s)
    except KeyboardInterrupt:
        launcher.shutdown("stopped by the user (Ctrl-C or SIGTERM of the submitting process)")
        if on_tick is not None:
            on_tick(handles)
        raise


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so `run_all` stops its runs cleanly."""

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)
