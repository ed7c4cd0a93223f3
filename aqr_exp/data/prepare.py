"""Prepare a nuScenes data root for training: mmdet3d v2 info files and CMT's GT database.

mmdet3d's own converters do the heavy work; they ship in its wheel (`.mim/tools`), and
this module runs them as mmdet3d's `tools/create_data.py` would: the info files from the
tables (or CMT's info files, which are mmdet3d 1.0's format, converted to v2) and the
LiDAR part of the GT database. Added here: the image patch of each database object (CMT's
multi-modal GT-sampling pastes it into the cameras), writes that never leave a
half-written file in place, and skipping what is already done, so the command can be run
again after an interruption.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from aqr_exp.errors import AqrError
from aqr_exp.files import write_atomic

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
VERSIONS = ("v1.0-trainval", "v1.0-mini")  # the versions with a train and a val split
INFO = "nuscenes_infos_{}.pkl"
INFO_V1_KEPT = "nuscenes_infos_{}.v1.pkl"  # an info file of mmdet3d 1.0 (CMT's), once converted
DATABASE = "nuscenes_gt_database"
DATABASE_INFOS = "nuscenes_dbinfos_train.pkl"
IMAGE_DIR = "img_dir"
SCRATCH = ".aqr-prepare"  # under the root: the final renames stay on one file system
CAMERA_PREFIX = "samples"
# CMT keeps a camera crop only when both sides exceed 10 px of a 1600 px wide image.
MIN_CROP_SIDE_AT_1600 = 10


def mmdet3d_tool(name: str) -> ModuleType:
    """A converter of mmdet3d's `tools/dataset_converters`, as shipped in its wheel."""
    import mmdet3d

    path = Path(mmdet3d.__file__).parent / ".mim" / "tools" / "dataset_converters" / f"{name}.py"
    if not path.is_file():
        raise AqrError(f"mmdet3d's converter {path} is missing: reinstall mmdet3d (make install)")
    spec = importlib.util.spec_from_file_location(f"mmdet3d_dataset_converters.{name}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def info_format(path: Path) -> str:
    """'v2' (mmdet3d >= 1.1: `data_list`, `metainfo`) or 'v1' (mmdet3d 1.0, CMT's PKLs)."""
    try:
        with path.open("rb") as handle:
            data = pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise AqrError(f"{path}: not a readable info file ({err})") from None
    if isinstance(data, dict) and {"data_list", "metainfo"} <= data.keys():
        return "v2"
    if isinstance(data, dict) and {"infos", "metadata"} <= data.keys():
        return "v1"
    keys = sorted(data) if isinstance(data, dict) else type(data).__name__
    raise AqrError(
        f"{path}: neither an mmdet3d v2 info file (data_list, metainfo) nor one of mmdet3d "
        f"1.0 (infos, metadata); found {keys}"
    )


def table_version(root: Path) -> str:
    for version in VERSIONS:
        if (root / version).is_dir():
            return version
    raise AqrError(
        f"{root}: no {' or '.join(VERSIONS)} table folder; a nuScenes download has one "
        "(v1.0-test has no train/val split to prepare)"
    )


@contextmanager
def _nuscenes_at_default_path(root: Path) -> Iterator[None]:
    """mmdet3d's v1 → v2 converter reads the tables from ./data/nuscenes, whatever the
    data root: run it from a folder where that path leads to `root`."""
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="aqr-prepare-") as cwd:
        (Path(cwd) / "data").mkdir()
        (Path(cwd) / "data" / "nuscenes").symlink_to(root.resolve(), target_is_directory=True)
        os.chdir(cwd)
        try:
            yield
        finally:
            os.chdir(here)


def _to_v2(v1_file: Path, root: Path, scratch: Path) -> Path:
    out_dir = scratch / "v2"
    out_dir.mkdir(exist_ok=True)
    with _nuscenes_at_default_path(root):
        mmdet3d_tool("update_infos_to_v2").update_nuscenes_infos(str(v1_file), str(out_dir))
    converted = out_dir / v1_file.name
    if not converted.is_file():
        raise AqrError(f"mmdet3d's converter wrote no v2 info file from {v1_file}")
    return converted


def prepare_infos(root: Path, scratch: Path, max_sweeps: int, force: bool) -> list[str]:
    """The v2 info file of each split: kept when it is one, converted from mmdet3d 1.0's
    format (the original kept beside it), otherwise built from the tables."""
    done, sources, keep_original = [], {}, set()
    for split in SPLITS:
        final, kept = root / INFO.format(split), root / INFO_V1_KEPT.format(split)
        current = info_format(final) if final.is_file() else None  # read once: it can be large
        if current == "v1" and not kept.exists():
            keep_original.add(split)  # CMT's original is kept, --force or not
        if force:
            sources[split] = None
        elif current == "v2":
            done.append(f"{final.name}: mmdet3d v2 already, kept")
        elif current == "v1":
            sources[split] = final
        elif kept.is_file() and info_format(kept) == "v1":
            sources[split] = kept
        else:
            sources[split] = None
    if any(source is None for source in sources.values()):
        version = table_version(root)
        logger.info("building the info files from the %s tables (%d sweeps)", version, max_sweeps)
        prefix = str(scratch.relative_to(root) / "v1")
        mmdet3d_tool("nuscenes_converter").create_nuscenes_infos(
            str(root), prefix, version=version, max_sweeps=max_sweeps
        )
    for split, source in sources.items():
        final, kept = root / INFO.format(split), root / INFO_V1_KEPT.format(split)
        v1_file = scratch / f"v1_infos_{split}.pkl" if source is None else source
        converted = _to_v2(v1_file, root, scratch)
        if split in keep_original:
            os.replace(final, kept)
        os.replace(converted, final)
        how = "from the tables" if source is None else f"from {source.name} (mmdet3d 1.0)"
        done.append(f"{final.name}: written {how}")
    return done


@dataclass(frozen=True)
class ImageCrop:
    """Where a database object is seen best: camera, pixel box (x1, y1, x2, y2), depth."""

    camera: str
    box: tuple[int, int, int, int]
    depth: float


def best_image_crop(
    corners: np.ndarray, cameras: Sequence[tuple[str, np.ndarray, tuple[int, int]]]
) -> ImageCrop | None:
    """The camera whose image holds the largest crop of a box (8 corners, LiDAR frame),
    as CMT's database: every corner in front of the camera, the corners' pixel bounds
    clipped to the image, both sides above CMT's minimum. `cameras`: (name, lidar2img
    4x4, (height, width)). None when no camera sees the whole box in front of it."""
    best, best_area = None, 0
    homogeneous = np.concatenate([corners, np.ones((len(corners), 1))], axis=1)
    for name, lidar2img, (height, width) in cameras:
        projected = homogeneous @ np.asarray(lidar2img, dtype=np.float64).T
        depth = projected[:, 2]
        if (depth <= 0).any():
            continue
        pixels = projected[:, :2] / depth[:, None]
        x1, y1 = np.clip(pixels.min(axis=0), 0, [width - 1, height - 1]).astype(int)
        x2, y2 = np.clip(pixels.max(axis=0), 0, [width - 1, height - 1]).astype(int)
        min_side = MIN_CROP_SIDE_AT_1600 * width / 1600
        area = (x2 - x1) * (y2 - y1)
        if min(x2 - x1, y2 - y1) > min_side and area > best_area:
            best = ImageCrop(name, (int(x1), int(y1), int(x2), int(y2)), float(depth.mean()))
            best_area = area
    return best


def _cameras(info: dict[str, Any]) -> list[tuple[str, np.ndarray, Path]]:
    cameras = []
    for name, image in info["images"].items():
        cam2img = np.eye(4)
        cam2img[:3, :3] = np.asarray(image["cam2img"], dtype=np.float64)[:3, :3]
        lidar2img = cam2img @ np.asarray(image["lidar2cam"], dtype=np.float64)
        cameras.append((name, lidar2img, Path(CAMERA_PREFIX) / name / image["img_path"]))
    return cameras


def add_image_patches(root: Path, db_infos: dict[str, list[dict]], database: Path) -> int:
    """Crop each database object from the camera that sees it best (CMT's `img_dir`
    patches), recording `image_path`, `image_crop_key`, `image_crop_depth` as CMT's
    database does and the crop's pixel box; returns how many objects got a patch."""
    import mmcv
    import mmengine
    from mmdet3d.structures import LiDARInstance3DBoxes

    infos = mmengine.load(root / INFO.format("train"))["data_list"]
    by_index = {info["sample_idx"]: info for info in infos}
    by_sample = defaultdict(list)
    for entries in db_infos.values():
        for entry in entries:
            by_sample[entry["image_idx"]].append(entry)
    (database / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    patched = 0
    for index in mmengine.track_iter_progress(sorted(by_sample)):
        cameras, images = [], {}
        for name, lidar2img, path in _cameras(by_index[index]):
            images[name] = mmcv.imread(root / path, "unchanged")
            cameras.append((name, lidar2img, images[name].shape[:2]))
        for entry in by_sample[index]:
            box = np.asarray(entry["box3d_lidar"], dtype=np.float32)[None]
            corners = LiDARInstance3DBoxes(box, box_dim=box.shape[1]).corners[0].numpy()
            crop = best_image_crop(corners, cameras)
            if crop is None:
                entry.update(image_path="", image_crop_key="", image_crop_depth=0.0)
                entry["image_crop_box"] = None
                continue
            x1, y1, x2, y2 = crop.box
            name = f"{index}_{entry['name']}_{entry['gt_idx']}.png"
            mmcv.imwrite(images[crop.camera][y1:y2, x1:x2], str(database / IMAGE_DIR / name))
            entry.update(
                image_path=f"{DATABASE}/{IMAGE_DIR}/{name}",
                image_crop_key=crop.camera,
                image_crop_depth=crop.depth,
                image_crop_box=crop.box,
            )
            patched += 1
    return patched


def build_gt_database(root: Path, scratch: Path, force: bool) -> list[str]:
    """mmdet3d's LiDAR GT database of the train split plus CMT's image patches; the
    database info file is written last, so its presence means the database is whole."""
    final_db, final_infos = root / DATABASE, root / DATABASE_INFOS
    if not force and final_infos.is_file() and final_db.is_dir():
        return [f"{DATABASE_INFOS}: present, kept (--force rebuilds it)"]
    from mmengine.registry import init_default_scope

    init_default_scope("mmdet3d")
    database, db_file = scratch / DATABASE, scratch / DATABASE_INFOS
    mmdet3d_tool("create_gt_database").create_groundtruth_database(
        "NuScenesDataset",
        str(root),
        "nuscenes",
        INFO.format("train"),
        database_save_path=str(database),
        db_info_save_path=str(db_file),
    )
    with db_file.open("rb") as handle:
        db_infos = pickle.load(handle)
    objects = sum(len(entries) for entries in db_infos.values())
    patched = add_image_patches(root, db_infos, database)
    final_infos.unlink(missing_ok=True)  # first: an old index never points into a new database
    if final_db.exists():
        shutil.rmtree(final_db)
    os.replace(database, final_db)
    write_atomic(final_infos, pickle.dumps(db_infos))
    return [
        f"{DATABASE_INFOS}: {objects} objects of {len(db_infos)} classes, "
        f"{patched} with an image patch, in {DATABASE}/"
    ]


def prepare_nuscenes(
    root: Path, *, max_sweeps: int = 10, gt_database: bool = True, force: bool = False
) -> list[str]:
    """Make `root` trainable: v2 info files, then the GT database. One line per step."""
    root = root.resolve()
    if not root.is_dir():
        raise AqrError(f"data root {root} does not exist")
    scratch = root / SCRATCH
    if scratch.exists():  # left by an interrupted run: nothing in it is final
        shutil.rmtree(scratch)
    scratch.mkdir()
    try:
        done = prepare_infos(root, scratch, max_sweeps, force)
        if gt_database:
            done += build_gt_database(root, scratch, force)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return done
