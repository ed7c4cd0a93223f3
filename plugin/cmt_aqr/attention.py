"""Multi-head attention on scaled_dot_product_attention that accepts an additive bias.

The bias is an object, not a tensor, so that an implementation can compute it on
the fly (flex attention) instead of materializing a [B, Q, N] tensor; see
``cmt_aqr.aqr.bias``. Self-attention takes only a boolean mask (the DN mask).
"""

from __future__ import annotations

from typing import Protocol

import torch.nn.functional as F
from torch import Tensor, nn


class AttentionBias(Protocol):
    """Something that attends with a bias added to the logits (q, k, v: [B, H, L, D])."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor: ...


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention with a boolean mask or an additive bias."""

    def __init__(self, embed_dims: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims={embed_dims} is not divisible by num_heads={num_heads}")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dims, embed_dims)
        self.k_proj = nn.Linear(embed_dims, embed_dims)
        self.v_proj = nn.Linear(embed_dims, embed_dims)
        self.out_proj = nn.Linear(embed_dims, embed_dims)

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        blocked: Tensor | None = None,
        bias: AttentionBias | None = None,
    ) -> Tensor:
        """query [B, Q, C], key/value [B, N, C].

        blocked: bool [Q, N] or [B, 1, Q, N], True where a query may not look
        (mmdet's convention for the DN mask). bias: an AttentionBias.
        """
        if blocked is not None and bias is not None:
            raise ValueError("pass either a boolean mask (self-attention) or a bias, not both")
        q, k, v = (
            self._heads(self.q_proj(query)),
            self._heads(self.k_proj(key)),
            self._heads(self.v_proj(value)),
        )
        if bias is not None:
            out = bias.attend(q, k, v)
        else:
            allowed = None if blocked is None else ~blocked
            drop = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=drop)
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dims))
