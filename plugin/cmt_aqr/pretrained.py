"""Pretrained image backbone weights, loaded completely or not at all.

CMT starts its image backbones from nuImages R50 / FCOS3D VoV-99 weights through
`load_from`, which loads whatever keys happen to match and only warns about the rest.
Here the backbone's own `init_cfg` loads them, and a file that does not cover every
tensor of the backbone is an error instead of a warning: a half-pretrained backbone
trains, but it is not CMT's baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from mmdet3d.registry import WEIGHT_INITIALIZERS
from mmengine.logging import print_log
from mmengine.model.weight_init import update_init_info
from mmengine.runner.checkpoint import CheckpointLoader
from torch import nn

# Where the weights live inside a checkpoint, tried in this order: CMT's files (keys as
# its detector names them), an mmdet/mmdet3d detector (e.g. nuImages Mask R-CNN), and a
# bare backbone's state dict.
KEY_PREFIXES = ("img_backbone.", "backbone.", "")
WHERE_USERS_GET_THEM = (
    "CMT's README (github junjie18/CMT, 'PKLs and image pretrain weights') distributes "
    "nuim_r50.pth (R50) and fcos3d_vovnet_imgbackbone-remapped.pth (VoV-99)"
)


def _own_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a pretrained file must provide (BN's step counters are not weights)."""
    return {
        name: tensor
        for name, tensor in module.state_dict().items()
        if not name.endswith("num_batches_tracked")
    }


def backbone_weights(
    state_dict: Mapping[str, torch.Tensor],
    wanted: Mapping[str, torch.Tensor],
    source: str,
    prefixes: Sequence[str] = KEY_PREFIXES,
) -> dict[str, torch.Tensor]:
    """The backbone's tensors out of a checkpoint's state dict, under the first prefix
    that has them all; an error says what the best prefix lacked."""
    best: tuple[str, list[str]] | None = None
    for prefix in prefixes:
        found = {name: state_dict[prefix + name] for name in wanted if prefix + name in state_dict}
        missing = [name for name in wanted if name not in found]
        if not missing:
            wrong = [
                f"{prefix}{name} {tuple(found[name].shape)} (backbone: {tuple(tensor.shape)})"
                for name, tensor in wanted.items()
                if found[name].shape != tensor.shape
            ]
            if wrong:
                raise ValueError(
                    f"{source}: {len(wrong)} tensors have another shape than the image "
                    f"backbone's, e.g. {', '.join(wrong[:3])}: weights of another backbone?"
                )
            return found
        if best is None or len(missing) < len(best[1]):
            best = (prefix, missing)
    assert best is not None, "no key prefix to try"
    prefix, missing = best
    raise ValueError(
        f"{source}: no weights for {len(missing)} of the image backbone's {len(wanted)} "
        f"tensors (looked for keys under {', '.join(repr(p) for p in prefixes)}; best "
        f"{prefix!r}, missing e.g. {', '.join(missing[:3])}): weights of another backbone?"
    )


@WEIGHT_INITIALIZERS.register_module()
class CmtPretrainedBackbone:
    """`init_cfg=dict(type='CmtPretrainedBackbone', checkpoint=...)` of an image backbone.

    Loads every tensor of the backbone from `checkpoint` (keys under one of
    `prefixes`); a missing file, or one that lacks any tensor, is an error naming it.
    """

    def __init__(
        self,
        checkpoint: str,
        prefixes: Sequence[str] = KEY_PREFIXES,
        map_location: str = "cpu",
    ) -> None:
        self.checkpoint = str(checkpoint)
        self.prefixes = tuple(prefixes)
        self.map_location = map_location

    def __call__(self, module: nn.Module) -> None:
        if not Path(self.checkpoint).is_file():
            raise FileNotFoundError(
                f"pretrained image backbone weights {self.checkpoint} not found: "
                f"{WHERE_USERS_GET_THEM}; put the file there, or point the config's "
                f"model.img_backbone.init_cfg.checkpoint at it"
            )
        loaded = CheckpointLoader.load_checkpoint(self.checkpoint, self.map_location)
        state_dict = loaded.get("state_dict", loaded)
        own = _own_tensors(module)
        weights = backbone_weights(state_dict, own, self.checkpoint, self.prefixes)
        module.load_state_dict(weights, strict=False)
        print_log(
            f"image backbone: {len(weights)} tensors loaded from {self.checkpoint}",
            logger="current",
        )
        if hasattr(module, "_params_init_info"):
            update_init_info(module, init_info=f"{type(self).__name__}: {self.checkpoint}")
