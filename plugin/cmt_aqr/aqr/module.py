"""AQR as one module of the head, configured by `model.pts_bbox_head.aqr`."""

from __future__ import annotations

from torch import Tensor, nn

from cmt_aqr.aqr.bias import BiasScale, WindowBias, WindowSpec
from cmt_aqr.aqr.cells import MemoryLayout, QueryCells
from cmt_aqr.aqr.render import KERNELS, modulate, render_maps
from cmt_aqr.aqr.weights import ModalityWeightGenerator, Routing

AQR_TYPES = ("old", "new")
WINDOW_MODES = ("fixed", "adaptive")


def _extent_bounds(name: str, low: float | None, high: int) -> tuple[float, float]:
    if low is None:
        raise ValueError(f"aqr.window_mode='adaptive' needs aqr.{name}_min (cells)")
    if not 0 < low <= high:
        raise ValueError(f"aqr.{name}_min must lie in (0, {name}_max={high}], got {low}")
    return float(low), float(high)


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
        window_mode: str = "fixed",
        window_min: float | None = None,
        window_max: int | None = None,
        cam_window_min: float | None = None,
        cam_window_max: int | None = None,
        window_cut: float = 2.0,
    ) -> None:
        """window_mode 'adaptive': each query predicts its BEV and camera window extents
        in [window_min, window_max] and [cam_window_min, cam_window_max] cells; its
        Gaussian σ is extent / (2 · window_cut), inside the largest window."""
        super().__init__()
        if type not in AQR_TYPES:
            raise ValueError(f"aqr.type must be one of {AQR_TYPES}, got {type!r}")
        if render_kernel not in KERNELS:
            raise ValueError(f"aqr.render_kernel must be one of {KERNELS}, got {render_kernel!r}")
        if window_mode not in WINDOW_MODES:
            raise ValueError(f"aqr.window_mode must be one of {WINDOW_MODES}, got {window_mode!r}")
        self.type = type
        self.window_mode = window_mode
        bev_window, cam_window = bev_window or window_size, cam_window or window_size
        bounds = None
        if window_mode == "adaptive":
            if type != "new" or window_profile != "gaussian" or scope != "local":
                raise ValueError(
                    "aqr.window_mode='adaptive' needs type='new', window_profile='gaussian' "
                    f"and scope='local', got {type!r}, {window_profile!r}, {scope!r}"
                )
            if window_cut <= 0:
                raise ValueError(f"aqr.window_cut must be positive, got {window_cut}")
            bev_window, cam_window = window_max or bev_window, cam_window_max or cam_window
            bounds = (
                _extent_bounds("window", window_min, bev_window),
                _extent_bounds("cam_window", cam_window_min, cam_window),
            )
        self.window_cut = window_cut
        self.generator = ModalityWeightGenerator(
            embed_dims, encoder_heads, encoder_window, weight_activation, bounds
        )
        self.spec = WindowSpec(
            bev_window=bev_window,
            cam_window=cam_window,
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

    def sigmas(self, routing: Routing) -> tuple[Tensor | None, Tensor | None]:
        """Per-query Gaussian σ of the BEV and camera windows (None: fixed windows)."""
        if routing.bev_extent is None or routing.cam_extent is None:
            return None, None
        half = 2 * self.window_cut
        return routing.bev_extent / half, routing.cam_extent / half

    def attention_bias(
        self, cells: QueryCells, routing: Routing, layout: MemoryLayout
    ) -> WindowBias:
        bev_sigma, cam_sigma = self.sigmas(routing)
        return WindowBias(
            cells,
            routing.lidar_w,
            routing.cam_w,
            self.scale(),
            layout,
            self.spec,
            self.attn_impl,
            bev_sigma,
            cam_sigma,
        )

    def statistics(self, routing: Routing, cells: QueryCells) -> dict[str, Tensor]:
        """Detached scalars for the training log (keys without 'loss': not optimized)."""
        lidar_w, cam_w = routing.lidar_w.detach(), routing.cam_w.detach()
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
        if routing.bev_extent is not None and routing.cam_extent is not None:
            extents = {"bev": routing.bev_extent.detach(), "cam": routing.cam_extent.detach()[seen]}
            for name, values in extents.items():
                zero = values.new_zeros(())
                stats[f"aqr/{name}_extent_mean"] = values.mean() if values.numel() else zero
                stats[f"aqr/{name}_extent_std"] = values.std() if values.numel() > 1 else zero
        return stats
