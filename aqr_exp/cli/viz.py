"""`aqr-exp viz bias | weights`: pictures to look at before trusting a number.

Bad input raises AqrError, which the app turns into one message and exit status 2."""

from __future__ import annotations

from pathlib import Path

import typer

from aqr_exp import paths
from aqr_exp.files import check_input_file, write_atomic
from aqr_exp.viz import CONFIG_EXPECTED

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


def _check_files(config: Path, checkpoint: Path | None) -> None:
    """The files named on the command line, before the seconds-long mmdet3d import: a
    missing config, or a checkpoint that is not one, fails at once (load checks again)."""
    check_input_file(config, "config", CONFIG_EXPECTED)
    if checkpoint is not None:
        from aqr_exp.checkpoints import read_checkpoint  # torch: only for a checkpoint

        read_checkpoint(checkpoint)


def _out_dir(out: Path | None, config: Path) -> Path:
    return out if out is not None else paths.work_root() / "viz" / config.stem


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
    _check_files(config, checkpoint)
    # mmdet3d and torch take seconds to import: only when a viz command runs.
    from aqr_exp.viz.pictures import bias_pictures

    pictures = bias_pictures(config, checkpoint, sample, queries, top)
    _write(_out_dir(out, config), pictures.files)


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
    _check_files(config, checkpoint)
    # mmdet3d and torch take seconds to import: only when a viz command runs.
    from aqr_exp.viz.pictures import weight_pictures

    if max_distance <= 0:
        raise typer.BadParameter(
            f"must be positive, got {max_distance}", param_hint="--max-distance"
        )
    pictures = weight_pictures(config, checkpoint, samples, max_distance)
    _write(_out_dir(out, config), pictures.files)
    typer.echo(pictures.summary)


def _write(folder: Path, files: dict[str, bytes | str]) -> None:
    """Everything is rendered before this: a failure leaves nothing half-written."""
    for name, data in files.items():
        write_atomic(folder / name, data)
        typer.echo(f"wrote {folder / name}")


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="viz")
