"""CMT's decoder: post-norm DETR layers over the fused BEV + camera memory.

Module names follow CMT's checkpoints: ``transformer.decoder.layers.N.{attentions.{0,1},
ffns.0, norms.{0,1,2}}`` and ``transformer.decoder.post_norm``.
"""

from __future__ import annotations

import torch
from mmcv.cnn.bricks.transformer import FFN
from mmdet3d.registry import MODELS
from torch import Tensor, nn

from cmt_aqr.attention import AttentionBias, MultiheadAttention


class CmtDecoderLayer(nn.Module):
    """self-attn → norm → cross-attn → norm → FFN → norm.

    Dropout as CMT trains it: self-attention 0.1 on the probabilities and 0.1 on
    its output, cross-attention 0.1 on its output only, none in the FFN. Only the
    cross-attention receives the AQR bias; the self-attention keeps the DN mask alone.
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        ffn_dims: int,
        dropout: float = 0.1,
        self_attn_drop: float = 0.1,
        ffn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.attentions = nn.ModuleList(
            (
                MultiheadAttention(embed_dims, num_heads, attn_drop=self_attn_drop),
                MultiheadAttention(embed_dims, num_heads, attn_drop=0.0),
            )
        )
        self.ffns = nn.ModuleList(
            (FFN(embed_dims, ffn_dims, num_fcs=2, ffn_drop=ffn_drop, add_identity=True),)
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
        self_attn, cross_attn = self.attentions
        q = query + query_pos
        query = self.norms[0](query + self.drop(self_attn(q, q, query, blocked=self_attn_blocked)))
        attended = cross_attn(query + query_pos, memory + memory_pos, memory, bias=cross_attn_bias)
        query = self.norms[1](query + self.drop(attended))
        return self.norms[2](self.ffns[0](query))


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
        self_attn_drop: float = 0.1,
        ffn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.layers = nn.ModuleList(
            CmtDecoderLayer(embed_dims, num_heads, ffn_dims, dropout, self_attn_drop, ffn_drop)
            for _ in range(num_layers)
        )
        self.post_norm = nn.LayerNorm(embed_dims)

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


@MODELS.register_module()
class AqrCmtTransformer(nn.Module):
    """Holds the decoder under the name CMT's checkpoints use (``transformer.decoder``)."""

    def __init__(self, decoder: dict) -> None:
        super().__init__()
        self.decoder = MODELS.build(decoder)

    def init_weights(self) -> None:
        """DETR's init, as CMT does it: Xavier-uniform matrices, zero biases of those layers."""
        for module in self.modules():
            if isinstance(module, nn.MultiheadAttention):
                nn.init.xavier_uniform_(module.in_proj_weight)
                nn.init.zeros_(module.in_proj_bias)
            weight = getattr(module, "weight", None)
            if isinstance(weight, Tensor) and weight.dim() > 1:
                nn.init.xavier_uniform_(weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)


# The Python name before the registry prefix, for code that imports it; configs use
# "AqrCmtTransformer" (the old registry name is a fallback only: cmt_aqr/legacy_names.py).
CmtTransformer = AqrCmtTransformer
