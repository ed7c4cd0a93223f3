"""The synthetic data set is real nuScenes to nuScenes' own tools: the devkit loads it, mmdet3d
loads every sample with the LiDAR + camera pipeline, the real metric scores ground truth
perfectly; its geometry is consistent across tables, info files, points and images; bad
input fails with one message and leaves nothing behind."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from aqr_exp.cli.main import app
from aqr_exp.data import synth as synth_module
from aqr_exp.data.synth import MARKER, SynthSpec, generate
from aqr_exp.data.world import CLASSES
from aqr_exp.errors import AqrError

VERSION = "v1.0-trainval"
CAMERAS = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
# nuScenes category -> detection class, and each class's typical size (l, w, h), as the
# issue states them.
DETECTION = {
    "vehicle.car": "car",
    "vehicle.truck": "truck",
    "vehicle.trailer": "trailer",
    "vehicle.bus.rigid": "bus",
    "vehicle.construction": "construction_vehicle",
    "vehicle.bicycle": "bicycle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "movable_object.barrier": "barrier",
}
TYPICAL_SIZE = {
    "car": (4.6, 1.9, 1.7),
    "truck": (7.0, 2.5, 3.0),
    "bus": (11.0, 2.9, 3.5),
    "trailer": (12.0, 2.9, 3.9),
    "construction_vehicle": (6.5, 2.8, 3.2),
    "pedestrian": (0.7, 0.7, 1.75),
    "motorcycle": (2.1, 0.8, 1.5),
    "bicycle": (1.7, 0.6, 1.3),
    "traffic_cone": (0.4, 0.4, 1.0),
    "barrier": (2.5, 0.5, 1.0),
}
VEHICLE = {"vehicle.moving", "vehicle.parked", "vehicle.stopped"}
CYCLE = {"cycle.with_rider", "cycle.without_rider"}
VALID_ATTRIBUTES = {
    "car": VEHICLE,
    "truck": VEHICLE,
    "trailer": VEHICLE,
    "bus": VEHICLE,
    "construction_vehicle": VEHICLE,
    "bicycle": CYCLE,
    "motorcycle": CYCLE,
    "pedestrian": {"pedestrian.moving", "pedestrian.standing", "pedestrian.sitting_lying_down"},
    "traffic_cone": set(),
    "barrier": set(),
}
PIPELINE = [
    {"type": "LoadPointsFromFile", "coord_type": "LIDAR", "load_dim": 5, "use_dim": 5},
    {"type": "LoadPointsFromMultiSweeps", "sweeps_num": 10, "use_dim": [0, 1, 2, 3, 4]},
    {"type": "LoadMultiViewImageFromFiles", "to_float32": True, "num_views": 6},
    {"type": "LoadAnnotations3D", "with_bbox_3d": True, "with_label_3d": True},
    {"type": "Pack3DDetInputs", "keys": ["points", "img", "gt_bboxes_3d", "gt_labels_3d"]},
]
TINY = SynthSpec(train_scenes=1, val_scenes=1, samples_per_scene=3)


@pytest.fixture(scope="module")
def nusc(synth_root: Path) -> Any:
    from nuscenes import NuScenes

    return NuScenes(VERSION, str(synth_root), verbose=False)


@pytest.fixture(scope="module")
def infos(synth_root: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for split in ("train", "val"):
        with open(synth_root / f"nuscenes_infos_{split}.pkl", "rb") as f:
            loaded = pickle.load(f)
        assert loaded["metainfo"]["version"] == VERSION
        out[split] = loaded["data_list"]
    return out


def _dataset(root: Path, split: str, pipeline: list[dict[str, Any]], test_mode: bool) -> Any:
    from mmdet3d.datasets import NuScenesDataset
    from mmdet3d.utils import register_all_modules

    register_all_modules()
    prefix = {"pts": "samples/LIDAR_TOP", "sweeps": "sweeps/LIDAR_TOP"}
    prefix.update({cam: f"samples/{cam}" for cam in CAMERAS})
    return NuScenesDataset(
        data_root=str(root),
        ann_file=f"nuscenes_infos_{split}.pkl",
        data_prefix=prefix,
        pipeline=pipeline,
        modality={"use_lidar": True, "use_camera": True},
        test_mode=test_mode,
    )


def test_labels_follow_mmdet3d(infos: dict[str, list[dict[str, Any]]]) -> None:
    from mmdet3d.datasets import NuScenesDataset

    classes = NuScenesDataset.METAINFO["classes"]
    assert tuple(c.name for c in CLASSES) == classes
    assert sorted(DETECTION.values()) == sorted(classes)


def test_devkit_loads_the_tables(nusc: Any) -> None:
    from nuscenes.utils import splits

    names = {s["name"] for s in nusc.scene}
    assert names == {"scene-0061", "scene-0655", "scene-0103"}
    assert sum(n in splits.train for n in names) == 2
    assert sum(n in splits.val for n in names) == 1
    for sample in nusc.sample:
        assert set(sample["data"]) == {"LIDAR_TOP", *CAMERAS}
        assert sample["anns"]
    for ann in nusc.sample_annotation:
        cls = DETECTION[ann["category_name"]]
        attributes = {nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]}
        assert len(attributes) <= 1
        assert attributes <= VALID_ATTRIBUTES[cls]
        assert bool(attributes) == bool(VALID_ATTRIBUTES[cls])
        assert ann["visibility_token"] in {"1", "2", "3", "4"}
    # Every instance is annotated on >= 2 consecutive samples, linked both ways.
    for instance in nusc.instance:
        chain = [nusc.get("sample_annotation", instance["first_annotation_token"])]
        while chain[-1]["next"]:
            nxt = nusc.get("sample_annotation", chain[-1]["next"])
            assert nxt["prev"] == chain[-1]["token"]
            assert nusc.get("sample", chain[-1]["sample_token"])["next"] == nxt["sample_token"]
            chain.append(nxt)
        assert chain[-1]["token"] == instance["last_annotation_token"]
        assert len(chain) == instance["nbr_annotations"] >= 2


def test_the_ego_moves_and_so_do_some_objects(nusc: Any) -> None:
    moved = 0.0
    for scene in nusc.scene:
        first = nusc.get("sample", scene["first_sample_token"])
        last = nusc.get("sample", scene["last_sample_token"])
        poses = [
            nusc.get("ego_pose", nusc.get("sample_data", s["data"]["LIDAR_TOP"])["ego_pose_token"])
            for s in (first, last)
        ]
        moved = max(
            moved,
            float(np.hypot(*np.subtract(poses[1]["translation"], poses[0]["translation"])[:2])),
        )
    assert moved > 1.0
    speeds = [np.hypot(*nusc.box_velocity(a["token"])[:2]) for a in nusc.sample_annotation]
    assert sum(s > 0.5 for s in speeds) >= 5


@pytest.mark.parametrize("split", ["train", "val"])
def test_mmdet3d_loads_every_sample(
    synth_root: Path, infos: dict[str, list[dict[str, Any]]], split: str
) -> None:
    dataset = _dataset(synth_root, split, PIPELINE, test_mode=False)
    assert len(dataset) == len(infos[split]) > 0
    for i, info in enumerate(infos[split]):
        item = dataset.prepare_data(i)  # None would mean "no ground truth"
        assert item is not None
        assert item["inputs"]["img"].shape == (6, 3, 180, 320)
        points = item["inputs"]["points"]
        key_points = (
            synth_root / "samples/LIDAR_TOP" / info["lidar_points"]["lidar_path"]
        ).stat().st_size // 20
        assert points.shape[1] == 5
        # The sweeps were loaded too: more points than the key frame alone.
        assert (
            points.shape[0] > key_points
            if info.get("lidar_sweeps")
            else points.shape[0] == key_points
        )
        gt = item["data_samples"].gt_instances_3d
        assert len(gt) == sum(inst["num_lidar_pts"] > 0 for inst in info["instances"]) > 0
        assert (gt.labels_3d >= 0).all()


def _score(root: Path, jitter: float) -> dict[str, float]:
    """NuScenesMetric on the val ground truth given as predictions (optionally jittered)."""
    from mmdet3d.evaluation.metrics import NuScenesMetric
    from mmdet3d.structures import LiDARInstance3DBoxes

    dataset = _dataset(root, "val", [], test_mode=True)
    metric = NuScenesMetric(
        data_root=str(root), ann_file=str(root / "nuscenes_infos_val.pkl"), metric="bbox"
    )
    metric.dataset_meta = dataset.metainfo
    rng = np.random.default_rng(0)
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        ann = info["eval_ann_info"]
        boxes = ann["gt_bboxes_3d"].tensor.clone()
        labels = torch.as_tensor(ann["gt_labels_3d"])
        keep = labels >= 0  # label -1 would become a 'barrier' false positive
        boxes, labels = boxes[keep], labels[keep]
        boxes[:, :2] += torch.as_tensor(rng.normal(0.0, jitter, (len(boxes), 2)), dtype=boxes.dtype)
        prediction = {
            "bboxes_3d": LiDARInstance3DBoxes(boxes, box_dim=boxes.shape[1]),
            "scores_3d": torch.ones(len(boxes)),
            "labels_3d": labels,
        }
        metric.process(
            {},
            [
                {
                    "pred_instances_3d": prediction,
                    "pred_instances": {},
                    "sample_idx": info["sample_idx"],
                }
            ],
        )
    metrics = metric.compute_metrics(metric.results)
    return {key.rsplit("/", 1)[-1]: value for key, value in metrics.items()}


def test_metric_scores_ground_truth_perfectly(synth_root: Path) -> None:
    metrics = _score(synth_root, jitter=0.0)
    assert metrics["mAP"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["NDS"] == pytest.approx(1.0, abs=1e-6)
    for cls in TYPICAL_SIZE:  # so every class is present in val
        assert metrics[f"{cls}_AP_dist_0.5"] == pytest.approx(1.0, abs=1e-6)


def test_metric_penalises_perturbed_boxes(synth_root: Path) -> None:
    metrics = _score(synth_root, jitter=0.5)
    assert metrics["mAP"] < 0.9
    assert metrics["NDS"] < 0.95


def test_annotation_points_lie_inside_their_boxes(
    synth_root: Path, nusc: Any, infos: dict[str, list[dict[str, Any]]]
) -> None:
    from mmcv.ops import points_in_boxes_cpu
    from mmdet3d.structures import LiDARInstance3DBoxes
    from nuscenes.utils.geometry_utils import points_in_box

    with_points = total = 0
    for info in infos["train"] + infos["val"]:
        sample = nusc.get("sample", info["token"])
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        points = np.fromfile(synth_root / lidar["filename"], dtype=np.float32).reshape(-1, 5)
        xyz = points[:, :3].T.astype(np.float64)
        # The devkit's boxes (from the tables, in the LiDAR frame) ...
        _, boxes, _ = nusc.get_sample_data(lidar["token"])
        # ... and mmdet3d's reading of the info file's boxes.
        boxes_3d = LiDARInstance3DBoxes(
            torch.tensor([inst["bbox_3d"] for inst in info["instances"]]), origin=(0.5, 0.5, 0.5)
        )
        in_boxes = points_in_boxes_cpu(
            torch.from_numpy(points[None, :, :3]), boxes_3d.tensor[None].float()
        )[0]
        assert len(boxes) == len(info["instances"])
        for j, (box, inst) in enumerate(zip(boxes, info["instances"], strict=True)):
            ann = nusc.get("sample_annotation", box.token)
            inside = points_in_box(box, xyz)
            assert (
                inside.sum()
                == ann["num_lidar_pts"]
                == inst["num_lidar_pts"]
                == int(in_boxes[:, j].sum())
            )
            # The points hug the object: none in a 0.25 m shell around it (above its bottom).
            shell = box.copy()
            shell.wlh = box.wlh + 0.5
            shell.center = box.center + np.array([0.0, 0.0, 0.25])
            assert (points_in_box(shell, xyz) & ~inside).sum() == 0
            total += 1
            with_points += ann["num_lidar_pts"] > 0
    assert with_points > 0.7 * total


def test_boxes_project_onto_the_pixels_drawn_for_them(
    synth_root: Path, nusc: Any, infos: dict[str, list[dict[str, Any]]]
) -> None:
    # Candidate colours: each class's flat colour, and grey for everything unannotated.
    palette = np.array([c.color for c in CLASSES] + [(128, 128, 128)], dtype=np.float64)
    palette /= np.linalg.norm(palette, axis=1, keepdims=True)
    checks = hits = 0
    for info in infos["train"] + infos["val"]:
        sample = nusc.get("sample", info["token"])
        for inst, token in zip(info["instances"], sample["anns"], strict=True):
            ann = nusc.get("sample_annotation", token)
            assert CLASSES[inst["bbox_label"]].name == DETECTION[ann["category_name"]]
            if ann["visibility_token"] != "4":
                continue
            centre = np.r_[inst["bbox_3d"][:3], 1.0]
            for cam in CAMERAS:
                image = info["images"][cam]
                lidar2img = np.array(image["lidar2img"])
                cam2img = np.eye(4)
                cam2img[:3, :3] = image["cam2img"]
                np.testing.assert_allclose(
                    lidar2img, cam2img @ np.array(image["lidar2cam"]), atol=1e-4
                )
                u, v, depth = (lidar2img @ centre)[:3]
                if depth < 1.0:
                    continue
                u, v = round(u / depth), round(v / depth)
                if not (2 <= u < image["width"] - 2 and 2 <= v < image["height"] - 2):
                    continue
                pixels = np.asarray(
                    Image.open(synth_root / "samples" / cam / image["img_path"]).convert("RGB")
                )
                colour = np.median(pixels[v - 1 : v + 2, u - 1 : u + 2].reshape(-1, 3), axis=0)
                checks += 1
                hits += (
                    int(np.argmax(palette @ (colour / np.linalg.norm(colour))))
                    == inst["bbox_label"]
                )
    assert checks >= 30
    assert hits >= 0.9 * checks


def test_sweeps_map_into_the_key_frame_exactly(
    synth_root: Path, nusc: Any, infos: dict[str, list[dict[str, Any]]]
) -> None:
    """mmdet3d's sweep loading (lidar2sensor) agrees with the tables' poses."""
    from pyquaternion import Quaternion

    def lidar_to_global(sd_token: str) -> np.ndarray:
        sd = nusc.get("sample_data", sd_token)
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        ep = nusc.get("ego_pose", sd["ego_pose_token"])
        out = np.eye(4)
        for record in (ep, cs):
            m = np.eye(4)
            m[:3, :3] = Quaternion(record["rotation"]).rotation_matrix
            m[:3, 3] = record["translation"]
            out = out @ m
        return out

    index = max(
        range(len(infos["val"])), key=lambda i: len(infos["val"][i].get("lidar_sweeps", []))
    )
    info = infos["val"][index]
    assert len(info["lidar_sweeps"]) >= 3
    pipeline = PIPELINE[:2]
    item = _dataset(synth_root, "val", pipeline, test_mode=True)[index]
    points = item["points"].tensor.numpy()
    key_to_global = lidar_to_global(nusc.get("sample", info["token"])["data"]["LIDAR_TOP"])
    offset = (
        synth_root / "samples/LIDAR_TOP" / info["lidar_points"]["lidar_path"]
    ).stat().st_size // 20
    for sweep in info["lidar_sweeps"]:
        raw = np.fromfile(
            synth_root / nusc.get("sample_data", sweep["sample_data_token"])["filename"],
            dtype=np.float32,
        )
        raw = raw.reshape(-1, 5)
        expected = np.linalg.inv(key_to_global) @ lidar_to_global(sweep["sample_data_token"])
        expected_xyz = raw[:, :3] @ expected[:3, :3].T + expected[:3, 3]
        got = points[offset : offset + len(raw)]
        np.testing.assert_allclose(got[:, :3], expected_xyz, atol=2e-3)
        np.testing.assert_allclose(got[:, 4], info["timestamp"] - sweep["timestamp"], atol=1e-6)
        offset += len(raw)
    assert offset == len(points)


def test_velocity_ground_truth_matches_the_devkit(
    nusc: Any, infos: dict[str, list[dict[str, Any]]]
) -> None:
    for info in infos["train"] + infos["val"]:
        lidar2global = np.array(info["ego2global"]) @ np.array(info["lidar_points"]["lidar2ego"])
        sample = nusc.get("sample", info["token"])
        for inst, token in zip(info["instances"], sample["anns"], strict=True):
            velocity = lidar2global[:3, :3] @ np.r_[inst["velocity"], 0.0]
            np.testing.assert_allclose(velocity[:2], nusc.box_velocity(token)[:2], atol=1e-4)


def test_classes_have_their_typical_sizes_and_all_appear_in_val(nusc: Any) -> None:
    from nuscenes.utils import splits

    sizes: dict[str, list[list[float]]] = {cls: [] for cls in TYPICAL_SIZE}
    in_val: set[str] = set()
    for ann in nusc.sample_annotation:
        cls = DETECTION[ann["category_name"]]
        w, length, h = ann["size"]
        sizes[cls].append([length, w, h])
        scene = nusc.get("scene", nusc.get("sample", ann["sample_token"])["scene_token"])
        if scene["name"] in splits.val and ann["num_lidar_pts"] > 0:
            in_val.add(cls)
    assert in_val == set(TYPICAL_SIZE)
    for cls, typical in TYPICAL_SIZE.items():
        np.testing.assert_allclose(np.mean(sizes[cls], axis=0), typical, rtol=0.1, err_msg=cls)


def test_key_frames_have_nuscenes_like_point_counts(
    synth_root: Path, infos: dict[str, list[dict[str, Any]]]
) -> None:
    counts = [
        (synth_root / "samples/LIDAR_TOP" / info["lidar_points"]["lidar_path"]).stat().st_size // 20
        for info in infos["train"] + infos["val"]
    ]
    assert 15_000 <= np.median(counts) <= 30_000
    # Objects per sample: the issue asks for ~10-25.
    per_sample = [len(info["instances"]) for info in infos["train"] + infos["val"]]
    assert 10 <= np.median(per_sample) <= 30


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MARKER  # the marker records the run time
    }


def test_same_seed_same_bytes_and_another_seed_another_world(tmp_path: Path) -> None:
    first = _digests(generate(TINY, tmp_path / "a").root)
    assert first == _digests(generate(TINY, tmp_path / "b").root)
    other = _digests(generate(replace(TINY, seed=1), tmp_path / "c").root)
    assert other["nuscenes_infos_val.pkl"] != first["nuscenes_infos_val.pkl"]


def test_non_empty_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(AqrError, match="not empty; pass --force"):
        generate(TINY, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    # --force replaces only a data set this generator wrote.
    with pytest.raises(AqrError, match="refusing to replace"):
        generate(TINY, out, force=True)
    assert (out / "mine.txt").read_text() == "keep me"


def test_force_replaces_a_synthetic_set(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    generate(TINY, out)
    generate(replace(TINY, seed=7), out, force=True)
    assert '"seed": 7' in (out / MARKER).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]  # no temporary leftovers


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("train_scenes", 0),
        ("train_scenes", -2),
        ("val_scenes", 0),
        ("samples_per_scene", 1),
        ("samples_per_scene", -1),
        ("sweeps_per_interval", -1),
        ("seed", -1),
        ("image_size", (8, 8)),
        ("image_format", "gif"),
    ],
)
def test_bad_spec_is_refused_before_writing(tmp_path: Path, field: str, value: Any) -> None:
    with pytest.raises(AqrError, match=field.split("_")[0]):
        generate(replace(TINY, **{field: value}), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(AqrError, match="cannot"):
        generate(TINY, blocker / "out")
    assert list(tmp_path.iterdir()) == [blocker]


def test_a_failure_midway_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = synth_module._write_scene
    calls = []

    def second_scene_fails(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        real(*args, **kwargs)

    monkeypatch.setattr(synth_module, "_write_scene", second_scene_fails)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate(TINY, tmp_path / "new" / "deeper" / "out")
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []  # not even the parents it created


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, ["data", *args])


def test_cli_synth_writes_a_set_that_check_accepts(tmp_path: Path) -> None:
    out = tmp_path / "set"
    result = _cli(
        "synth",
        "--out",
        str(out),
        "--train-scenes",
        "1",
        "--val-scenes",
        "1",
        "--samples-per-scene",
        "3",
        "--gt-database",
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    assert "MB" in result.output
    # the generator's info files stay; the database is `data prepare`'s
    assert "nuscenes_infos_train.pkl: mmdet3d v2 already, kept" in result.output
    assert "nuscenes_dbinfos_train.pkl:" in result.output
    assert (out / "nuscenes_dbinfos_train.pkl").is_file()
    result = _cli("check", str(out))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--train-scenes", "0"],
        ["--val-scenes", "-1"],
        ["--samples-per-scene", "0"],
    ],
)
def test_cli_bad_counts_exit_2_with_one_line(tmp_path: Path, args: list[str]) -> None:
    result = _cli("synth", "--out", str(tmp_path / "out"), *args)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert result.output.startswith("error: ")
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_non_empty_and_unwritable_outputs(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    result = _cli("synth", "--out", str(tmp_path / "full"))
    assert result.exit_code == 2
    assert result.output == f"error: {tmp_path / 'full'} is not empty; pass --force to replace it\n"
    result = _cli("synth", "--out", str(tmp_path / "full" / "x" / "out"))
    assert result.exit_code == 2
    assert result.output.startswith("error: cannot")
    assert result.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
