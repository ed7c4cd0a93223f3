"""The full-scale baselines have CMT's official parameter layout, so its checkpoints load;
the head computes what CMT's head computes (task heads, normalizers, embeddings)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS
from mmdet3d.structures import LiDARInstance3DBoxes
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import load_state_dict

from aqr_exp.paths import PLUGIN_CONFIGS
from cmt_aqr.denoising import build_denoising
from cmt_aqr.detector import spconv2_to_model_layout
from cmt_aqr.grid_mask import GridMask, grid_keep_mask
from cmt_aqr.head import AqrCmtHead, LayerOutputs, SceneContext
from cmt_aqr.positional import sine_embedding, sine_frequencies
from cmt_aqr.task_head import SeparateTaskHead

MANIFESTS = Path(__file__).resolve().parents[1] / "plugin" / "manifests"
SETTINGS = {
    "voxel0100_r50_800x320": (
        "cmt_lc_voxel0100_r50_800x320_8xb2-cyclic-20e_nus-3d.py",
        "official_cmt_voxel0100_r50_800x320.txt",
    ),
    "voxel0075_vov99_1600x640": (
        "cmt_lc_voxel0075_vov99_1600x640_8xb2-cyclic-20e_nus-3d.py",
        "official_cmt_voxel0075_vov99_1600x640.txt",
    ),
}


def read_manifest(name: str) -> dict[str, tuple[int, ...]]:
    entries = {}
    for line in (MANIFESTS / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        entries[key] = tuple(int(v) for v in shape.split(",")) if shape else ()
    return entries


def build(config: str, **head_overrides) -> torch.nn.Module:
    init_default_scope("mmdet3d")
    cfg = Config.fromfile(str(PLUGIN_CONFIGS / config))
    cfg.model.pts_bbox_head.update(head_overrides)
    return MODELS.build(cfg.model)


def official_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The model's state dict with sparse kernels in spconv 2's layout, as CMT saved them."""
    shapes = {}
    for key, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)
        if key.startswith("pts_middle_encoder.") and len(shape) == 5:
            shape = (shape[4], *shape[:4])
        shapes[key] = shape
    return shapes


def fabricated_checkpoint(manifest: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in manifest.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.02
    return state


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_baseline_state_dict_equals_the_official_manifest(setting: str) -> None:
    config, manifest_name = SETTINGS[setting]
    manifest = read_manifest(manifest_name)
    ours = official_shapes(build(config))
    assert sorted(set(manifest) - set(ours)) == []
    assert sorted(set(ours) - set(manifest)) == []
    wrong = {k: (ours[k], manifest[k]) for k in manifest if ours[k] != manifest[k]}
    assert wrong == {}


@pytest.mark.parametrize("variant", ["cmt-aqr-old", "cmt-aqr-new"])
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_aqr_variants_differ_from_the_manifest_only_by_their_aqr_modules(
    setting: str, variant: str
) -> None:
    config, manifest_name = SETTINGS[setting]
    manifest = read_manifest(manifest_name)
    ours = official_shapes(build(config.replace("cmt_", f"{variant}_", 1)))
    extra = set(ours) - set(manifest)
    assert extra and all(k.startswith("pts_bbox_head.aqr.") for k in extra)
    assert set(manifest) <= set(ours)
    assert all(ours[k] == manifest[k] for k in manifest)


def test_an_official_checkpoint_loads_strictly_and_the_head_runs() -> None:
    config, manifest_name = SETTINGS["voxel0100_r50_800x320"]
    manifest = read_manifest(manifest_name)
    state = fabricated_checkpoint(manifest)
    model = build(config)
    load_state_dict(model, dict(state), strict=True)
    for key in ("pts_bbox_head.task_heads.0.cls_logits.3.bias", "img_neck.fpn_convs.0.conv.weight"):
        assert torch.equal(model.state_dict()[key], state[key])
    kernel = "pts_middle_encoder.conv_input.0.weight"
    assert torch.equal(model.state_dict()[kernel], state[kernel].permute(1, 2, 3, 4, 0))

    # The loaded head and image branch at smoke size (the sparse LiDAR encoder has no CPU
    # kernel, so the BEV map is given).
    model.eval()
    images = torch.randn(1, 6, 3, 64, 160)
    with torch.no_grad():
        img_feats = model.extract_img_feat(images)
        ctx = SceneContext(
            lidar2img=torch.as_tensor(_lidar2img(6, 160, 64), dtype=torch.float32)[None],
            image_size=(64, 160),
            bev_size=(8, 8),
            cam_size=tuple(img_feats.shape[-2:]),
        )
        outputs = model.pts_bbox_head(torch.randn(1, 512, 8, 8), img_feats, ctx, None)
    assert outputs.cls_logits.shape == (6, 1, 900, 10)
    assert torch.isfinite(outputs.codes).all()
    assert len(model.pts_bbox_head.predict(outputs)[0].scores_3d) == 300


def test_an_official_checkpoint_loads_into_new_aqr_with_only_aqr_keys_missing() -> None:
    config, manifest_name = SETTINGS["voxel0100_r50_800x320"]
    state = fabricated_checkpoint(read_manifest(manifest_name))
    model = build(config.replace("cmt_", "cmt-aqr-new_", 1))
    result = model.load_state_dict(
        {k: spconv_or_same(model, k, v) for k, v in state.items()}, strict=False
    )
    assert result.unexpected_keys == []
    assert result.missing_keys and all(
        k.startswith("pts_bbox_head.aqr.") for k in result.missing_keys
    )


def spconv_or_same(model: torch.nn.Module, key: str, value: torch.Tensor) -> torch.Tensor:
    target = model.state_dict()[key].shape
    permuted = spconv2_to_model_layout(value, target)
    return value if permuted is None else permuted


def test_sparse_kernels_are_permuted_only_when_the_layouts_differ() -> None:
    kernel = torch.randn(32, 3, 3, 3, 16)  # spconv 2: out, D, H, W, in
    permuted = spconv2_to_model_layout(kernel, torch.Size((3, 3, 3, 16, 32)))
    assert permuted is not None and torch.equal(permuted[1, 2, 0, 5, 7], kernel[7, 1, 2, 0, 5])
    assert spconv2_to_model_layout(kernel, kernel.shape) is None
    assert spconv2_to_model_layout(kernel, torch.Size((3, 3, 3, 32, 16))) is None


# ---------------------------------------------------------------- head units


def small_head(**overrides) -> AqrCmtHead:
    init_default_scope("mmdet3d")
    kwargs = dict(
        in_channels=16,
        point_cloud_range=[-20.0, -20.0, -5.0, 20.0, 20.0, 3.0],
        embed_dims=32,
        num_query=20,
        depth_num=8,
        transformer=dict(
            type="AqrCmtTransformer",
            decoder=dict(
                type="CmtTransformerDecoder",
                num_layers=3,
                embed_dims=32,
                num_heads=4,
                ffn_dims=64,
                dropout=0.0,
                self_attn_drop=0.0,
            ),
        ),
        dn_groups=3,
    )
    kwargs.update(overrides)
    head = AqrCmtHead(**kwargs)
    head.init_weights()
    return head.eval()


def test_grouped_task_heads_give_independent_per_layer_outputs_of_official_shapes() -> None:
    heads = {"center": (2, 2), "dim": (3, 2), "cls_logits": (10, 2)}
    task_head = SeparateTaskHead(32, heads, groups=3)
    task_head.init_weights()
    x = torch.randn(3, 2, 7, 32)
    out = task_head(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "center": (3, 2, 7, 2),
        "dim": (3, 2, 7, 3),
        "cls_logits": (3, 2, 7, 10),
    }
    assert tuple(task_head.center[0].weight.shape) == (64 * 3, 32, 1)
    assert tuple(task_head.cls_logits[3].weight.shape) == (10 * 3, 64, 1)
    changed = x.clone()
    changed[2] += 1.0
    again = task_head(changed)
    assert torch.equal(again["center"][:2], out["center"][:2])
    assert not torch.allclose(again["center"][2], out["center"][2])


def test_class_logits_start_at_the_official_prior_and_convs_are_kaiming() -> None:
    head = small_head()
    cls_conv = head.task_heads[0].cls_logits[3]
    assert torch.all(cls_conv.bias == -2.19)
    assert torch.all(head.task_heads[0].center[3].bias == 0)
    hidden = head.task_heads[0].center[0].weight
    # Kaiming normal, fan_out (= out channels x kernel 1), ReLU gain: std = sqrt(2 / fan_out).
    assert hidden.std().item() == pytest.approx(math.sqrt(2 / hidden.shape[0]), rel=0.1)


def test_sine_embedding_uses_cmt_frequencies() -> None:
    assert sine_frequencies(8).tolist() == [1.0, 1.0, 1.25, 1.25, 1.5, 1.5, 1.75, 1.75]
    pos = torch.tensor([[0.25, 0.5]])
    emb = sine_embedding(pos, 8)
    angle_y = 2 * math.pi * 0.5 / torch.tensor([1.0, 1.25, 1.5, 1.75])
    angle_x = 2 * math.pi * 0.25 / torch.tensor([1.0, 1.25, 1.5, 1.75])
    expected = torch.cat(
        (
            torch.stack((angle_y.sin(), angle_y.cos()), dim=-1).flatten(),
            torch.stack((angle_x.sin(), angle_x.cos()), dim=-1).flatten(),
        )
    )
    assert torch.allclose(emb[0], expected, atol=1e-6)


def _one_box() -> LiDARInstance3DBoxes:
    return LiDARInstance3DBoxes(
        torch.tensor([[2.0, 3.0, -1.0, 4.0, 2.0, 1.5, 0.3, 1.0, 0.0]]), box_dim=9
    )


def test_class_loss_is_normalized_by_positives_plus_a_tenth_of_negatives() -> None:
    head = small_head(dn_groups=0)
    num_layers, queries, classes = 3, 20, 10
    logits = torch.zeros(num_layers, 1, queries, classes)
    codes = torch.zeros(num_layers, 1, queries, 10)
    outputs = LayerOutputs(logits, codes)
    losses = head.loss(outputs, None, [_one_box()], [torch.tensor([4])])
    # Every logit is 0 (p = 0.5): focal terms are alpha·0.25·log 2 (positive) and
    # (1 - alpha)·0.25·log 2 (negative), one positive among 20 x 10.
    pos = 0.25 * 0.25 * math.log(2)
    neg = 0.75 * 0.25 * math.log(2)
    total = pos + (queries * classes - 1) * neg
    expected = 2.0 * total / (1 + 0.1 * (queries - 1))
    assert losses["loss_cls"].item() == pytest.approx(expected, rel=1e-5)


def test_dn_box_loss_covers_every_dn_query_and_uses_the_ball_normalizer() -> None:
    head = small_head(dn_groups=4)
    box, label = _one_box(), torch.tensor([4])
    torch.manual_seed(0)
    dn = head.make_denoising([box], [label])
    assert dn is not None
    num_layers = 3
    total = dn.pad_size + 20
    logits = torch.zeros(num_layers, 1, total, 10)
    codes = torch.zeros(num_layers, 1, total, 10)
    losses = head.loss(LayerOutputs(logits, codes), dn, [box], [label])
    from cmt_aqr.box_coder import encode_boxes

    target = encode_boxes(box)[0]
    per_query = 0.25 * (target.abs() * head.code_weights).sum()
    real = int((dn.gt_index >= 0).sum())
    assert losses["dn_loss_bbox"].item() == pytest.approx(per_query.item(), rel=1e-5)
    focal_zero = torch.full((10,), 0.75 * 0.25 * math.log(2))
    fg = dn.labels[dn.gt_index >= 0] < 10
    sums = real * focal_zero.sum() + fg.sum() * (0.25 - 0.75) * 0.25 * math.log(2)
    expected = 2.0 * sums / max(real * math.pi / 6 * 0.75**3, 1)
    assert losses["dn_loss_cls"].item() == pytest.approx(expected.item(), rel=1e-5)


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


@pytest.mark.parametrize("aqr_type", ["old", "new"])
def test_dn_queries_leave_the_matching_queries_unchanged(aqr_type: str) -> None:
    """DN queries carry GT positions; they must not reach the matching queries, neither
    through self-attention (masked) nor through old AQR's shared weight maps."""
    aqr = dict(type=aqr_type, window_size=3, attn_impl="dense")
    head = small_head(aqr=aqr)
    torch.manual_seed(0)
    bev = torch.randn(1, 16, 8, 8)
    img = torch.randn(1, 6, 32, 4, 10)
    ctx = SceneContext(
        lidar2img=torch.as_tensor(_lidar2img(6, 160, 64), dtype=torch.float32)[None],
        image_size=(64, 160),
        bev_size=(8, 8),
        cam_size=(4, 10),
    )
    box, label = _one_box(), torch.tensor([4])
    dn = build_denoising(
        [box.gravity_center], [box.dims], [label], head.pc_range, 20, 10, max_groups=3
    )
    with torch.no_grad():
        plain = head(bev, img, ctx, None)
        with_dn = head(bev, img, ctx, dn)
    pad = dn.pad_size
    # float32 with more query rows sums in another order: codes up to ~20 m differ by
    # 2e-5 (measured over 6 inits); a DN query reaching a matching one moves them by far more
    torch.testing.assert_close(with_dn.cls_logits[:, :, pad:], plain.cls_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(with_dn.codes[:, :, pad:], plain.codes, rtol=0, atol=1e-4)


def test_grid_mask_keeps_the_stripes_and_only_acts_in_training() -> None:
    generator = torch.Generator().manual_seed(3)
    mask = grid_keep_mask(96, 160, ratio=0.5, generator=generator)
    assert mask.shape == (96, 160)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert 0.55 < mask.mean().item() < 0.95  # squares of about half the period are dropped
    grid = GridMask(prob=1.0)
    images = torch.ones(2, 3, 96, 160)
    grid.eval()
    assert torch.equal(grid(images), images)
    grid.train()
    masked = grid(images)
    assert (masked == 0).any() and (masked == 1).any()
    assert torch.equal(masked[0], masked[1])  # one grid for the whole batch


def test_local_attention_init_shares_query_and_key_projections_and_scales_positions() -> None:
    torch.manual_seed(0)
    cmt = small_head()
    torch.manual_seed(0)
    local = small_head(local_attention_init=4.0)
    for embedding in ("bev_embedding", "rv_embedding"):
        plain, scaled = getattr(cmt, embedding)[-1], getattr(local, embedding)[-1]
        assert torch.allclose(scaled.weight, 4.0 * plain.weight)
        assert torch.equal(getattr(cmt, embedding)[0].weight, getattr(local, embedding)[0].weight)
    for layer_cmt, layer in zip(
        cmt.transformer.decoder.layers, local.transformer.decoder.layers, strict=True
    ):
        w_q, w_k, w_v = layer.attentions[1].attn.in_proj_weight.chunk(3)
        assert torch.equal(w_q, w_k)
        assert torch.allclose(w_q.T @ w_k, torch.eye(32), atol=1e-5)
        assert torch.equal(w_v, layer_cmt.attentions[1].attn.in_proj_weight.chunk(3)[2])
        # the self-attention keeps CMT's init
        assert not torch.equal(*layer.attentions[0].attn.in_proj_weight.chunk(3)[:2])


def test_pos_scale_multiplies_the_coordinates_of_the_sine_embedding() -> None:
    pos = torch.rand(5, 2)
    assert torch.allclose(sine_embedding(pos, 16, 8.0), sine_embedding(pos * 8.0, 16), atol=1e-5)
    head = small_head(pos_scale=8.0)
    ref = torch.rand(1, 3, 3)
    ctx = SceneContext(
        lidar2img=torch.as_tensor(_lidar2img(6, 160, 64), dtype=torch.float32)[None],
        image_size=(64, 160),
        bev_size=(8, 8),
        cam_size=(4, 10),
    )
    pixels, _ = head.project_to_images(ref, ctx)
    unseen = torch.zeros(1, 6, 3, dtype=torch.bool)  # no camera term: the BEV part alone
    with torch.no_grad():
        got = head.query_positions(ref, ctx, pixels, unseen)
        expected = head.bev_embedding(sine_embedding(ref * 8.0, 32))
        cmt = head.bev_embedding(sine_embedding(ref, 32))
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, cmt, atol=1e-3)
