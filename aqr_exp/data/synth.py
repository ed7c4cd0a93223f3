"""The embedded default data set: a small synthetic world written in the real nuScenes format.

`generate` writes what nuscenes-devkit and mmdet3d read as nuScenes `v1.0-trainval`: the 13
tables and a map image under `<root>/v1.0-trainval/` and `<root>/maps/`, key-frame and sweep
LiDAR files (N x 5 float32: x, y, z, intensity, ring), six camera images per sample, and
mmdet3d v2 info files `nuscenes_infos_{train,val}.pkl`. Scenes take real scene names from the
devkit's `train` / `val` splits, so the real `NuScenesMetric` evaluates the val scenes.

The data set is written into a temporary sibling directory and renamed into place at the
end, so a failed or interrupted run leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from aqr_exp.data.format import TABLES
from aqr_exp.data.sensors import (
    CAMERAS,
    LIDAR,
    CameraRenderer,
    Lidar,
    Scan,
    bodies_in_frame,
    part_corners,
    pose,
    quaternion,
    rot_z,
)
from aqr_exp.data.world import CLASS_NAMES, CLASSES, BodySet, SceneSim, simulate_scene
from aqr_exp.errors import AqrError

logger = logging.getLogger(__name__)

VERSION = "v1.0-trainval"
MARKER = "synth.json"  # provenance; also what lets --force replace a directory
# Scenes that are also in the devkit's mini splits come first.
PREFERRED_SCENES = {
    "train": ("scene-0061", "scene-0655", "scene-0757", "scene-1077", "scene-1094", "scene-1100"),
    "val": ("scene-0103", "scene-0916"),
}
MAX_SWEEPS = 10  # sweeps listed per sample, as mmdet3d's converter does
KEY_INTERVAL_US = 500_000
_START_US = 1_533_000_000_000_000  # August 2018, like nuScenes
_LOCATIONS = (
    "singapore-onenorth",
    "boston-seaport",
    "singapore-queenstown",
    "singapore-hollandvillage",
)
_IMAGE_FORMATS = ("jpg", "png")

# All 23 nuScenes categories (the generator uses the ten detection ones).
_CATEGORIES = (
    ("human.pedestrian.adult", "Adult pedestrian."),
    ("human.pedestrian.child", "Child pedestrian."),
    ("human.pedestrian.wheelchair", "Person in a wheelchair."),
    ("human.pedestrian.stroller", "Person with a stroller."),
    ("human.pedestrian.personal_mobility", "Person on a scooter or similar."),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.construction_worker", "Construction worker."),
    ("animal", "Animal."),
    ("vehicle.car", "Passenger car or van."),
    ("vehicle.motorcycle", "Motorcycle or scooter."),
    ("vehicle.bicycle", "Bicycle."),
    ("vehicle.bus.bendy", "Articulated bus."),
    ("vehicle.bus.rigid", "Rigid bus."),
    ("vehicle.truck", "Truck."),
    ("vehicle.construction", "Construction vehicle."),
    ("vehicle.emergency.ambulance", "Ambulance."),
    ("vehicle.emergency.police", "Police vehicle."),
    ("vehicle.trailer", "Trailer."),
    ("movable_object.barrier", "Temporary road barrier."),
    ("movable_object.trafficcone", "Traffic cone."),
    ("movable_object.pushable_pullable", "Cart, dolly or similar."),
    ("movable_object.debris", "Debris on the road."),
    ("static_object.bicycle_rack", "Bicycle rack."),
)
_ATTRIBUTES = (
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver, is not moving."),
    ("vehicle.parked", "Vehicle is parked."),
    ("cycle.with_rider", "There is a rider on the cycle."),
    ("cycle.without_rider", "There is no rider on the cycle."),
    ("pedestrian.sitting_lying_down", "The pedestrian is sitting or lying down."),
    ("pedestrian.standing", "The pedestrian is standing."),
    ("pedestrian.moving", "The pedestrian is moving."),
)
_VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. The defaults make the CPU demo's data set."""

    train_scenes: int = 8
    val_scenes: int = 4
    samples_per_scene: int = 20
    sweeps_per_interval: int = 1  # non-key LiDAR sweeps between two key frames
    seed: int = 0
    image_size: tuple[int, int] = (320, 180)  # width, height
    image_format: str = "jpg"
    objects_per_sample: tuple[int, int] = (10, 25)

    def validate(self) -> None:
        """Raise AqrError naming the first bad value."""
        from nuscenes.utils import splits

        for name, value, low in (
            ("train scenes", self.train_scenes, 1),
            ("val scenes", self.val_scenes, 1),
            ("samples per scene", self.samples_per_scene, 2),
            ("seed", self.seed, 0),
            ("sweeps per interval", self.sweeps_per_interval, 0),
        ):
            if value < low:
                raise AqrError(f"{name} must be at least {low}, got {value}")
        for name, value, limit in (
            ("train scenes", self.train_scenes, len(splits.train)),
            ("val scenes", self.val_scenes, len(splits.val)),
            ("sweeps per interval", self.sweeps_per_interval, 9),
        ):
            if value > limit:
                raise AqrError(f"{name} must be at most {limit}, got {value}")
        width, height = self.image_size
        if not (32 <= width <= 1600 and 32 <= height <= 900):
            raise AqrError(f"image size must be between 32x32 and 1600x900, got {width}x{height}")
        if self.image_format not in _IMAGE_FORMATS:
            raise AqrError(
                f"image format must be one of {', '.join(_IMAGE_FORMATS)}, "
                f"got {self.image_format!r}"
            )
        low, high = self.objects_per_sample
        if not 1 <= low <= high:
            raise AqrError(
                f"objects per sample must be a range 1 <= low <= high, got {low}..{high}"
            )


@dataclass(frozen=True)
class SynthSummary:
    """What `generate` wrote, how big it is and how long it took."""

    root: Path
    scenes: dict[str, int]
    samples: dict[str, int]
    annotations: int
    instances: int
    lidar_frames: int
    images: int
    points_per_key_frame: float
    size_bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["root"] = str(self.root)
        return out


def generate(spec: SynthSpec, out: Path, force: bool = False) -> SynthSummary:
    """Write the data set described by `spec` to `out`.

    A non-empty `out` is replaced only with `force`, and only if it is a data set this
    function wrote (it has `synth.json`): `--force` must never wipe an unrelated folder."""
    spec.validate()
    out = Path(out).expanduser().absolute()
    _check_target(out, force)
    start = time.perf_counter()
    created = _make_parents(out.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as exc:
        _remove_empty(created)
        raise AqrError(f"cannot write to {out}: {exc.strerror or exc}") from exc
    try:
        counts = _write_dataset(spec, tmp)
        summary = SynthSummary(
            root=out,
            size_bytes=sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()),
            seconds=round(time.perf_counter() - start, 2),
            **counts,
        )
        marker = {
            "generator": "aqr-exp data synth",
            "spec": asdict(spec),
            "summary": summary.to_dict(),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _swap_in(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        if isinstance(exc, OSError):
            raise AqrError(f"cannot write the data set to {out}: {exc}") from exc
        raise
    logger.debug(
        "wrote %s: %d train + %d val scenes, %d samples, %.1f MB in %.1f s",
        out,
        summary.scenes["train"],
        summary.scenes["val"],
        sum(summary.samples.values()),
        summary.size_bytes / 1e6,
        summary.seconds,
    )
    return summary


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise AqrError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise AqrError(f"{out} is not empty; pass --force to replace it")
        if not (out / MARKER).is_file():
            raise AqrError(
                f"refusing to replace {out}: it has no {MARKER}, so it is not a data set "
                "written by `aqr-exp data synth`"
            )


def _make_parents(path: Path) -> list[Path]:
    """Create `path` and its missing parents; return the ones created, deepest last."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    created = []
    for p in reversed(missing):
        try:
            p.mkdir()
        except OSError as exc:
            _remove_empty(created)
            raise AqrError(f"cannot create {p}: {exc.strerror or exc}") from exc
        created.append(p)
    return created


def _remove_empty(dirs: list[Path]) -> None:
    for d in reversed(dirs):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished data set into place; an old one is removed only after."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rename(out, old / "data")
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old / "data", out)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old)


def _token(*parts: object) -> str:
    """A 32-hex token, stable for a given seed and meaning."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


def _scene_names(split: str, count: int) -> list[str]:
    from nuscenes.utils import splits

    preferred = list(PREFERRED_SCENES[split])
    rest = [n for n in getattr(splits, split) if n not in preferred]
    return (preferred + rest)[:count]


@dataclass
class _Writer:
    """Accumulates the tables and the info lists while the scenes are written."""

    spec: SynthSpec
    root: Path
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in TABLES})
    infos: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"train": [], "val": []})
    lidar_frames: int = 0
    images: int = 0
    key_points: int = 0
    map_logs: dict[str, list[str]] = field(default_factory=dict)

    def tok(self, *parts: object) -> str:
        return _token(self.spec.seed, *parts)


def _write_dataset(spec: SynthSpec, root: Path) -> dict[str, Any]:
    w = _Writer(spec, root)
    for sub in ["maps", "samples/LIDAR_TOP", "sweeps/LIDAR_TOP", VERSION] + [
        f"samples/{cam.channel}" for cam in CAMERAS
    ]:
        (root / sub).mkdir(parents=True, exist_ok=True)
    _write_static_tables(w)
    lidar = Lidar()
    width, height = spec.image_size
    renderers = [CameraRenderer(cam, width, height) for cam in CAMERAS]
    scene_index = 0
    for split, count in (("train", spec.train_scenes), ("val", spec.val_scenes)):
        for name in _scene_names(split, count):
            _write_scene(w, lidar, renderers, name, split, scene_index)
            scene_index += 1
    for location, logs in w.map_logs.items():
        token = w.tok("map", location)
        filename = f"maps/{token}.png"
        _write_image(root / filename, np.full((64, 64, 3), 128, np.uint8), "png")
        w.tables["map"].append(
            {"token": token, "log_tokens": logs, "category": "semantic_prior", "filename": filename}
        )
    for table, rows in w.tables.items():
        with open(root / VERSION / f"{table}.json", "w") as f:
            json.dump(rows, f, indent=0)
    categories = {name: label for label, name in enumerate(CLASS_NAMES)}
    for split, infos in w.infos.items():
        for idx, info in enumerate(infos):
            info["sample_idx"] = idx
        metainfo = {
            "categories": categories,
            "dataset": "nuscenes",
            "version": VERSION,
            "info_version": "1.1",
        }
        with open(root / f"nuscenes_infos_{split}.pkl", "wb") as f:
            pickle.dump(
                {"metainfo": metainfo, "data_list": infos}, f, protocol=pickle.HIGHEST_PROTOCOL
            )
    key_frames = sum(len(v) for v in w.infos.values())
    return {
        "scenes": {"train": spec.train_scenes, "val": spec.val_scenes},
        "samples": {split: len(infos) for split, infos in w.infos.items()},
        "annotations": len(w.tables["sample_annotation"]),
        "instances": len(w.tables["instance"]),
        "lidar_frames": w.lidar_frames,
        "images": w.images,
        "points_per_key_frame": round(w.key_points / max(key_frames, 1), 1),
    }


def _write_static_tables(w: _Writer) -> None:
    t = w.tables
    t["category"] = [
        {"token": w.tok("category", name), "name": name, "description": desc, "index": i}
        for i, (name, desc) in enumerate(_CATEGORIES)
    ]
    t["attribute"] = [
        {"token": w.tok("attribute", name), "name": name, "description": desc}
        for name, desc in _ATTRIBUTES
    ]
    t["visibility"] = [
        {
            "token": token,
            "level": level,
            "description": f"visibility of whole object is {level[1:]}%",
        }
        for token, level in _VISIBILITY
    ]
    width, height = w.spec.image_size
    for sensor in (LIDAR, *CAMERAS):
        t["sensor"].append(
            {
                "token": w.tok("sensor", sensor.channel),
                "channel": sensor.channel,
                "modality": "camera" if sensor.is_camera else "lidar",
            }
        )
        t["calibrated_sensor"].append(
            {
                "token": w.tok("calibrated_sensor", sensor.channel),
                "sensor_token": w.tok("sensor", sensor.channel),
                "translation": list(sensor.translation),
                "rotation": quaternion(sensor.rotation()),
                "camera_intrinsic": sensor.intrinsic(width, height).tolist()
                if sensor.is_camera
                else [],
            }
        )


def _yaw_quaternion(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def _write_scene(
    w: _Writer,
    lidar: Lidar,
    renderers: list[CameraRenderer],
    name: str,
    split: str,
    scene_index: int,
) -> None:
    spec = w.spec
    start_us = _START_US + scene_index * 3_600_000_000
    frames = _lidar_frames(spec, start_us)
    sim, key_scans, attempt = _simulate_covered(spec, lidar, scene_index, frames, start_us)
    location = _LOCATIONS[scene_index % len(_LOCATIONS)]
    log_name = f"synth{spec.seed}-{name}"
    log_token = w.tok("log", name)
    w.map_logs.setdefault(location, []).append(log_token)
    w.tables["log"].append(
        {
            "token": log_token,
            "logfile": log_name,
            "vehicle": "synth",
            "date_captured": "2018-08-01",
            "location": location,
        }
    )
    scene_token = w.tok("scene", name)
    num = spec.samples_per_scene
    sample_tokens = [w.tok("sample", name, k) for k in range(num)]
    w.tables["scene"].append(
        {
            "token": scene_token,
            "log_token": log_token,
            "nbr_samples": num,
            "first_sample_token": sample_tokens[0],
            "last_sample_token": sample_tokens[-1],
            "name": name,
            "description": f"synthetic, ego {sim.ego_speed:.1f} m/s, {len(sim.tracks)} objects",
        }
    )
    for k, token in enumerate(sample_tokens):
        w.tables["sample"].append(
            {
                "token": token,
                "timestamp": start_us + k * KEY_INTERVAL_US,
                "prev": sample_tokens[k - 1] if k > 0 else "",
                "next": sample_tokens[k + 1] if k + 1 < num else "",
                "scene_token": scene_token,
            }
        )
    _write_instances(w, sim, name)

    lidar_tokens = [w.tok("sample_data", name, "LIDAR_TOP", ts) for ts, _, _ in frames]
    history: list[dict[str, Any]] = []  # previous LiDAR frames as info sweeps, newest first
    lidar2ego = LIDAR.to_ego()
    for i, (ts, k, is_key) in enumerate(frames):
        frame = (
            key_scans[i]
            if is_key
            else _scan_frame(spec, lidar, sim, scene_index, attempt, i, ts, k, start_us)
        )
        ego2global, lidar2global, track_ids, bodies, scan = frame
        folder = "samples" if is_key else "sweeps"
        filename = f"{folder}/LIDAR_TOP/{log_name}__LIDAR_TOP__{ts}.pcd.bin"
        scan.points.tofile(w.root / filename)
        w.lidar_frames += 1
        token = lidar_tokens[i]
        _add_sample_data(
            w,
            token,
            sample_tokens[k],
            "LIDAR_TOP",
            ts,
            ego2global,
            filename,
            is_key,
            prev=lidar_tokens[i - 1] if i > 0 else "",
            next_=lidar_tokens[i + 1] if i + 1 < len(frames) else "",
        )
        if is_key:
            w.key_points += len(scan.points)
            info = _key_frame(
                w,
                sim,
                name,
                k,
                ts,
                ego2global,
                lidar2global,
                token,
                filename,
                track_ids,
                bodies,
                scan,
                renderers,
            )
            sweeps = [_with_lidar2sensor(s, lidar2global) for s in history[:MAX_SWEEPS]]
            instances = info.pop("instances")
            if sweeps:  # mmdet3d's converter drops the key when there are none
                info["lidar_sweeps"] = sweeps
            info["instances"] = instances  # last, in the converter's key order
            w.infos[split].append(info)
        history.insert(
            0,
            {
                "timestamp": ts / 1e6,
                "ego2global": ego2global,
                "lidar_points": {"lidar_path": filename, "lidar2ego": lidar2ego.tolist()},
                "sample_data_token": token,
            },
        )
    logger.debug("%s (%s): %d samples, %d objects", name, split, num, len(sim.tracks))


_Frame = tuple[np.ndarray, np.ndarray, list[int], BodySet, Scan]
_COVERAGE_TRIES = 8


def _lidar_frames(spec: SynthSpec, start_us: int) -> list[tuple[int, int, bool]]:
    """The LiDAR's frames in time order as (timestamp, sample index, is key frame); the
    sweeps between two key frames belong to the later sample."""
    frames = []
    n_sw = spec.sweeps_per_interval
    for k in range(spec.samples_per_scene):
        key_us = start_us + k * KEY_INTERVAL_US
        if k > 0:
            frames += [
                (key_us - KEY_INTERVAL_US + j * KEY_INTERVAL_US // (n_sw + 1), k, False)
                for j in range(1, n_sw + 1)
            ]
        frames.append((key_us, k, True))
    return frames


def _scan_frame(
    spec: SynthSpec,
    lidar: Lidar,
    sim: SceneSim,
    scene_index: int,
    attempt: int,
    frame_index: int,
    ts: int,
    k: int,
    start_us: int,
) -> _Frame:
    """One LiDAR frame: the ego pose, the objects of sample k where they are at time ts,
    and the scan (its randomness seeded per frame, so frames can be made in any order)."""
    t = (ts - start_us) / 1e6
    ego2global = pose(rot_z(sim.ego_yaw), np.r_[sim.ego_xy(t), 0.0])
    lidar2global = ego2global @ LIDAR.to_ego()
    track_ids = sim.tracks_on(k)
    bodies = sim.bodies(track_ids, t)
    rng = np.random.default_rng([spec.seed, scene_index, attempt, frame_index])
    scan = lidar.scan(bodies_in_frame(bodies, lidar2global), len(track_ids), rng)
    return ego2global, lidar2global, track_ids, bodies, scan


def _simulate_covered(
    spec: SynthSpec,
    lidar: Lidar,
    scene_index: int,
    frames: list[tuple[int, int, bool]],
    start_us: int,
) -> tuple[SceneSim, dict[int, _Frame], int]:
    """Simulate the scene until every class has LiDAR points on some key frame (an object
    can be hidden behind others all along); return the scene, its key-frame scans and the
    attempt that made it."""
    for attempt in range(_COVERAGE_TRIES):
        rng = np.random.default_rng([spec.seed, scene_index, attempt])
        sim = simulate_scene(rng, spec.samples_per_scene, spec.objects_per_sample)
        key_scans = {
            i: _scan_frame(spec, lidar, sim, scene_index, attempt, i, ts, k, start_us)
            for i, (ts, k, is_key) in enumerate(frames)
            if is_key
        }
        seen = {
            sim.tracks[tid].label
            for _, _, track_ids, _, scan in key_scans.values()
            for j, tid in enumerate(track_ids)
            if scan.points_per_body[j] > 0
        }
        if len(seen) == len(CLASSES):
            break
    else:
        logger.warning(
            "scene %d lacks visible %s",
            scene_index,
            sorted(set(CLASS_NAMES) - {CLASS_NAMES[c] for c in seen}),
        )
    return sim, key_scans, attempt


def _with_lidar2sensor(sweep: dict[str, Any], key_lidar2global: np.ndarray) -> dict[str, Any]:
    """One info sweep: mmdet3d maps its points into the key frame with `lidar2sensor`."""
    sweep_lidar2global = sweep["ego2global"] @ LIDAR.to_ego()
    sensor2lidar = np.linalg.inv(key_lidar2global) @ sweep_lidar2global
    lidar_points = dict(sweep["lidar_points"])
    lidar_points["lidar2sensor"] = np.linalg.inv(sensor2lidar).astype(np.float32).tolist()
    return {
        "timestamp": sweep["timestamp"],
        "ego2global": sweep["ego2global"].tolist(),
        "lidar_points": lidar_points,
        "sample_data_token": sweep["sample_data_token"],
    }


def _add_sample_data(
    w: _Writer,
    token: str,
    sample_token: str,
    channel: str,
    ts: int,
    ego2global: np.ndarray,
    filename: str,
    is_key: bool,
    prev: str,
    next_: str,
) -> None:
    """A sample_data row and its ego pose (nuScenes gives every sample_data its own)."""
    w.tables["ego_pose"].append(
        {
            "token": token,
            "timestamp": ts,
            "rotation": quaternion(ego2global[:3, :3]),
            "translation": ego2global[:3, 3].tolist(),
        }
    )
    is_camera = channel.startswith("CAM")
    width, height = w.spec.image_size if is_camera else (0, 0)
    w.tables["sample_data"].append(
        {
            "token": token,
            "sample_token": sample_token,
            "ego_pose_token": token,
            "calibrated_sensor_token": w.tok("calibrated_sensor", channel),
            "timestamp": ts,
            "fileformat": w.spec.image_format if is_camera else "pcd",
            "is_key_frame": is_key,
            "height": height,
            "width": width,
            "filename": filename,
            "prev": prev,
            "next": next_,
        }
    )


def _write_instances(w: _Writer, sim: SceneSim, name: str) -> None:
    for i, tr in enumerate(sim.tracks):
        w.tables["instance"].append(
            {
                "token": w.tok("instance", name, i),
                "category_token": w.tok("category", CLASSES[tr.label].category),
                "nbr_annotations": tr.last - tr.first + 1,
                "first_annotation_token": w.tok("annotation", name, i, tr.first),
                "last_annotation_token": w.tok("annotation", name, i, tr.last),
            }
        )


def _key_frame(
    w: _Writer,
    sim: SceneSim,
    name: str,
    k: int,
    ts: int,
    ego2global: np.ndarray,
    lidar2global: np.ndarray,
    lidar_token: str,
    lidar_file: str,
    track_ids: list[int],
    bodies: BodySet,
    scan: Scan,
    renderers: list[CameraRenderer],
) -> dict[str, Any]:
    """Camera images, annotations and the mmdet3d info of one sample."""
    spec = w.spec
    sample_token = w.tok("sample", name, k)
    log_name = f"synth{spec.seed}-{name}"
    corners = part_corners(bodies)
    images = {}
    for renderer in renderers:
        cam = renderer.camera
        cam2ego = cam.to_ego()
        cam2global = ego2global @ cam2ego
        filename = f"samples/{cam.channel}/{log_name}__{cam.channel}__{ts}.{spec.image_format}"
        _write_image(
            w.root / filename, renderer.render(bodies, corners, cam2global), spec.image_format
        )
        w.images += 1
        token = w.tok("sample_data", name, cam.channel, ts)
        prev_ts, next_ts = ts - KEY_INTERVAL_US, ts + KEY_INTERVAL_US
        _add_sample_data(
            w,
            token,
            sample_token,
            cam.channel,
            ts,
            ego2global,
            filename,
            True,
            prev=w.tok("sample_data", name, cam.channel, prev_ts) if k > 0 else "",
            next_=w.tok("sample_data", name, cam.channel, next_ts)
            if k + 1 < spec.samples_per_scene
            else "",
        )
        lidar2cam = (np.linalg.inv(cam2global) @ lidar2global).astype(np.float32)
        k4 = np.eye(4)
        k4[:3, :3] = renderer.k
        images[cam.channel] = {
            "img_path": Path(filename).name,
            "height": renderer.height,
            "width": renderer.width,
            "cam2img": renderer.k.tolist(),
            "lidar2img": (k4 @ lidar2cam).tolist(),
            "cam2ego": cam2ego.tolist(),
            "sample_data_token": token,
            "timestamp": ts / 1e6,
            "lidar2cam": lidar2cam.tolist(),
        }

    global2lidar = np.linalg.inv(lidar2global)
    lidar_yaw = math.atan2(lidar2global[1, 0], lidar2global[0, 0])
    times = sim.key_times
    attribute_tokens = {a: w.tok("attribute", a) for a, _ in _ATTRIBUTES}
    instances = []
    for i, tid in enumerate(track_ids):
        tr = sim.tracks[tid]
        xy = tr.xy(float(times[k]))
        length, width, height = (float(v) for v in tr.size)
        centre = np.array([xy[0], xy[1], height / 2])
        points = int(scan.points_per_body[i])
        seen = points / scan.rays_per_body[i] if scan.rays_per_body[i] else 0.0
        visibility = "1" if seen <= 0.4 else "2" if seen <= 0.6 else "3" if seen <= 0.8 else "4"
        w.tables["sample_annotation"].append(
            {
                "token": w.tok("annotation", name, tid, k),
                "sample_token": sample_token,
                "instance_token": w.tok("instance", name, tid),
                "visibility_token": visibility,
                "attribute_tokens": [attribute_tokens[tr.attribute]] if tr.attribute else [],
                "translation": centre.tolist(),
                "size": [width, length, height],
                "rotation": _yaw_quaternion(tr.yaw),
                "prev": w.tok("annotation", name, tid, k - 1) if k > tr.first else "",
                "next": w.tok("annotation", name, tid, k + 1) if k < tr.last else "",
                "num_lidar_pts": points,
                "num_radar_pts": 0,
            }
        )
        # Velocity as the devkit derives it: from the neighbouring annotations.
        k0, k1 = max(k - 1, tr.first), min(k + 1, tr.last)
        velocity = (tr.xy(float(times[k1])) - tr.xy(float(times[k0]))) / float(
            times[k1] - times[k0]
        )
        centre_lidar = global2lidar[:3, :3] @ centre + global2lidar[:3, 3]
        velocity_lidar = global2lidar[:2, :2] @ velocity
        yaw = math.remainder(tr.yaw - lidar_yaw, 2 * math.pi)
        instances.append(
            {
                "bbox_label": tr.label,
                "bbox_3d": [*centre_lidar.tolist(), length, width, height, yaw],
                "bbox_3d_isvalid": points > 0,
                "bbox_label_3d": tr.label,
                "velocity": velocity_lidar.tolist(),
                "num_lidar_pts": points,
                "num_radar_pts": 0,
            }
        )
    return {
        "sample_idx": -1,
        "token": sample_token,
        "timestamp": ts / 1e6,
        "ego2global": ego2global.tolist(),
        "images": images,
        "lidar_points": {
            "num_pts_feats": 5,
            "lidar_path": Path(lidar_file).name,
            "lidar2ego": LIDAR.to_ego().tolist(),
        },
        "instances": instances,
    }


def _write_image(path: Path, rgb: np.ndarray, fmt: str) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), params):
        raise OSError(f"could not write {path}")
