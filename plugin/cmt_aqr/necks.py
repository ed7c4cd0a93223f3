"""CPFPN: an FPN whose 3x3 output conv runs only on the finest level.

CMT reads only the stride-16 level, so the coarser levels skip the output conv.
Names as in CMT's checkpoints: ``lateral_convs.N.conv``, ``fpn_convs.0.conv``.
"""

from __future__ import annotations

import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet3d.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn


@MODELS.register_module()
class CmtCPFPN(BaseModule):
    def __init__(
        self,
        in_channels: list[int],
        out_channels: int,
        norm_cfg: dict | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(
            init_cfg=init_cfg or dict(type="Xavier", layer="Conv2d", distribution="uniform")
        )
        self.lateral_convs = nn.ModuleList(
            ConvModule(c, out_channels, 1, norm_cfg=norm_cfg, act_cfg=None) for c in in_channels
        )
        self.fpn_convs = nn.ModuleList(
            (ConvModule(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg, act_cfg=None),)
        )

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        return (self.fpn_convs[0](laterals[0]), *laterals[1:])
