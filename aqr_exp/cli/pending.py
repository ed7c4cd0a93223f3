"""Commands whose implementation has not landed yet: they say so clearly."""

from __future__ import annotations

import typer


def sweep(name: str = typer.Argument(..., help="A named sweep, e.g. window_size.")) -> None:
    """Run a named sweep (baseline + each value) and report. Not built yet."""
    typer.echo(
        f"aqr-exp sweep {name}: the orchestration (issue 'Orchestration') has not landed yet; "
        "only `aqr-exp doctor` works in this version.",
        err=True,
    )
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.command()(sweep)
