"""The run registry: results/<study>/runs/<run_id>/{run.yaml, config.py, metrics.json}.

A leaf: it knows run records, their states and where they live, and imports no
planner and no launcher (asking a backend what a run is doing is the backend's job,
aqr_exp.launch.backends). run.yaml is the single source of truth about a run (status
and provenance).
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
import functools
import json
import re
import shutil
import subprocess
import types
import typing
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from aqr_exp import paths, safe_yaml
from aqr_exp.errors import AqrError
from aqr_exp.files import write_atomic
from aqr_exp.progress import tail_lines
from aqr_exp.records import CorruptRecord

RUNS_DIR = "runs"
RUN_FILE = "run.yaml"
CONFIG_FILE = "config.py"
METRICS_FILE = "metrics.json"
IMPORTED = "imported"  # launcher.type of runs made by `aqr-exp import-log`
BASELINE_VARIANT = "baseline"
STATES = ("planned", "queued", "running", "done", "failed", "interrupted", "cancelled")
ACTIVE = frozenset({"queued", "running"})
FINAL_STATES = frozenset({"done", "failed", "interrupted", "cancelled"})
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
# metrics.json sections read as objects, and those of them that hold only numbers.
_METRICS_MAPPINGS = (
    "sweep", "source", "metrics", "per_class_ap", "per_class", "cost", "aqr", "predictions",
)  # fmt: skip
_METRICS_NUMBERS = ("metrics", "per_class_ap", "cost", "aqr")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # fullmatch: no trailing newline


class TransitionError(AqrError):
    """A status change the state machine does not allow: the run moved under us (another
    process, a hand edit), said in one line like any other error."""


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


@functools.cache
def _record_hints() -> dict[str, Any]:
    """RunRecord's field types, evaluated once (not for each of a study's records)."""
    return typing.get_type_hints(RunRecord)


def _fields_problem(data: dict[Any, Any], required: Collection[str]) -> str | None:
    """What makes `data` unusable as a RunRecord, in a few words; None when nothing does.

    Null is accepted for every field but the status: writers leave what they do not
    know empty (an imported run has no config or work dir)."""
    hints = _record_hints()
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


def write_record(run_dir: Path, record: RunRecord) -> None:
    write_atomic(run_dir / RUN_FILE, record.to_yaml())


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    with open(run_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def transition(run_dir: Path, status: str, **fields: Any) -> RunRecord:
    """Move a run to `status`, setting other fields with it, atomically."""
    with locked(run_dir):
        record = read(run_dir)
        if record is None:
            raise TransitionError(f"no {RUN_FILE} in {run_dir}")
        if status not in TRANSITIONS[record.status]:
            raise TransitionError(f"{record.run_id}: {record.status} → {status} is not allowed")
        record = dataclasses.replace(record, status=status, **fields)
        write_record(run_dir, record)
        return record


def update(run_dir: Path, **fields: Any) -> RunRecord:
    """Change fields other than the status (e.g. the exit code of a cancelled run)."""
    with locked(run_dir):
        record = read(run_dir)
        if record is None:
            raise TransitionError(f"no {RUN_FILE} in {run_dir}")
        record = dataclasses.replace(record, **fields)
        write_record(run_dir, record)
        return record


def add_launcher_info(run_dir: Path, status: str | None = None, **info: Any) -> RunRecord:
    """Merge fields into `launcher` (and move to `status` if the run is still planned).

    The submitter and the job itself both write here, in either order (a
    Slurm job may start before sbatch has returned); merging keeps both.
    """
    with locked(run_dir):
        record = read(run_dir)
        if record is None:
            raise TransitionError(f"no {RUN_FILE} in {run_dir}")
        launcher = {**(record.launcher or {}), **info}
        new_status = status if status is not None and record.status == "planned" else record.status
        record = dataclasses.replace(record, launcher=launcher, status=new_status)
        write_record(run_dir, record)
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


def claim(run_dir: Path, launcher: dict[str, Any]) -> RunRecord:
    """Queue a prepared run for this process's `launcher`, atomically: of two processes
    that prepared the same run, one queues it and the other gets RunHeld."""
    with locked(run_dir):
        record = read(run_dir)
        if record is None:
            raise TransitionError(f"no {RUN_FILE} in {run_dir}")
        if record.status in ACTIVE:
            raise RunHeld([holding(record)])
        if "queued" not in TRANSITIONS[record.status]:
            raise TransitionError(f"{record.run_id}: {record.status} → queued is not allowed")
        record = dataclasses.replace(record, status="queued", launcher=launcher, reason=None)
        write_record(run_dir, record)
        return record


def holding(record: RunRecord) -> str:
    """'<run id> (running, pid 42 on node1)': a held run and who holds it."""
    return f"{record.run_id} ({record.status}, {describe_launch(record.launcher)})"


def settle(run_dir: Path, seen: RunRecord, status: str, reason: str | None) -> RunRecord | None:
    """Record what a backend observed about a run it found as `seen` (e.g. its process
    gone: interrupted), unless the run moved meanwhile; returns the current record."""
    with locked(run_dir):
        current = read(run_dir)
        if current is None or current.status != seen.status:
            return current  # someone else moved it meanwhile
        finished = now() if status in FINAL_STATES else current.finished
        record = dataclasses.replace(current, status=status, reason=reason, finished=finished)
        write_record(run_dir, record)
        return record


def describe_launch(launcher: dict[str, Any] | None) -> str:
    """Where a run runs, in a few words, from what its backend recorded: 'slurm job
    12_0' (a scheduler's job) or 'pid 4242 on node1' (a process)."""
    launcher = launcher or {}
    if launcher.get("job_id"):
        return f"{launcher.get('type')} job {launcher['job_id']}"
    host = f" on {launcher['host']}" if launcher.get("host") else ""
    return f"pid {launcher.get('pid')}{host}"


def runs_dir(results_root: Path, study: str) -> Path:
    return results_root / study / RUNS_DIR


def read_run_record(run_dir: Path) -> dict[str, Any]:
    """run.yaml as a dict, checked by the registry's reader (CorruptRecord when broken).

    The results side needs a run's status; the other fields may be missing (hand-made
    or imported runs), but those present must have the registry's types."""
    record = read_fields(run_dir, required=("status",))
    if record is None:
        raise AqrError(f"{run_dir}: not a run directory (no {RUN_FILE})")
    return record


def is_imported(record: dict[str, Any]) -> bool:
    return (record.get("launcher") or {}).get("type") == IMPORTED


def write_run_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Write run.yaml atomically (used for imported runs, which have no launcher)."""
    write_atomic(run_dir / RUN_FILE, yaml.safe_dump(record, sort_keys=False))


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json, checked: the one reader of it (CorruptRecord when it is broken,
    e.g. half-written by a tool that does not write atomically)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise AqrError(f"{run_dir}: no {METRICS_FILE} (run `aqr-exp collect` first)")
    fix = "run `aqr-exp collect` to write it again (or `aqr-exp import-log --force`), or delete it"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        where = f":{err.lineno}:{err.colno}"
        raise CorruptRecord(path, f"not valid JSON: {err.msg}", fix, where) from None
    except UnicodeDecodeError as err:
        problem = f"not a text file ({err.reason} at byte {err.start})"
        raise CorruptRecord(path, problem, fix) from None
    except OSError as err:
        raise CorruptRecord(path, f"cannot be read ({err.strerror or err})", fix) from None
    problem = _metrics_problem(metrics)
    if problem is not None:
        raise CorruptRecord(path, problem, fix)
    return metrics


def _metrics_problem(metrics: Any) -> str | None:
    """What makes `metrics` unusable for compare and report; None when nothing does."""
    if not isinstance(metrics, dict):
        return f"expected a JSON object of metrics, got {type(metrics).__name__}"
    for section in _METRICS_MAPPINGS:
        value = metrics.get(section)
        if value is not None and not isinstance(value, dict):
            return f"{section} is {type(value).__name__}, expected an object"
    for section in _METRICS_NUMBERS:
        for name, value in (metrics.get(section) or {}).items():
            if value is not None and not _is_number(value):
                return f"{section}.{name} is {value!r}, expected a number"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_name(name: str, kind: str) -> str:
    """Run ids and study names become directory names (and glob patterns): keep them to a
    safe character set. `kind` ("run name", "study name") says in the error which it is."""
    if not _RUN_ID.fullmatch(name):
        raise AqrError(
            f"{kind} {name!r} is not usable as a directory name "
            "(letters, digits, '.', '_', '-'; not starting with '.', '_' or '-')"
        )
    return name


def list_studies(results_root: Path) -> list[str]:
    if not results_root.is_dir():
        return []
    return sorted(p.parent.name for p in results_root.glob("*/runs") if p.is_dir())


def study_run_dirs(results_root: Path, study: str) -> list[Path]:
    """Run dirs of one study, sorted by run id."""
    root = runs_dir(results_root, study)
    if not root.is_dir():
        known = ", ".join(list_studies(results_root)) or "none"
        raise AqrError(f"no study {study!r} under {results_root} (studies found: {known})")
    return sorted(p for p in root.iterdir() if (p / RUN_FILE).is_file())


def resolve_run_ref(results_root: Path, ref: str, study: str | None) -> Path:
    """A RUN argument: a path to a run dir, or a run id looked up in the registry."""
    as_path = Path(ref)
    if (as_path / RUN_FILE).is_file() or (as_path / METRICS_FILE).is_file():
        return as_path
    studies = [study] if study else list_studies(results_root)
    hits = [
        runs_dir(results_root, s) / ref
        for s in studies
        if (runs_dir(results_root, s) / ref).is_dir()
    ]
    if not hits:
        raise AqrError(f"run {ref!r}: not a run directory and not a run id under {results_root}")
    if len(hits) > 1:
        found = ", ".join(str(h) for h in hits)
        raise AqrError(f"run id {ref!r} is in several studies ({found}): pass --study")
    return hits[0]


def default_study(results_root: Path) -> str:
    """The only study in the registry; an error naming the choices otherwise."""
    studies = list_studies(results_root)
    if len(studies) == 1:
        return studies[0]
    if not studies:
        raise AqrError(f"no studies under {results_root}")
    raise AqrError(f"several studies under {results_root}: pass --study ({', '.join(studies)})")
