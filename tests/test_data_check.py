"""`check_data_root` accepts a good root (synthetic, or laid out as v1.0-mini) and names each
kind of damage in one line."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aqr_exp.cli.main import app
from aqr_exp.data.check import check_data_root

TABLES = Path("v1.0-trainval")


@pytest.fixture
def root(synth_root: Path, tmp_path: Path) -> Path:
    """A private copy of the session's synthetic root, free to damage."""
    return Path(shutil.copytree(synth_root, tmp_path / "root"))


def _load_info(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        return pickle.load(f)


def _dump_info(path: Path, infos: Any) -> None:
    with open(path, "wb") as f:
        pickle.dump(infos, f)


def _edit_table(root: Path, table: str, edit: Any) -> None:
    path = root / TABLES / f"{table}.json"
    rows = json.loads(path.read_text())
    edit(rows)
    path.write_text(json.dumps(rows))


def _single_lines(problems: list[str]) -> list[str]:
    assert all(p and "\n" not in p for p in problems)
    return problems


def test_a_generated_root_is_fine(synth_root: Path) -> None:
    assert check_data_root(synth_root) == []


def test_a_mini_layout_is_fine_too(root: Path) -> None:
    # The synthetic scene names are in the devkit's mini splits as well.
    (root / TABLES).rename(root / "v1.0-mini")
    for split in ("train", "val"):
        infos = _load_info(root / f"nuscenes_infos_{split}.pkl")
        infos["metainfo"]["version"] = "v1.0-mini"
        _dump_info(root / f"nuscenes_infos_{split}.pkl", infos)
    assert check_data_root(root) == []


def test_not_a_data_root(tmp_path: Path) -> None:
    assert _single_lines(check_data_root(tmp_path / "absent")) == [
        f"{tmp_path / 'absent'}: no such directory"
    ]
    problems = _single_lines(check_data_root(tmp_path))
    assert len(problems) == 1
    assert "no table folder" in problems[0]


def test_missing_and_unreadable_tables(root: Path) -> None:
    (root / TABLES / "sample.json").unlink()
    (root / TABLES / "ego_pose.json").write_text("[{")
    problems = _single_lines(check_data_root(root))
    assert (
        problems[0]
        == "v1.0-trainval/ego_pose.json cannot be read: " + problems[0].split(": ", 1)[1]
    )
    assert problems[1] == "v1.0-trainval/sample.json is missing"
    assert len(problems) == 2


def test_broken_references(root: Path) -> None:
    def orphan_one(rows: list[dict[str, Any]]) -> None:
        rows[0]["instance_token"] = "0" * 32

    _edit_table(root, "sample_annotation", orphan_one)
    assert _single_lines(check_data_root(root)) == [
        "v1.0-trainval/sample_annotation.json: 1 records name a instance_token not in "
        f"instance.json, e.g. {'0' * 32!r}"
    ]


def test_missing_files_are_counted_per_kind(root: Path) -> None:
    infos = _load_info(root / "nuscenes_infos_val.pkl")["data_list"]
    last = infos[-1]
    (root / "samples/LIDAR_TOP" / last["lidar_points"]["lidar_path"]).unlink()
    (root / "samples/CAM_BACK" / last["images"]["CAM_BACK"]["img_path"]).unlink()
    sweep = next(s for s in last["lidar_sweeps"] if "sweeps/" in s["lidar_points"]["lidar_path"])
    (root / sweep["lidar_points"]["lidar_path"]).unlink()
    problems = _single_lines(check_data_root(root))
    assert (
        problems[0].startswith("3 of ")
        and "files named in v1.0-trainval/sample_data.json" in problems[0]
    )
    assert problems[1].startswith(
        "1 of 6 LiDAR files named in nuscenes_infos_val.pkl are missing, e.g. samples/LIDAR_TOP/"
    )
    assert (
        problems[2].startswith("1 of ")
        and "sweep files named in nuscenes_infos_val.pkl" in problems[2]
    )
    assert problems[3].startswith(
        "1 of 36 images named in nuscenes_infos_val.pkl are missing, e.g. samples/CAM_BACK/"
    )
    assert len(problems) == 4


def test_info_files_that_cannot_serve(root: Path) -> None:
    (root / "nuscenes_infos_train.pkl").write_bytes(b"not a pickle")
    val = _load_info(root / "nuscenes_infos_val.pkl")
    val["data_list"] = []
    _dump_info(root / "nuscenes_infos_val.pkl", val)
    problems = _single_lines(check_data_root(root))
    assert problems[0].startswith("nuscenes_infos_train.pkl cannot be read")
    assert problems[1] == "nuscenes_infos_val.pkl: the 'val' split has no samples"
    assert len(problems) == 2


def test_v1_info_files_and_missing_ones(root: Path) -> None:
    _dump_info(
        root / "nuscenes_infos_train.pkl", {"infos": [], "metadata": {"version": "v1.0-trainval"}}
    )
    (root / "nuscenes_infos_val.pkl").unlink()
    problems = _single_lines(check_data_root(root))
    assert "not an mmdet3d v2 info file" in problems[0]
    assert problems[1].startswith("nuscenes_infos_val.pkl is missing")
    assert len(problems) == 2


def test_val_info_must_cover_the_val_split(root: Path) -> None:
    val = _load_info(root / "nuscenes_infos_val.pkl")
    val["data_list"] = val["data_list"][:-1]
    _dump_info(root / "nuscenes_infos_val.pkl", val)
    problems = _single_lines(check_data_root(root))
    assert len(problems) == 1
    assert problems[0].startswith(
        "nuscenes_infos_val.pkl: 1 samples of the 'val' split are missing"
    )


def test_tables_without_a_val_scene(root: Path) -> None:
    def rename_val_scene(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row["name"] == "scene-0103":
                row["name"] = "scene-0001"  # a train scene

    _edit_table(root, "scene", rename_val_scene)
    problems = _single_lines(check_data_root(root))
    assert problems[0].startswith("v1.0-trainval: no scene of the devkit's 'val' split")
    assert problems[1].startswith(
        "nuscenes_infos_val.pkl: 6 samples are not samples of the 'val' split"
    )
    assert len(problems) == 2


def test_cli_check_exit_status(synth_root: Path, root: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "check", str(synth_root)])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(  # said before any pickle is loaded
        "note: nuscenes_infos_train.pkl, nuscenes_infos_val.pkl are Python pickles, "
        "which can run code when loaded"
    )
    (root / TABLES / "map.json").unlink()
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 1
    assert "v1.0-trainval/map.json is missing\n" in result.output
