"""Multi-head attention on scaled_dot_product_attention that accepts an additive bias.

The parameters live in an ``nn.MultiheadAttention`` named ``attn`` (packed
``in_proj_weight`` / ``in_proj_bias`` and ``out_proj``), the layout of CMT's
checkpoints (mmcv's MultiheadAttention and CMT's FlashMHA store them so); the
computation is our own so that the cross-attention can take the AQR bias.

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
    """Batch-first multi-head attention with a boolean mask or an additive bias.

    attn_drop: dropout on the attention probabilities (CMT: 0.1 in self-attention;
    0 in cross-attention, where its FlashMHA received the rate in the wrong argument).
    """

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float = 0.0) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims={embed_dims} is not divisible by num_heads={num_heads}")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, batch_first=True)

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
        w_q, w_k, w_v = self.attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.attn.in_proj_bias.chunk(3)
        q = self._heads(F.linear(query, w_q, b_q))
        k = self._heads(F.linear(key, w_k, b_k))
        v = self._heads(F.linear(value, w_v, b_v))
        if bias is not None:
            out = bias.attend(q, k, v)
        else:
            allowed = None if blocked is None else ~blocked
            drop = self.attn_drop if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=drop)
        batch, _, length, _ = out.shape
        return self.attn.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dims))
