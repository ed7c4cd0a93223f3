"""The shape the package promises (docs/architecture.md): data flows one way, the
registry is a leaf, the CLI uses only public library functions, and a new launcher
backend is one module plus its registration."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from fixtures.toy.helpers import cli, toy_args

from aqr_exp import paths, registry
from aqr_exp.launch import backends
from aqr_exp.launch.base import Backend, Launcher, RunHandle, TrainJob
from aqr_exp.launch.lifecycle import record_cancel
from aqr_exp.registry import RunRecord
from aqr_exp.spec import LauncherSettings

PACKAGE = paths.PACKAGE_ROOT / "aqr_exp"


def _imports(module: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for each `import`/`from … import`."""
    found = []
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return found


def _project_imports(module: Path) -> set[str]:
    """Project modules `module` imports (`from aqr_exp import x` counts as aqr_exp.x)."""
    targets = set()
    for name, names in _imports(module):
        if name == "aqr_exp":
            targets |= {f"aqr_exp.{n}" for n in names}
        elif name.startswith("aqr_exp."):
            targets.add(name)
    return targets


def test_the_registry_is_a_leaf_and_nothing_upstream_reaches_a_launcher() -> None:
    leaf_deps = {"aqr_exp.paths", "aqr_exp.safe_yaml", "aqr_exp.errors", "aqr_exp.files",
                 "aqr_exp.progress", "aqr_exp.records"}  # fmt: skip
    assert _project_imports(PACKAGE / "registry.py") <= leaf_deps
    for upstream in ("registry.py", "spec.py", "plan.py", "configs.py"):
        reached = {
            m for m in _project_imports(PACKAGE / upstream) if m.startswith("aqr_exp.launch")
        }
        assert not reached, f"{upstream} imports {reached}"


def test_the_cli_uses_only_public_library_names() -> None:
    for module in sorted((PACKAGE / "cli").glob("*.py")):
        for name, names in _imports(module):
            if name.startswith("aqr_exp") and not name.startswith("aqr_exp.cli"):
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{module.name} imports {private} from {name}"


class _InstantHandle(RunHandle):
    def state(self) -> str:
        return backends.reconcile(self.job.run_dir).status

    def cancel(self, reason: str = "cancelled by the user") -> None:
        backends.cancel_run(self.job.run_dir, reason)


class _InstantLauncher(Launcher):
    """A scheduler stand-in: takes jobs, gives each a job id, runs nothing itself."""

    runs_here = False

    def describe(self) -> str:
        return "instant: a test scheduler"

    def submit(self, job: TrainJob) -> RunHandle:
        raise AssertionError("submit_all is the scheduler's way in")

    def submit_all(self, jobs: Sequence[TrainJob]) -> list[RunHandle]:
        for number, job in enumerate(jobs):
            registry.add_launcher_info(job.run_dir, status="queued", type="instant",
                                       job_id=f"i{number}")  # fmt: skip
        return [_InstantHandle(job) for job in jobs]

    def update(self) -> None:
        """Nothing to advance."""

    def shutdown(self, reason: str) -> None:
        """Nothing it owns."""


@backends.register
class _InstantBackend(Backend):
    """Its queued jobs 'run' as soon as anyone looks; cancel records and forgets them."""

    name = "instant"
    cancelled: ClassVar[list[str]] = []

    def launcher(self, settings: LauncherSettings, study: str, dry_run: bool) -> Launcher:
        return _InstantLauncher()

    def observe(self, record: RunRecord) -> tuple[str, str | None]:
        if record.status == "queued":
            return "running", "picked up by the instant scheduler"
        return record.status, record.reason

    def queue_states(self, records: Sequence[RunRecord]) -> list[str]:
        return [f"{(r.launcher or {}).get('job_id')} INSTANT" for r in records]

    def cancel(self, run_dir: Path, reason: str) -> RunRecord:
        record, _ = record_cancel(run_dir, reason)
        self.cancelled.append(record.run_id)
        return record


def test_a_backend_in_one_module_launches_observes_and_cancels(tmp_path: Path) -> None:
    args = toy_args(tmp_path)
    submitted = cli("run", "baseline", "--launcher", "instant", *args)
    assert submitted.exit_code == 0, submitted.output
    assert "launcher  instant: a test scheduler" in submitted.stdout
    assert "Submitted 1 run(s) to instant" in submitted.stdout
    (run_dir,) = registry.runs_of(tmp_path / "results")
    assert registry.read(run_dir).status == "queued"
    status = cli("status", "--results-root", tmp_path / "results")
    assert "running" in status.stdout and "i0 INSTANT" in status.stdout  # observed, recorded
    assert registry.read(run_dir).status == "running"
    cancelled = cli("cancel", "--all", "--results-root", tmp_path / "results")
    assert cancelled.exit_code == 0, cancelled.output
    assert _InstantBackend.cancelled == [run_dir.name]
    assert registry.read(run_dir).status == "cancelled"


def test_an_unknown_launcher_names_the_known_ones(tmp_path: Path) -> None:
    result = cli("run", "baseline", "--launcher", "slurn", "--dry-run", *toy_args(tmp_path))
    assert result.exit_code == 2
    known = ", ".join(backends.names())
    assert result.stderr.strip() == (
        f"error: unknown launcher 'slurn': did you mean 'slurm'? known: {known}"
    )


@pytest.mark.parametrize("backend", ["local", "torchrun", "slurm"])
def test_the_built_in_backends_are_registered(backend: str) -> None:
    assert backends.backend(backend).name == backend
