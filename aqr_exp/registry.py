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
import types
import typing
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from aqr_exp import configs, paths, safe_yaml
from aqr_exp.errors import AqrError
from aqr_exp.files import write_atomic
from aqr_exp.launch import slurmctl
from aqr_exp.launch.base import FINAL_STATES, TrainJob
from aqr_exp.plan import RUNS_DIR, Plan, Run
from aqr_exp.progress import tail_lines
from aqr_exp.records import CorruptRecord
from aqr_exp.results.runs import check_name

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


class RunHeld(AqrError):
    """Runs another live process holds (queued or running): two `run`/`sweep` commands
    on one study never train a run twice; the later one says who holds what."""

    def __init__(self, held: list[str]) -> None:
        self.held = held
        super().__init__(
            f"another process holds {', '.join(held)}: wait until it is done "
            "(`aqr-exp status`) or stop it (`aqr-exp cancel RUN`), then run this again"
        )


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
    code: str | None = None  # the aqr-exp checkout whose code trains the run
    data_root: str = ""
    init_from: str | None = None  # the run whose final checkpoint this one started from
    trackers: dict[str, str] | None = None  # tracker → the study's place (aqr_exp.trackers)

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
    """The run's record (None when it has no run.yaml); CorruptRecord when it is broken."""
    fields = read_fields(run_dir)
    return None if fields is None else RunRecord(**fields)


def _no_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


# What a record cannot do without: the fields RunRecord has no default for, and the
# status (a file cut short after the first fields would otherwise read as planned).
REQUIRED = (*(f.name for f in dataclasses.fields(RunRecord) if _no_default(f)), "status")


def read_fields(run_dir: Path, required: Collection[str] = REQUIRED) -> dict[str, Any] | None:
    """run.yaml's fields, checked against RunRecord (None when there is no run.yaml).

    The one reader of run.yaml; the results side asks for fewer `required` fields.
    A file that is not YAML, is empty or not a mapping, lacks a required field, has a
    field RunRecord does not know or a value of the wrong type raises CorruptRecord,
    which says how to fix it: the file is never rewritten behind the user's back."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        return None
    fix = f"repair it, or delete {run_dir} to drop the run from its study"
    try:
        data = safe_yaml.load(path)
    except AqrError as err:  # malformed YAML, duplicate keys, alias bombs: one line each
        where, _, problem = str(err).removeprefix(str(path)).partition(": ")
        raise CorruptRecord(path, problem, fix, where) from None
    except OSError as err:
        raise CorruptRecord(path, f"cannot be read ({err.strerror or err})", fix) from None
    if data is None:
        raise CorruptRecord(path, "the file is empty", fix)
    if not isinstance(data, dict):
        raise CorruptRecord(path, f"expected a mapping of run fields, got {_kind(data)}", fix)
    problem = _fields_problem(data, required)
    if problem is not None:
        raise CorruptRecord(path, problem, fix)
    return data


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _fields_problem(data: dict[Any, Any], required: Collection[str]) -> str | None:
    """What makes `data` unusable as a RunRecord, in a few words; None when nothing does.

    Null is accepted for every field but the status: writers leave what they do not
    know empty (an imported run has no config or work dir)."""
    hints = typing.get_type_hints(RunRecord)
    unknown = sorted(str(key) for key in data if key not in hints)
    if unknown:
        return f"unknown fields {', '.join(unknown)} (another version's record?)"
    missing = [name for name in required if name not in data]
    if missing:
        return f"missing fields {', '.join(missing)} (cut short?)"
    for name, value in data.items():
        if value is not None and not _matches(value, hints[name]):
            return f"{name} is {_kind(value)} {_short(value)}, expected {_type_name(hints[name])}"
    if "status" in data and data["status"] not in STATES:
        return f"status {_short(data['status'])} is none of {', '.join(STATES)}"
    return None


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` has the type `hint` (containers: their own type, not their items')."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is not None:
        return isinstance(value, origin)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and args:
        return " or ".join(_type_name(arg) for arg in args)
    origin = typing.get_origin(hint) or hint
    return {dict: "a mapping", list: "a list"}.get(origin, getattr(origin, "__name__", str(hint)))


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


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
    """Run directories under results/<study>/runs/, in the order they were prepared.

    `study` is checked first: it goes into a glob pattern, where '*' or '..' would
    silently reach other studies' (or other folders') runs."""
    if study is not None:
        check_name(study, "study name")
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
        code=str(paths.PACKAGE_ROOT),
        data_root=str(plan.data_root),
        init_from=run.parent.run_id if run.parent else None,
        trackers=run.trackers or None,
    )
    with _locked(run.run_dir):
        previous = read(run.run_dir)
        if previous is not None and observe(previous)[0] in ACTIVE:
            # Another `run`/`sweep` took it since `decide`: its work dir and config stay.
            raise RunHeld([holding(previous)])
        if fresh and run.work_dir.exists():
            shutil.rmtree(run.work_dir)
        configs.dump_config(run.cfg, run.run_dir / CONFIG_FILE)
        if previous is not None:
            record.created = previous.created
        _write(run.run_dir, record)
    return job_for(run)


def claim(run_dir: Path, launcher: dict[str, Any]) -> RunRecord:
    """Queue a prepared run for this process's `launcher`, atomically: of two processes
    that prepared the same run, one queues it and the other gets RunHeld."""
    with _locked(run_dir):
        record = read(run_dir)
        if record is None:
            raise TransitionError(f"no {RUN_FILE} in {run_dir}")
        if record.status in ACTIVE:
            raise RunHeld([holding(record)])
        if "queued" not in TRANSITIONS[record.status]:
            raise TransitionError(f"{record.run_id}: {record.status} → queued is not allowed")
        record = dataclasses.replace(record, status="queued", launcher=launcher, reason=None)
        _write(run_dir, record)
        return record


def holding(record: RunRecord) -> str:
    """'<run id> (running, pid 42 on node1)': a held run and who holds it."""
    return f"{record.run_id} ({record.status}, {describe_launch(record.launcher)})"


def held(runs: Iterable[Run]) -> list[str]:
    """The runs that a live process holds (queued or running), each with its holder."""
    found = []
    for run in runs:
        record = read(run.run_dir)
        if record is not None and observe(record)[0] in ACTIVE:
            found.append(holding(record))
    return found


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
    # start | resume | rerun | skip | wait (for its warm-start parent) | blocked (its
    # run.yaml is corrupt: `problem` says how; nothing may start or rewrite it)
    action: str
    note: str = ""
    problem: CorruptRecord | None = None


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
    """Per run: start it, resume it, rerun it from scratch, skip it (read-only),
    wait until its warm-start parent is done, or leave it blocked (corrupt run.yaml).

    Finished runs are skipped, interrupted/cancelled ones resumed from their
    last checkpoint, failed ones retried only on request; `force` reruns all
    but the ones still running. `only`: decide for these run ids alone (the
    others are taken as settled).
    """
    steps, starting, blocked = [], set(), set()
    for run in plan.runs:
        if only is not None and run.run_id not in only:
            continue
        step = _decide_one(run, force, retry_failed)
        parent = run.parent
        if step.action == "blocked":
            blocked.add(run.run_id)
        elif parent is not None and step.action != "skip":
            if parent.run_id in blocked:
                note = f"starts once {parent.run_id} is done (its {RUN_FILE} is corrupt)"
                step = Step(run, "wait", note)
            else:
                parent_status, _ = _status(parent)
                if parent.run_id in starting or parent_status != "done":
                    state = "starting now" if parent.run_id in starting else parent_status
                    note = f"starts once {parent.run_id} is done ({state or 'new'})"
                    step = Step(run, "wait", note)
        if step.action not in ("skip", "wait", "blocked"):
            starting.add(run.run_id)
        steps.append(step)
    return steps


def _decide_one(run: Run, force: bool, retry_failed: bool) -> Step:
    try:
        record = read(run.run_dir)
    except CorruptRecord as err:
        return Step(run, "blocked", f"its {RUN_FILE} is corrupt: {err.problem}", err)
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
    """Where a run runs, in a few words: 'slurm job 12_0' or 'pid 4242 on node1'."""
    launcher = launcher or {}
    if launcher.get("type") == "slurm":
        return f"slurm job {launcher.get('job_id')}"
    host = f" on {launcher['host']}" if launcher.get("host") else ""
    return f"pid {launcher.get('pid')}{host}"


def job_of(run_dir: Path) -> TrainJob:
    """The job of an existing registry entry (for a detached pool)."""
    record = read(run_dir)
    if record is None:
        raise TransitionError(f"no {RUN_FILE} in {run_dir}")
    return TrainJob(run_id=record.run_id, run_dir=run_dir, work_dir=Path(record.work_dir))
