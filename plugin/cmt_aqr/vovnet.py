"""VoVNet (one-shot aggregation) with effective squeeze-excitation, for CMT's
1600x640 config. mmdet ships no VoVNet, so the plugin has its own.

Module names follow the VoV-99 checkpoints CMT starts from (FCOS3D's image
backbone): ``stem.stem_1/conv``, ``stage2.OSA2_1.layers.0.OSA2_1_0/conv``,
``stage2.OSA2_1.concat.OSA2_1_concat/norm``, ``stage2.OSA2_1.ese.fc``, ...
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from mmdet3d.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn

# name: (stem channels, stage conv channels, stage out channels, layers per block, blocks per stage)
VOVNET_SPECS: dict[str, tuple[list[int], list[int], list[int], int, list[int]]] = {
    "V-39-eSE": ([64, 64, 128], [128, 160, 192, 224], [256, 512, 768, 1024], 5, [1, 1, 2, 2]),
    "V-57-eSE": ([64, 64, 128], [128, 160, 192, 224], [256, 512, 768, 1024], 5, [1, 1, 4, 3]),
    "V-99-eSE": ([64, 64, 128], [128, 160, 192, 224], [256, 512, 768, 1024], 5, [1, 3, 9, 3]),
}


def conv_bn_relu(
    cin: int, cout: int, name: str, kernel: int = 3, stride: int = 1
) -> list[tuple[str, nn.Module]]:
    """(name/conv, name/norm, name/relu), to be placed in a Sequential."""
    return [
        (f"{name}/conv", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)),
        (f"{name}/norm", nn.BatchNorm2d(cout)),
        (f"{name}/relu", nn.ReLU(inplace=True)),
    ]


class EffectiveSE(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * F.hardsigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True)))


class OSABlock(nn.Module):
    """Convs in sequence; all their outputs (and the input) aggregated once."""

    def __init__(
        self, cin: int, conv_ch: int, cout: int, num_layers: int, name: str, residual: bool
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                OrderedDict(conv_bn_relu(cin if i == 0 else conv_ch, conv_ch, f"{name}_{i}"))
            )
            for i in range(num_layers)
        )
        self.concat = nn.Sequential(
            OrderedDict(conv_bn_relu(cin + num_layers * conv_ch, cout, f"{name}_concat", kernel=1))
        )
        self.ese = EffectiveSE(cout)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        outputs = [x]
        for layer in self.layers:
            outputs.append(layer(outputs[-1]))
        y = self.ese(self.concat(torch.cat(outputs, dim=1)))
        return y + x if self.residual else y


@MODELS.register_module()
class CmtVoVNet(BaseModule):
    """Outputs the stages named in out_features (stage2..stage5: strides 4..32)."""

    def __init__(
        self,
        spec_name: str = "V-99-eSE",
        out_features: tuple[str, ...] = ("stage4", "stage5"),
        frozen_stages: int = -1,
        norm_eval: bool = True,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if spec_name not in VOVNET_SPECS:
            raise ValueError(f"unknown VoVNet spec {spec_name!r}; known: {sorted(VOVNET_SPECS)}")
        stem_ch, conv_ch, out_ch, num_layers, blocks = VOVNET_SPECS[spec_name]
        self.stem = nn.Sequential(
            OrderedDict(
                conv_bn_relu(3, stem_ch[0], "stem_1", stride=2)
                + conv_bn_relu(stem_ch[0], stem_ch[1], "stem_2")
                + conv_bn_relu(stem_ch[1], stem_ch[2], "stem_3", stride=2)
            )
        )
        self.stage_names = []
        cin = stem_ch[2]
        for i, (cc, co, nb) in enumerate(zip(conv_ch, out_ch, blocks, strict=True)):
            number = i + 2
            modules: list[tuple[str, nn.Module]] = []
            if i > 0:
                modules.append(("Pooling", nn.MaxPool2d(3, 2, ceil_mode=True)))
            for b in range(nb):
                name = f"OSA{number}_{b + 1}"
                block = OSABlock(cin if b == 0 else co, cc, co, num_layers, name, residual=b > 0)
                modules.append((name, block))
            self.add_module(f"stage{number}", nn.Sequential(OrderedDict(modules)))
            self.stage_names.append(f"stage{number}")
            cin = co
        self.out_features = out_features
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = self.stem(x)
        outputs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs.append(x)
        return tuple(outputs)

    def train(self, mode: bool = True) -> CmtVoVNet:
        super().train(mode)
        stages = [self.stem, *(getattr(self, n) for n in self.stage_names)]
        for module in stages[: self.frozen_stages + 1]:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self
