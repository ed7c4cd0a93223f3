"""`aqr-exp`: the entry point; each command group lives in its own module."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer
from typer.core import TyperGroup

from aqr_exp import paths, records
from aqr_exp.cli import data, doctor, project, results, runs, viz
from aqr_exp.errors import AqrError
from aqr_exp.project import use_root


class _Commands(TyperGroup):
    """Every command: bad input (AqrError) is one clear message and exit status 2."""

    def invoke(self, ctx: typer.Context) -> object:
        records.new_command()  # each command names every corrupt run file it meets, once
        try:
            return super().invoke(ctx)
        except AqrError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from err


app = typer.Typer(
    cls=_Commands,
    name="aqr-exp",
    help=(
        "Baseline-vs-variant experiments for AQR on the CMT 3D detector: generate config "
        "variants and sweeps, train them with mmdet3d, collect nuScenes metrics, compare, report."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
    root: Path | None = typer.Option(
        None,
        "--root",
        envvar=paths.ROOT_ENV,
        help="The project folder holding experiments/, results/, work_dirs/ and data/ "
        "(default: the current directory).",
    ),
) -> None:
    if root is not None:
        # Lazily read defaults and the training subprocesses see the same project.
        os.environ[paths.ROOT_ENV] = str(use_root(root))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


data.register(app)
doctor.register(app)
project.register(app)
results.register(app)
runs.register(app)
viz.register(app)

if __name__ == "__main__":
    app()
