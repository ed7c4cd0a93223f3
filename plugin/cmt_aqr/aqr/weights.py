"""Per-query modality weights: how much each query should trust LiDAR vs camera.

A 4-head cross-attention from each query to the memory tokens in a window
around its BEV cell and its camera cell (keys are projected once and gathered, so
the cost is N + Q x window², not Q x N), then Linear(C -> 2) and tanh or sigmoid.
"""

from __future__ import annotations

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
        return weights[..., 0], weights[..., 1]
