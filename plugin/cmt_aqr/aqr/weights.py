"""Per-query modality weights: how much each query should trust LiDAR vs camera.

A 4-head cross-attention from each query to the memory tokens in a window
around its BEV cell and its camera cell (the keys are gathered, so the cost is
Q x window², not Q x N), then Linear(C -> 2) and tanh or sigmoid.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cmt_aqr.aqr.cells import MemoryLayout, QueryCells, window_offsets


def local_key_index(cells: QueryCells, layout: MemoryLayout, window: int) -> tuple[Tensor, Tensor]:
    """Memory indices of each query's BEV and camera window: [B, Q, K], and validity."""
    lo, hi = window_offsets(window)
    offsets = torch.arange(lo, hi + 1, device=cells.bev_row.device)
    d_row, d_col = torch.meshgrid(offsets, offsets, indexing="ij")
    d_row, d_col = d_row.flatten(), d_col.flatten()

    height, width = layout.bev_size
    rows = cells.bev_row[..., None] + d_row
    cols = cells.bev_col[..., None] + d_col
    bev_ok = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    bev_index = rows.clamp(0, height - 1) * width + cols.clamp(0, width - 1)

    h, w = layout.cam_size
    rows = cells.cam_row[..., None] + d_row
    cols = cells.cam_col[..., None] + d_col
    cam_ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w) & cells.cam_valid[..., None]
    cam_index = (
        layout.num_bev
        + cells.cam_view[..., None] * (h * w)
        + rows.clamp(0, h - 1) * w
        + cols.clamp(0, w - 1)
    )
    return torch.cat((bev_index, cam_index), dim=-1), torch.cat((bev_ok, cam_ok), dim=-1)


class ModalityWeightGenerator(nn.Module):
    def __init__(
        self, embed_dims: int, num_heads: int = 4, window: int = 5, activation: str = "tanh"
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

    def forward(
        self,
        query: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        cells: QueryCells,
        layout: MemoryLayout,
    ) -> tuple[Tensor, Tensor]:
        """query [B, Q, C] (content + position); memory(_pos) [B, N, C] -> lidar_w, cam_w [B, Q]."""
        batch, num_query, dims = query.shape
        index, valid = local_key_index(cells, layout, self.window)
        keys = index.shape[-1]
        flat = index.reshape(batch, -1, 1).expand(-1, -1, dims)
        value = memory.gather(1, flat).view(batch * num_query, keys, dims)
        key = value + memory_pos.gather(1, flat).view(batch * num_query, keys, dims)
        out, _ = self.attn(
            query.reshape(batch * num_query, 1, dims),
            key,
            value,
            key_padding_mask=~valid.view(batch * num_query, keys),
            need_weights=False,
        )
        logits = self.to_weights(out.view(batch, num_query, dims))
        weights = torch.tanh(logits) if self.activation == "tanh" else torch.sigmoid(logits)
        return weights[..., 0], weights[..., 1]
