"""Choosing a launcher backend by name (spec `launcher.type`, `--launcher`)."""

from __future__ import annotations

from pathlib import Path

from aqr_exp.configs import closest
from aqr_exp.errors import AqrError
from aqr_exp.launch import local, slurm, slurmctl
from aqr_exp.launch.base import Launcher
from aqr_exp.registry import RunRecord, read
from aqr_exp.spec import LauncherSettings

BACKENDS = ("local", "torchrun", "slurm")


def check_backend(name: str) -> str:
    """The backend's name, or one clear error (with the closest known name)."""
    if name in BACKENDS:
        return name
    suggestion = closest(name, list(BACKENDS))
    hint = f"did you mean {suggestion!r}? " if suggestion else ""
    raise AqrError(f"unknown launcher {name!r}: {hint}known: {', '.join(BACKENDS)}")


def make_launcher(settings: LauncherSettings, study: str, dry_run: bool = False) -> Launcher:
    """A backend from the spec's launcher settings (after CLI overrides).

    A dry run only describes the launcher and prints its scripts, so it needs no
    Slurm tools: a Slurm plan can be checked on a laptop."""
    check_backend(settings.type)
    if settings.type == "slurm":
        if not dry_run and not slurmctl.available():
            raise AqrError(
                "launcher 'slurm': sbatch/squeue not found; run on a machine with Slurm's "
                "client tools (a login node), or use --launcher local"
            )
        return slurm.SlurmLauncher(settings.slurm, study)
    return local.LocalLauncher(
        max_concurrent=settings.max_concurrent,
        gpus_per_run=settings.gpus_per_run,
        torchrun=settings.type == "torchrun",
    )


def cancel_run(run_dir: Path, reason: str = "cancelled by the user") -> RunRecord:
    """Cancel a run with the backend that started it (from any process)."""
    record = read(run_dir)
    kind = ((record.launcher if record else None) or {}).get("type") or "local"
    if kind == "slurm":
        return slurm.cancel_recorded(run_dir, reason)
    return local.cancel_recorded(run_dir, reason)
