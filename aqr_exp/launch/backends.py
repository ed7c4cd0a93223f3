"""Backends by name: the one place that maps `launcher.type` to the code behind it.

A backend module registers itself (`register`) when imported; this module imports
the built-in ones. Everything that depends on how a run was launched (making a
launcher, observing a recorded run, cancelling it) goes through `backend` or
`backend_of`, so adding a backend is one module plus its registration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from aqr_exp import registry
from aqr_exp.errors import unknown
from aqr_exp.launch.base import Backend, Launcher
from aqr_exp.registry import RunRecord
from aqr_exp.spec import LauncherSettings

_BACKENDS: dict[str, Backend] = {}
B = TypeVar("B", bound=type[Backend])
T = TypeVar("T")


def register(backend: B) -> B:
    """Class decorator: the backend, under its name (specs, --launcher, run records)."""
    _BACKENDS[backend.name] = backend()
    return backend


def names() -> list[str]:
    return list(_BACKENDS)


def backend(name: str) -> Backend:
    """The backend called `name`, or one clear error (with the closest known name)."""
    if name not in _BACKENDS:
        raise unknown("launcher", name, names())
    return _BACKENDS[name]


class _Recorded(Backend):
    """Runs no registered backend launched (imported logs): what their record says."""

    name = "recorded"

    def launcher(self, settings: LauncherSettings, study: str, dry_run: bool) -> Launcher:
        raise registry.TransitionError("recorded runs are not launched")

    def cancel(self, run_dir: Path, reason: str) -> RunRecord:
        record = registry.read(run_dir)
        status = record.status if record else "unknown"
        raise registry.TransitionError(f"{run_dir.name} is {status}: nothing to cancel")


_RECORDED = _Recorded()


def backend_of(record: RunRecord) -> Backend:
    """The backend that launched a recorded run (local when none is recorded yet)."""
    kind = (record.launcher or {}).get("type") or "local"
    return _BACKENDS.get(kind, _RECORDED)


def make_launcher(settings: LauncherSettings, study: str, dry_run: bool = False) -> Launcher:
    """The launcher of the spec's launcher settings (after CLI overrides)."""
    return backend(settings.type).launcher(settings, study, dry_run)


def observe(record: RunRecord) -> tuple[str, str | None]:
    return backend_of(record).observe(record)


def _per_backend(
    records: Sequence[RunRecord], ask: Callable[[Backend, list[RunRecord]], list[T]]
) -> list[T]:
    """`ask` each backend about its own runs, once for all of them; answers in order."""
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(backend_of(record).name, []).append(index)
    answers: dict[int, T] = {}
    for name, indices in groups.items():
        chosen = _BACKENDS.get(name, _RECORDED)
        answers.update(zip(indices, ask(chosen, [records[i] for i in indices]), strict=True))
    return [answers[index] for index in range(len(records))]


def queue_states(records: Sequence[RunRecord]) -> list[str]:
    """Each run's job as its scheduler sees it ("" for none)."""
    return _per_backend(records, lambda chosen, mine: chosen.queue_states(mine))


def reconcile(run_dir: Path) -> RunRecord | None:
    """Record what the run's backend observes, so every reader agrees afterwards."""
    record = registry.read(run_dir)
    return None if record is None else settle(run_dir, record, observe(record))


def settle(run_dir: Path, record: RunRecord, seen: tuple[str, str | None]) -> RunRecord | None:
    status, reason = seen
    return record if status == record.status else registry.settle(run_dir, record, status, reason)


def cancel_run(run_dir: Path, reason: str = "cancelled by the user") -> RunRecord:
    """Cancel a run with the backend that started it (from any process)."""
    record = reconcile(run_dir)
    if record is None or record.status not in ("planned", *registry.ACTIVE):
        status = record.status if record else "unknown"
        raise registry.TransitionError(f"{run_dir.name} is {status}: nothing to cancel")
    return backend_of(record).cancel(run_dir, reason)


def _builtin() -> None:
    """Import the built-in backend modules: each registers itself."""
    from aqr_exp.launch import local, slurm, torchrun  # noqa: F401


_builtin()
