"""The CMT detector: LiDAR BEV features + multi-view image features -> AqrCmtHead."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from mmdet3d.models.detectors import Base3DDetector
from mmdet3d.registry import MODELS
from mmdet3d.structures import Det3DDataSample
from mmengine.logging import print_log
from torch import Tensor

from cmt_aqr.grid_mask import GridMask
from cmt_aqr.head import LayerOutputs, SceneContext


def spconv2_to_model_layout(checkpoint: Tensor, model_shape: torch.Size) -> Tensor | None:
    """A sparse-conv kernel saved by spconv 2 (out, D, H, W, in), permuted to mmcv's
    (D, H, W, in, out) when that is what the model holds; None when no permutation applies.

    CMT's checkpoints come from spconv 2; without spconv installed, mmdet3d builds the
    sparse encoder from mmcv's ops, whose kernels are laid out the other way.
    """
    if checkpoint.dim() != 5 or checkpoint.shape == model_shape:
        return None
    permuted = checkpoint.permute(1, 2, 3, 4, 0)
    return permuted.contiguous() if permuted.shape == model_shape else None


@MODELS.register_module()
class AqrCmtDetector(Base3DDetector):
    """Cross Modal Transformer (Yan et al., ICCV 2023), written for mmdet3d 1.4.

    The LiDAR branch is voxel encoder → middle encoder → backbone → neck; the
    camera branch is backbone → neck, and only the first (stride-16) level is
    used. Images arrive as [B, V, 3, H, W] from Det3DDataPreprocessor. With
    `use_grid_mask` (CMT: on), training images go through GridMask.

    `fp32_modules`: parts that run in float32 under mixed precision (autocast), their
    floating inputs cast up, as CMT's `custom_fp16` keeps its voxel encoder, middle
    encoder and head (box regression, matching and losses) in fp32.
    """

    def __init__(
        self,
        pts_voxel_encoder: dict,
        pts_middle_encoder: dict,
        pts_backbone: dict,
        pts_neck: dict,
        img_backbone: dict,
        img_neck: dict,
        pts_bbox_head: dict,
        use_grid_mask: bool = False,
        fp32_modules: Sequence[str] = (),
        data_preprocessor: dict | None = None,
        train_cfg: dict | None = None,
        test_cfg: dict | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.pts_voxel_encoder = MODELS.build(pts_voxel_encoder)
        self.pts_middle_encoder = MODELS.build(pts_middle_encoder)
        self.pts_backbone = MODELS.build(pts_backbone)
        self.pts_neck = MODELS.build(pts_neck)
        self.img_backbone = MODELS.build(img_backbone)
        self.img_neck = MODELS.build(img_neck)
        self.pts_bbox_head = MODELS.build(pts_bbox_head)
        self.grid_mask = GridMask() if use_grid_mask else None
        for name in fp32_modules:
            if not isinstance(getattr(self, name, None), torch.nn.Module):
                raise ValueError(f"fp32_modules: {name!r} is not a part of the detector")
        self.fp32_modules = tuple(fp32_modules)
        self._register_load_state_dict_pre_hook(self._convert_sparse_kernels, with_module=False)

    def _convert_sparse_kernels(self, state_dict: dict, prefix: str, *args) -> None:
        converted = 0
        for name, param in self.pts_middle_encoder.named_parameters():
            key = f"{prefix}pts_middle_encoder.{name}"
            if key in state_dict:
                permuted = spconv2_to_model_layout(state_dict[key], param.shape)
                if permuted is not None:
                    state_dict[key] = permuted
                    converted += 1
        if converted:
            print_log(
                f"converted {converted} sparse-conv kernels of the checkpoint from spconv 2's "
                "layout (out, D, H, W, in) to mmcv's (D, H, W, in, out)",
                logger="current",
            )

    def _call(self, part: str, fn: Callable, *args: Any) -> Any:
        """fn(*args), in float32 with autocast off when `part` is one of fp32_modules and
        autocast is on."""
        device = next(self.parameters()).device.type
        if part not in self.fp32_modules or not torch.is_autocast_enabled(device):
            return fn(*args)
        args = tuple(
            a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args
        )
        with torch.autocast(device_type=device, enabled=False):
            return fn(*args)

    def extract_pts_feat(self, voxels: dict, batch_size: int) -> Tensor:
        features = self._call(
            "pts_voxel_encoder",
            self.pts_voxel_encoder,
            voxels["voxels"],
            voxels["num_points"],
            voxels["coors"],
        )
        bev = self._call(
            "pts_middle_encoder", self.pts_middle_encoder, features, voxels["coors"], batch_size
        )
        neck_out = self.pts_neck(self.pts_backbone(bev))
        return neck_out[0] if isinstance(neck_out, (list, tuple)) else neck_out

    def extract_img_feat(self, imgs: Tensor) -> Tensor:
        """[B, V, 3, H, W] -> stride-16 features [B, V, C, h, w]."""
        batch, views = imgs.shape[:2]
        imgs = imgs.flatten(0, 1)
        if self.grid_mask is not None:
            imgs = self.grid_mask(imgs)
        feats = self.img_neck(self.img_backbone(imgs))[0]
        return feats.view(batch, views, *feats.shape[1:])

    def _forward_head(
        self, batch_inputs_dict: dict, batch_data_samples: list[Det3DDataSample], dn=None
    ) -> LayerOutputs:
        imgs = batch_inputs_dict["imgs"]
        bev, img_feats = self.extract_feat(batch_inputs_dict, batch_data_samples)
        lidar2img = torch.as_tensor(
            np.stack([np.asarray(s.metainfo["lidar2img"]) for s in batch_data_samples]),
            dtype=bev.dtype,
            device=bev.device,
        )
        ctx = SceneContext(
            lidar2img=lidar2img,
            image_size=tuple(imgs.shape[-2:]),
            bev_size=tuple(bev.shape[-2:]),
            cam_size=tuple(img_feats.shape[-2:]),
        )
        return self._call("pts_bbox_head", self.pts_bbox_head, bev, img_feats, ctx, dn)

    def loss(self, batch_inputs_dict: dict, batch_data_samples: list[Det3DDataSample]) -> dict:
        gt_boxes, gt_labels = [], []
        for sample in batch_data_samples:
            gt = sample.gt_instances_3d
            keep = gt.labels_3d >= 0
            gt_boxes.append(gt.bboxes_3d[keep])
            gt_labels.append(gt.labels_3d[keep])
        dn = self.pts_bbox_head.make_denoising(gt_boxes, gt_labels)
        outputs = self._forward_head(batch_inputs_dict, batch_data_samples, dn)
        return self._call(
            "pts_bbox_head", self.pts_bbox_head.loss, outputs, dn, gt_boxes, gt_labels
        )

    def predict(
        self, batch_inputs_dict: dict, batch_data_samples: list[Det3DDataSample], **kwargs
    ) -> list[Det3DDataSample]:
        outputs = self._forward_head(batch_inputs_dict, batch_data_samples)
        results = self._call("pts_bbox_head", self.pts_bbox_head.predict, outputs)
        return self.add_pred_to_datasample(batch_data_samples, results)

    def _forward(
        self,
        batch_inputs_dict: dict,
        batch_data_samples: list[Det3DDataSample] | None = None,
        **kwargs,
    ) -> LayerOutputs:
        return self._forward_head(batch_inputs_dict, batch_data_samples or [])

    def extract_feat(
        self, batch_inputs_dict: dict, batch_data_samples: list[Det3DDataSample]
    ) -> tuple[Tensor, Tensor]:
        """BEV map [B, C, H, W] and camera features [B, V, C, h, w]."""
        return (
            self.extract_pts_feat(batch_inputs_dict["voxels"], len(batch_data_samples)),
            self.extract_img_feat(batch_inputs_dict["imgs"]),
        )


# The Python name before the registry prefix, for code that imports it; configs use
# "AqrCmtDetector" (the old registry name is a fallback only: cmt_aqr/legacy_names.py).
CmtDetector = AqrCmtDetector
