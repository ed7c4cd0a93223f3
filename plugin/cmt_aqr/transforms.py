"""Fusion-consistent augmentations: whatever moves the points also moves the
cameras, so a 3D point still projects onto the pixel that shows it.

Every LiDAR-space augmentation A (p' = A p) right-multiplies each view's
`lidar2cam` by inv(A); every image augmentation P (pixel' = P pixel)
left-multiplies `cam2img` by P. `CmtComposeLidar2Img` runs last and writes
`lidar2img = cam2img @ lidar2cam`, which the head reads.
"""

from __future__ import annotations

import numpy as np
from mmcv.transforms import BaseTransform
from mmdet3d.datasets.transforms import GlobalRotScaleTrans
from mmdet3d.registry import TRANSFORMS
from PIL import Image


def as_4x4(matrix: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    matrix = np.asarray(matrix, dtype=np.float64)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def apply_lidar_aug(results: dict, aug: np.ndarray) -> None:
    """Record a LiDAR-space augmentation (4x4) in the camera extrinsics."""
    inv = np.linalg.inv(aug)
    results["lidar2cam"] = [as_4x4(m) @ inv for m in results["lidar2cam"]]
    results["lidar_aug_matrix"] = aug @ results.get("lidar_aug_matrix", np.eye(4))


@TRANSFORMS.register_module()
class CmtGlobalRotScaleTrans(GlobalRotScaleTrans):
    """mmdet3d's GlobalRotScaleTrans that also updates the cameras."""

    def transform(self, input_dict: dict) -> dict:
        input_dict = super().transform(input_dict)
        rot_t = np.asarray(input_dict["pcd_rotation"], dtype=np.float64)
        aug = np.eye(4)
        aug[:3, :3] = rot_t.T * float(input_dict["pcd_scale_factor"])
        aug[:3, 3] = np.asarray(input_dict["pcd_trans"], dtype=np.float64)
        apply_lidar_aug(input_dict, aug)
        return input_dict


@TRANSFORMS.register_module()
class CmtBEVFlip(BaseTransform):
    """Random BEV flips (y -> -y: horizontal, x -> -x: vertical) of points,
    boxes and cameras."""

    def __init__(
        self, flip_ratio_horizontal: float = 0.5, flip_ratio_vertical: float = 0.5
    ) -> None:
        self.flip_ratio_horizontal = flip_ratio_horizontal
        self.flip_ratio_vertical = flip_ratio_vertical

    def transform(self, results: dict) -> dict:
        for direction, ratio, axis in (
            ("horizontal", self.flip_ratio_horizontal, 1),
            ("vertical", self.flip_ratio_vertical, 0),
        ):
            flipped = np.random.rand() < ratio
            results[f"pcd_{direction}_flip"] = flipped
            if not flipped:
                continue
            results["points"].flip(direction)
            if "gt_bboxes_3d" in results:
                results["gt_bboxes_3d"].flip(direction)
            aug = np.eye(4)
            aug[axis, axis] = -1
            apply_lidar_aug(results, aug)
        return results


@TRANSFORMS.register_module()
class CmtImageAug(BaseTransform):
    """Resize, crop and horizontal flip of every view that update `cam2img`.

    final_size: (H, W) of the output images; resize_lim: scale range (train); at
    test time the scale is max(H / height, W / width), as CMT's; the crop keeps the
    bottom of the image (the road), as CMT does. per_sample: one draw for all views of
    a sample, as CMT's ResizeCropFlipImage (views of one size); False draws per view.
    """

    def __init__(
        self,
        final_size: tuple[int, int],
        resize_lim: tuple[float, float],
        flip: bool = False,
        training: bool = True,
        per_sample: bool = True,
    ) -> None:
        self.final_size = tuple(final_size)
        self.resize_lim = tuple(resize_lim)
        self.flip = flip
        self.training = training
        self.per_sample = per_sample

    def _sample(self, height: int, width: int) -> tuple[float, int, int, int, int, bool]:
        """(scale, resized width, resized height, crop left, crop top, flip)."""
        final_h, final_w = self.final_size
        if self.training:
            scale = float(np.random.uniform(*self.resize_lim))
        else:
            # CMT's test resize: the smallest scale at which the image covers the output.
            scale = max(final_h / height, final_w / width)
        new_w, new_h = round(width * scale), round(height * scale)
        crop_top = max(0, new_h - final_h)
        max_left = max(0, new_w - final_w)
        crop_left = int(np.random.randint(0, max_left + 1)) if self.training else max_left // 2
        flip = self.training and self.flip and bool(np.random.rand() < 0.5)
        return scale, new_w, new_h, crop_left, crop_top, flip

    def transform(self, results: dict) -> dict:
        final_h, final_w = self.final_size
        images, cam2imgs = [], []
        shared = None
        for img, cam2img in zip(results["img"], results["cam2img"], strict=True):
            height, width = img.shape[:2]
            if self.per_sample and shared is not None:
                if shared[0] != (height, width):
                    raise ValueError(
                        f"CmtImageAug(per_sample=True) needs views of one size, got "
                        f"{shared[0]} and {(height, width)}"
                    )
                draw = shared[1]
            else:
                draw = self._sample(height, width)
                shared = (height, width), draw
            scale, new_w, new_h, left, top, flip = draw
            pil = Image.fromarray(img).resize((new_w, new_h), Image.BILINEAR)
            pil = pil.crop((left, top, left + final_w, top + final_h))
            if flip:
                pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
            post = np.eye(4)
            post[0, 0] = post[1, 1] = scale
            post[0, 2], post[1, 2] = -left, -top
            if flip:
                post = (
                    np.array([[-1, 0, 0, final_w - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
                    @ post
                )
            images.append(np.asarray(pil))
            cam2imgs.append(post @ as_4x4(cam2img))
        results["img"] = images
        results["cam2img"] = cam2imgs
        results["img_shape"] = results["pad_shape"] = (final_h, final_w)
        return results


@TRANSFORMS.register_module()
class CmtModalityMask(BaseTransform):
    """Training-time modality dropout: blank all images, or keep one LiDAR point,
    so the detector learns to cope with a missing sensor."""

    def __init__(self, camera_prob: float = 0.25, lidar_prob: float = 0.25) -> None:
        if camera_prob + lidar_prob > 1:
            raise ValueError("camera_prob + lidar_prob must be <= 1")
        self.camera_prob = camera_prob
        self.lidar_prob = lidar_prob

    def transform(self, results: dict) -> dict:
        draw = np.random.rand()
        if draw < self.camera_prob:
            results["img"] = [np.zeros_like(img) for img in results["img"]]
        elif draw < self.camera_prob + self.lidar_prob:
            results["points"] = results["points"][:1]
        return results


@TRANSFORMS.register_module()
class CmtComposeLidar2Img(BaseTransform):
    """lidar2img = cam2img @ lidar2cam for every view, after all augmentations."""

    def transform(self, results: dict) -> dict:
        results["lidar2cam"] = [as_4x4(m) for m in results["lidar2cam"]]
        results["cam2img"] = [as_4x4(m) for m in results["cam2img"]]
        results["lidar2img"] = [
            k @ e for k, e in zip(results["cam2img"], results["lidar2cam"], strict=True)
        ]
        return results
