"""Every config builds its model on CPU; a full-scale-sized pillar variant runs forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS
from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import PARAM_SCHEDULERS, init_default_scope
from mmengine.structures import InstanceData
from torch import nn

from aqr_exp.paths import PLUGIN_CONFIGS

FULL_SCALE = [
    "cmt_lc_voxel0100_r50_800x320_8xb2-cyclic-20e_nus-3d.py",
    "cmt_lc_voxel0075_vov99_1600x640_8xb2-cyclic-20e_nus-3d.py",
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
    assert cfg.model.img_backbone.norm_eval is True
    if backbone == "ResNet":  # CMT's: pytorch style, BN affine trainable, statistics frozen
        assert cfg.model.img_backbone.style == "pytorch"
        assert cfg.model.img_backbone.norm_cfg.requires_grad is True
    assert cfg.optim_wrapper.clip_grad.max_norm == 35
    assert cfg.train_dataloader.dataset.type == "CBGSDataset"
    assert cfg.train_dataloader.batch_size == 2 and "_8xb2-" in name  # CMT: 2 per GPU, 8 GPUs


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


def _random_batch(
    model: nn.Module, cfg: Config, num_points: int, half_range: float, num_boxes: int = 0
) -> dict:
    """One preprocessed sample: random points within ±half_range m, 6 random images and,
    for training, `num_boxes` random ground-truth boxes."""
    height, width = cfg.image_size
    scale = torch.tensor([2 * half_range, 2 * half_range, 6.0, 1.0, 0.0])
    points = torch.rand(num_points, 5) * scale - torch.tensor([half_range, half_range, 4.0, 0, 0])
    sample = Det3DDataSample(metainfo={"lidar2img": _lidar2img(6, width, height)})
    if num_boxes:
        boxes = torch.rand(num_boxes, 9) * torch.tensor([60, 60, 1, 3, 2, 2, 3, 1, 1])
        boxes[:, :2] -= 30
        sample.gt_instances_3d = InstanceData(
            bboxes_3d=LiDARInstance3DBoxes(boxes, box_dim=9),
            labels_3d=torch.randint(0, 10, (num_boxes,)),
        )
    data = {
        "inputs": {
            "points": [points],
            "img": [torch.randint(0, 255, (6, 3, height, width), dtype=torch.uint8)],
        },
        "data_samples": [sample],
    }
    return model.data_preprocessor(data, bool(num_boxes))


def _with_pillars(cfg: Config, voxel: float) -> int:
    """Swap the sparse LiDAR encoder (mmcv's sparse convolution is CUDA only) for pillars
    of `voxel` m over the config's voxelized range; returns the BEV cells a side."""
    low, high = cfg.model.data_preprocessor.voxel_layer.point_cloud_range[::3][:2]
    cells = round((high - low) / voxel)
    size = [voxel, voxel, 8.0]
    cfg.model.data_preprocessor.voxel_layer.update(
        voxel_size=size, max_num_points=20, max_voxels=(30000, 30000)
    )
    cfg.model.pts_voxel_encoder = dict(
        type="PillarFeatureNet", in_channels=5, feat_channels=[64], voxel_size=size,
        point_cloud_range=cfg.model.data_preprocessor.voxel_layer.point_cloud_range,
    )  # fmt: skip
    cfg.model.pts_middle_encoder = dict(
        type="PointPillarsScatter", in_channels=64, output_shape=[cells, cells]
    )
    cfg.model.pts_backbone.in_channels = 64
    return cells


@pytest.mark.slow
def test_full_scale_sized_pillar_variant_runs_forward_at_batch_1(tmp_path: Path) -> None:
    """The R50 800x320 config with its LiDAR branch swapped for pillars (mmcv has no
    CPU sparse conv): same BEV size (128x128), images, queries and decoder."""
    cfg = _load(FULL_SCALE[0])
    assert _with_pillars(cfg, voxel=0.8) == 128
    cfg.model.img_backbone.init_cfg = None  # no pretrained file here
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    with torch.no_grad():
        batch = _random_batch(model, cfg, num_points=30000, half_range=50.0)
        outputs = model(batch["inputs"], batch["data_samples"], mode="tensor")
        bev, img = model.extract_feat(batch["inputs"], batch["data_samples"])
    assert tuple(bev.shape[-2:]) == (128, 128)  # 16,384 BEV tokens
    assert tuple(img.shape) == (1, 6, 256, 20, 50)  # 6,000 camera tokens
    assert outputs.cls_logits.shape == (6, 1, 900, 10)
    assert torch.isfinite(outputs.codes).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL_SCALE)
def test_full_scale_family_trains_a_step_in_bfloat16(name: str) -> None:
    """A training step of each full-scale family in mixed precision. mmengine's
    AmpOptimWrapper asserts a CUDA device, so on the CPU the step runs under the CPU's
    bfloat16 autocast, which is what the wrapper's optim_context enters; the config's
    fp32_modules stay float32. Smoke size: pillars instead of the sparse encoder (CUDA
    only), 128x320 images, 100 queries."""
    cfg = _load(name)
    _with_pillars(cfg, voxel=1.6)
    cfg.image_size = (128, 320)
    cfg.model.pts_bbox_head.num_query = 100
    cfg.model.img_backbone.init_cfg = None  # no pretrained file here; its test is apart
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch = _random_batch(model, cfg, num_points=20000, half_range=50.0, num_boxes=6)
    plain = {key: value for key, value in cfg.optim_wrapper.items() if key != "loss_scale"}
    wrapper = build_optim_wrapper(model, {**plain, "type": "OptimWrapper"})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch["inputs"], batch["data_samples"], mode="loss")
    loss, _ = model.parse_losses(losses)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    wrapper.update_params(loss)
    moved = {
        name.split(".")[0]
        for name, p in model.named_parameters()
        if not torch.equal(p, before[name])
    }
    assert {"img_backbone", "img_neck", "pts_backbone", "pts_neck", "pts_bbox_head"} <= moved


class _Parts(nn.Module):
    """One parameter per part whose name the official paramwise_cfg keys on."""

    def __init__(self) -> None:
        super().__init__()
        self.img_backbone = nn.Linear(1, 1, bias=False)
        self.img_neck = nn.Linear(1, 1, bias=False)
        self.pts_bbox_head = nn.Linear(1, 1, bias=False)


def _schedule_trace(cfg: Config, epoch_length: int, at: list[int]) -> dict[int, dict]:
    """(lr, beta1, weight decay) per part at the given iterations, as mmengine's
    ParamSchedulerHook steps the schedulers (after every iteration)."""
    model = _Parts()
    names = {id(param): name.split(".")[0] for name, param in model.named_parameters()}
    # The same optimizer and parameter groups without AMP's loss scaler, which needs a GPU.
    plain = {key: value for key, value in cfg.optim_wrapper.items() if key != "loss_scale"}
    wrapper = build_optim_wrapper(model, {**plain, "type": "OptimWrapper"})
    schedulers = [
        PARAM_SCHEDULERS.build(s, default_args=dict(optimizer=wrapper, epoch_length=epoch_length))
        for s in cfg.param_scheduler
    ]
    trace = {}
    for step in range(max(at) + 1):
        if step in at:
            trace[step] = {
                names[id(group["params"][0])]: (
                    group["lr"],
                    group["betas"][0],
                    group["weight_decay"],
                )
                for group in wrapper.optimizer.param_groups
            }
        for scheduler in schedulers:
            scheduler.step()
    return trace


@pytest.mark.parametrize(
    ("name", "lr", "peak"), [(FULL_SCALE[0], 1.4e-4, 6), (FULL_SCALE[1], 1e-4, 8)]
)
def test_full_scale_schedule_is_cmts_cyclic_recipe(name: str, lr: float, peak: float) -> None:
    """mmcv 1.x's cyclic targets are ratios of each group's initial value: lr x1 -> x`peak`
    at 40 % -> x1e-4 at the end, beta1 0.9 -> 0.9 * 0.85 / 0.95 -> 0.9 (CMT's configs)."""
    cfg = _load(name)
    epochs, epoch_length = cfg.train_cfg.max_epochs, 100
    total = epochs * epoch_length
    trace = _schedule_trace(cfg, epoch_length, [0, int(0.4 * total), total])
    assert epochs == 20
    mults = {"img_backbone": 0.01, "img_neck": 0.1, "pts_bbox_head": 1.0}
    expected = {
        0: (1.0, 0.9),
        int(0.4 * total): (peak, 0.9 * 0.85 / 0.95),
        total: (1e-4, 0.9),
    }
    for step, (lr_ratio, beta1) in expected.items():
        for part, mult in mults.items():
            got_lr, got_beta1, _ = trace[step][part]
            print(f"{name} {step / total:4.0%} {part:14s} lr {got_lr:.3g} beta1 {got_beta1:.4f}")
            # At 40 % the decay phase has taken its first of 1,200 steps; at the end the last
            # cosine step is still a few 1e-6 of the peak.
            tolerance = dict(abs=1e-5 * lr * mult * peak) if step == total else dict(rel=1e-3)
            assert got_lr == pytest.approx(lr * mult * lr_ratio, **tolerance), (step, part)
            assert got_beta1 == pytest.approx(beta1, rel=1e-3), (step, part)
    assert trace[0]["img_backbone"][2] == pytest.approx(0.05)  # decay_mult 5
    assert (cfg.optim_wrapper.type, cfg.optim_wrapper.loss_scale) == ("AmpOptimWrapper", "dynamic")
    assert cfg.model.fp32_modules == ["pts_voxel_encoder", "pts_middle_encoder", "pts_bbox_head"]
    assert trace[0]["pts_bbox_head"][2] == pytest.approx(0.01)


@pytest.mark.parametrize("name", FULL_SCALE)
def test_full_scale_augmentations_are_cmts(name: str) -> None:
    """GlobalRotScaleTransAll, CustomRandomFlip3D and ModalMask3D of CMT's configs."""
    cfg = _load(name)
    steps = {step["type"]: step for step in cfg.train_dataloader.dataset.dataset.pipeline}
    rot_scale = steps["CmtGlobalRotScaleTrans"]
    assert rot_scale.rot_range == pytest.approx([-0.3925 * 2, 0.3925 * 2], abs=1e-3)
    assert rot_scale.scale_ratio_range == [0.9, 1.1]
    assert rot_scale.translation_std == [0.5, 0.5, 0.5]
    flip = steps["CmtBEVFlip"]
    assert (flip.flip_ratio_horizontal, flip.flip_ratio_vertical) == (0.5, 0.5)
    mask = steps["CmtModalityMask"]
    assert (mask.camera_prob, mask.lidar_prob) == (0.25, 0.25)
    test_steps = {step["type"]: step for step in cfg.test_dataloader.dataset.pipeline}
    for pipeline in (steps, test_steps):
        assert pipeline["LoadPointsFromMultiSweeps"].sweeps_num == 10


@pytest.mark.parametrize("name", FULL_SCALE)
def test_full_scale_gt_sampling_is_cmts_15e_plus_5e(name: str) -> None:
    """UnifiedObjectSample right after loading, CMT's groups and filters, off for the last
    5 of 20 epochs."""
    cfg = _load(name)
    order = [step["type"] for step in cfg.train_dataloader.dataset.dataset.pipeline]
    assert order.index("CmtUnifiedObjectSample") == order.index("LoadAnnotations3D") + 1
    assert order.index("CmtUnifiedObjectSample") < order.index("CmtGlobalRotScaleTrans")
    step = cfg.train_dataloader.dataset.dataset.pipeline[order.index("CmtUnifiedObjectSample")]
    assert (step.sample_2d, step.mixup_rate) == (True, 0.5)
    sampler = step.db_sampler
    assert sampler.sample_groups == dict(
        car=2, truck=3, construction_vehicle=7, bus=4, trailer=6, barrier=2, motorcycle=6,
        bicycle=6, pedestrian=2, traffic_cone=2,
    )  # fmt: skip
    assert set(sampler.prepare.filter_by_min_points.values()) == {5}
    assert set(sampler.prepare.filter_by_min_points) == set(cfg.class_names)
    assert sampler.info_path == cfg.data_root + "nuscenes_dbinfos_train.pkl"
    (hook,) = cfg.custom_hooks
    assert hook.type == "CmtObjectSampleSwitchHook"
    assert cfg.train_cfg.max_epochs - hook.switch_epoch == 5


@pytest.mark.parametrize("fp32_modules", [(), ("pts_voxel_encoder", "pts_bbox_head")])
def test_fp32_modules_run_in_float32_under_autocast(fp32_modules: tuple[str, ...]) -> None:
    """CMT's custom_fp16: under mixed precision (here the CPU's bfloat16 autocast) the
    listed parts compute in float32, the others in the low precision."""
    cfg = _load("cmt_lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py")
    cfg.model.fp32_modules = fp32_modules
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    dtypes = {}
    for part in ("img_neck", "pts_voxel_encoder", "pts_backbone"):
        getattr(model, part).register_forward_hook(
            lambda module, args, out, part=part: dtypes.__setitem__(
                part, (out[0] if isinstance(out, (list, tuple)) else out).dtype
            )
        )
    batch = _random_batch(model, cfg, num_points=4000, half_range=30.0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(batch["inputs"], batch["data_samples"], mode="tensor")
    low = torch.bfloat16
    assert dtypes["img_neck"] == low
    assert dtypes["pts_backbone"] == low
    assert dtypes["pts_voxel_encoder"] == (torch.float32 if fp32_modules else low)
    assert outputs.cls_logits.dtype == (torch.float32 if fp32_modules else low)
    assert torch.isfinite(outputs.codes.float()).all()


def test_fp32_modules_must_name_a_part() -> None:
    cfg = _load("cmt_lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py")
    cfg.model.fp32_modules = ["pts_bbox_haed"]
    with pytest.raises(ValueError, match="pts_bbox_haed"):
        MODELS.build(cfg.model)
