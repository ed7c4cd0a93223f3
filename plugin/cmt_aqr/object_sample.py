"""CMT's multi-modal GT-sampling: database objects pasted into the points and the images.

A sampled object brings its LiDAR points (the points already inside its box are removed)
and its image patch, which is resized onto the box's projection in every camera that sees
the whole box in front of it and blended with the image. Pasting goes from far to near,
and the scene's own objects are pasted back from their original pixels in the same order,
so a near object stays in front of a far pasted one. The database comes from
`aqr-exp data prepare` (entries `image_path`, `image_crop_key`, `image_crop_depth`, as
CMT's); the transform runs on the loaded images, before any augmentation moves them.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import mmcv
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet3d.datasets.transforms import ObjectSample, data_augment_utils
from mmdet3d.datasets.transforms.dbsampler import DataBaseSampler
from mmdet3d.registry import TRANSFORMS
from mmdet3d.structures.ops import box_np_ops

from cmt_aqr.transforms import as_4x4


@TRANSFORMS.register_module()
class CmtUnifiedDataBaseSampler(DataBaseSampler):
    """mmdet3d's database sampler (filters, per-class groups, BEV collision test) whose
    draws also carry each object's image patch (CMT's UnifiedDataBaseSampler)."""

    # mmdet3d's BEV collision test counts crossing edges and strictly inner corners only, so
    # a drawn copy of a box already in the scene (the database holds the scene's own
    # objects) passes it; each drawn box is tested grown by 1 cm a side.
    COLLISION_MARGIN = 0.02

    def sample_class_v2(self, name: str, num: int, gt_bboxes: np.ndarray) -> list[dict]:
        """Up to `num` objects of class `name` whose BEV boxes collide with none of
        `gt_bboxes` nor with each other."""
        sampled = copy.deepcopy(self.sampler_dict[name].sample(num))
        drawn = np.stack([info["box3d_lidar"] for info in sampled])
        bev = box_np_ops.center_to_corner_box2d(
            np.concatenate([gt_bboxes[:, :2], drawn[:, :2]]),
            np.concatenate([gt_bboxes[:, 3:5], drawn[:, 3:5] + self.COLLISION_MARGIN]),
            np.concatenate([gt_bboxes[:, 6], drawn[:, 6]]),
        )
        collides = data_augment_utils.box_collision_test(bev, bev)
        np.fill_diagonal(collides, False)
        kept = []
        for i in range(len(gt_bboxes), len(bev)):
            if collides[i].any():  # dropped: it no longer blocks the later draws
                collides[i] = False
                collides[:, i] = False
            else:
                kept.append(sampled[i - len(gt_bboxes)])
        return kept

    def _path(self, relative: str) -> str:
        return os.path.join(self.data_root, relative) if self.data_root else relative

    def sample_all(
        self, gt_bboxes: np.ndarray, gt_labels: np.ndarray, with_img: bool = False
    ) -> dict | None:
        """Draw up to each class's group size minus the objects the scene already has,
        none colliding in BEV with the scene's boxes or each other; None if none fits."""
        avoid = gt_bboxes
        sampled: list[dict] = []
        for name, max_num in zip(self.sample_classes, self.sample_max_nums, strict=True):
            wanted = int(
                np.round(self.rate * (max_num - np.sum(gt_labels == self.cat2label[name])))
            )
            if wanted <= 0:
                continue
            drawn = self.sample_class_v2(name, wanted, avoid)
            if drawn:
                sampled += drawn
                avoid = np.concatenate([avoid, np.stack([d["box3d_lidar"] for d in drawn])])
        if not sampled:
            return None
        points = []
        for info in sampled:
            loaded = self.points_loader({"lidar_points": {"lidar_path": self._path(info["path"])}})
            loaded["points"].translate(info["box3d_lidar"][:3])
            points.append(loaded["points"])
        images = []
        for info in sampled if with_img else []:
            path = info.get("image_path", "")
            images.append(mmcv.imread(self._path(path), "unchanged") if path else None)
        return {
            "gt_bboxes_3d": np.stack([info["box3d_lidar"] for info in sampled]),
            "gt_labels_3d": np.array([self.cat2label[info["name"]] for info in sampled]),
            "points": points[0].cat(points),
            "images": images,
        }


def paste_order(depths: np.ndarray) -> np.ndarray:
    """Far to near: what is pasted later covers what was pasted before."""
    return np.argsort(-depths, kind="stable")


def projected_boxes(
    corners: np.ndarray, lidar2img: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, pixel boxes x1 y1 x2 y2, mean depths) of the boxes (N, 8, 3 corners)
    that lie wholly in front of the camera and cover more than one pixel each way."""
    homogeneous = np.concatenate([corners, np.ones_like(corners[..., :1])], axis=-1)
    projected = homogeneous @ np.asarray(lidar2img, dtype=np.float64).T
    depth = projected[..., 2]
    in_front = (depth > 0).all(axis=1)
    pixels = projected[in_front, :, :2] / depth[in_front, :, None]
    boxes = np.concatenate([pixels.min(axis=1), pixels.max(axis=1)], axis=1).astype(int)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width - 1)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height - 1)
    large = ((boxes[:, 2:] - boxes[:, :2]) > 1).all(axis=1)
    index = np.flatnonzero(in_front)[large]
    return index, boxes[large], depth[in_front].mean(axis=1)[large]


def paste_patches(
    image: np.ndarray,
    lidar2img: np.ndarray,
    corners: np.ndarray,
    num_raw: int,
    patches: Sequence[np.ndarray | None],
    mixup_rate: float,
) -> np.ndarray:
    """One view with the sampled objects' patches pasted far to near. `corners`: the
    scene's `num_raw` boxes, then one per patch; a None patch (no camera saw the object
    when the database was built) leaves its box to the others. mixup_rate < 0 pastes
    opaquely, else blends image * (1 - rate) + patch * rate, as CMT."""
    height, width = image.shape[:2]
    index, boxes, depths = projected_boxes(corners, lidar2img, height, width)
    order = paste_order(depths)
    original = image.copy()
    out = image.astype(np.float32)
    for i, (x1, y1, x2, y2) in zip(index[order], boxes[order], strict=True):
        if i < num_raw:
            patch = original[y1:y2, x1:x2]
        else:
            source = patches[i - num_raw]
            if source is None:
                continue
            patch = mmcv.imresize(source, (x2 - x1, y2 - y1))
        if mixup_rate < 0:
            out[y1:y2, x1:x2] = patch
        else:
            out[y1:y2, x1:x2] = out[y1:y2, x1:x2] * (1 - mixup_rate) + patch * mixup_rate
    return np.clip(out, 0, 255).astype(image.dtype)


@TRANSFORMS.register_module()
class CmtUnifiedObjectSample(BaseTransform):
    """CMT's UnifiedObjectSample: GT-sampling of points and (sample_2d) image patches.

    db_sampler: a `CmtUnifiedDataBaseSampler` config (its database from
    `aqr-exp data prepare`). Place it after the loading steps and before any augmentation;
    `CmtObjectSampleSwitchHook` turns it off for the last epochs (CMT's 15e + 5e).
    """

    def __init__(self, db_sampler: dict, sample_2d: bool = True, mixup_rate: float = 0.5) -> None:
        self.sample_2d = sample_2d
        self.mixup_rate = mixup_rate
        self.db_sampler = TRANSFORMS.build({"type": "CmtUnifiedDataBaseSampler", **db_sampler})

    def transform(self, results: dict) -> dict:
        boxes, labels = results["gt_bboxes_3d"], results["gt_labels_3d"]
        sampled = self.db_sampler.sample_all(boxes.numpy(), labels, with_img=self.sample_2d)
        if sampled is None:
            return results
        num_raw = len(labels)
        boxes = boxes.new_box(np.concatenate([boxes.numpy(), sampled["gt_bboxes_3d"]]))
        points = ObjectSample.remove_points_in_boxes(results["points"], sampled["gt_bboxes_3d"])
        results["points"] = points.cat([points, sampled["points"]])
        results["gt_bboxes_3d"] = boxes
        results["gt_labels_3d"] = np.concatenate([labels, sampled["gt_labels_3d"]]).astype(np.int64)
        if self.sample_2d:
            corners = boxes.corners.numpy()
            results["img"] = [
                paste_patches(
                    image,
                    as_4x4(cam2img) @ as_4x4(lidar2cam),
                    corners,
                    num_raw,
                    sampled["images"],
                    self.mixup_rate,
                )
                for image, cam2img, lidar2cam in zip(
                    results["img"], results["cam2img"], results["lidar2cam"], strict=True
                )
            ]
        return results
