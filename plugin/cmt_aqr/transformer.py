"""CMT's decoder: post-norm DETR layers over the fused BEV + camera memory."""

from __future__ import annotations

import torch
from mmdet3d.registry import MODELS
from torch import Tensor, nn

from cmt_aqr.attention import AttentionBias, MultiheadAttention


class CmtDecoderLayer(nn.Module):
    """self-attn → norm → cross-attn → norm → FFN → norm.

    Only the cross-attention receives the AQR bias; the self-attention keeps
    the DN mask alone.
    """

    def __init__(
        self, embed_dims: int, num_heads: int, ffn_dims: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dims, num_heads, dropout)
        self.cross_attn = MultiheadAttention(embed_dims, num_heads, dropout)
        self.ffn = nn.Sequential(
            nn.Linear(embed_dims, ffn_dims),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(ffn_dims, embed_dims),
        )
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        self_attn_blocked: Tensor | None = None,
        cross_attn_bias: AttentionBias | None = None,
    ) -> Tensor:
        q = query + query_pos
        query = self.norms[0](
            query + self.drop(self.self_attn(q, q, query, blocked=self_attn_blocked))
        )
        attended = self.cross_attn(
            query + query_pos, memory + memory_pos, memory, bias=cross_attn_bias
        )
        query = self.norms[1](query + self.drop(attended))
        return self.norms[2](query + self.drop(self.ffn(query)))


@MODELS.register_module()
class CmtTransformerDecoder(nn.Module):
    """A stack of decoder layers; every layer's output is normalized and returned."""

    def __init__(
        self,
        num_layers: int = 6,
        embed_dims: int = 256,
        num_heads: int = 8,
        ffn_dims: int = 1024,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.layers = nn.ModuleList(
            CmtDecoderLayer(embed_dims, num_heads, ffn_dims, dropout) for _ in range(num_layers)
        )
        self.post_norm = nn.LayerNorm(embed_dims)

    def init_weights(self) -> None:
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        memory: Tensor,
        memory_pos: Tensor,
        self_attn_blocked: Tensor | None = None,
        cross_attn_bias: AttentionBias | None = None,
    ) -> Tensor:
        """Returns [num_layers, B, Q, C]."""
        outputs = []
        for layer in self.layers:
            query = layer(query, query_pos, memory, memory_pos, self_attn_blocked, cross_attn_bias)
            outputs.append(self.post_norm(query))
        return torch.stack(outputs)
