"""`aqr-exp`: the entry point; each command group lives in its own module."""

from __future__ import annotations

import logging

import typer

from aqr_exp.cli import doctor, pending

app = typer.Typer(
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


doctor.register(app)
pending.register(app)

if __name__ == "__main__":
    app()
