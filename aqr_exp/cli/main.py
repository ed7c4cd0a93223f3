"""`aqr-exp`: the entry point; each command group lives in its own module."""

from __future__ import annotations

import logging

import typer
from typer.core import TyperGroup

from aqr_exp.cli import data, doctor, results, runs, viz
from aqr_exp.errors import AqrError


class _Commands(TyperGroup):
    """Every command: bad input (AqrError) is one clear message and exit status 2."""

    def invoke(self, ctx: typer.Context) -> object:
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
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


data.register(app)
doctor.register(app)
results.register(app)
runs.register(app)
viz.register(app)

if __name__ == "__main__":
    app()
