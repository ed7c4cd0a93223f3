"""`aqr-exp doctor`: can this machine train the plugin, and if not, what to fix."""

from __future__ import annotations

import typer

from aqr_exp.doctor import can_train, run_checks


def doctor() -> None:
    """Print the versions of the stack, check mmcv's compiled ops and the plugin's
    registration, and name the fix for each missing piece. Exits 1 when the stack
    cannot train."""
    checks = run_checks()
    width = max(len(check.name) for check in checks)
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        typer.echo(f"{mark} {check.name:<{width}}  {check.detail}")
        if not check.ok and check.fix:
            typer.echo(f"     {'':<{width}}  fix: {check.fix}")
    if can_train(checks):
        typer.echo("The stack can train.")
        return
    typer.echo("The stack cannot train: fix the lines marked FAIL.", err=True)
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(doctor)
