"""CMT's detection head: queries, position embeddings, decoder, losses, decoding.

The parameter layout is CMT's (``shared_conv``, ``reference_points``,
``bev_embedding``, ``rv_embedding``, ``transformer.decoder``, ``task_heads.0``), so
the official checkpoints load; docs/fidelity.md lists what still differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from mmcv.cnn import ConvModule
from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
from mmdet.utils import reduce_mean
from mmdet3d.registry import MODELS, TASK_UTILS
from mmdet3d.structures import LiDARInstance3DBoxes
from mmengine.model import BaseModule, ModuleList
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
    lift_pixels,
    ray_depths,
    sine_embedding,
)
from cmt_aqr.task_head import COMMON_HEADS, SeparateTaskHead


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
class AqrCmtHead(BaseModule):
    """Queries attend to the BEV + camera tokens; each layer predicts boxes.

    One task of `num_classes` classes (CMT's LiDAR + camera configs use one).
    `neg_cls_weight`: the share of a background query in the class loss's
    normalizer (CMT: num_pos + 0.1 num_neg). `pos_scale` multiplies the normalized
    coordinates of the BEV / query sine embedding (1.0 = CMT; the CPU demo, which
    trains for minutes, uses more periods so that attention can become local fast).
    `local_attention_init` (None = CMT's init; the demo's choice, see docs/demo.md):
    a gain g for the output layers of the position-embedding MLPs, and the
    cross-attention's query and key projections start equal (orthogonal), so that
    at init the position term of the logits, g² · p_q · p_k, outweighs the content
    term and each query attends mostly near its reference point. It changes the
    init only; the parameters are CMT's.
    """

    def __init__(
        self,
        in_channels: int,
        point_cloud_range: list[float],
        num_classes: int = 10,
        embed_dims: int = 256,
        num_query: int = 900,
        depth_num: int = 64,
        pos_scale: float = 1.0,
        local_attention_init: float | None = None,
        transformer: dict | None = None,
        separate_head: dict | None = None,
        bbox_coder: dict | None = None,
        assigner: dict | None = None,
        code_weights: list[float] | None = None,
        loss_cls_weight: float = 2.0,
        loss_bbox_weight: float = 0.25,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        neg_cls_weight: float = 0.1,
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
        self.pos_scale = pos_scale
        self.local_attention_init = local_attention_init
        self.register_buffer(
            "pc_range", torch.tensor(point_cloud_range, dtype=torch.float32), persistent=False
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
        self.neg_cls_weight = neg_cls_weight
        self.dn_groups = dn_groups
        self.dn_noise_scale = dn_noise_scale
        self.dn_split = dn_split
        self.dn_weight = dn_weight

        self.shared_conv = ConvModule(
            in_channels,
            embed_dims,
            3,
            padding=1,
            conv_cfg=dict(type="Conv2d"),
            norm_cfg=dict(type="BN2d"),
        )
        self.transformer = MODELS.build(
            transformer
            or dict(
                type="AqrCmtTransformer",
                decoder=dict(type="CmtTransformerDecoder", embed_dims=embed_dims),
            )
        )
        self.reference_points = nn.Embedding(num_query, 3)
        self.bev_embedding = mlp(embed_dims * 2, embed_dims, embed_dims)
        self.rv_embedding = mlp(depth_num * 3, embed_dims * 4, embed_dims)
        heads = {**COMMON_HEADS, "cls_logits": (num_classes, 2)}
        self.task_heads = ModuleList(
            (
                SeparateTaskHead(
                    embed_dims,
                    heads,
                    groups=self.transformer.decoder.num_layers,
                    **(separate_head or {}),
                ),
            )
        )
        self.bbox_coder = TASK_UTILS.build(
            bbox_coder
            or dict(
                type="CmtBBoxCoder", post_center_range=point_cloud_range, num_classes=num_classes
            )
        )
        self.assigner = TASK_UTILS.build(assigner or dict(type="CmtHungarianAssigner3D"))
        self.aqr = None if aqr is None else AdaptiveQueryRouting(embed_dims, **aqr)

    def init_weights(self) -> None:
        super().init_weights()
        nn.init.uniform_(self.reference_points.weight, 0, 1)
        if self.local_attention_init is not None:
            self._init_local_attention(self.local_attention_init)

    @torch.no_grad()
    def _init_local_attention(self, gain: float) -> None:
        for embedding in (self.bev_embedding, self.rv_embedding):
            embedding[-1].weight.mul_(gain)
            embedding[-1].bias.mul_(gain)
        for layer in self.transformer.decoder.layers:
            weight = layer.attentions[1].attn.in_proj_weight
            dims = weight.shape[1]
            shared = nn.init.orthogonal_(torch.empty(dims, dims, dtype=weight.dtype))
            weight[:dims] = shared
            weight[dims : 2 * dims] = shared

    # ------------------------------------------------------------------ geometry
    def _camera_positions(self, ctx: SceneContext) -> Tensor:
        """Position embedding of every camera token: [B, V*h*w, C].

        Token (row, col) sits at pixel (col, row) · stride of the padded image, as in CMT.
        """
        h, w = ctx.cam_size
        img_h, img_w = ctx.image_size
        device = ctx.lidar2img.device
        ys = torch.arange(h, device=device, dtype=torch.float32) * img_h / h
        xs = torch.arange(w, device=device, dtype=torch.float32) * img_w / w
        grid_v, grid_u = torch.meshgrid(ys, xs, indexing="ij")
        pixels = torch.stack((grid_u, grid_v), dim=-1).reshape(1, 1, h * w, 2)
        batch, views = ctx.lidar2img.shape[:2]
        pixels = pixels.expand(batch, views, h * w, 2)
        embed = self.rv_embedding(self._lift(pixels, ctx))
        return embed.reshape(batch, views * h * w, self.embed_dims)

    def _lift(self, pixels: Tensor, ctx: SceneContext) -> Tensor:
        depths = ray_depths(self.depth_num, float(self.pc_range[3]), pixels.device)
        img2lidar = torch.linalg.inv(ctx.lidar2img.float())
        return lift_pixels(pixels, depths, img2lidar, self.pc_range)

    def project_to_images(self, ref_points: Tensor, ctx: SceneContext) -> tuple[Tensor, Tensor]:
        """Reference points [B, Q, 3] in [0, 1] -> pixels [B, V, Q, 2] and visibility [B, V, Q]."""
        points = ref_points * (self.pc_range[3:] - self.pc_range[:3]) + self.pc_range[:3]
        homo = torch.cat((points, torch.ones_like(points[..., :1])), dim=-1)
        cam = torch.einsum("bvij,bqj->bvqi", ctx.lidar2img.float(), homo)
        depth = cam[..., 2]
        in_front = depth > 0
        eps = torch.where(in_front, 1e-6, -1e-6)
        pixels = cam[..., :2] / (depth.detach() + eps)[..., None]
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
        bev = self.bev_embedding(sine_embedding(ref_points, self.embed_dims, self.pos_scale))
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
            sine_embedding(
                bev_cell_centers(*ctx.bev_size, bev.device), self.embed_dims, self.pos_scale
            )
        )
        memory = self._memory(bev, img_feats)
        memory_pos = torch.cat((bev_pos.expand(batch, -1, -1), self._camera_positions(ctx)), dim=1)

        ref_points = self.reference_points.weight[None].expand(batch, -1, -1)
        blocked = None
        pad = 0
        if dn is not None:
            ref_points = torch.cat((dn.ref_points, ref_points), dim=1)
            blocked = dn.blocked
            pad = dn.pad_size
        # CMT embeds and projects the points through inverse_sigmoid(·).sigmoid(): points
        # that drifted out of [0, 1] are clamped to it.
        ref_points = inverse_sigmoid(ref_points).sigmoid()
        pixels, visible = self.project_to_images(ref_points, ctx)
        query_pos = self.query_positions(ref_points, ctx, pixels, visible)
        query = torch.zeros_like(query_pos)

        bias, stats = None, {}
        if self.aqr is not None:
            layout = MemoryLayout(ctx.bev_size, img_feats.shape[1], ctx.cam_size)
            cells = locate_queries(ref_points, pixels, visible, layout, ctx.image_size)
            routing = self.aqr.generator(query + query_pos, memory, memory_pos, cells, layout)
            matching, matching_routing = cells.slice(pad), routing.pick(slice(pad, None))
            if self.aqr.type == "old":
                # Only the matching queries are rendered: DN queries carry GT positions,
                # and the maps are shared by every query.
                bev, img_feats = self.aqr.modulate_features(
                    bev, img_feats, matching, matching_routing.lidar_w, matching_routing.cam_w
                )
                memory = self._memory(bev, img_feats)
            else:
                bias = self.aqr.attention_bias(cells, routing, layout)
            stats = self.aqr.statistics(matching_routing, matching)
        hidden = self.transformer.decoder(
            query, query_pos, memory, memory_pos, self_attn_blocked=blocked, cross_attn_bias=bias
        )
        outputs = self._predict_boxes(hidden, ref_points)
        outputs.stats = stats
        return outputs

    def _predict_boxes(self, hidden: Tensor, ref_points: Tensor) -> LayerOutputs:
        """Centers are offsets to the reference point in inverse-sigmoid space.

        The code is the concatenation (center 2, height 1, dim 3, rot 2, vel 2), read
        in box_coder's layout (cx, cy, log l, log w, cz, log h, sin, cos, vx, vy) as CMT
        reads it: the `height` head fills the log-length slot and `dim` the slots
        log w, cz, log h. CMT trains and decodes it so; its checkpoints depend on it.
        """
        outs = self.task_heads[0](hidden)
        ref = inverse_sigmoid(ref_points)
        lo, hi = self.pc_range[:3], self.pc_range[3:]
        center = (outs["center"] + ref[..., :2]).sigmoid() * (hi[:2] - lo[:2]) + lo[:2]
        height = (outs["height"] + ref[..., 2:3]).sigmoid() * (hi[2] - lo[2]) + lo[2]
        codes = torch.cat((center, height, outs["dim"], outs["rot"], outs["vel"]), dim=-1)
        return LayerOutputs(outs["cls_logits"], codes)

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

    def _focal(self, logits: Tensor, labels: Tensor, avg_factor: float | Tensor) -> Tensor:
        """Sigmoid focal loss summed and divided by avg_factor; label == num_classes is
        background."""
        target = torch.zeros_like(logits)
        fg = labels < self.num_classes
        target[fg.nonzero(as_tuple=True)[0], labels[fg]] = 1.0
        loss = py_sigmoid_focal_loss(
            logits, target, gamma=self.focal_gamma, alpha=self.focal_alpha, reduction="sum"
        )
        return self.loss_cls_weight * loss / avg_factor

    def _l1(self, pred: Tensor, target: Tensor, avg_factor: float | Tensor) -> Tensor:
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
        gt_codes = [encode_boxes(b).to(self.pc_range.device) for b in gt_boxes]
        losses: dict[str, Tensor] = dict(outputs.stats)
        num_layers = outputs.cls_logits.shape[0]
        for layer in range(num_layers):
            prefix = "" if layer == num_layers - 1 else f"d{layer}."
            losses.update(self._matching_loss(outputs, dn, gt_codes, gt_labels, layer, prefix))
            if dn is not None:
                losses.update(self._dn_loss(outputs, dn, gt_codes, layer, prefix))
        return losses

    def _matching_loss(
        self,
        outputs: LayerOutputs,
        dn: DenoisingPlan | None,
        gt_codes: list[Tensor],
        gt_labels: list[Tensor],
        layer: int,
        prefix: str,
    ) -> dict[str, Tensor]:
        """Hungarian-matched queries; normalizers as CMT's (this process's counts)."""
        pad = 0 if dn is None else dn.pad_size
        cls_all, codes_all, labels_all, targets_all = [], [], [], []
        for b, (codes_gt, labels_gt) in enumerate(zip(gt_codes, gt_labels, strict=True)):
            cls_b = outputs.cls_logits[layer, b, pad:]
            codes_b = outputs.codes[layer, b, pad:]
            assigned = self.assigner.assign(cls_b, codes_b, labels_gt, codes_gt, self.code_weights)
            matched = assigned >= 0
            labels = torch.full_like(assigned, self.num_classes)
            labels[matched] = labels_gt[assigned[matched]]
            cls_all.append(cls_b)
            labels_all.append(labels)
            codes_all.append(codes_b[matched])
            targets_all.append(codes_gt[assigned[matched]])
        labels = torch.cat(labels_all)
        num_pos = int((labels < self.num_classes).sum())
        num_neg = labels.numel() - num_pos
        cls_avg = max(num_pos + self.neg_cls_weight * num_neg, 1.0)
        return {
            f"{prefix}loss_cls": self._focal(torch.cat(cls_all), labels, cls_avg),
            f"{prefix}loss_bbox": self._l1(
                torch.cat(codes_all), torch.cat(targets_all), max(num_pos, 1)
            ),
        }

    def _dn_loss(
        self,
        outputs: LayerOutputs,
        dn: DenoisingPlan,
        gt_codes: list[Tensor],
        layer: int,
        prefix: str,
    ) -> dict[str, Tensor]:
        """Every DN query that copies a GT: its class (or background when noised far)
        and its box, regressed to the GT box whatever its class target."""
        real = dn.gt_index >= 0  # [B, P]
        cls = outputs.cls_logits[layer, :, : dn.pad_size][real]
        labels = dn.labels[real]
        batch_idx = real.nonzero(as_tuple=True)[0]
        targets = pad_sequence(gt_codes, batch_first=True)[batch_idx, dn.gt_index[real]]
        codes = outputs.codes[layer, :, : dn.pad_size][real]
        num_target = labels.numel()
        # CMT's class normalizer: the number of DN queries times π/6 · split³ (the
        # volume of a ball of radius `split` over that of the noise cube around it).
        cls_avg = max(num_target * math.pi / 6 * self.dn_split**3, 1.0)
        box_avg = reduce_mean(cls.new_tensor(float(num_target))).clamp(min=1.0)
        return {
            f"{prefix}dn_loss_cls": self.dn_weight * self._focal(cls, labels, cls_avg),
            f"{prefix}dn_loss_bbox": self.dn_weight * self._l1(codes, targets, box_avg),
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


# The Python name before the registry prefix, for code that imports it; configs use
# "AqrCmtHead" (the old registry name is a fallback only: cmt_aqr/legacy_names.py).
CmtHead = AqrCmtHead
