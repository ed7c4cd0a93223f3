"""`aqr-exp data synth | check`: the embedded default data set, and checking any data root."""

from __future__ import annotations

from pathlib import Path

import typer

from aqr_exp import paths
from aqr_exp.data.synth import SynthSpec, generate

app = typer.Typer(
    help=(
        "The data: generate the embedded synthetic data set in the real nuScenes format, "
        "or check a data root (synthetic or real nuScenes)."
    ),
    no_args_is_help=True,
)

_DEFAULT = SynthSpec()


def _image_size(value: str) -> tuple[int, int]:
    width, sep, height = value.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise typer.BadParameter(f"expected WIDTHxHEIGHT, e.g. 320x180, got {value!r}")
    return int(width), int(height)


@app.command()
def synth(
    out: Path = typer.Option(
        ...,
        "--out",
        default_factory=paths.default_data_root,
        show_default="<project>/data/synth-nus",
        help="Where to write the data set.",
    ),
    train_scenes: int = typer.Option(_DEFAULT.train_scenes, help="Scenes in the train split."),
    val_scenes: int = typer.Option(_DEFAULT.val_scenes, help="Scenes in the val split."),
    samples_per_scene: int = typer.Option(
        _DEFAULT.samples_per_scene, help="Key frames per scene (0.5 s apart)."
    ),
    sweeps: int = typer.Option(
        _DEFAULT.sweeps_per_interval, help="LiDAR sweeps between two key frames."
    ),
    seed: int = typer.Option(_DEFAULT.seed, help="Same seed, same data set."),
    image_size: str = typer.Option(
        "{}x{}".format(*_DEFAULT.image_size), help="Camera image size, WIDTHxHEIGHT."
    ),
    image_format: str = typer.Option(_DEFAULT.image_format, help="jpg or png."),
    force: bool = typer.Option(False, "--force", help="Replace an existing synthetic data set."),
    gt_database: bool = typer.Option(
        False, "--gt-database", help="Also write the GT-sampling database (as `data prepare`)."
    ),
) -> None:
    """Write the synthetic data set (real nuScenes format).

    Tables, LiDAR key frames and sweeps, six cameras and mmdet3d v2 info files that
    nuscenes-devkit and mmdet3d read as nuScenes, so the whole loop runs without a nuScenes
    download. Exits 2 on bad input."""
    spec = SynthSpec(
        train_scenes=train_scenes,
        val_scenes=val_scenes,
        samples_per_scene=samples_per_scene,
        sweeps_per_interval=sweeps,
        seed=seed,
        image_size=_image_size(image_size),
        image_format=image_format,
    )
    s = generate(spec, out, force=force)
    typer.echo(
        f"wrote {s.root}: {s.scenes['train']} train + {s.scenes['val']} val scenes, "
        f"{sum(s.samples.values())} samples, {s.annotations} annotations, "
        f"{s.lidar_frames} LiDAR frames (~{s.points_per_key_frame:.0f} points per key frame), "
        f"{s.images} images; {s.size_bytes / 1e6:.1f} MB in {s.seconds:.1f} s"
    )
    if gt_database:
        from aqr_exp.data.prepare import prepare_nuscenes

        for line in prepare_nuscenes(s.root):
            typer.echo(line)


@app.command()
def check(root: Path = typer.Argument(..., help="The data root to check.")) -> None:
    """Check a data root (synthetic or real nuScenes).

    Tables present and loadable, references intact, every referenced file present, info
    files readable, train and val splits non-empty. Prints one line per problem and exits 1
    when there is any.

    The info files are Python pickles, and loading a pickle can run code (mmdet3d loads
    them the same way): check only data roots you trust."""
    from aqr_exp.data.check import INFO_SPLITS, check_data_root

    infos = ", ".join(f"nuscenes_infos_{split}.pkl" for split in INFO_SPLITS)
    typer.echo(
        f"note: {infos} are Python pickles, which can run code when loaded "
        "(as mmdet3d loads them): check only data roots you trust",
        err=True,
    )

    problems = check_data_root(root)
    for problem in problems:
        typer.echo(problem)
    if problems:
        typer.echo(f"{len(problems)} problem(s) in {root}", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {root}")


@app.command()
def prepare(
    dataset: str = typer.Argument(..., help="The data set: nuscenes."),
    root: Path = typer.Option(..., "--root", help="The data root, e.g. data/nuscenes."),
    max_sweeps: int = typer.Option(10, help="LiDAR sweeps per key frame in the info files."),
    gt_database: bool = typer.Option(
        True, "--gt-database/--no-gt-database", help="Also build the GT-sampling database."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild what is already there."),
) -> None:
    """Make a data root trainable: mmdet3d v2 info files and the GT database.

    The info files are built from the nuScenes tables with mmdet3d's converters, or
    converted from mmdet3d 1.0 info files (the PKLs CMT distributes; the originals are kept
    as nuscenes_infos_<split>.v1.pkl). The GT database is mmdet3d's LiDAR database of the
    train split plus CMT's image patch per object. What is there already is kept, so an
    interrupted run is resumed by running it again. Exits 2 on bad input."""
    from aqr_exp.data.prepare import prepare_nuscenes

    if dataset != "nuscenes":
        raise typer.BadParameter(f"only nuscenes can be prepared, got {dataset!r}")
    if max_sweeps < 0:
        raise typer.BadParameter(f"--max-sweeps must be >= 0, got {max_sweeps}")
    for line in prepare_nuscenes(root, max_sweeps=max_sweeps, gt_database=gt_database, force=force):
        typer.echo(line)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="data")
