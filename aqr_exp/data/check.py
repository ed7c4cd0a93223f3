"""`aqr-exp data check`: is a data root usable for training and nuScenes evaluation?

Works on any nuScenes-format root, synthetic or real: the tables under `<root>/v1.0-*/`,
their cross references and the files they name, and the mmdet3d v2 info files
`nuscenes_infos_{train,val}.pkl` with every file they reference (resolved the way mmdet3d's
NuScenesDataset resolves them with the usual `data_prefix`: `samples/<channel>/<name>`, and
`sweeps/LIDAR_TOP/<name>` for sweeps that are not key frames). Each problem is one line.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aqr_exp.data.format import TABLES

# Which split NuScenesMetric evaluates, and which one training uses, per version.
EVAL_SPLIT = {"v1.0-trainval": "val", "v1.0-mini": "mini_val"}
TRAIN_SPLIT = {"v1.0-trainval": "train", "v1.0-mini": "mini_train"}
INFO_SPLITS = ("train", "val")
_EXAMPLES = 3  # how many offending names a problem line quotes

# (table, field, referenced table): the references the devkit and mmdet3d follow.
_REFERENCES = (
    ("sample", "scene_token", "scene"),
    ("scene", "log_token", "log"),
    ("sample_data", "sample_token", "sample"),
    ("sample_data", "calibrated_sensor_token", "calibrated_sensor"),
    ("sample_data", "ego_pose_token", "ego_pose"),
    ("calibrated_sensor", "sensor_token", "sensor"),
    ("sample_annotation", "sample_token", "sample"),
    ("sample_annotation", "instance_token", "instance"),
    ("sample_annotation", "visibility_token", "visibility"),
    ("instance", "category_token", "category"),
)


def check_data_root(root: Path) -> list[str]:
    """Every problem found under `root`, one line each; an empty list means usable."""
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: no such directory"]
    versions = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0-"))
    if not versions:
        return [
            f"{root}: no table folder (v1.0-trainval, v1.0-mini, ...): not a nuScenes data root"
        ]
    files = _FileIndex(root)
    problems: list[str] = []
    samples_by_version: dict[str, dict[str, set[str]]] = {}
    for version in versions:
        version_problems, split_samples = _check_tables(root, version, files)
        problems += version_problems
        samples_by_version[version] = split_samples
    problems += _check_infos(root, samples_by_version, files)
    return problems


class _FileIndex:
    """Existence checks by listing each folder once (real nuScenes names ~2M files)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._listed: dict[str, set[str]] = {}

    def exists(self, rel: str) -> bool:
        folder, _, name = rel.rpartition("/")
        if folder not in self._listed:
            try:
                self._listed[folder] = {
                    e.name for e in os.scandir(self.root / folder) if e.is_file()
                }
            except OSError:
                self._listed[folder] = set()
        return name in self._listed[folder]

    def missing(self, rels: Iterable[str], what: str) -> list[str]:
        rels = list(rels)
        absent = [r for r in rels if not self.exists(r)]
        if not absent:
            return []
        return [
            f"{len(absent)} of {len(rels)} {what} are missing, e.g. {', '.join(absent[:_EXAMPLES])}"
        ]


def _check_tables(
    root: Path, version: str, files: _FileIndex
) -> tuple[list[str], dict[str, set[str]]]:
    """Problems with one version's tables, and the sample tokens of each split's scenes."""
    where = f"{version}/"
    tables: dict[str, list[dict[str, Any]]] = {}
    problems = []
    for name in TABLES:
        path = root / version / f"{name}.json"
        if not path.is_file():
            problems.append(f"{where}{name}.json is missing")
            continue
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"{where}{name}.json cannot be read: {exc}")
            continue
        if not isinstance(rows, list) or not all(
            isinstance(r, dict) and "token" in r for r in rows
        ):
            problems.append(f"{where}{name}.json is not a list of records with a 'token'")
            continue
        tables[name] = rows
    if problems:
        return problems, {}

    tokens = {name: {r["token"] for r in rows} for name, rows in tables.items()}
    for table, key, target in _REFERENCES:
        bad = [r.get(key) for r in tables[table] if r.get(key) not in tokens[target]]
        if bad:
            problems.append(
                f"{where}{table}.json: {len(bad)} records name a {key} not in {target}.json, "
                f"e.g. {bad[0]!r}"
            )
    attributes = tokens["attribute"]
    bad_attr = [
        r["token"]
        for r in tables["sample_annotation"]
        if not set(r.get("attribute_tokens", [])) <= attributes
    ]
    if bad_attr:
        problems.append(
            f"{where}sample_annotation.json: {len(bad_attr)} records name unknown attribute tokens"
        )
    logs = [t for m in tables["map"] for t in m.get("log_tokens", [])]
    if not tables["map"] or not tokens["log"] <= set(logs):
        problems.append(f"{where}map.json must list every log of log.json in some map's log_tokens")
    problems += files.missing(
        (m.get("filename", "") for m in tables["map"]), f"map images named in {where}map.json"
    )
    problems += files.missing(
        (r.get("filename", "") for r in tables["sample_data"]),
        f"files named in {where}sample_data.json",
    )

    split_samples: dict[str, set[str]] = {}
    if version in EVAL_SPLIT:
        from nuscenes.utils.splits import create_splits_scenes

        splits = create_splits_scenes()
        for split in (TRAIN_SPLIT[version], EVAL_SPLIT[version]):
            scenes = {s["token"] for s in tables["scene"] if s.get("name") in set(splits[split])}
            if not scenes:
                problems.append(
                    f"{version}: no scene of the devkit's '{split}' split "
                    "(splits are fixed scene names)"
                )
            split_samples[split] = {
                s["token"] for s in tables["sample"] if s.get("scene_token") in scenes
            }
    return problems, split_samples


def _check_infos(
    root: Path, samples_by_version: dict[str, dict[str, set[str]]], files: _FileIndex
) -> list[str]:
    problems = []
    for split in INFO_SPLITS:
        name = f"nuscenes_infos_{split}.pkl"
        path = root / name
        if not path.is_file():
            problems.append(f"{name} is missing (mmdet3d v2 info file for the '{split}' split)")
            continue
        try:
            with open(path, "rb") as f:
                infos = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            problems.append(f"{name} cannot be read: {exc}")
            continue
        if not isinstance(infos, dict) or "data_list" not in infos:
            problems.append(
                f"{name} is not an mmdet3d v2 info file (no 'data_list'); "
                "convert it with mmdet3d's update_infos_to_v2"
            )
            continue
        data = infos["data_list"]
        if not data:
            problems.append(f"{name}: the '{split}' split has no samples")
            continue
        version = infos.get("metainfo", {}).get("version", "v1.0-trainval")
        problems += _check_info_entries(name, data, files)
        split_samples = samples_by_version.get(version)
        if split_samples is None:
            problems.append(f"{name}: its version {version} has no table folder {version}/")
            continue
        table_split = EVAL_SPLIT[version] if split == "val" else TRAIN_SPLIT.get(version)
        if table_split not in split_samples:
            continue
        expected = split_samples[table_split]
        got = {d.get("token") for d in data}
        unknown = got - expected
        if unknown:
            problems.append(
                f"{name}: {len(unknown)} samples are not samples of the '{table_split}' split's "
                f"scenes in {version}/, e.g. {sorted(unknown)[0]!r}"
            )
        if split == "val" and expected - got:
            problems.append(
                f"{name}: {len(expected - got)} samples of the '{table_split}' split are missing; "
                "the nuScenes evaluation needs predictions for all of them"
            )
    return problems


def _check_info_entries(name: str, data: list[dict[str, Any]], files: _FileIndex) -> list[str]:
    """Required fields and referenced files of every sample in one info file."""
    problems = []
    incomplete = [
        i
        for i, d in enumerate(data)
        if not all(k in d for k in ("token", "ego2global", "lidar_points", "images", "instances"))
        or "lidar_path" not in d.get("lidar_points", {})
    ]
    if incomplete:
        problems.append(
            f"{name}: {len(incomplete)} samples lack token, ego2global, lidar_points.lidar_path, "
            f"images or instances, e.g. data_list[{incomplete[0]}]"
        )
    lidar, sweeps, images = [], [], []
    for d in data:
        if "lidar_path" in d.get("lidar_points", {}):
            lidar.append(f"samples/LIDAR_TOP/{Path(d['lidar_points']['lidar_path']).name}")
        for sweep in d.get("lidar_sweeps", []):
            path = sweep["lidar_points"]["lidar_path"]
            folder = "samples" if "samples" in path else "sweeps"
            sweeps.append(f"{folder}/LIDAR_TOP/{Path(path).name}")
        for channel, image in d.get("images", {}).items():
            if "img_path" in image:
                images.append(f"samples/{channel}/{Path(image['img_path']).name}")
    problems += files.missing(lidar, f"LiDAR files named in {name}")
    problems += files.missing(sweeps, f"sweep files named in {name}")
    problems += files.missing(images, f"images named in {name}")
    return problems
