"""Position embeddings shared by the memory and the queries.

BEV cells and reference points get a sine embedding of their normalized (x, y);
camera pixels (and the projections of reference points) are lifted along a ray
of depths into LiDAR space, so both modalities live in one 3D frame.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sine_embedding(pos: Tensor, num_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Sine/cosine features of each coordinate in [0, 1], concatenated (y, x[, z]).

    pos: [..., D] -> [..., D * num_feats].
    """
    scale = 2 * math.pi
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=pos.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    coords = pos.float() * scale
    embeds = []
    order = [1, 0, *range(2, pos.shape[-1])]
    for axis in order:
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


def lid_depths(num: int, start: float, stop: float, device: torch.device) -> Tensor:
    """Linear-increasing depth bins: dense near the camera, sparse far away."""
    index = torch.arange(num, device=device, dtype=torch.float32)
    bin_size = (stop - start) / (num * (1 + num))
    return start + bin_size * index * (index + 1)


def lift_pixels(
    pixels: Tensor, depths: Tensor, img2lidar: Tensor, position_range: Tensor
) -> Tensor:
    """Lift pixels along their rays to normalized LiDAR-space points.

    pixels: [B, V, P, 2] (u, v) in image pixels; depths: [D];
    img2lidar: [B, V, 4, 4]; position_range: [6] (x0, y0, z0, x1, y1, z1).
    Returns [B, V, P, D * 3] in inverse-sigmoid space (the embedding MLP's input).
    """
    num_depths = depths.shape[0]
    uv = pixels[..., None, :].expand(*pixels.shape[:-1], num_depths, 2)
    d = depths.view(*([1] * (pixels.dim() - 1)), num_depths, 1).expand(*uv.shape[:-1], 1)
    homo = torch.cat((uv * d, d, torch.ones_like(d)), dim=-1)  # [B, V, P, D, 4]
    points = torch.einsum("bvij,bvpdj->bvpdi", img2lidar, homo)[..., :3]
    lo, hi = position_range[:3], position_range[3:]
    normalized = (points - lo) / (hi - lo)
    return inverse_sigmoid(normalized).flatten(-2)
