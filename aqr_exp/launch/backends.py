"""Choosing a launcher backend by name (spec `launcher.type`, `--launcher`)."""

from __future__ import annotations

from pathlib import Path

from aqr_exp.configs import closest
from aqr_exp.errors import AqrError
from aqr_exp.launch.local import LocalLauncher, cancel_recorded
from aqr_exp.registry import RunRecord, read
from aqr_exp.spec import LauncherSettings

BACKENDS = ("local", "torchrun")
NOT_BUILT = {"slurm": "the Slurm backend is a separate issue and not built yet"}


def check_backend(name: str) -> str:
    """The backend's name, or one clear error (with the closest known name)."""
    if name in BACKENDS:
        return name
    if name in NOT_BUILT:
        raise AqrError(f"launcher {name!r}: {NOT_BUILT[name]}; use one of {', '.join(BACKENDS)}")
    suggestion = closest(name, [*BACKENDS, *NOT_BUILT])
    hint = f"did you mean {suggestion!r}? " if suggestion else ""
    raise AqrError(f"unknown launcher {name!r}: {hint}known: {', '.join(BACKENDS)}")


def make_launcher(settings: LauncherSettings) -> LocalLauncher:
    """A backend from the spec's launcher settings (after CLI overrides)."""
    check_backend(settings.type)
    return LocalLauncher(
        max_concurrent=settings.max_concurrent,
        gpus_per_run=settings.gpus_per_run,
        torchrun=settings.type == "torchrun",
    )


def cancel_run(run_dir: Path, reason: str = "cancelled by the user") -> RunRecord:
    """Cancel a run with the backend that started it (from any process)."""
    record = read(run_dir)
    kind = ((record.launcher if record else None) or {}).get("type") or "local"
    if kind not in BACKENDS:
        raise AqrError(
            f"{run_dir.name} was started by the {kind!r} launcher, which this version cannot cancel"
        )
    return cancel_recorded(run_dir, reason)
