"""`aqr-exp collect | import-log | compare | report`: turn runs into answers.

Bad input raises AqrError, which the app turns into one message and exit status 2.
The results modules (pandas, matplotlib: a second to import) are imported by the
commands that use them, so `aqr-exp --help` and `status` stay quick."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from aqr_exp import paths
from aqr_exp.registry import read_metrics

RESULTS_ROOT = typer.Option(
    ...,
    "--results-root",
    default_factory=paths.results_root,
    show_default="<project>/results",
    help="The run registry's root (holds <study>/runs/<run_id>/).",
)
STUDY = typer.Option(None, "--study", "-s", help="The study (a folder under the results root).")


class OutputFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"


def collect(study: str | None = STUDY, results_root: Path = RESULTS_ROOT) -> None:
    """Write each run's metrics.json from its mmengine work dir.

    All studies without --study. Exits 2 when a run's logs cannot be read."""
    from aqr_exp.results.collect import collect as collect_runs

    outcomes = collect_runs(results_root, study)
    for outcome in outcomes:
        run = f"{outcome.run_dir.parent.parent.name}/{outcome.run_dir.name}"
        typer.echo(f"{outcome.state:<9} {run}: {outcome.detail}")
    if any(outcome.state == "error" for outcome in outcomes):
        raise typer.Exit(2)


def import_log(
    file: Path = typer.Argument(..., help="An mmdet3d ≤ 1.0 / mmcv 1.x text log."),
    name: str = typer.Option(..., "--name", help="The run id of the imported run."),
    study: str = typer.Option("imported", "--study", "-s", help="The study to import into."),
    variant: str | None = typer.Option(
        None, "--variant", help="Its variant (default: the name; 'baseline' for a baseline)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="The seed the run used, if known."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier import of NAME."),
    results_root: Path = RESULTS_ROOT,
) -> None:
    """Import an mmdet3d 1.0 text log as a finished run, to join comparisons.

    Creates <study>/runs/<name>/ with run.yaml (status done) and metrics.json."""
    from aqr_exp.results.legacy_log import import_log as import_legacy_log

    run_dir = import_legacy_log(file, name, study, results_root, variant, seed, force)
    metrics = read_metrics(run_dir)
    where = metrics["source"]["metrics"]
    values = metrics["metrics"]
    typer.echo(
        f"imported {file} → {run_dir}: {where['from']} epoch {where['epoch']}, "
        f"mAP {values['mAP']:.4f}, NDS {values['NDS']:.4f}"
    )


RESAMPLES = typer.Option(
    1000, "--resamples", min=0, help="Bootstrap resamples for each Δ's interval (0: none)."
)
BOOTSTRAP_UNIT = typer.Option(
    "scene",
    "--bootstrap-unit",
    help="What the bootstrap resamples: scene (samples of a scene are correlated) or sample.",
)
BOOTSTRAP_SEED = typer.Option(0, "--bootstrap-seed", help="Seed of the bootstrap resampling.")


def compare(
    runs: list[str] | None = typer.Argument(
        None, help="Run ids or run dirs (default: the study's finished runs)."
    ),
    study: str | None = STUDY,
    output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f"),
    by: str | None = typer.Option(
        None, "--by", help="Rows per value of this parameter (sweep name or override key)."
    ),
    resamples: int = RESAMPLES,
    bootstrap_unit: str = BOOTSTRAP_UNIT,
    bootstrap_seed: int = BOOTSTRAP_SEED,
    results_root: Path = RESULTS_ROOT,
) -> None:
    """Compare variants and sweep values: mean ± std over seeds, Δ vs the baseline.

    Each Δ gets a 95% interval from a paired bootstrap of the validation scenes and a
    verdict (better / worse / within noise); also per-class AP, cost, and warnings
    where the evidence is thin."""
    from aqr_exp.results.compare import BootstrapSettings, select_runs
    from aqr_exp.results.compare import compare as compare_runs
    from aqr_exp.results.render import render

    settings = BootstrapSettings(resamples=resamples, unit=bootstrap_unit, seed=bootstrap_seed)
    study, results, notes = select_runs(results_root, study, runs or [])
    comparison = compare_runs(results, by=by, study=study, notes=notes, bootstrap=settings)
    typer.echo(render(comparison, output_format.value), nl=False)
    if output_format is OutputFormat.csv:
        for warning in comparison.warnings:
            typer.echo(f"warning: {warning}", err=True)


def report(
    study: str | None = STUDY,
    by: str | None = typer.Option(None, "--by", help="As for `compare`."),
    viz: bool = typer.Option(
        False,
        "--viz",
        help="Add AQR pictures of the best AQR run (by NDS): windows and weights.",
    ),
    viz_sample: int = typer.Option(0, "--viz-sample", help="The val sample to draw."),
    viz_samples: int | None = typer.Option(
        None, "--viz-samples", help="Val samples for the weight statistics (default: all)."
    ),
    resamples: int = RESAMPLES,
    bootstrap_unit: str = BOOTSTRAP_UNIT,
    bootstrap_seed: int = BOOTSTRAP_SEED,
    results_root: Path = RESULTS_ROOT,
) -> None:
    """Write <results-root>/<study>/report.md and its figures.

    Tables, figures, config diffs against the baseline, and provenance; with --viz
    also the AQR windows and modality weights of the best AQR run."""
    from aqr_exp.results.compare import BootstrapSettings
    from aqr_exp.results.report import write_report

    settings = BootstrapSettings(resamples=resamples, unit=bootstrap_unit, seed=bootstrap_seed)
    extra = []
    if viz:
        # mmdet3d and torch take seconds to import: only when pictures are asked for.
        from aqr_exp.viz.study import study_pictures

        extra = study_pictures(results_root, study, viz_sample, viz_samples)
    path = write_report(results_root, study, by, extra, settings)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command()(collect)
    app.command("import-log")(import_log)
    app.command()(compare)
    app.command()(report)
