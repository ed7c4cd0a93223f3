"""`aqr-exp viz bias | weights`: pictures to look at before trusting a number.

Bad input raises AqrError, which the app turns into one message and exit status 2."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from aqr_exp.paths import WORK_ROOT
from aqr_exp.results.files import write_atomic

app = typer.Typer(
    help=(
        "Pictures of AQR on one config (+ checkpoint) and its val split: the windows "
        "the queries attend to, and the LiDAR/camera weights by class and distance."
    ),
    no_args_is_help=True,
)

CONFIG = typer.Option(..., "--config", "-c", help="A config with AQR (old or new).")
CHECKPOINT = typer.Option(
    None,
    "--checkpoint",
    "-k",
    help="Weights (.pth) of any variant; without it, the config's fresh initialization.",
)


def _out_dir(out: Path | None, config: Path) -> Path:
    return out if out is not None else WORK_ROOT / "viz" / config.stem


@app.command()
def bias(
    config: Path = CONFIG,
    checkpoint: Path | None = CHECKPOINT,
    sample: int = typer.Option(0, "--sample", "-n", help="Index into the val split."),
    queries: list[str] = typer.Option(
        ["top"],
        "--queries",
        "-q",
        help="'top', or query ids (comma-separated or the option repeated).",
    ),
    top: int = typer.Option(5, "--top", help="How many queries 'top' takes (highest score)."),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default work_dirs/viz/<config name>)."
    ),
) -> None:
    """Draw the chosen queries' AQR windows on one val sample.

    Writes sampleNNNN_cameras.png (the six pipeline images with the windows as a
    heatmap, the chosen queries' predicted boxes in red and the GT boxes in green,
    projected with the sample's lidar2img) and sampleNNNN_bev.png (LiDAR points from
    above, the BEV windows, every query's reference point coloured by LiDAR − camera
    weight with the chosen ones circled, and the boxes).

    New AQR: the heatmap is the bias added to the cross-attention logits. Old AQR adds
    no attention bias, it multiplies the features by weight maps: the heatmap is then
    each chosen query's splat into those maps. A config without AQR (the baseline)
    exits 2 and draws nothing."""
    # mmdet3d and torch take seconds to import: only when a viz command runs.
    from aqr_exp.viz.bias import choose_queries, render
    from aqr_exp.viz.bias import write as write_pictures
    from aqr_exp.viz.model import check_sample, load, run_sample

    loaded = load(config, checkpoint)
    check_sample(loaded, sample)
    run = run_sample(loaded, sample)
    chosen = choose_queries(run, queries, top)
    for path in write_pictures(_out_dir(out, config), render(loaded, run, chosen)):
        typer.echo(f"wrote {path}")


@app.command()
def weights(
    config: Path = CONFIG,
    checkpoint: Path | None = CHECKPOINT,
    samples: int | None = typer.Option(
        None, "--samples", "-n", help="The first N val samples (default: all)."
    ),
    max_distance: float = typer.Option(
        2.0, "--max-distance", help="Match a GT to a query within this BEV distance (m)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (default work_dirs/viz/<config name>)."
    ),
) -> None:
    """Per-query LiDAR vs camera weights over the val split, by class and distance.

    Each GT box is matched to the query with the nearest predicted center (within
    --max-distance, one query per GT). Writes weights.csv (one row per class x
    distance bucket 0-10/10-20/20-30/30+ m: counts, mean weights, the bias scale),
    weights-matched.csv (one row per matched query) and weights.png. A config without
    AQR exits 2 and writes nothing."""
    # mmdet3d and torch take seconds to import: only when a viz command runs.
    from aqr_exp.viz.draw import weights_figure
    from aqr_exp.viz.model import load
    from aqr_exp.viz.weights import collect

    if max_distance <= 0:
        raise typer.BadParameter(
            f"must be positive, got {max_distance}", param_hint="--max-distance"
        )
    loaded = load(config, checkpoint)
    stats = collect(loaded, samples, max_distance)
    scale = "none (old AQR)" if math.isnan(stats.bias_scale) else f"{stats.bias_scale:.3f}"
    title = (
        f"{config.name} — {stats.samples} val samples, {len(stats.matched)} of {stats.num_gt} "
        f"GT boxes matched (≤ {max_distance:g} m)\nbias scale {scale}"
    )
    folder = _out_dir(out, config)
    files = {
        folder / "weights.csv": stats.table.to_csv(index=False),
        folder / "weights-matched.csv": stats.matched.to_csv(index=False),
        folder / "weights.png": weights_figure(stats.table, title),
    }
    for path, data in files.items():
        write_atomic(path, data)
        typer.echo(f"wrote {path}")
    typer.echo(title.replace("\n", " — "))


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="viz")
