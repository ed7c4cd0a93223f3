"""Every config builds its model on CPU; a full-scale-sized pillar variant runs forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS
from mmdet3d.structures import Det3DDataSample
from mmengine.config import Config
from mmengine.registry import init_default_scope

from aqr_exp.paths import PLUGIN_CONFIGS

FULL_SCALE = [
    "cmt_lc_voxel0100_r50_800x320_8xb2-cyclic-20e_nus-3d.py",
    "cmt_lc_voxel0075_vov99_1600x640_8xb1-cyclic-20e_nus-3d.py",
]


def _load(name: str) -> Config:
    init_default_scope("mmdet3d")
    return Config.fromfile(str(PLUGIN_CONFIGS / name))


@pytest.mark.parametrize("name", sorted(p.name for p in PLUGIN_CONFIGS.glob("*.py")))
def test_every_config_builds_its_model(name: str) -> None:
    cfg = _load(name)
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == "AqrCmtDetector"
    assert cfg.custom_imports["imports"] == ["cmt_aqr"]


@pytest.mark.parametrize(
    ("name", "bev_cells", "backbone"),
    [(FULL_SCALE[0], 1024, "ResNet"), (FULL_SCALE[1], 1440, "CmtVoVNet")],
)
def test_full_scale_configs_match_cmt_published_settings(
    name: str, bev_cells: int, backbone: str
) -> None:
    cfg = _load(name)
    head = cfg.model.pts_bbox_head
    assert cfg.model.pts_middle_encoder.sparse_shape[1:] == [bev_cells, bev_cells]
    voxelized = cfg.model.data_preprocessor.voxel_layer.point_cloud_range
    assert (voxelized[3] - voxelized[0]) / cfg.voxel_size[0] == pytest.approx(bev_cells)
    assert head.point_cloud_range == [-54.0, -54.0, -5.0, 54.0, 54.0, 3.0]
    decoder = head.transformer.decoder
    assert (head.num_query, head.embed_dims, decoder.num_layers, decoder.num_heads) == (
        900,
        256,
        6,
        8,
    )
    assert cfg.model.img_backbone.type.endswith(backbone)
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(1.4e-4)
    assert cfg.optim_wrapper.clip_grad.max_norm == 35
    assert cfg.train_dataloader.dataset.type == "CBGSDataset"


def _lidar2img(num_views: int, width: int, height: int) -> np.ndarray:
    mats = []
    for yaw in np.linspace(0, 2 * np.pi, num_views, endpoint=False):
        c, s = np.cos(yaw), np.sin(yaw)
        extr = np.eye(4)
        extr[:3, :3] = np.stack([[s, -c, 0.0], [0.0, 0.0, -1.0], [c, s, 0.0]])
        extr[:3, 3] = -extr[:3, :3] @ np.array([0.0, 0.0, 1.8])
        intr = np.eye(4)
        intr[0, 0] = intr[1, 1] = width * 0.8
        intr[0, 2], intr[1, 2] = width / 2, height / 2
        mats.append(intr @ extr)
    return np.stack(mats)


@pytest.mark.slow
def test_full_scale_sized_pillar_variant_runs_forward_at_batch_1(tmp_path: Path) -> None:
    """The R50 800x320 config with its LiDAR branch swapped for pillars (mmcv has no
    CPU sparse conv): same BEV size (128x128), images, queries and decoder."""
    cfg = _load(FULL_SCALE[0])
    pc_range = cfg.point_cloud_range
    voxel = [0.8, 0.8, 8.0]
    cfg.model.data_preprocessor.voxel_layer.update(
        voxel_size=voxel, max_num_points=20, max_voxels=(30000, 30000)
    )
    cfg.model.pts_voxel_encoder = dict(
        type="PillarFeatureNet",
        in_channels=5,
        feat_channels=[64],
        voxel_size=voxel,
        point_cloud_range=pc_range,
    )
    cfg.model.pts_middle_encoder = dict(
        type="PointPillarsScatter", in_channels=64, output_shape=[128, 128]
    )
    cfg.model.pts_backbone.in_channels = 64
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    height, width = cfg.image_size
    points = torch.rand(30000, 5) * torch.tensor([100.0, 100.0, 6.0, 1.0, 0.0]) - torch.tensor(
        [50.0, 50.0, 4.0, 0, 0]
    )
    sample = Det3DDataSample(metainfo={"lidar2img": _lidar2img(6, width, height)})
    data = {
        "inputs": {
            "points": [points],
            "img": [torch.randint(0, 255, (6, 3, height, width), dtype=torch.uint8)],
        },
        "data_samples": [sample],
    }
    with torch.no_grad():
        batch = model.data_preprocessor(data, False)
        outputs = model(batch["inputs"], batch["data_samples"], mode="tensor")
        bev, img = model.extract_feat(batch["inputs"], batch["data_samples"])
    assert tuple(bev.shape[-2:]) == (128, 128)  # 16,384 BEV tokens
    assert tuple(img.shape) == (1, 6, 256, 20, 50)  # 6,000 camera tokens
    assert outputs.cls_logits.shape == (6, 1, 900, 10)
    assert torch.isfinite(outputs.codes).all()
