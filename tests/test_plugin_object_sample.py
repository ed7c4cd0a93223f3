"""CMT's multi-modal GT-sampling on the synthetic data: pasted objects appear in the points
and in the images at their projected boxes, never overlap a box in BEV, and the switch hook
turns the sampling off at its epoch."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
from fixtures.gt_sampling import db_sampler
from fixtures.training import train_py
from mmdet3d.registry import DATASETS
from mmdet3d.structures.ops import box_np_ops
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from shapely.geometry import Polygon

import cmt_aqr  # noqa: F401  (registers the plugin, as the configs' custom_imports)
from aqr_exp import configs
from aqr_exp.paths import PLUGIN_CONFIGS
from cmt_aqr.object_sample import CmtUnifiedObjectSample, paste_patches

DEMO = PLUGIN_CONFIGS / "cmt_lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py"
SMOKE = PLUGIN_CONFIGS / "cmt_lc_pillar100_r18_128x64_1xb2-smoke_synth-nus.py"


def _sampler_step(root: Path, mixup_rate: float = 0.5) -> dict:
    return dict(
        type="CmtUnifiedObjectSample",
        sample_2d=True,
        mixup_rate=mixup_rate,
        db_sampler=db_sampler(root, per_class=4),
    )


def _loaded_samples(root: Path, extra: list[dict]) -> object:
    """The demo's training set with its loading steps only, then `extra`."""
    init_default_scope("mmdet3d")
    cfg = configs.load_config(DEMO)
    configs.set_data_root(cfg, root)
    dataset = copy.deepcopy(cfg.train_dataloader.dataset)
    loading = [step for step in dataset.pipeline if step["type"].startswith("Load")]
    dataset.pipeline = loading + extra
    dataset.filter_empty_gt = False  # its check reads packed samples; these are not packed
    return DATASETS.build(dataset)


def _bev_polygons(boxes: np.ndarray) -> list[Polygon]:
    corners = box_np_ops.center_to_corner_box2d(boxes[:, :2], boxes[:, 3:5], boxes[:, 6])
    return [Polygon(c) for c in corners]


def test_pasted_objects_appear_in_points_and_images_and_overlap_nothing(
    synth_root_with_gt_database: Path,
) -> None:
    root = synth_root_with_gt_database
    plain = _loaded_samples(root, [])
    np.random.seed(0)  # the database sampler shuffles its objects when built
    pasting = _loaded_samples(root, [_sampler_step(root, mixup_rate=-1)])
    seen = 0
    for index in range(0, len(plain), 3):
        np.random.seed(index)  # the same sweeps drawn for both
        before = plain[index]
        np.random.seed(index)
        after = pasting[index]
        n = len(before["gt_labels_3d"])
        boxes = after["gt_bboxes_3d"]
        assert len(boxes) > n and np.array_equal(after["gt_labels_3d"][:n], before["gt_labels_3d"])
        new = boxes.numpy()[n:]
        # BEV: no pasted box overlaps any other box
        polygons = _bev_polygons(boxes.numpy())
        for i in range(n, len(polygons)):
            for j in range(len(polygons)):
                assert i == j or polygons[i].intersection(polygons[j]).area < 1e-6, (i, j)
        # points: the scene's points inside pasted boxes are replaced by the objects' own
        old_inside = box_np_ops.points_in_rbbox(before["points"].coord.numpy(), new).any(1)
        # the synthetic objects are their boxes: their LiDAR returns lie on the faces (the
        # bottom one stays: below it is the ground's)
        grown = new.copy()
        grown[:, 3:6] += 0.02
        inside = box_np_ops.points_in_rbbox(after["points"].coord.numpy(), grown)
        assert (inside.sum(0) >= 5).all()  # the database's min-points filter
        assert (
            len(after["points"]) == len(before["points"]) - old_inside.sum() + inside.any(1).sum()
        )
        # images: pixels change only inside the projections of pasted objects, and a pasted
        # object changes every view where some of its projection is not under a nearer box
        corners = boxes.corners.numpy()
        for view, (old, img) in enumerate(zip(before["img"], after["img"], strict=True)):
            lidar2img = np.eye(4)
            lidar2img[:3, :3] = np.asarray(before["cam2img"][view])[:3, :3]
            lidar2img = lidar2img @ np.asarray(before["lidar2cam"][view])
            rectangles = {}  # box index -> (x1, y1, x2, y2, mean depth)
            for k in range(len(corners)):
                pts = np.c_[corners[k], np.ones(8)] @ lidar2img.T
                if (pts[:, 2] <= 0).any():
                    continue
                uv = pts[:, :2] / pts[:, 2:3]
                x1, y1 = np.clip(uv.min(0), 0, [old.shape[1] - 1, old.shape[0] - 1]).astype(int)
                x2, y2 = np.clip(uv.max(0), 0, [old.shape[1] - 1, old.shape[0] - 1]).astype(int)
                if min(x2 - x1, y2 - y1) > 1:
                    rectangles[k] = (x1, y1, x2, y2, pts[:, 2].mean())
            allowed = np.zeros(old.shape[:2], dtype=bool)
            for k, (x1, y1, x2, y2, depth) in rectangles.items():
                if k < n:
                    continue
                allowed[y1:y2, x1:x2] = True
                nearer = np.zeros(old.shape[:2], dtype=bool)
                for a1, b1, a2, b2, other in rectangles.values():
                    nearer[b1:b2, a1:a2] |= other < depth
                if nearer[y1:y2, x1:x2].all():
                    continue
                seen += 1
                assert (img[y1:y2, x1:x2] != old[y1:y2, x1:x2]).any(), (index, view, k)
            assert not (img != old).any(-1)[~allowed].any(), view
    assert seen > 20, seen


def test_near_objects_stay_in_front_of_far_pasted_ones() -> None:
    """One camera looking along +x: a scene box at 6 m and a pasted box at 12 m behind it
    in the image; then the pasted box in front."""
    lidar2img = np.array(
        [[50.0, -100.0, 0, 0], [50.0, 0, -100.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1.0]]
    )

    def box(x: float, half: float) -> np.ndarray:
        return np.array([[x + a, b, c] for a in (-half, half) for b in (-half, half)
                         for c in (-half, half)])  # fmt: skip

    image = np.full((100, 100, 3), 10, dtype=np.uint8)
    image[30:70, 30:70] = 200  # the scene's object, as the camera saw it
    patch = np.full((8, 8, 3), 90, dtype=np.uint8)
    near_raw = paste_patches(image, lidar2img, np.stack([box(6, 1.2), box(12, 3)]), 1, [patch], -1)
    assert (near_raw[35:65, 35:65] == 200).all()  # the near scene object covers the far paste
    # the far box projects to pixels 16..83, the near one to 25..75
    assert (near_raw[18:24, 18:24] == 90).all()  # the far paste shows around the near box
    far_raw = paste_patches(image, lidar2img, np.stack([box(12, 3), box(6, 1.2)]), 1, [patch], 0.5)
    assert (far_raw[40:60, 40:60] == 145).all()  # the near paste blends over: (200 + 90) / 2
    assert (far_raw[0:5, 0:5] == 10).all()


def _smoke_with_gt_sampling(root: Path, tmp_path: Path, switch_epoch: int) -> Path:
    """The smoke config with GT-sampling after its loading steps, 2 epochs, the switch hook."""
    pipeline = [step.to_dict() for step in configs.load_config(SMOKE).train_pipeline]
    assert [step["type"] for step in pipeline[:4]][-1] == "LoadAnnotations3D"
    pipeline.insert(4, _sampler_step(root))
    config = tmp_path / "smoke_gt_sampling.py"
    config.write_text(
        f"_base_ = ['{SMOKE}']\n"
        f"train_dataloader = dict(dataset=dict(pipeline={pipeline!r}))\n"
        "train_cfg = dict(max_epochs=2, val_interval=2)\n"
        f"custom_hooks = [dict(type='CmtObjectSampleSwitchHook', switch_epoch={switch_epoch})]\n"
    )
    return config


def _has_sampling(runner: Runner) -> bool:
    pipeline = runner.train_dataloader.dataset.dataset.pipeline.transforms
    return any(isinstance(step, CmtUnifiedObjectSample) for step in pipeline)


def test_the_switch_hook_removes_gt_sampling_from_the_runners_pipeline(
    synth_root_with_gt_database: Path, tmp_path: Path
) -> None:
    cfg = configs.load_config(_smoke_with_gt_sampling(synth_root_with_gt_database, tmp_path, 1))
    configs.set_data_root(cfg, synth_root_with_gt_database)
    cfg.work_dir = str(tmp_path / "work")
    # as in the full-scale configs, inside a CBGS wrapper
    cfg.train_dataloader.dataset = dict(type="CBGSDataset", dataset=cfg.train_dataloader.dataset)
    runner = Runner.from_cfg(cfg)
    runner.train_loop  # builds the train dataloader  # noqa: B018
    (hook,) = [h for h in runner.hooks if type(h).__name__ == "CmtObjectSampleSwitchHook"]
    hook.before_train_epoch(runner)  # epoch 1: still sampling
    assert _has_sampling(runner)
    runner.train_loop._epoch = 1
    hook.before_train_epoch(runner)
    assert not _has_sampling(runner)
    hook.before_train_epoch(runner)  # once only
    fresh = type(hook)(switch_epoch=1)
    with pytest.raises(ValueError, match="has no CmtUnifiedObjectSample to switch off"):
        fresh.before_train_epoch(runner)


@pytest.mark.slow
def test_mmdet3d_trains_with_gt_sampling_then_without(
    synth_root_with_gt_database: Path, tmp_path: Path
) -> None:
    """mmdet3d's tools/train.py: 2 epochs, GT-sampling in the first only."""
    root = synth_root_with_gt_database
    config = _smoke_with_gt_sampling(root, tmp_path, switch_epoch=1)
    lines = train_py(config, tmp_path / "work", root)
    assert [line["epoch"] for line in lines if "iter" in line] == [1] * 6 + [2] * 6
    (log,) = (tmp_path / "work").glob("*/*.log")
    assert re.findall(r"GT-sampling off from epoch (\d+) on", log.read_text()) == ["2"]
