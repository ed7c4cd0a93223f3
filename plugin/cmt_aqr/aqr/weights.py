"""Per-query modality weights: how much each query should trust LiDAR vs camera.

A 4-head cross-attention from each query to the memory tokens in a window
around its BEV cell and its camera cell (keys are projected once and gathered, so
the cost is N + Q x window², not Q x N), then Linear(C -> 2) and tanh or sigmoid.
With extent bounds (adaptive windows) a second Linear(C -> 2) predicts, per query and
modality, how far the query should look: an extent in cells within the bounds, through
a sigmoid, so it is differentiable everywhere and never leaves them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmt_aqr.aqr.cells import (
    MemoryLayout,
    QueryCells,
    gather_tokens,
    window_keys,
    window_offsets,
)

Bounds = tuple[tuple[float, float], tuple[float, float]]  # (BEV, camera) (min, max) cells


class Routing(NamedTuple):
    """What the generator predicts per query [B, Q]: the modality weights and, with
    adaptive windows, the BEV and camera window extents in cells."""

    lidar_w: Tensor
    cam_w: Tensor
    bev_extent: Tensor | None = None
    cam_extent: Tensor | None = None

    def pick(self, queries: slice | Tensor) -> Routing:
        """Some of the queries (e.g. all but the denoising ones, or the chosen few)."""
        return Routing(*(None if t is None else t[:, queries] for t in self))


def bounded(logits: Tensor, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.sigmoid(logits)


class ModalityWeightGenerator(nn.Module):
    def __init__(
        self,
        embed_dims: int,
        num_heads: int = 4,
        window: int = 5,
        activation: str = "tanh",
        extent_bounds: Bounds | None = None,
    ) -> None:
        super().__init__()
        if activation not in ("tanh", "sigmoid"):
            raise ValueError(f"weight_activation must be 'tanh' or 'sigmoid', got {activation!r}")
        window_offsets(window)
        self.num_heads = num_heads
        self.window = window
        self.activation = activation
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, batch_first=True)
        self.to_weights = nn.Linear(embed_dims, 2)
        self.extent_bounds = extent_bounds
        if extent_bounds is not None:
            # Zero init: every query starts at the middle of its bounds.
            self.to_extents = nn.Linear(embed_dims, 2)
            nn.init.zeros_(self.to_extents.weight)
            nn.init.zeros_(self.to_extents.bias)

    def forward(
        self,
        query: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        cells: QueryCells,
        layout: MemoryLayout,
    ) -> Routing:
        """query [B, Q, C] (content + position); memory(_pos) [B, N, C] -> per query [B, Q]."""
        batch, num_query, _ = query.shape
        index, valid = window_keys(cells, layout, self.window, self.window)
        # nn.MultiheadAttention's own parameters, applied to the whole memory once and
        # then gathered: a key is projected once, not once per query window it falls in.
        w_q, w_k, w_v = self.attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.attn.in_proj_bias.chunk(3)
        heads = self.num_heads
        q = F.linear(query, w_q, b_q).view(batch, num_query, 1, heads, -1)
        key = gather_tokens(F.linear(memory + memory_pos, w_k, b_k), index)
        value = gather_tokens(F.linear(memory, w_v, b_v), index)
        key = key.view(*index.shape, heads, -1)
        value = value.view(*index.shape, heads, -1)
        logits = (q * key).sum(dim=-1) * q.shape[-1] ** -0.5  # [B, Q, K, heads]
        logits = logits.masked_fill(~valid[..., None], float("-inf"))
        attn = torch.softmax(logits, dim=2)
        out = self.attn.out_proj((attn[..., None] * value).sum(dim=2).reshape(query.shape))
        logits = self.to_weights(out)
        weights = torch.tanh(logits) if self.activation == "tanh" else torch.sigmoid(logits)
        if self.extent_bounds is None:
            return Routing(weights[..., 0], weights[..., 1])
        extents = self.to_extents(out)
        (bev_lo, bev_hi), (cam_lo, cam_hi) = self.extent_bounds
        return Routing(
            weights[..., 0],
            weights[..., 1],
            bounded(extents[..., 0], bev_lo, bev_hi),
            bounded(extents[..., 1], cam_lo, cam_hi),
        )
