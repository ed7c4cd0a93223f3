"""CMT's prediction heads: one set of small heads per decoder layer, run as grouped 1x1
convolutions over all layers at once (group g = decoder layer g).

Names and shapes follow CMT's checkpoints: ``task_heads.0.<head>.{0,1,3}`` with
``0`` a grouped Conv1d (C -> head_conv per layer, no bias), ``1`` a per-group
LayerNorm, ``2`` ReLU and ``3`` the grouped output Conv1d.
"""

from __future__ import annotations

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn

# head name -> (output channels, number of convolutions)
COMMON_HEADS: dict[str, tuple[int, int]] = {
    "center": (2, 2),
    "height": (1, 2),
    "dim": (3, 2),
    "rot": (2, 2),
    "vel": (2, 2),
}


class GroupLayerNorm1d(nn.Module):
    """LayerNorm over the channels of each group separately: x [N, C, L], C = groups * c."""

    def __init__(self, channels: int, groups: int = 1, eps: float = 1e-6) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} channels do not split into {groups} groups")
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.groups = groups
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        n, c, length = x.shape
        grouped = x.view(n, self.groups, c // self.groups, length)
        mean = grouped.mean(dim=2, keepdim=True)
        var = (grouped - mean).pow(2).mean(dim=2, keepdim=True)
        normed = ((grouped - mean) / (var + self.eps).sqrt()).view(n, c, length)
        return normed * self.weight[:, None] + self.bias[:, None]


class SeparateTaskHead(BaseModule):
    """Per decoder layer and head: Conv1d(C -> head_conv) + GroupLayerNorm + ReLU + Conv1d.

    Input [L, B, Q, C] with L = groups decoder layers; output {head: [L, B, Q, c]}.
    Kaiming-normal convolutions; the class logits' bias starts at `init_bias`
    (-2.19: a prior of about 0.1).
    """

    def __init__(
        self,
        in_channels: int,
        heads: dict[str, tuple[int, int]],
        groups: int,
        head_conv: int = 64,
        final_kernel: int = 1,
        init_bias: float = -2.19,
    ) -> None:
        super().__init__(init_cfg=dict(type="Kaiming", layer="Conv1d"))
        self.heads = dict(heads)
        self.groups = groups
        self.init_bias = init_bias
        pad = final_kernel // 2
        for name, (out_channels, num_conv) in self.heads.items():
            layers: list[nn.Module] = []
            c_in = in_channels
            for _ in range(num_conv - 1):
                layers += [
                    nn.Conv1d(
                        c_in * groups,
                        head_conv * groups,
                        final_kernel,
                        padding=pad,
                        groups=groups,
                        bias=False,
                    ),
                    GroupLayerNorm1d(head_conv * groups, groups=groups),
                    nn.ReLU(inplace=True),
                ]
                c_in = head_conv
            layers.append(
                nn.Conv1d(
                    c_in * groups, out_channels * groups, final_kernel, padding=pad, groups=groups
                )
            )
            self.add_module(name, nn.Sequential(*layers))

    def init_weights(self) -> None:
        super().init_weights()
        if "cls_logits" in self.heads:
            nn.init.constant_(self.cls_logits[-1].bias, self.init_bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        layers, batch, queries, channels = x.shape
        if layers != self.groups:
            raise ValueError(f"got {layers} decoder layers, the heads are built for {self.groups}")
        flat = x.permute(1, 0, 3, 2).reshape(batch, layers * channels, queries)
        outputs = {}
        for name in self.heads:
            out = getattr(self, name)(flat)  # [B, L * c, Q]
            outputs[name] = out.view(batch, layers, -1, queries).permute(1, 0, 3, 2)
        return outputs
