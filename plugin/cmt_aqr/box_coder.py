"""Box encoding and NMS-free top-k decoding.

Code layout (mmdet3d >= 1.0 LiDAR convention, no yaw remap):
(cx, cy, log l, log w, cz, log h, sin yaw, cos yaw, vx, vy), cz at the gravity center.
"""

from __future__ import annotations

import torch
from mmdet3d.registry import TASK_UTILS
from mmdet3d.structures import LiDARInstance3DBoxes
from torch import Tensor


def encode_boxes(boxes: LiDARInstance3DBoxes) -> Tensor:
    """Boxes (bottom-center z, 9 dims with velocity) -> codes [N, 10]."""
    center = boxes.gravity_center
    dims = boxes.dims.clamp(min=1e-3).log()
    yaw = boxes.yaw
    if boxes.tensor.shape[-1] >= 9:
        velocity = boxes.tensor[:, 7:9]
    else:
        velocity = boxes.tensor.new_zeros(len(boxes), 2)
    return torch.cat(
        (
            center[:, :2],
            dims[:, :2],
            center[:, 2:3],
            dims[:, 2:3],
            yaw.sin()[:, None],
            yaw.cos()[:, None],
            velocity,
        ),
        dim=-1,
    )


def decode_codes(codes: Tensor) -> Tensor:
    """Codes [..., 10] -> boxes [..., 9]: (x, y, z bottom, l, w, h, yaw, vx, vy)."""
    dims = torch.cat((codes[..., 2:4], codes[..., 5:6]), dim=-1).exp()
    z_bottom = codes[..., 4:5] - dims[..., 2:3] * 0.5
    yaw = torch.atan2(codes[..., 6:7], codes[..., 7:8])
    return torch.cat((codes[..., :2], z_bottom, dims, yaw, codes[..., 8:10]), dim=-1)


@TASK_UTILS.register_module()
class CmtBBoxCoder:
    """Top-k over queries x classes with a post-center-range filter (no NMS)."""

    def __init__(
        self,
        post_center_range: list[float],
        max_num: int = 300,
        score_threshold: float | None = None,
        num_classes: int = 10,
    ) -> None:
        self.post_center_range = post_center_range
        self.max_num = max_num
        self.score_threshold = score_threshold
        self.num_classes = num_classes

    def decode(self, cls_logits: Tensor, codes: Tensor) -> dict[str, Tensor]:
        """One sample: cls_logits [Q, C], codes [Q, 10] -> bboxes, scores, labels."""
        scores_all = cls_logits.sigmoid().flatten()
        k = min(self.max_num, scores_all.numel())
        scores, index = scores_all.topk(k)
        labels = index % self.num_classes
        boxes = decode_codes(codes[torch.div(index, self.num_classes, rounding_mode="floor")])
        lo = boxes.new_tensor(self.post_center_range[:3])
        hi = boxes.new_tensor(self.post_center_range[3:])
        center = boxes[:, :3].clone()
        center[:, 2] = center[:, 2] + boxes[:, 5] * 0.5
        keep = ((center >= lo) & (center <= hi)).all(dim=1)
        if self.score_threshold is not None:
            keep &= scores > self.score_threshold
        return {"bboxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
