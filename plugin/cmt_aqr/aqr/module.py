"""AQR as one module of the head, configured by `model.pts_bbox_head.aqr`."""

from __future__ import annotations

from torch import Tensor, nn

from cmt_aqr.aqr.bias import BiasScale, WindowBias, WindowSpec
from cmt_aqr.aqr.cells import MemoryLayout, QueryCells
from cmt_aqr.aqr.render import KERNELS, modulate, render_maps
from cmt_aqr.aqr.weights import ModalityWeightGenerator

AQR_TYPES = ("old", "new")


class AdaptiveQueryRouting(nn.Module):
    """Per-query LiDAR/camera weights, used either to modulate the features (old)
    or as a local-window bias on the cross-attention logits (new)."""

    def __init__(
        self,
        embed_dims: int,
        type: str = "new",
        window_size: int = 8,
        bev_window: int | None = None,
        cam_window: int | None = None,
        window_profile: str = "uniform",
        window_sigma: float = 2.0,
        scope: str = "local",
        bias_scale: float = 2.5,
        learnable_scale: bool = True,
        scale_min: float = 0.0,
        scale_max: float = 5.0,
        weight_activation: str = "tanh",
        encoder_heads: int = 4,
        encoder_window: int = 5,
        attn_impl: str = "auto",
        render_kernel: str = "gaussian",
        render_sigma: float = 1.0,
        max_weight: float = 1.5,
        residual: float = 0.7,
    ) -> None:
        super().__init__()
        if type not in AQR_TYPES:
            raise ValueError(f"aqr.type must be one of {AQR_TYPES}, got {type!r}")
        if render_kernel not in KERNELS:
            raise ValueError(f"aqr.render_kernel must be one of {KERNELS}, got {render_kernel!r}")
        self.type = type
        self.generator = ModalityWeightGenerator(
            embed_dims, encoder_heads, encoder_window, weight_activation
        )
        self.spec = WindowSpec(
            bev_window=bev_window or window_size,
            cam_window=cam_window or window_size,
            profile=window_profile,
            sigma=window_sigma,
            scope=scope,
        )
        self.scale = (
            BiasScale(bias_scale, learnable_scale, scale_min, scale_max) if type == "new" else None
        )
        self.attn_impl = attn_impl
        self.render_kernel = render_kernel
        self.render_sigma = render_sigma
        self.max_weight = max_weight
        self.residual = residual

    def modulate_features(
        self, bev: Tensor, img: Tensor, cells: QueryCells, lidar_w: Tensor, cam_w: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Old AQR: bev [B, C, H, W], img [B, V, C, h, w] -> modulated copies."""
        bev_map = render_maps(
            cells.bev_pos,
            lidar_w,
            cells.cam_valid.new_ones(cells.cam_valid.shape),
            cells.bev_row.new_zeros(cells.bev_row.shape),
            1,
            tuple(bev.shape[-2:]),
            self.render_kernel,
            self.render_sigma,
            self.max_weight,
        )
        cam_map = render_maps(
            cells.cam_pos,
            cam_w,
            cells.cam_valid,
            cells.cam_view,
            img.shape[1],
            tuple(img.shape[-2:]),
            self.render_kernel,
            self.render_sigma,
            self.max_weight,
        )
        return modulate(bev, bev_map, self.residual), modulate(
            img, cam_map[:, :, None], self.residual
        )

    def attention_bias(
        self, cells: QueryCells, lidar_w: Tensor, cam_w: Tensor, layout: MemoryLayout
    ) -> WindowBias:
        return WindowBias(cells, lidar_w, cam_w, self.scale(), layout, self.spec, self.attn_impl)

    def statistics(self, lidar_w: Tensor, cam_w: Tensor, cells: QueryCells) -> dict[str, Tensor]:
        """Detached scalars for the training log (keys without 'loss': not optimized)."""
        lidar_w, cam_w = lidar_w.detach(), cam_w.detach()
        seen = cells.cam_valid
        count = seen.sum().clamp(min=1)
        stats = {
            "aqr/lidar_w_mean": lidar_w.mean(),
            "aqr/cam_w_mean": (cam_w * seen).sum() / count,
            "aqr/prefer_lidar": ((lidar_w > cam_w) | ~seen).float().mean(),
            "aqr/cam_visible": seen.float().mean(),
        }
        if self.scale is not None:
            scale = self.scale().detach()
            stats["aqr/bias_scale"] = scale
            inside = lidar_w.sum() + (cam_w * seen).sum()
            stats["aqr/bias_in_window_mean"] = scale * inside / (lidar_w.numel() + count)
        return stats
