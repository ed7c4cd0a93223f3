"""CMT's detection head: queries, position embeddings, decoder, losses, decoding."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
from mmdet.utils import reduce_mean
from mmdet3d.registry import MODELS, TASK_UTILS
from mmdet3d.structures import LiDARInstance3DBoxes
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from cmt_aqr.aqr.cells import MemoryLayout, locate_queries
from cmt_aqr.aqr.module import AdaptiveQueryRouting
from cmt_aqr.box_coder import encode_boxes
from cmt_aqr.denoising import DenoisingPlan, build_denoising
from cmt_aqr.positional import (
    bev_cell_centers,
    inverse_sigmoid,
    lid_depths,
    lift_pixels,
    sine_embedding,
)


def mlp(in_dims: int, hidden: int, out_dims: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dims, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dims)
    )


@dataclass
class SceneContext:
    """What every part of the head needs to know about the batch's geometry."""

    lidar2img: Tensor  # [B, V, 4, 4], after all augmentations
    image_size: tuple[int, int]  # (H, W) of the padded image tensor
    bev_size: tuple[int, int]  # (H, W) of the BEV map
    cam_size: tuple[int, int]  # (h, w) of each camera feature map


@dataclass
class LayerOutputs:
    """Per decoder layer: [L, B, P + Q, ...]."""

    cls_logits: Tensor
    codes: Tensor  # box codes in meters (see box_coder)
    stats: dict[str, Tensor] = field(default_factory=dict)  # logged, not optimized


@MODELS.register_module()
class CmtHead(BaseModule):
    """Queries attend to the BEV + camera tokens; each layer predicts boxes."""

    def __init__(
        self,
        in_channels: int,
        point_cloud_range: list[float],
        num_classes: int = 10,
        embed_dims: int = 256,
        num_query: int = 900,
        depth_num: int = 64,
        depth_start: float = 1.0,
        position_range: list[float] | None = None,
        decoder: dict | None = None,
        bbox_coder: dict | None = None,
        assigner: dict | None = None,
        code_weights: list[float] | None = None,
        loss_cls_weight: float = 2.0,
        loss_bbox_weight: float = 0.25,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        dn_groups: int = 10,
        dn_noise_scale: float = 1.0,
        dn_split: float = 0.75,
        dn_weight: float = 1.0,
        aqr: dict | None = None,
        train_cfg: dict | None = None,
        test_cfg: dict | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.num_query = num_query
        self.depth_num = depth_num
        self.depth_start = depth_start
        self.register_buffer(
            "pc_range", torch.tensor(point_cloud_range, dtype=torch.float32), persistent=False
        )
        self.register_buffer(
            "position_range",
            torch.tensor(position_range or point_cloud_range, dtype=torch.float32),
            persistent=False,
        )
        self.register_buffer(
            "code_weights",
            torch.tensor(code_weights or [2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2]),
            persistent=False,
        )
        self.loss_cls_weight = loss_cls_weight
        self.loss_bbox_weight = loss_bbox_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.dn_groups = dn_groups
        self.dn_noise_scale = dn_noise_scale
        self.dn_split = dn_split
        self.dn_weight = dn_weight

        self.shared_conv = nn.Sequential(
            nn.Conv2d(in_channels, embed_dims, 3, padding=1, bias=False),
            nn.BatchNorm2d(embed_dims),
            nn.ReLU(inplace=True),
        )
        self.reference_points = nn.Embedding(num_query, 3)
        self.bev_embedding = mlp(embed_dims * 2, embed_dims, embed_dims)
        self.rv_embedding = mlp(depth_num * 3, embed_dims * 4, embed_dims)
        self.decoder = MODELS.build(
            decoder or dict(type="CmtTransformerDecoder", embed_dims=embed_dims)
        )
        self.task_heads = nn.ModuleDict(
            {
                "center": mlp(embed_dims, embed_dims, 2),
                "height": mlp(embed_dims, embed_dims, 1),
                "dim": mlp(embed_dims, embed_dims, 3),
                "rot": mlp(embed_dims, embed_dims, 2),
                "vel": mlp(embed_dims, embed_dims, 2),
                "cls": mlp(embed_dims, embed_dims, num_classes),
            }
        )
        self.bbox_coder = TASK_UTILS.build(
            bbox_coder
            or dict(
                type="CmtBBoxCoder", post_center_range=point_cloud_range, num_classes=num_classes
            )
        )
        self.assigner = TASK_UTILS.build(assigner or dict(type="HungarianAssigner3D"))
        self.aqr = None if aqr is None else AdaptiveQueryRouting(embed_dims, **aqr)

    def init_weights(self) -> None:
        super().init_weights()
        nn.init.uniform_(self.reference_points.weight, 0, 1)
        self.decoder.init_weights()
        prior = 0.01
        nn.init.constant_(self.task_heads["cls"][-1].bias, -math.log((1 - prior) / prior))

    # ------------------------------------------------------------------ geometry
    def _camera_positions(self, ctx: SceneContext) -> Tensor:
        """Position embedding of every camera token: [B, V*h*w, C]."""
        h, w = ctx.cam_size
        img_h, img_w = ctx.image_size
        device = ctx.lidar2img.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * img_h / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * img_w / w
        grid_v, grid_u = torch.meshgrid(ys, xs, indexing="ij")
        pixels = torch.stack((grid_u, grid_v), dim=-1).reshape(1, 1, h * w, 2)
        batch, views = ctx.lidar2img.shape[:2]
        pixels = pixels.expand(batch, views, h * w, 2)
        embed = self.rv_embedding(self._lift(pixels, ctx))
        return embed.reshape(batch, views * h * w, self.embed_dims)

    def _lift(self, pixels: Tensor, ctx: SceneContext) -> Tensor:
        depths = lid_depths(
            self.depth_num, self.depth_start, float(self.position_range[3]), pixels.device
        )
        img2lidar = torch.linalg.inv(ctx.lidar2img.float())
        return lift_pixels(pixels, depths, img2lidar, self.position_range)

    def project_to_images(self, ref_points: Tensor, ctx: SceneContext) -> tuple[Tensor, Tensor]:
        """Reference points [B, Q, 3] in [0, 1] -> pixels [B, V, Q, 2] and visibility [B, V, Q]."""
        points = ref_points * (self.pc_range[3:] - self.pc_range[:3]) + self.pc_range[:3]
        homo = torch.cat((points, torch.ones_like(points[..., :1])), dim=-1)
        cam = torch.einsum("bvij,bqj->bvqi", ctx.lidar2img.float(), homo)
        depth = cam[..., 2]
        in_front = depth > 1e-2
        safe_depth = torch.where(in_front, depth, torch.ones_like(depth)).detach()
        pixels = cam[..., :2] / safe_depth[..., None]
        img_h, img_w = ctx.image_size
        inside = (
            (pixels[..., 0] >= 0)
            & (pixels[..., 0] < img_w)
            & (pixels[..., 1] >= 0)
            & (pixels[..., 1] < img_h)
        )
        return pixels, in_front & inside

    def query_positions(
        self, ref_points: Tensor, ctx: SceneContext, pixels: Tensor, visible: Tensor
    ) -> Tensor:
        """BEV embedding of the point + camera embedding of its visible projections."""
        bev = self.bev_embedding(sine_embedding(ref_points[..., :2], self.embed_dims))
        cam = self.rv_embedding(self._lift(pixels, ctx))  # [B, V, Q, C]
        return bev + (cam * visible[..., None]).sum(dim=1)

    def _memory(self, bev: Tensor, img_feats: Tensor) -> Tensor:
        """BEV tokens (row-major), then camera tokens (view, row, col): [B, N, C]."""
        batch = bev.shape[0]
        bev_tokens = bev.flatten(2).transpose(1, 2)
        img_tokens = img_feats.permute(0, 1, 3, 4, 2).reshape(batch, -1, self.embed_dims)
        return torch.cat((bev_tokens, img_tokens), dim=1)

    # ------------------------------------------------------------------ forward
    def forward(
        self, bev_feat: Tensor, img_feats: Tensor, ctx: SceneContext, dn: DenoisingPlan | None
    ) -> LayerOutputs:
        """bev_feat [B, Cin, H, W]; img_feats [B, V, C, h, w]."""
        bev = self.shared_conv(bev_feat)
        batch = bev.shape[0]
        bev_pos = self.bev_embedding(
            sine_embedding(bev_cell_centers(*ctx.bev_size, bev.device), self.embed_dims)
        )
        memory = self._memory(bev, img_feats)
        memory_pos = torch.cat((bev_pos.expand(batch, -1, -1), self._camera_positions(ctx)), dim=1)

        ref_points = self.reference_points.weight[None].expand(batch, -1, -1)
        blocked = None
        if dn is not None:
            ref_points = torch.cat((dn.ref_points, ref_points), dim=1)
            blocked = dn.blocked
        pixels, visible = self.project_to_images(ref_points, ctx)
        query_pos = self.query_positions(ref_points, ctx, pixels, visible)
        query = torch.zeros_like(query_pos)

        bias, stats = None, {}
        if self.aqr is not None:
            layout = MemoryLayout(ctx.bev_size, img_feats.shape[1], ctx.cam_size)
            cells = locate_queries(ref_points, pixels, visible, layout, ctx.image_size)
            lidar_w, cam_w = self.aqr.generator(
                query + query_pos, memory, memory_pos, cells, layout
            )
            if self.aqr.type == "old":
                bev, img_feats = self.aqr.modulate_features(bev, img_feats, cells, lidar_w, cam_w)
                memory = self._memory(bev, img_feats)
            else:
                bias = self.aqr.attention_bias(cells, lidar_w, cam_w, layout)
            pad = 0 if dn is None else dn.pad_size
            stats = self.aqr.statistics(lidar_w[:, pad:], cam_w[:, pad:], cells.slice(pad))
        hidden = self.decoder(
            query, query_pos, memory, memory_pos, self_attn_blocked=blocked, cross_attn_bias=bias
        )
        outputs = self._predict_boxes(hidden, ref_points)
        outputs.stats = stats
        return outputs

    def _predict_boxes(self, hidden: Tensor, ref_points: Tensor) -> LayerOutputs:
        """Centers are offsets to the reference point in inverse-sigmoid space."""
        ref = inverse_sigmoid(ref_points)
        center = (self.task_heads["center"](hidden) + ref[..., :2]).sigmoid()
        height = (self.task_heads["height"](hidden) + ref[..., 2:3]).sigmoid()
        lo, hi = self.pc_range[:3], self.pc_range[3:]
        xy = center * (hi[:2] - lo[:2]) + lo[:2]
        z = height * (hi[2] - lo[2]) + lo[2]
        dims = self.task_heads["dim"](hidden)
        codes = torch.cat(
            (
                xy,
                dims[..., :2],
                z,
                dims[..., 2:3],
                self.task_heads["rot"](hidden),
                self.task_heads["vel"](hidden),
            ),
            dim=-1,
        )
        return LayerOutputs(self.task_heads["cls"](hidden), codes)

    # ------------------------------------------------------------------ training
    def make_denoising(
        self, gt_boxes: list[LiDARInstance3DBoxes], gt_labels: list[Tensor]
    ) -> DenoisingPlan | None:
        if self.dn_groups == 0:
            return None
        return build_denoising(
            [b.gravity_center.to(self.pc_range.device) for b in gt_boxes],
            [b.dims.to(self.pc_range.device) for b in gt_boxes],
            gt_labels,
            self.pc_range,
            self.num_query,
            self.num_classes,
            self.dn_groups,
            self.dn_noise_scale,
            self.dn_split,
        )

    def _focal(self, logits: Tensor, labels: Tensor, avg_factor: Tensor) -> Tensor:
        """Sigmoid focal loss; label == num_classes is background."""
        target = torch.zeros_like(logits)
        fg = labels < self.num_classes
        target[fg.nonzero(as_tuple=True)[0], labels[fg]] = 1.0
        loss = py_sigmoid_focal_loss(
            logits, target, gamma=self.focal_gamma, alpha=self.focal_alpha, reduction="sum"
        )
        return self.loss_cls_weight * loss / avg_factor

    def _l1(self, pred: Tensor, target: Tensor, avg_factor: Tensor) -> Tensor:
        valid = torch.isfinite(target).all(dim=-1)
        diff = (pred[valid] - target[valid]).abs() * self.code_weights
        return self.loss_bbox_weight * diff.sum() / avg_factor

    def loss(
        self,
        outputs: LayerOutputs,
        dn: DenoisingPlan | None,
        gt_boxes: list[LiDARInstance3DBoxes],
        gt_labels: list[Tensor],
    ) -> dict[str, Tensor]:
        pad = 0 if dn is None else dn.pad_size
        gt_codes = [encode_boxes(b).to(self.pc_range.device) for b in gt_boxes]
        num_gt = outputs.codes.new_tensor(float(sum(len(c) for c in gt_codes)))
        avg = reduce_mean(num_gt).clamp(min=1.0)
        losses: dict[str, Tensor] = dict(outputs.stats)
        num_layers = outputs.cls_logits.shape[0]
        for layer in range(num_layers):
            prefix = "" if layer == num_layers - 1 else f"d{layer}."
            cls_all, codes_all, labels_all, targets_all = [], [], [], []
            for b, (codes_gt, labels_gt) in enumerate(zip(gt_codes, gt_labels, strict=True)):
                cls_b = outputs.cls_logits[layer, b, pad:]
                codes_b = outputs.codes[layer, b, pad:]
                assigned = self.assigner.assign(
                    cls_b, codes_b, labels_gt, codes_gt, self.code_weights
                )
                matched = assigned >= 0
                labels = torch.full_like(assigned, self.num_classes)
                labels[matched] = labels_gt[assigned[matched]]
                cls_all.append(cls_b)
                labels_all.append(labels)
                codes_all.append(codes_b[matched])
                targets_all.append(codes_gt[assigned[matched]])
            losses[f"{prefix}loss_cls"] = self._focal(
                torch.cat(cls_all), torch.cat(labels_all), avg
            )
            losses[f"{prefix}loss_bbox"] = self._l1(
                torch.cat(codes_all), torch.cat(targets_all), avg
            )
            if dn is not None:
                losses.update(self._dn_loss(outputs, dn, gt_codes, layer, prefix))
        return losses

    def _dn_loss(
        self,
        outputs: LayerOutputs,
        dn: DenoisingPlan,
        gt_codes: list[Tensor],
        layer: int,
        prefix: str,
    ) -> dict[str, Tensor]:
        real = dn.gt_index >= 0  # [B, P]
        cls = outputs.cls_logits[layer, :, : dn.pad_size][real]
        labels = dn.labels[real]
        fg = labels < self.num_classes
        batch_idx = real.nonzero(as_tuple=True)[0]
        targets = pad_sequence(gt_codes, batch_first=True)[batch_idx, dn.gt_index[real]]
        codes = outputs.codes[layer, :, : dn.pad_size][real]
        avg = reduce_mean(cls.new_tensor(float(max(int(fg.sum()), 1)))).clamp(min=1.0)
        return {
            f"{prefix}dn_loss_cls": self.dn_weight * self._focal(cls, labels, avg),
            f"{prefix}dn_loss_bbox": self.dn_weight * self._l1(codes[fg], targets[fg], avg),
        }

    # ------------------------------------------------------------------ inference
    def predict(self, outputs: LayerOutputs) -> list[InstanceData]:
        results = []
        for b in range(outputs.cls_logits.shape[1]):
            decoded = self.bbox_coder.decode(outputs.cls_logits[-1, b], outputs.codes[-1, b])
            instances = InstanceData()
            instances.bboxes_3d = LiDARInstance3DBoxes(decoded["bboxes"], box_dim=9)
            instances.scores_3d = decoded["scores"]
            instances.labels_3d = decoded["labels"]
            results.append(instances)
        return results
