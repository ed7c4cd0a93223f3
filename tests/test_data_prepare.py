"""`aqr-exp data prepare nuscenes` on the synthetic data set, which is in the nuScenes
format: mmdet3d's converters rebuild the generator's own info files, convert CMT's
(mmdet3d 1.0) info files, and write a GT database that mmdet3d's GT-sampling reads."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures.gt_sampling import db_sampler
from mmdet3d.registry import TRANSFORMS
from mmengine.registry import init_default_scope
from typer.testing import CliRunner

from aqr_exp.cli.main import app
from aqr_exp.data.check import check_data_root
from aqr_exp.data.prepare import best_image_crop, mmdet3d_tool


def _prepare(*args: object) -> Any:
    return CliRunner().invoke(app, ["data", "prepare", *(str(arg) for arg in args)])


def _download(synth_root: Path, root: Path) -> Path:
    """What a nuScenes download has: tables and sensor files, no info files."""
    root.mkdir()
    for name in ("v1.0-trainval", "samples", "sweeps", "maps"):
        (root / name).symlink_to(synth_root / name, target_is_directory=True)
    return root


def _load(path: Path) -> Any:
    with path.open("rb") as handle:
        return pickle.load(handle)


def _assert_same_samples_and_boxes(ours: Path, generators: Path) -> None:
    a, b = _load(ours)["data_list"], _load(generators)["data_list"]
    assert [info["token"] for info in a] == [info["token"] for info in b]
    for mine, theirs in zip(a, b, strict=True):
        assert len(mine["instances"]) == len(theirs["instances"])
        for x, y in zip(mine["instances"], theirs["instances"], strict=True):
            np.testing.assert_allclose(x["bbox_3d"], y["bbox_3d"], atol=1e-6)
            assert (x["bbox_label_3d"], x["bbox_3d_isvalid"]) == (
                y["bbox_label_3d"],
                y["bbox_3d_isvalid"],
            )
        assert mine["lidar_points"]["lidar_path"] == theirs["lidar_points"]["lidar_path"]
        assert len(mine.get("lidar_sweeps", [])) == len(theirs.get("lidar_sweeps", []))


def test_prepare_rebuilds_the_generators_infos_and_a_usable_gt_database(
    synth_root: Path, tmp_path: Path
) -> None:
    root = _download(synth_root, tmp_path / "nuscenes")
    result = _prepare("nuscenes", "--root", root)
    assert result.exit_code == 0, result.output
    for split in ("train", "val"):
        assert f"nuscenes_infos_{split}.pkl: written from the tables" in result.stdout
        _assert_same_samples_and_boxes(
            root / f"nuscenes_infos_{split}.pkl", synth_root / f"nuscenes_infos_{split}.pkl"
        )
    assert not (root / ".aqr-prepare").exists()
    assert check_data_root(root) == []  # what `aqr-exp data check` reports

    db = _load(root / "nuscenes_dbinfos_train.pkl")
    entries = [entry for name in db for entry in db[name]]
    train = _load(root / "nuscenes_infos_train.pkl")["data_list"]
    # every object with LiDAR points (mmdet3d's valid flag), as mmdet3d's own database
    valid = [x for info in train for x in info["instances"] if x["bbox_3d_isvalid"]]
    assert len(entries) == len(valid) < sum(len(info["instances"]) for info in train)
    for entry in entries:
        points = np.fromfile(root / entry["path"], dtype=np.float32).reshape(-1, 5)
        assert len(points) == entry["num_points_in_gt"]
        # stored relative to the box's bottom centre, inside the box
        half = entry["box3d_lidar"][3:6].max() / 2 + 0.01
        assert (np.linalg.norm(points[:, :2], axis=1) <= np.sqrt(2) * half).all()
    patched = [entry for entry in entries if entry["image_path"]]
    assert len(patched) >= 0.8 * len(entries)
    for entry in patched[:50]:
        x1, y1, x2, y2 = entry["image_crop_box"]
        patch = mmcv_imread(root / entry["image_path"])
        assert patch.shape[:2] == (y2 - y1, x2 - x1)
        assert entry["image_crop_key"].startswith("CAM_") and entry["image_crop_depth"] > 0

    # mmdet3d's database sampler reads it: per-class groups after its min-points filter,
    # collision-free draws, and each drawn object's points. (Its ObjectSample transform
    # itself stops at `np.long`, gone since numpy 1.24, in mmdet3d 1.4.)
    init_default_scope("mmdet3d")
    sampler = TRANSFORMS.build(dict(type="DataBaseSampler", **db_sampler(root, per_class=2)))
    cars = sampler.sample_class_v2("car", 4, np.zeros((0, 9)))  # draws that collide are dropped
    assert 1 <= len(cars) <= 4 and all(car["num_points_in_gt"] >= 5 for car in cars)
    for car in cars:
        loaded = sampler.points_loader({"lidar_points": {"lidar_path": str(root / car["path"])}})
        assert len(loaded["points"]) == car["num_points_in_gt"]

    again = _prepare("nuscenes", "--root", root)
    assert again.exit_code == 0, again.output
    assert "nuscenes_infos_train.pkl: mmdet3d v2 already, kept" in again.stdout
    assert "nuscenes_dbinfos_train.pkl: present, kept" in again.stdout
    # an interrupted database (no info file, the one written last) is rebuilt
    (root / "nuscenes_dbinfos_train.pkl").unlink()
    third = _prepare("nuscenes", "--root", root, "--no-gt-database")
    assert third.exit_code == 0 and "dbinfos" not in third.stdout
    rebuilt = _prepare("nuscenes", "--root", root)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert f"nuscenes_dbinfos_train.pkl: {len(entries)} objects" in rebuilt.stdout


def mmcv_imread(path: Path) -> np.ndarray:
    import mmcv

    return mmcv.imread(str(path), "unchanged")


def test_cmts_info_files_are_converted_to_v2_and_kept(synth_root: Path, tmp_path: Path) -> None:
    root = _download(synth_root, tmp_path / "nuscenes")
    # CMT's PKLs: mmdet3d 1.0's converter output under the names the configs read
    mmdet3d_tool("nuscenes_converter").create_nuscenes_infos(str(root), "nuscenes")
    assert set(_load(root / "nuscenes_infos_train.pkl")) == {"infos", "metadata"}
    result = _prepare("nuscenes", "--root", root, "--no-gt-database")
    assert result.exit_code == 0, result.output
    for split in ("train", "val"):
        assert (
            f"nuscenes_infos_{split}.pkl: written from nuscenes_infos_{split}.pkl (mmdet3d 1.0)"
            in result.stdout
        )
        _assert_same_samples_and_boxes(
            root / f"nuscenes_infos_{split}.pkl", synth_root / f"nuscenes_infos_{split}.pkl"
        )
        assert set(_load(root / f"nuscenes_infos_{split}.v1.pkl")) == {"infos", "metadata"}
    assert not (root / "nuscenes_dbinfos_train.pkl").exists()
    # --force rebuilds from the tables; CMT's originals stay where they were kept
    kept = (root / "nuscenes_infos_train.v1.pkl").read_bytes()
    forced = _prepare("nuscenes", "--root", root, "--no-gt-database", "--force")
    assert "nuscenes_infos_train.pkl: written from the tables" in forced.stdout
    assert (root / "nuscenes_infos_train.v1.pkl").read_bytes() == kept


def test_force_keeps_cmts_info_files_too(synth_root: Path, tmp_path: Path) -> None:
    root = _download(synth_root, tmp_path / "nuscenes")
    mmdet3d_tool("nuscenes_converter").create_nuscenes_infos(str(root), "nuscenes")
    original = (root / "nuscenes_infos_val.pkl").read_bytes()
    result = _prepare("nuscenes", "--root", root, "--no-gt-database", "--force")
    assert result.exit_code == 0, result.output
    assert (root / "nuscenes_infos_val.v1.pkl").read_bytes() == original
    assert set(_load(root / "nuscenes_infos_val.pkl")) >= {"data_list", "metainfo"}


def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _prepare("nuscenes", "--root", empty)
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {empty}: no v1.0-trainval or v1.0-mini table folder; a nuScenes download has "
        "one (v1.0-test has no train/val split to prepare)\n"
    )
    assert list(empty.iterdir()) == []
    (empty / "nuscenes_infos_train.pkl").write_bytes(pickle.dumps([1, 2]))
    result = _prepare("nuscenes", "--root", empty)
    assert result.exit_code == 2
    assert f"{empty / 'nuscenes_infos_train.pkl'}: neither an mmdet3d v2 info file" in (
        result.stderr
    )
    assert sorted(p.name for p in empty.iterdir()) == ["nuscenes_infos_train.pkl"]
    assert "only nuscenes can be prepared" in _prepare("kitti", "--root", empty).output
    missing = _prepare("nuscenes", "--root", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def _camera(yaw: float, width: int = 1600, height: int = 900) -> np.ndarray:
    """lidar2img of a pinhole camera at the origin looking along `yaw` in the x-y plane."""
    c, s = np.cos(yaw), np.sin(yaw)
    lidar2cam = np.eye(4)
    lidar2cam[:3, :3] = [[s, -c, 0.0], [0.0, 0.0, -1.0], [c, s, 0.0]]
    cam2img = np.eye(4)
    cam2img[:3, :3] = [[500.0, 0, width / 2], [0, 500.0, height / 2], [0, 0, 1]]
    return cam2img @ lidar2cam


def _corners(x: float, y: float, size: float) -> np.ndarray:
    return np.array(
        [[x + dx, y + dy, dz] for dx in (-size, size) for dy in (-size, size) for dz in (-1, 1)]
    )


def test_the_image_patch_comes_from_the_camera_that_sees_the_box_largest() -> None:
    front, left = ("F", _camera(0.0), (900, 1600)), ("L", _camera(np.pi / 2), (900, 1600))
    crop = best_image_crop(_corners(10.0, 0.0, 1.0), [left, front])
    assert crop is not None and crop.camera == "F"
    # x = 9..11 m, y and z = -1..1 m: pixels (800, 450) -/+ 500 * 1 / 9 at the near face
    assert crop.box == (744, 394, 855, 505) and crop.depth == pytest.approx(10.0)
    # seen by both: the left camera has it nearer, so larger
    crop = best_image_crop(_corners(5.0, 3.5, 0.5), [left, front])
    assert crop is not None and crop.camera == "L"
    assert best_image_crop(_corners(-10.0, 0.0, 1.0), [front]) is None  # behind
    assert best_image_crop(_corners(0.5, 0.0, 1.0), [front]) is None  # straddles the camera
    assert best_image_crop(_corners(500.0, 0.0, 1.0), [front]) is None  # under 10 px
