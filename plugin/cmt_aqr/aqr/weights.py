"""Per-query modality weights: how much each query should trust LiDAR vs camera.

A 4-head cross-attention from each query to the memory tokens in a window around its
BEV cell and its camera cell, then Linear(C -> 2) and tanh or sigmoid. Its projections
act on the queries' side, so the cost is Q x window² (never N, nor Q x N).
With extent bounds (adaptive windows) a second Linear(C -> 2) predicts, per query and
modality, how far the query should look: an extent in cells within the bounds, through
a sigmoid, so it is differentiable everywhere and never leaves them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmt_aqr.aqr.cells import MemoryLayout, QueryCells, window_keys, window_offsets
from cmt_aqr.aqr.window_attention import WindowKeys, local_attention

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
        keys = WindowKeys(index, valid, layout.num_tokens)
        # nn.MultiheadAttention's own parameters, moved to the queries' side, so the memory
        # is never projected (N rows) and only the windows' rows are read:
        # q·(W_k x + b_k) = (W_kᵀ q)·x + a per-query constant, which the softmax drops;
        # Σ p (W_v x + b_v) = W_v (Σ p x) + b_v, since the p sum to one.
        w_q, w_k, w_v = self.attn.in_proj_weight.chunk(3)
        b_q, _, b_v = self.attn.in_proj_bias.chunk(3)
        heads, dims = self.num_heads, query.shape[-1]
        q = F.linear(query, w_q, b_q).view(batch, num_query, heads, -1)
        q_memory = torch.einsum("bqhd,hdc->bhqc", q, w_k.view(heads, -1, dims))
        mixed = local_attention(q_memory * q.shape[-1] ** -0.5, memory + memory_pos, memory, keys)
        out = torch.einsum("bhqc,hdc->bqhd", mixed, w_v.view(heads, -1, dims)) + b_v.view(heads, -1)
        out = self.attn.out_proj(out.reshape(query.shape))
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
