"""`aqr-exp doctor`: can this machine train the plugin, and if not, what to fix."""

from __future__ import annotations

from pathlib import Path

import typer

from aqr_exp import paths
from aqr_exp.doctor import can_train, check_profile, run_checks
from aqr_exp.spec import load_spec


def doctor(
    profile: str | None = typer.Option(
        None,
        "--profile",
        help="Also check what this profile of the spec needs: its data root and info files, "
        "and the pretrained weights its configs start from (e.g. full).",
    ),
    spec: Path = typer.Option(
        ..., default_factory=paths.default_spec, help="The experiment spec of --profile."
    ),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="The data root of --profile (default: the profile's)."
    ),
) -> None:
    """Print the versions of the stack, check mmcv's compiled ops and the plugin's
    registration, and name the fix for each missing piece; with --profile, also the
    profile's data and pretrained weights. Exits 1 when something needed is missing."""
    checks = run_checks()
    if profile is not None:
        checks += check_profile(load_spec(spec), profile, data_root)
    width = max(len(check.name) for check in checks)
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        typer.echo(f"{mark} {check.name:<{width}}  {check.detail}")
        if not check.ok and check.fix:
            typer.echo(f"     {'':<{width}}  fix: {check.fix}")
    what = "The stack" if profile is None else f"Profile {profile}"
    if can_train(checks):
        typer.echo(f"{what} can train.")
        return
    typer.echo(f"{what} cannot train: fix the lines marked FAIL.", err=True)
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(doctor)
