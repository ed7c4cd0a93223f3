"""AQR: hand-computed bias cases, dense vs flex, and gradients from the detection loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mmdet3d.structures import LiDARInstance3DBoxes

from cmt_aqr.aqr.bias import BiasScale, WindowBias, WindowSpec
from cmt_aqr.aqr.cells import (
    MemoryLayout,
    QueryCells,
    window_keys,
    window_offsets,
)
from cmt_aqr.aqr.module import AdaptiveQueryRouting
from cmt_aqr.aqr.render import render_maps
from cmt_aqr.aqr.weights import ModalityWeightGenerator
from cmt_aqr.attention import MultiheadAttention
from cmt_aqr.head import AqrCmtHead, SceneContext
from cmt_aqr.transformer import CmtDecoderLayer

LAYOUT = MemoryLayout(bev_size=(6, 8), num_views=2, cam_size=(4, 5))


def _cells(bev=(2, 3), cam=(1, 1, 2), valid=True) -> QueryCells:
    def t(value):
        return torch.tensor([[value]])

    return QueryCells(
        bev_row=t(bev[0]),
        bev_col=t(bev[1]),
        cam_view=t(cam[0]),
        cam_row=t(cam[1]),
        cam_col=t(cam[2]),
        cam_valid=torch.tensor([[valid]]),
        bev_pos=torch.tensor([[[bev[0] + 0.5, bev[1] + 0.5]]]),
        cam_pos=torch.tensor([[[cam[1] + 0.5, cam[2] + 0.5]]]),
    )


def _bias(cells: QueryCells, spec: WindowSpec, lidar_w=0.5, cam_w=0.25, scale=2.0) -> torch.Tensor:
    bias = WindowBias(
        cells,
        torch.tensor([[lidar_w]]),
        torch.tensor([[cam_w]]),
        torch.tensor(scale),
        LAYOUT,
        spec,
        "dense",
    )
    dense = bias.dense()[0, 0, 0]
    bev = dense[: LAYOUT.num_bev].view(*LAYOUT.bev_size)
    cam = dense[LAYOUT.num_bev :].view(LAYOUT.num_views, *LAYOUT.cam_size)
    return bev, cam


def _box(shape, rows, cols, value) -> torch.Tensor:
    expected = torch.zeros(shape)
    expected[rows, cols] = value
    return expected


def test_bias_lies_exactly_in_the_expected_cells_and_view() -> None:
    bev, cam = _bias(_cells(bev=(2, 3), cam=(1, 1, 2)), WindowSpec(3, 3))
    assert torch.equal(bev, _box((6, 8), slice(1, 4), slice(2, 5), 2.0 * 0.5))
    assert torch.equal(cam[1], _box((4, 5), slice(0, 3), slice(1, 4), 2.0 * 0.25))
    assert not cam[0].any()  # other views get nothing


def test_windows_clip_at_borders_and_never_wrap() -> None:
    bev, cam = _bias(_cells(bev=(0, 7), cam=(0, 3, 4)), WindowSpec(3, 3))
    assert torch.equal(bev, _box((6, 8), slice(0, 2), slice(6, 8), 1.0))
    # a wrap across rows would light up column 0 of the next row
    assert bev[:, 0].sum() == 0
    assert torch.equal(cam[0], _box((4, 5), slice(2, 4), slice(3, 5), 0.5))
    assert not cam[1].any()  # never wraps into the next view


def test_even_windows_extend_to_the_negative_side() -> None:
    assert window_offsets(4) == (-2, 1)
    assert window_offsets(5) == (-2, 2)
    bev, _ = _bias(_cells(bev=(3, 4)), WindowSpec(4, 4))
    assert torch.equal(bev, _box((6, 8), slice(1, 5), slice(2, 6), 1.0))


def test_separate_bev_and_camera_window_sizes() -> None:
    bev, cam = _bias(_cells(bev=(3, 4), cam=(1, 1, 2)), WindowSpec(bev_window=1, cam_window=3))
    assert bev.count_nonzero() == 1
    assert cam.count_nonzero() == 9


def test_a_query_visible_in_no_camera_gets_no_camera_bias() -> None:
    bev, cam = _bias(_cells(valid=False), WindowSpec(3, 3))
    assert not cam.any()
    assert bev.count_nonzero() == 9


def test_gaussian_window_values() -> None:
    sigma = 1.5
    bev, _ = _bias(_cells(bev=(2, 3)), WindowSpec(3, 3, profile="gaussian", sigma=sigma))
    assert bev[2, 3] == pytest.approx(1.0)
    assert bev[1, 2] == pytest.approx(math.exp(-2 / (2 * sigma**2)))
    assert bev[2, 4] == pytest.approx(math.exp(-1 / (2 * sigma**2)))
    assert bev[0, 0] == 0


def test_global_mode_biases_every_key_of_the_modality() -> None:
    bev, cam = _bias(_cells(), WindowSpec(3, 3, scope="global"))
    assert torch.all(bev == 1.0)
    assert torch.all(cam == 0.5)


def _random_bias(impl: str, batch: int = 2, queries: int = 7, seed: int = 0) -> WindowBias:
    gen = torch.Generator().manual_seed(seed)

    def ints(high):
        return torch.randint(0, high, (batch, queries), generator=gen)

    cells = QueryCells(
        bev_row=ints(6),
        bev_col=ints(8),
        cam_view=ints(2),
        cam_row=ints(4),
        cam_col=ints(5),
        cam_valid=torch.rand(batch, queries, generator=gen) > 0.3,
        bev_pos=torch.zeros(batch, queries, 2),
        cam_pos=torch.zeros(batch, queries, 2),
    )
    lidar_w = torch.rand(batch, queries, generator=gen) * 2 - 1
    cam_w = torch.rand(batch, queries, generator=gen) * 2 - 1
    spec = WindowSpec(5, 3, profile="gaussian", sigma=1.2)
    return WindowBias(cells, lidar_w, cam_w, torch.tensor(2.5), LAYOUT, spec, impl)


def test_dense_and_flex_agree() -> None:
    pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(0)
    q = torch.randn(2, 4, 7, 16)
    k = torch.randn(2, 4, LAYOUT.num_tokens, 16)
    v = torch.randn(2, 4, LAYOUT.num_tokens, 16)
    dense = _random_bias("dense").attend(q, k, v)
    flex = _random_bias("flex").attend(q, k, v)
    rel = (dense - flex).norm() / dense.norm()
    assert rel < 1e-5


def test_bias_changes_cross_attention_and_leaves_self_attention_alone() -> None:
    torch.manual_seed(0)
    layer = CmtDecoderLayer(embed_dims=16, num_heads=4, ffn_dims=32, dropout=0.0).eval()
    query = torch.randn(2, 7, 16)
    memory = torch.randn(2, LAYOUT.num_tokens, 16)
    seen = []
    layer.attentions[0].register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs), with_kwargs=True
    )
    plain = layer(query, torch.zeros_like(query), memory, torch.zeros_like(memory))
    biased = layer(
        query,
        torch.zeros_like(query),
        memory,
        torch.zeros_like(memory),
        cross_attn_bias=_random_bias("dense"),
    )
    assert not torch.allclose(plain, biased)
    assert all(kw.get("bias") is None for kw in seen)
    # the self-attention's own output is identical with and without the bias
    attn = MultiheadAttention(16, 4).eval()
    out_a = attn(query, query, query)
    out_b = attn(query, query, query)
    assert torch.equal(out_a, out_b)


def test_learnable_scale_keeps_a_gradient_near_its_bounds() -> None:
    scale = BiasScale(2.5, learnable=True, scale_min=0.0, scale_max=5.0)
    assert scale().item() == pytest.approx(2.5)
    with torch.no_grad():
        scale.logit.fill_(9.0)  # s = 4.9994: where a clamp would have cut the gradient
    scale().backward()
    assert scale.logit.grad.abs() > 0
    assert scale().item() <= 5.0
    fixed = BiasScale(1.0, learnable=False)
    assert list(fixed.parameters()) == []


def test_render_splats_sum_and_clamp() -> None:
    pos = torch.tensor([[[1.5, 1.5], [1.5, 1.5], [0.5, 3.5]]])
    weights = torch.tensor([[1.0, 1.0, 0.4]], requires_grad=True)
    valid = torch.tensor([[True, True, True]])
    maps = render_maps(
        pos,
        weights,
        valid,
        torch.zeros(1, 3, dtype=torch.long),
        1,
        (3, 5),
        "direct",
        max_weight=1.5,
    )
    assert maps[0, 0, 1, 1] == 1.5  # 1 + 1 clamped to max_weight
    assert float(maps[0, 0, 0, 3]) == pytest.approx(0.4)
    assert float(maps.sum()) == pytest.approx(1.9)
    bilinear = render_maps(
        pos[:, 2:],
        weights[:, 2:],
        valid[:, 2:],
        torch.zeros(1, 1, dtype=torch.long),
        1,
        (3, 5),
        "bilinear",
    )
    assert float(bilinear.sum()) == pytest.approx(0.4)
    maps.sum().backward()
    assert weights.grad[0, 2] == 1.0


def _scene() -> SceneContext:
    mats = []
    for yaw in np.deg2rad([0.0, 180.0]):
        c, s = np.cos(yaw), np.sin(yaw)
        extr = np.eye(4)
        extr[:3, :3] = np.stack([[s, -c, 0.0], [0.0, 0.0, -1.0], [c, s, 0.0]])
        intr = np.eye(4)
        intr[0, 0] = intr[1, 1] = 40.0
        intr[0, 2], intr[1, 2] = 40.0, 16.0
        mats.append(intr @ extr)
    lidar2img = torch.tensor(np.stack(mats), dtype=torch.float32)[None]
    return SceneContext(lidar2img=lidar2img, image_size=(32, 80), bev_size=(8, 8), cam_size=(2, 5))


ADAPTIVE = dict(
    type="new",
    window_mode="adaptive",
    window_profile="gaussian",
    window_min=1.0,
    window_max=3,
    cam_window_min=1.0,
    cam_window_max=3,
    encoder_window=3,
)
AQR_CASES = {
    # old AQR clamps its maps to [0, max]: sigmoid weights (its config's choice)
    "old": dict(type="old", window_size=3, encoder_window=3, weight_activation="sigmoid"),
    "new": dict(type="new", window_size=3, encoder_window=3, attn_impl="dense"),
    "adaptive, dense": dict(ADAPTIVE, attn_impl="dense"),
    "adaptive, window": dict(ADAPTIVE, attn_impl="window"),
}


def _small_head(aqr: dict) -> AqrCmtHead:
    return AqrCmtHead(
        in_channels=8,
        point_cloud_range=[-20.0, -20.0, -5.0, 20.0, 20.0, 3.0],
        embed_dims=16,
        num_query=12,
        depth_num=4,
        transformer=dict(
            type="AqrCmtTransformer",
            decoder=dict(
                type="CmtTransformerDecoder", num_layers=2, embed_dims=16, num_heads=4, ffn_dims=32
            ),
        ),
        dn_groups=2,
        aqr=aqr,
    )


def _scene_inputs() -> tuple[torch.Tensor, torch.Tensor, list, list]:
    boxes = [
        LiDARInstance3DBoxes(
            torch.tensor([[5.0, 1.0, -1.0, 4.0, 2.0, 1.5, 0.2, 1.0, 0.0]]), box_dim=9
        )
    ]
    return torch.randn(1, 8, 8, 8), torch.randn(1, 2, 16, 2, 5), boxes, [torch.tensor([0])]


@pytest.mark.parametrize("case", list(AQR_CASES))
def test_detection_loss_reaches_the_weight_generator_and_the_scale(case: str) -> None:
    """Every implementation that trains on the CPU (flex trains on CUDA only)."""
    torch.manual_seed(0)
    head = _small_head(AQR_CASES[case])
    head.init_weights()
    bev, img, boxes, labels = _scene_inputs()
    dn = head.make_denoising(boxes, labels)
    outputs = head(bev, img, _scene(), dn)
    losses = head.loss(outputs, dn, boxes, labels)
    total = sum(v for k, v in losses.items() if "loss" in k)
    total.backward()
    assert head.aqr.generator.to_weights.weight.grad.abs().sum() > 0
    assert "aqr/lidar_w_mean" in losses and "aqr/prefer_lidar" in losses
    if head.aqr.type == "new":
        assert head.aqr.scale.logit.grad.abs() > 0
        assert "aqr/bias_scale" in losses
    adaptive = head.aqr.window_mode == "adaptive"
    assert hasattr(head.aqr.generator, "to_extents") == adaptive
    assert ("aqr/bev_extent_mean" in losses) == adaptive
    if adaptive:
        assert head.aqr.generator.to_extents.weight.grad.abs().sum() > 0
        for name in ("bev_extent_mean", "cam_extent_mean"):
            assert 1.0 <= float(losses[f"aqr/{name}"]) <= 3.0
        assert {"aqr/bev_extent_std", "aqr/cam_extent_std"} <= losses.keys()


def test_adaptive_windows_with_equal_bounds_are_the_fixed_gaussian_window() -> None:
    """min = max = W: every query's σ is W / (2 · window_cut), as a fixed Gaussian window
    of W cells with that σ; the same weights give the same outputs."""
    fixed_aqr = dict(type="new", window_size=3, window_profile="gaussian", window_sigma=0.6,
                     encoder_window=3, attn_impl="dense")  # fmt: skip
    equal = dict(ADAPTIVE, window_min=3.0, cam_window_min=3.0, window_cut=2.5, attn_impl="dense")
    torch.manual_seed(0)
    fixed = _small_head(fixed_aqr)
    fixed.init_weights()
    adaptive = _small_head(equal)
    missing, unexpected = adaptive.load_state_dict(fixed.state_dict(), strict=False)
    assert sorted(missing) == ["aqr.generator.to_extents.bias", "aqr.generator.to_extents.weight"]
    assert not unexpected
    fixed.eval()
    adaptive.eval()
    bev, img, _, _ = _scene_inputs()
    with torch.no_grad():
        expected = fixed(bev, img, _scene(), None)
        got = adaptive(bev, img, _scene(), None)
    torch.testing.assert_close(got.cls_logits, expected.cls_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.codes, expected.codes, rtol=0, atol=1e-6)


def test_extents_stay_within_their_bounds_under_extreme_inputs() -> None:
    generator = ModalityWeightGenerator(16, window=3, extent_bounds=((2.0, 9.0), (1.0, 3.0)))
    with torch.no_grad():
        generator.to_extents.weight.fill_(1e4)
    cells = _random_bias("dense").cells
    batch, queries = cells.bev_row.shape
    for magnitude in (1e6, -1e6, 0.0):
        query = torch.full((batch, queries, 16), magnitude)
        memory = torch.randn(batch, LAYOUT.num_tokens, 16) * magnitude
        routing = generator(query, memory, torch.zeros_like(memory), cells, LAYOUT)
        for extent, (low, high) in ((routing.bev_extent, (2, 9)), (routing.cam_extent, (1, 3))):
            assert torch.isfinite(extent).all()
            assert ((extent >= low) & (extent <= high)).all()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(type="old"), "needs type='new', window_profile='gaussian'"),
        (dict(window_profile="uniform"), "needs type='new', window_profile='gaussian'"),
        (dict(window_min=None), "needs aqr.window_min"),
        (dict(cam_window_min=4.0), r"cam_window_min must lie in \(0, cam_window_max=3\]"),
        (dict(window_mode="adaptiv"), "window_mode must be one of"),
        (dict(window_cut=0.0), "window_cut must be positive"),
    ],
)
def test_bad_adaptive_settings_are_named(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaptiveQueryRouting(16, **{**ADAPTIVE, **changes})


def _gather_windows(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, C], index [B, Q, K] -> [B * Q, K, C]."""
    batch = torch.arange(tokens.shape[0])[:, None, None]
    return tokens[batch, index].flatten(0, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_weight_generator_is_torch_multihead_attention_over_each_window(
    dtype: torch.dtype,
) -> None:
    """The generator projects the memory once and reads each query's window in place
    (compiled, with its own backward on the CPU); the reference gathers each query's
    window first and runs its nn.MultiheadAttention on it. Outputs and every gradient."""
    torch.manual_seed(0)
    generator = ModalityWeightGenerator(16, num_heads=4, window=3).to(dtype)
    cells = _random_bias("dense").cells
    batch, queries = cells.bev_row.shape
    query, memory, memory_pos = (
        torch.randn(batch, n, 16, dtype=dtype, requires_grad=True)
        for n in (queries, LAYOUT.num_tokens, LAYOUT.num_tokens)
    )
    lidar_w, cam_w, bev_extent, cam_extent = generator(query, memory, memory_pos, cells, LAYOUT)
    assert bev_extent is None and cam_extent is None  # fixed windows: no extents

    index, valid = window_keys(cells, LAYOUT, 3, 3)
    value = _gather_windows(memory, index)
    key = value + _gather_windows(memory_pos, index)
    out, _ = generator.attn(
        query.reshape(-1, 1, 16), key, value, key_padding_mask=~valid.flatten(0, 1)
    )
    expected = torch.tanh(generator.to_weights(out.view(batch, queries, 16)))
    tol = {"rtol": 0, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(lidar_w, expected[..., 0], **tol)
    torch.testing.assert_close(cam_w, expected[..., 1], **tol)

    weights = torch.randn(batch, queries, 2, dtype=dtype)
    inputs = (query, memory, memory_pos, *generator.parameters())
    grads = torch.autograd.grad((torch.stack((lidar_w, cam_w), -1) * weights).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * weights).sum(), inputs)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, **tol)
