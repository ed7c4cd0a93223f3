"""`aqr-exp init`: start a project folder of one's own."""

from __future__ import annotations

import typer

from aqr_exp import paths
from aqr_exp.project import init_project


def init(
    force: bool = typer.Option(False, "--force", help="Replace an existing experiments spec."),
) -> None:
    """Write experiments/aqr_cmt.yaml, the example spec, into the project folder (the
    current directory or --root). Results, work dirs and generated data go beside it."""
    spec = init_project(paths.project_root(), force=force)
    typer.echo(f"Wrote {spec}")
    typer.echo("Next: aqr-exp sweep window_size --dry-run   (plan the main job; drop --dry-run)")


def register(app: typer.Typer) -> None:
    app.command()(init)
