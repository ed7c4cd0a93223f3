"""Write the state-dict manifests of CMT's official LiDAR + camera checkpoints.

    python scripts/official_manifest.py        # rewrites plugin/manifests/*.txt

The manifests say which names and shapes an official checkpoint (github junjie18/CMT,
d3b1d78: ``projects/configs/fusion/cmt_voxel0100_r50_800x320_cbgs.py`` and
``cmt_voxel0075_vov_1600x640_cbgs.py``) holds, so that a test can check our baseline
against them without the checkpoint files. They are derived from the official model
definitions, never from our own modules:

- the parts CMT takes from OpenMMLab unchanged (mmdet's ResNet, mmdet3d's
  SparseEncoder, SECOND, SECONDFPN) are built from those library classes with the
  official config's arguments — their parameter names are the same in mmdet 2.x /
  mmdet3d 1.0 and mmdet 3.3 / mmdet3d 1.4;
- the parts CMT defines itself (CPFPN, VoVNet, CmtHead with its transformer and task
  heads) are transcribed below from its source, each function citing file and lines.

Sparse-convolution kernels are written in spconv 2's layout (out, D, H, W, in): CMT
trained with spconv 2.1 (its voxelizer imports spconv.pytorch), so mmdet3d 1.0
registered spconv 2's layers and the checkpoints hold that layout.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "plugin" / "manifests"

Entry = tuple[str, tuple[int, ...]]

# The arguments of the official configs that shape the parameters.
R50 = dict(
    name="official_cmt_voxel0100_r50_800x320",
    config="projects/configs/fusion/cmt_voxel0100_r50_800x320_cbgs.py",
    image="resnet50",
    neck_in=(1024, 2048),
    sparse_shape=(41, 1024, 1024),
)
VOV = dict(
    name="official_cmt_voxel0075_vov99_1600x640",
    config="projects/configs/fusion/cmt_voxel0075_vov_1600x640_cbgs.py",
    image="vov99",
    neck_in=(768, 1024),
    sparse_shape=(41, 1440, 1440),
)
HIDDEN = 256
NUM_LAYERS = 6
FFN = 1024
NUM_QUERY = 900
DEPTH_NUM = 64
NUM_CLASSES = 10
HEAD_CONV = 64
HEAD_IN = 512  # SECONDFPN: 256 + 256


def _state(module) -> Iterator[Entry]:
    for name, tensor in module.state_dict().items():
        yield name, tuple(tensor.shape)


def resnet50() -> Iterator[Entry]:
    """Config `img_backbone`: mmdet ResNet, depth 50, 4 stages, out_indices (2, 3)."""
    from mmdet.models.backbones import ResNet

    yield from _state(ResNet(depth=50, num_stages=4, out_indices=(2, 3), style="pytorch"))


def _batch_norm(prefix: str, channels: int) -> Iterator[Entry]:
    yield f"{prefix}.weight", (channels,)
    yield f"{prefix}.bias", (channels,)
    yield f"{prefix}.running_mean", (channels,)
    yield f"{prefix}.running_var", (channels,)
    yield f"{prefix}.num_batches_tracked", ()


def vov99() -> Iterator[Entry]:
    """models/backbones/vovnet.py: VoVNet99_eSE spec (l. 81-89), conv3x3/conv1x1 name their
    layers "{module}_{postfix}/conv|norm" (l. 126-163), _OSA_module holds `layers`,
    `concat`, `ese.fc` (l. 190-218), _OSA_stage names blocks OSA{stage}_{i} (l. 243-276),
    VoVNet the stem_1..3 convs and stage2..5 (l. 299-345)."""
    stem, stage_ch, concat_ch, per_block, blocks = (
        [64, 64, 128], [128, 160, 192, 224], [256, 512, 768, 1024], 5, [1, 3, 9, 3]
    )  # fmt: skip

    def conv(prefix: str, name: str, cin: int, cout: int, k: int) -> Iterator[Entry]:
        yield f"{prefix}.{name}/conv.weight", (cout, cin, k, k)
        yield from _batch_norm(f"{prefix}.{name}/norm", cout)

    cin = 3
    for i, cout in enumerate(stem, start=1):
        yield from conv("stem", f"stem_{i}", cin, cout, 3)
        cin = cout
    for s in range(4):
        number = s + 2
        for b in range(blocks[s]):
            block = f"OSA{number}_{b + 1}"
            prefix = f"stage{number}.{block}"
            c = cin if b == 0 else concat_ch[s]
            block_in = c
            for layer in range(per_block):
                yield from conv(f"{prefix}.layers.{layer}", f"{block}_{layer}", c, stage_ch[s], 3)
                c = stage_ch[s]
            total = block_in + per_block * stage_ch[s]
            yield from conv(f"{prefix}.concat", f"{block}_concat", total, concat_ch[s], 1)
            yield f"{prefix}.ese.fc.weight", (concat_ch[s], concat_ch[s], 1, 1)
            yield f"{prefix}.ese.fc.bias", (concat_ch[s],)
        cin = concat_ch[s]


def cpfpn(in_channels: tuple[int, int]) -> Iterator[Entry]:
    """models/necks/cp_fpn.py l. 107-130: one 1x1 lateral ConvModule per level, the 3x3
    fpn conv only for level 0; no norm, so every conv has a bias."""
    for i, cin in enumerate(in_channels):
        yield f"lateral_convs.{i}.conv.weight", (HIDDEN, cin, 1, 1)
        yield f"lateral_convs.{i}.conv.bias", (HIDDEN,)
    yield "fpn_convs.0.conv.weight", (HIDDEN, HIDDEN, 3, 3)
    yield "fpn_convs.0.conv.bias", (HIDDEN,)


def sparse_encoder(sparse_shape: tuple[int, int, int]) -> Iterator[Entry]:
    """Config `pts_middle_encoder`: mmdet3d SparseEncoder, kernels in spconv 2's layout."""
    from mmdet3d.models.middle_encoders import SparseEncoder

    encoder = SparseEncoder(
        in_channels=5,
        sparse_shape=list(sparse_shape),
        output_channels=128,
        order=("conv", "norm", "act"),
        encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
        encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, [0, 1, 1]), (0, 0)),
        block_type="basicblock",
    )
    for name, shape in _state(encoder):
        if len(shape) == 5:  # mmcv (D, H, W, in, out) -> spconv 2 (out, D, H, W, in)
            shape = (shape[4], *shape[:4])
        yield name, shape


def second() -> Iterator[Entry]:
    """Config `pts_backbone`: mmdet3d SECOND."""
    from mmdet3d.models.backbones import SECOND

    yield from _state(
        SECOND(
            in_channels=256,
            out_channels=[128, 256],
            layer_nums=[5, 5],
            layer_strides=[1, 2],
            norm_cfg=dict(type="BN", eps=0.001, momentum=0.01),
            conv_cfg=dict(type="Conv2d", bias=False),
        )
    )


def second_fpn() -> Iterator[Entry]:
    """Config `pts_neck`: mmdet3d SECONDFPN."""
    from mmdet3d.models.necks import SECONDFPN

    yield from _state(
        SECONDFPN(
            in_channels=[128, 256],
            out_channels=[256, 256],
            upsample_strides=[1, 2],
            norm_cfg=dict(type="BN", eps=0.001, momentum=0.01),
            upsample_cfg=dict(type="deconv", bias=False),
            use_conv_for_no_stride=True,
        )
    )


def cmt_head() -> Iterator[Entry]:
    """models/dense_heads/cmt_head.py CmtHead.__init__ l. 280-312: shared_conv (ConvModule
    conv + BN2d), transformer, reference_points, bev_embedding and rv_embedding
    (Linear, ReLU, Linear), one SeparateTaskHead per task (the fusion configs have one task
    of 10 classes) with groups = decoder layers (l. 116-160: Conv1d without bias,
    GroupLayerNorm1d, ReLU, Conv1d; l. 88-89: the norm's weight and bias)."""
    yield "shared_conv.conv.weight", (HIDDEN, HEAD_IN, 3, 3)
    yield from _batch_norm("shared_conv.bn", HIDDEN)
    yield from (("transformer." + name, shape) for name, shape in cmt_transformer())
    yield "reference_points.weight", (NUM_QUERY, 3)
    yield "bev_embedding.0.weight", (HIDDEN, HIDDEN * 2)
    yield "bev_embedding.0.bias", (HIDDEN,)
    yield "bev_embedding.2.weight", (HIDDEN, HIDDEN)
    yield "bev_embedding.2.bias", (HIDDEN,)
    yield "rv_embedding.0.weight", (HIDDEN * 4, DEPTH_NUM * 3)
    yield "rv_embedding.0.bias", (HIDDEN * 4,)
    yield "rv_embedding.2.weight", (HIDDEN, HIDDEN * 4)
    yield "rv_embedding.2.bias", (HIDDEN,)
    heads = dict(center=2, height=1, dim=3, rot=2, vel=2, cls_logits=NUM_CLASSES)
    groups = NUM_LAYERS
    for head, out in heads.items():
        prefix = f"task_heads.0.{head}"
        yield f"{prefix}.0.weight", (HEAD_CONV * groups, HIDDEN, 1)
        yield f"{prefix}.1.weight", (HEAD_CONV * groups,)
        yield f"{prefix}.1.bias", (HEAD_CONV * groups,)
        yield f"{prefix}.3.weight", (out * groups, HEAD_CONV, 1)
        yield f"{prefix}.3.bias", (out * groups,)


def cmt_transformer() -> Iterator[Entry]:
    """models/utils/cmt_transformer.py CmtTransformer.decoder (l. 66-70); petr_transformer.py
    PETRTransformerDecoder.post_norm (l. 342) and its layers (mmcv BaseTransformerLayer:
    `attentions`, `ffns`, `norms`); attention 0 is mmcv's MultiheadAttention and attention 1
    PETRMultiheadFlashAttention (l. 226), both an `attn` with packed in_proj_weight/bias and
    out_proj (attention.py l. 111-117); the FFN is mmcv's (`layers.0.0`, `layers.1`)."""
    for layer in range(NUM_LAYERS):
        prefix = f"decoder.layers.{layer}"
        for a in range(2):
            yield f"{prefix}.attentions.{a}.attn.in_proj_weight", (3 * HIDDEN, HIDDEN)
            yield f"{prefix}.attentions.{a}.attn.in_proj_bias", (3 * HIDDEN,)
            yield f"{prefix}.attentions.{a}.attn.out_proj.weight", (HIDDEN, HIDDEN)
            yield f"{prefix}.attentions.{a}.attn.out_proj.bias", (HIDDEN,)
        yield f"{prefix}.ffns.0.layers.0.0.weight", (FFN, HIDDEN)
        yield f"{prefix}.ffns.0.layers.0.0.bias", (FFN,)
        yield f"{prefix}.ffns.0.layers.1.weight", (HIDDEN, FFN)
        yield f"{prefix}.ffns.0.layers.1.bias", (HIDDEN,)
        for n in range(3):
            yield f"{prefix}.norms.{n}.weight", (HIDDEN,)
            yield f"{prefix}.norms.{n}.bias", (HIDDEN,)
    yield "decoder.post_norm.weight", (HIDDEN,)
    yield "decoder.post_norm.bias", (HIDDEN,)


def manifest(setting: dict) -> list[tuple[str, list[Entry]]]:
    """(source comment, entries) groups, each entry prefixed like CmtDetector's state dict."""
    image = resnet50() if setting["image"] == "resnet50" else vov99()
    image_source = (
        "mmdet ResNet (library class, official arguments)"
        if setting["image"] == "resnet50"
        else vov99.__doc__
    )
    parts = [
        ("img_backbone", image_source, image),
        ("img_neck", cpfpn.__doc__, cpfpn(setting["neck_in"])),
        ("pts_middle_encoder", sparse_encoder.__doc__, sparse_encoder(setting["sparse_shape"])),
        ("pts_backbone", second.__doc__, second()),
        ("pts_neck", second_fpn.__doc__, second_fpn()),
        ("pts_bbox_head", cmt_head.__doc__ + " " + cmt_transformer.__doc__, cmt_head()),
    ]
    return [
        (f"{prefix}: {' '.join(source.split())}", [(f"{prefix}.{n}", s) for n, s in entries])
        for prefix, source, entries in parts
    ]


def write(setting: dict) -> Path:
    lines = [
        f"# State dict of CMT's official checkpoint for {setting['config']}",
        "# (github junjie18/CMT d3b1d78). Written by scripts/official_manifest.py; one",
        "# `name<TAB>shape` per line, grouped by where each group comes from.",
    ]
    for source, entries in manifest(setting):
        lines.append(f"# {source}")
        lines += [f"{name}\t{','.join(map(str, shape))}" for name, shape in entries]
    path = OUT_DIR / f"{setting['name']}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    for setting in (R50, VOV):
        print(write(setting))
    return 0


if __name__ == "__main__":
    sys.exit(main())
