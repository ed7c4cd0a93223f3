"""Old AQR: splat per-query weights into weight maps and modulate the features.

    F' = F ⊙ W + r · F

Vectorized (one scatter_add per map) and differentiable in the weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

KERNELS = ("gaussian", "bilinear", "direct")


def _splat_taps(pos: Tensor, kernel: str, sigma: float) -> tuple[Tensor, Tensor, Tensor]:
    """Cells (row, col) [..., T] each splat touches, and the kernel value there."""
    if kernel == "direct":
        return (
            pos[..., 0:1].floor().long(),
            pos[..., 1:2].floor().long(),
            torch.ones_like(pos[..., :1]),
        )
    if kernel == "bilinear":
        # cell centers sit at integer + 0.5; split the weight among the 4 nearest
        base = (pos - 0.5).floor()
        frac = pos - 0.5 - base
        d_row = pos.new_tensor([0, 0, 1, 1])
        d_col = pos.new_tensor([0, 1, 0, 1])
        rows = base[..., 0:1] + d_row
        cols = base[..., 1:2] + d_col
        w_row = torch.where(d_row.bool(), frac[..., 0:1], 1 - frac[..., 0:1])
        w_col = torch.where(d_col.bool(), frac[..., 1:2], 1 - frac[..., 1:2])
        return rows.long(), cols.long(), w_row * w_col
    if kernel == "gaussian":
        radius = max(1, math.ceil(3 * sigma))
        offsets = torch.arange(-radius, radius + 1, device=pos.device, dtype=pos.dtype)
        d_row, d_col = torch.meshgrid(offsets, offsets, indexing="ij")
        center = pos.floor()
        rows = center[..., 0:1] + d_row.flatten()
        cols = center[..., 1:2] + d_col.flatten()
        dist2 = (rows + 0.5 - pos[..., 0:1]) ** 2 + (cols + 0.5 - pos[..., 1:2]) ** 2
        return rows.long(), cols.long(), torch.exp(-dist2 / (2 * sigma**2))
    raise ValueError(f"render_kernel must be one of {KERNELS}, got {kernel!r}")


def render_maps(
    pos: Tensor,
    weights: Tensor,
    valid: Tensor,
    map_index: Tensor,
    num_maps: int,
    size: tuple[int, int],
    kernel: str = "gaussian",
    sigma: float = 1.0,
    max_weight: float = 1.5,
) -> Tensor:
    """Sum each query's splat into its map, clamp to [0, max_weight].

    pos [B, Q, 2] (row, col) in cells; weights, valid, map_index [B, Q]
    (map_index: the view, 0 for the single BEV map) -> [B, num_maps, H, W].
    """
    height, width = size
    batch = pos.shape[0]
    rows, cols, values = _splat_taps(pos, kernel, sigma)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width) & valid[..., None]
    flat = (map_index[..., None] * height + rows.clamp(0, height - 1)) * width + cols.clamp(
        0, width - 1
    )
    contrib = torch.where(inside, weights[..., None] * values, torch.zeros_like(values))
    canvas = weights.new_zeros(batch, num_maps * height * width)
    canvas = canvas.scatter_add(1, flat.flatten(1), contrib.flatten(1))
    return canvas.view(batch, num_maps, height, width).clamp(0, max_weight)


def modulate(features: Tensor, weight_map: Tensor, residual: float) -> Tensor:
    """F' = F ⊙ W + r · F, the weight map broadcast over channels."""
    return features * weight_map + residual * features
