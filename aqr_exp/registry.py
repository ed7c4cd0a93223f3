"""The run registry: results/<study>/runs/<run_id>/{run.yaml, config.py}.

run.yaml is the single source of truth about a run (status and provenance).
It is rewritten atomically (temp file + os.replace) under a per-run lock, so
a reader never sees half a file and the pool and `aqr-exp cancel` never lose
each other's change. Statuses follow a small state machine:

    planned → queued → running → done | failed | interrupted | cancelled

and any final state goes back to planned when the run is started again. A
scheduler that requeues a job (Slurm: preemption, time limit, `scontrol
requeue`) moves it from running or interrupted back to queued.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from aqr_exp import configs, paths
from aqr_exp.errors import AqrError
from aqr_exp.files import write_atomic
from aqr_exp.launch import slurmctl
from aqr_exp.launch.base import FINAL_STATES, TrainJob
from aqr_exp.plan import RUNS_DIR, Plan, Run
from aqr_exp.progress import tail_lines

RUN_FILE = "run.yaml"
CONFIG_FILE = "config.py"
STATES = ("planned", "queued", "running", "done", "failed", "interrupted", "cancelled")
ACTIVE = frozenset({"queued", "running"})
TRANSITIONS = {
    "planned": {"planned", "queued", "cancelled"},
    "queued": {"running", "cancelled", "interrupted", "failed"},
    "running": {"done", "failed", "interrupted", "cancelled", "queued"},
    "done": {"planned"},
    "failed": {"planned"},
    "interrupted": {"planned", "queued"},
    "cancelled": {"planned"},
}
LOG_TAIL_LINES = 20


class TransitionError(RuntimeError):
    """A status change the state machine does not allow (a bug, not user input)."""


@dataclass
class RunRecord:
    """The fields of run.yaml (docs/architecture.md, "Run registry")."""

    run_id: str
    study: str
    variant: str
    sweep: dict[str, Any] | None
    overrides: dict[str, Any]
    seed: int
    config: str
    work_dir: str
    status: str = "planned"
    reason: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    log_tail: list[str] | None = None
    command: str | None = None
    created: str = field(default_factory=lambda: now())
    started: str | None = None
    finished: str | None = None
    launcher: dict[str, Any] | None = None
    git_commit: str | None = None
    data_root: str = ""
    init_from: str | None = None  # the run whose final checkpoint this one started from

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(dataclasses.asdict(self)), sort_keys=False, allow_unicode=True)


def now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _plain(value: Any) -> Any:
    """YAML-safe: tuples become lists, mmengine ConfigDicts plain dicts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def git_commit() -> str | None:
    """The commit of the aqr-exp code that runs (`+dirty` with changes); None outside git."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", *args], cwd=paths.PACKAGE_ROOT, capture_output=True, text=True, check=False
        )

    if shutil.which("git") is None:
        return None
    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def read(run_dir: Path) -> RunRecord | None:
    path = run_dir / RUN_FILE
    if not path.is_file():
        return None
    return RunRecord(**yaml.safe_load(path.read_text()))


def _write(run_dir: Path, record: RunRecord) -> None:
    write_atomic(run_dir / RUN_FILE, record.to_yaml())


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    with open(run_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def transition(run_dir: Path, status: str, **fields: Any) -> RunRecord:
    """Move a run to `status`, setting other fields with it, atomically."""
    with _locked(run_dir):
        record = read(run_dir)
        if record is None:
            raise TransitionError(f"no {RUN_FILE} in {run_dir}")
        if status not in TRANSITIONS[record.status]:
            raise TransitionError(f"{record.run_id}: {record.status} → {status} is not allowed")
        record = dataclasses.replace(record, status=status, **fields)
        _write(run_dir, record)
        return record


def update(run_dir: Path, **fields: Any) -> RunRecord:
    """Change fields other than the status (e.g. the exit code of a cancelled run)."""
    with _locked(run_dir):
        record = read(run_dir)
        if record is None:
            raise TransitionError(f"no {RUN_FILE} in {run_dir}")
        record = dataclasses.replace(record, **fields)
        _write(run_dir, record)
        return record


def add_launcher_info(run_dir: Path, status: str | None = None, **info: Any) -> RunRecord:
    """Merge fields into `launcher` (and move to `status` if the run is still planned).

    The submitter and the job itself both write here, in either order (a
    Slurm job may start before sbatch has returned); merging keeps both.
    """
    with _locked(run_dir):
        record = read(run_dir)
        if record is None:
            raise TransitionError(f"no {RUN_FILE} in {run_dir}")
        launcher = {**(record.launcher or {}), **info}
        new_status = status if status is not None and record.status == "planned" else record.status
        record = dataclasses.replace(record, launcher=launcher, status=new_status)
        _write(run_dir, record)
        return record


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


def observe(record: RunRecord) -> tuple[str, str | None]:
    """The status as it really is: an active run whose process on this host is
    gone (SIGKILL, OOM killer, reboot) is interrupted, whatever run.yaml says;
    a Slurm run is what its job in Slurm's queue says (see `slurm_view`)."""
    launcher = record.launcher or {}
    if launcher.get("type") == "slurm":
        jobs = slurmctl.queue()
        job_id = launcher.get("job_id")
        if jobs is None or job_id is None:
            return record.status, record.reason
        return slurm_view(record.status, record.reason, launcher, jobs.get(str(job_id)))
    pid = launcher.get("pid")
    here = launcher.get("host") == socket.gethostname()
    if record.status in ACTIVE and pid and here and not pid_alive(int(pid)):
        return "interrupted", (
            f"the process (pid {pid}) is gone while the run was {record.status}: "
            "killed (e.g. SIGKILL, out of memory) or the machine restarted"
        )
    return record.status, record.reason


def slurm_view(
    status: str, reason: str | None, launcher: dict[str, Any], job: slurmctl.SlurmJob | None
) -> tuple[str, str | None]:
    """A Slurm run's status from its record and its job in the queue (None: gone).

    Requeued (preemption, time limit, scontrol requeue): the job is pending
    again while the record says running or interrupted → queued. Gone or
    ended in a failure state while the record says active → interrupted (the
    job could not record its own end: node failure, SIGKILL, out of memory).
    """
    job_id = launcher.get("job_id")
    if job is not None and job.state in slurmctl.PENDING and status in ("running", "interrupted"):
        return "queued", (
            f"requeued by Slurm (job {job_id} {job.describe()}); "
            "it resumes from its last checkpoint when it starts"
        )
    if status not in ACTIVE:
        return status, reason
    if job is not None and job.state in slurmctl.PENDING | slurmctl.RUNNING | slurmctl.ENDING:
        return status, reason
    ended = "is gone" if job is None else f"ended {job.state}"
    log = f"; Slurm's log: {launcher['slurm_log']}" if launcher.get("slurm_log") else ""
    return "interrupted", (
        f"Slurm job {job_id} {ended} but the run never recorded its end (node failure, "
        f"out of memory, or the job script failed{log}); running it again resumes from its "
        "last checkpoint"
    )


def reconcile(run_dir: Path) -> RunRecord | None:
    """Record what `observe` finds, so every reader agrees afterwards."""
    record = read(run_dir)
    if record is None:
        return None
    status, reason = observe(record)
    if status == record.status:
        return record
    with _locked(run_dir):
        current = read(run_dir)
        if current is None or current.status != record.status:
            return current  # someone else moved it meanwhile
        finished = now() if status in FINAL_STATES else current.finished
        record = dataclasses.replace(current, status=status, reason=reason, finished=finished)
        _write(run_dir, record)
        return record


def runs_of(results_root: Path, study: str | None = None) -> list[Path]:
    """Run directories under results/<study>/runs/, in the order they were prepared."""
    pattern = f"{study or '*'}/{RUNS_DIR}/*/{RUN_FILE}"
    run_dirs = [path.parent for path in results_root.glob(pattern)]

    def prepared(run_dir: Path) -> tuple[str, float, str]:
        config = run_dir / CONFIG_FILE
        when = config.stat().st_mtime if config.is_file() else 0.0
        return run_dir.parent.parent.name, when, run_dir.name

    return sorted(run_dirs, key=prepared)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    return tail_lines(path)[-lines:]


def prepare(plan: Plan, run: Run, fresh: bool) -> TrainJob:
    """Create (or reset) a run's registry entry and resolved config: status planned.

    `fresh` (--force) deletes the work dir first, so nothing is resumed and
    the logs of the earlier attempt do not mix with the new ones.
    """
    if run.parent is not None and not Path(run.cfg.load_from).is_file():
        raise AqrError(
            f"{run.run_id} starts from {run.parent.run_id}, whose final checkpoint "
            f"{run.cfg.load_from} is missing: rerun that run (--force) first"
        )
    run.run_dir.mkdir(parents=True, exist_ok=True)
    reconcile(run.run_dir)  # a run whose process died is interrupted, not running
    if fresh and run.work_dir.exists():
        shutil.rmtree(run.work_dir)
    configs.dump_config(run.cfg, run.run_dir / CONFIG_FILE)
    record = RunRecord(
        run_id=run.run_id,
        study=run.study,
        variant=run.variant,
        sweep=run.sweep.as_dict() if run.sweep else None,
        overrides=run.overrides,
        seed=run.seed,
        config=run.config_name,
        work_dir=str(run.work_dir),
        git_commit=git_commit(),
        data_root=str(plan.data_root),
        init_from=run.parent.run_id if run.parent else None,
    )
    with _locked(run.run_dir):
        previous = read(run.run_dir)
        if previous is not None:
            if "planned" not in TRANSITIONS[previous.status]:
                raise TransitionError(
                    f"{run.run_id} is {previous.status}: it cannot be started again"
                )
            record.created = previous.created
        _write(run.run_dir, record)
    return job_for(run)


def job_for(run: Run) -> TrainJob:
    """What a launcher needs to train a planned run."""
    return TrainJob(
        run_id=run.run_id,
        run_dir=run.run_dir,
        work_dir=run.work_dir,
        train_len=configs.train_length(run.cfg),
    )


@dataclass(frozen=True)
class Step:
    """What starting a plan does to one run."""

    run: Run
    action: str  # start | resume | rerun | skip | wait (for its warm-start parent)
    note: str = ""


def _has_checkpoint(work_dir: Path) -> bool:
    return (work_dir / "last_checkpoint").is_file()


def _status(run: Run) -> tuple[str | None, str | None]:
    record = read(run.run_dir)
    return observe(record) if record else (None, None)


def decide(
    plan: Plan,
    force: bool = False,
    retry_failed: bool = False,
    only: set[str] | None = None,
) -> list[Step]:
    """Per run: start it, resume it, rerun it from scratch, skip it (read-only), or
    wait until its warm-start parent is done.

    Finished runs are skipped, interrupted/cancelled ones resumed from their
    last checkpoint, failed ones retried only on request; `force` reruns all
    but the ones still running. `only`: decide for these run ids alone (the
    others are taken as settled).
    """
    steps, starting = [], set()
    for run in plan.runs:
        if only is not None and run.run_id not in only:
            continue
        step = _decide_one(run, force, retry_failed)
        parent = run.parent
        if parent is not None and step.action != "skip":
            parent_status, _ = _status(parent)
            if parent.run_id in starting or parent_status != "done":
                state = "starting now" if parent.run_id in starting else parent_status or "new"
                step = Step(run, "wait", f"starts once {parent.run_id} is done ({state})")
        if step.action not in ("skip", "wait"):
            starting.add(run.run_id)
        steps.append(step)
    return steps


def _decide_one(run: Run, force: bool, retry_failed: bool) -> Step:
    record = read(run.run_dir)
    status, reason = observe(record) if record else (None, None)
    resume = "resume" if _has_checkpoint(run.work_dir) else "start"
    if status in ACTIVE:
        where = describe_launch(record.launcher if record else None)
        return Step(run, "skip", f"{status} ({where}); `aqr-exp cancel` stops it")
    if force and status is not None:
        return Step(run, "rerun", f"was {status}; --force starts it from scratch")
    if status == "done":
        return Step(run, "skip", "done")
    if status == "failed" and not retry_failed:
        return Step(run, "skip", f"failed: {reason}; --retry-failed retries it")
    note = {None: "new", "planned": "planned earlier"}.get(status, f"was {status}")
    return Step(run, resume, note)


def describe_launch(launcher: dict[str, Any] | None) -> str:
    """Where a run runs, in a few words: 'slurm job 12_0' or 'pid 4242'."""
    launcher = launcher or {}
    if launcher.get("type") == "slurm":
        return f"slurm job {launcher.get('job_id')}"
    return f"pid {launcher.get('pid')}"


def job_of(run_dir: Path) -> TrainJob:
    """The job of an existing registry entry (for a detached pool)."""
    record = read(run_dir)
    if record is None:
        raise TransitionError(f"no {RUN_FILE} in {run_dir}")
    return TrainJob(run_id=record.run_id, run_dir=run_dir, work_dir=Path(record.work_dir))
