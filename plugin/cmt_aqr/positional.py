"""Position embeddings shared by the memory and the queries, as CMT computes them.

BEV cells and reference points get a sine embedding of their normalized (x, y);
camera pixels (and the projections of reference points) are lifted along a ray
of uniformly spaced depths into LiDAR space and normalized linearly by the point
cloud range, so both modalities live in one 3D frame.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sine_frequencies(num_feats: int, device: torch.device | None = None) -> Tensor:
    """CMT's divisors 1 + 2(i // 2) / num_feats: one to two periods over the unit range.

    (DETR's 10000^(2(i // 2) / num_feats) would reach far higher frequencies; CMT's
    checkpoints are trained with these.)
    """
    index = torch.arange(num_feats, dtype=torch.float32, device=device)
    return 1 + 2 * torch.div(index, 2, rounding_mode="floor") / num_feats


def sine_embedding(pos: Tensor, num_feats: int, scale: float = 1.0) -> Tensor:
    """Sine/cosine features of normalized (x, y) in [0, 1], concatenated (y, x).

    pos: [..., >= 2] (only x and y are used) -> [..., 2 * num_feats]. `scale`
    multiplies the coordinates before the embedding (1.0 = CMT); larger values give
    neighbouring cells more distinct embeddings.
    """
    dim_t = sine_frequencies(num_feats, pos.device)
    coords = pos[..., :2].float() * (2 * math.pi * scale)
    embeds = []
    for axis in (1, 0):
        angle = coords[..., axis, None] / dim_t
        embeds.append(
            torch.stack((angle[..., 0::2].sin(), angle[..., 1::2].cos()), dim=-1).flatten(-2)
        )
    return torch.cat(embeds, dim=-1)


def bev_cell_centers(height: int, width: int, device: torch.device) -> Tensor:
    """Normalized (x, y) of each BEV cell center, row-major like the memory: [H*W, 2]."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), dim=-1).reshape(-1, 2)


def ray_depths(num: int, max_depth: float, device: torch.device) -> Tensor:
    """CMT's depth bins: 1 m, then uniform steps of (max_depth - 1) / num."""
    index = torch.arange(num, device=device, dtype=torch.float32)
    return 1 + index * (max_depth - 1) / num


def lift_pixels(
    pixels: Tensor, depths: Tensor, img2lidar: Tensor, point_cloud_range: Tensor
) -> Tensor:
    """Lift pixels along their rays to LiDAR-space points normalized by the range.

    pixels: [B, V, P, 2] (u, v) in image pixels; depths: [D];
    img2lidar: [B, V, 4, 4]; point_cloud_range: [6] (x0, y0, z0, x1, y1, z1).
    Returns [B, V, P, D * 3] (the embedding MLP's input; not clipped to [0, 1]).
    """
    num_depths = depths.shape[0]
    uv = pixels[..., None, :].expand(*pixels.shape[:-1], num_depths, 2)
    d = depths.view(*([1] * (pixels.dim() - 1)), num_depths, 1).expand(*uv.shape[:-1], 1)
    homo = torch.cat((uv * d, d, torch.ones_like(d)), dim=-1)  # [B, V, P, D, 4]
    points = torch.einsum("bvij,bvpdj->bvpdi", img2lidar, homo)[..., :3]
    lo, hi = point_cloud_range[:3], point_cloud_range[3:]
    return ((points - lo) / (hi - lo)).flatten(-2)
