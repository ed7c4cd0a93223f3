"""The exact window-sparse attention (`attn_impl='window'`) equals the dense bias:
outputs and every gradient, on random inputs and on the demo's real head."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS
from mmdet3d.structures import LiDARInstance3DBoxes
from mmengine.config import Config

from aqr_exp import paths
from cmt_aqr.aqr.bias import BiasScale, WindowBias, WindowSpec
from cmt_aqr.aqr.cells import MemoryLayout, QueryCells, window_keys
from cmt_aqr.aqr.window_attention import (
    WindowKeys,
    _backward_windows,
    _forward_windows,
    _local_backward,
    _local_forward,
    backward_windows_kernel,
    forward_windows_kernel,
    kernel_applies,
    local_attention,
    local_attention_eager,
    local_backward_kernel,
    local_forward_kernel,
)
from cmt_aqr.head import SceneContext

LAYOUT = MemoryLayout(bev_size=(6, 8), num_views=3, cam_size=(4, 5))
DEMO_NEW_AQR = paths.PLUGIN_CONFIGS / "cmt-aqr-new_lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py"


def _cells(batch: int, queries: int, gen: torch.Generator, camera_share: float) -> QueryCells:
    def ints(high: int) -> torch.Tensor:
        return torch.randint(0, high, (batch, queries), generator=gen)

    return QueryCells(
        bev_row=ints(LAYOUT.bev_size[0]),
        bev_col=ints(LAYOUT.bev_size[1]),
        cam_view=ints(LAYOUT.num_views),
        cam_row=ints(LAYOUT.cam_size[0]),
        cam_col=ints(LAYOUT.cam_size[1]),
        cam_valid=torch.rand(batch, queries, generator=gen) < camera_share,
        bev_pos=torch.zeros(batch, queries, 2),
        cam_pos=torch.zeros(batch, queries, 2),
    )


def _attend_and_grads(
    impl: str,
    spec: WindowSpec,
    dtype: torch.dtype,
    camera_share: float,
    adaptive: bool = False,
    dims: int = 8,
):
    """One cross-attention through WindowBias; the output and the gradients of a fixed
    projection of it w.r.t. q, k, v, both weights and the learnable scale (adaptive: and
    each query's BEV and camera σ, as the extent predictor sets them). Float32 heads of
    32 channels take the window forward's C++ kernel; 8 channels, its compiled sums."""
    gen = torch.Generator().manual_seed(0)
    batch, heads, queries = 2, 3, 11
    cells = _cells(batch, queries, gen, camera_share)

    trains = impl != "flex"  # flex has no backward on the CPU: its inputs take no grad

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_(trains)

    q = rand(batch, heads, queries, dims)
    k = rand(batch, heads, LAYOUT.num_tokens, dims)
    v = rand(batch, heads, LAYOUT.num_tokens, dims)
    lidar_w, cam_w = rand(batch, queries), rand(batch, queries)
    scale = BiasScale(2.5, learnable=True).to(dtype)
    inputs = [q, k, v, lidar_w, cam_w, scale.logit]
    sigmas = {}
    if adaptive:
        sigmas = {name: (0.3 + rand(batch, queries).detach().abs()).requires_grad_(trains)
                  for name in ("bev_sigma", "cam_sigma")}  # fmt: skip
        inputs += list(sigmas.values())
    value = scale() if trains else scale().detach()
    out = WindowBias(cells, lidar_w, cam_w, value, LAYOUT, spec, impl, **sigmas).attend(q, k, v)
    if not trains:
        return out, ()
    probe = torch.randn(out.shape, generator=gen, dtype=dtype)
    grads = torch.autograd.grad((out * probe).sum(), inputs)
    return out, grads


SPECS = {
    "uniform": WindowSpec(3, 3),
    "gaussian": WindowSpec(4, 3, profile="gaussian", sigma=1.3),
    "clipped at every border": WindowSpec(15, 9),
    "one cell": WindowSpec(1, 1),
    "global scope": WindowSpec(3, 3, scope="global"),
}


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("camera_share", [0.7, 0.0], ids=["cameras", "no camera sees"])
def test_window_equals_dense_in_float64(name: str, camera_share: float) -> None:
    dense, dense_grads = _attend_and_grads("dense", SPECS[name], torch.float64, camera_share)
    window, window_grads = _attend_and_grads("window", SPECS[name], torch.float64, camera_share)
    torch.testing.assert_close(window, dense, rtol=0, atol=1e-10)
    blind = camera_share == 0 and SPECS[name].scope == "local"
    for index, (got, expected) in enumerate(zip(window_grads, dense_grads, strict=True)):
        # every gradient is exercised, but a camera weight no camera window reads
        assert (expected.abs().max() == 0) == (blind and index == 4)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adaptive_windows_agree_across_implementations(dtype: torch.dtype) -> None:
    """Per-query σ (adaptive windows): window equals dense, outputs and every gradient,
    the σ's included; flex, which trains on CUDA only, agrees in the forward pass."""
    spec = WindowSpec(5, 3, profile="gaussian")
    dense, dense_grads = _attend_and_grads("dense", spec, dtype, 0.7, adaptive=True, dims=32)
    window, window_grads = _attend_and_grads("window", spec, dtype, 0.7, adaptive=True, dims=32)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(window, dense, rtol=0, atol=tolerance)
    assert len(dense_grads) == 8 and all(grad.abs().max() > 0 for grad in dense_grads)
    for got, expected in zip(window_grads, dense_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)
    if dtype == torch.float32:
        flex, _ = _attend_and_grads("flex", spec, dtype, 0.7, adaptive=True, dims=32)
        torch.testing.assert_close(flex, dense.detach(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("camera_share", [0.7, 0.0], ids=["cameras", "no camera sees"])
@pytest.mark.parametrize("dims", [32, 8], ids=["kernel", "compiled"])
def test_window_equals_dense_in_float32(name: str, camera_share: float, dims: int) -> None:
    spec = SPECS[name]
    dense, dense_grads = _attend_and_grads("dense", spec, torch.float32, camera_share, dims=dims)
    window, window_grads = _attend_and_grads("window", spec, torch.float32, camera_share, dims=dims)
    torch.testing.assert_close(window, dense, rtol=0, atol=1e-4)
    for got, expected in zip(window_grads, dense_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def _random_window(gen: torch.Generator, batch: int, queries: int, tokens: int, width: int):
    index = torch.randint(0, tokens, (batch, queries, width), generator=gen)
    valid = torch.rand(batch, queries, width, generator=gen) < 0.8
    return index, valid


def _rows(gen: torch.Generator, batch: int, length: int, heads: int, dims: int) -> torch.Tensor:
    """[B, H, L, D] in the memory layout [B, L, H, D] of the layers' q, k and v."""
    return torch.randn(batch, length, heads, dims, generator=gen).transpose(1, 2)


@pytest.mark.parametrize("queries", [1, 37])
def test_the_window_kernels_equal_the_compiled_sums(queries: int) -> None:
    """The C++ kernels and the compiled indexing give the same biased output, log-sum-exp
    and window logits, and the same backward terms, with missing cells (zero bias, no
    gradient) and windows of any width."""
    gen = torch.Generator().manual_seed(1)
    batch, heads, dims, tokens, width = 2, 4, 32, 300, 50
    q, k, v = (_rows(gen, batch, length, heads, dims) for length in (queries, tokens, tokens))
    index, valid = _random_window(gen, batch, queries, tokens, width)
    bias = torch.where(valid, torch.randn(batch, queries, width, generator=gen), 0.0)
    out0, lse0 = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    assert kernel_applies(q) and not kernel_applies(q.double()) and not kernel_applies(q[..., :8])
    by_kernel = forward_windows_kernel(q, k, v, bias, index, out0, lse0)
    compiled = _forward_windows(q, k, v, bias, index, valid, out0, lse0)
    assert by_kernel[0].shape == compiled[0].shape and by_kernel[1].shape == compiled[1].shape
    for got, expected in zip(by_kernel, compiled, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    out, lse, logits = compiled
    grad_out, grad_q = (_rows(gen, batch, queries, heads, dims) for _ in range(2))
    args = (q, k, v, bias, index, valid, logits, out, lse, grad_out)
    compiled = _backward_windows(*args, grad_q)
    by_kernel = backward_windows_kernel(*args, grad_q.clone())
    assert compiled[1][~valid].abs().max() == 0 and compiled[1][valid].abs().min() > 0
    for got, expected in zip(by_kernel, compiled, strict=True):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_the_local_kernels_equal_the_compiled_sums() -> None:
    """The weight generator's window softmax, forward and backward terms, by the C++
    kernels and by the compiled indexing, with missing cells."""
    gen = torch.Generator().manual_seed(2)
    batch, heads, channels, queries, tokens, width = 2, 4, 32, 23, 200, 50
    q = _rows(gen, batch, queries, heads, channels)
    k, v = (torch.randn(batch, tokens, channels, generator=gen) for _ in range(2))
    index, valid = _random_window(gen, batch, queries, tokens, width)
    valid[:, :, 0] = True  # every query needs a key
    by_kernel = local_forward_kernel(q, k, v, index, valid)
    compiled = _local_forward(q, k, v, index, valid)
    for got, expected in zip(by_kernel, compiled, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    out, p = compiled
    grad_out = _rows(gen, batch, queries, heads, channels)
    by_kernel = local_backward_kernel(q, k, v, index, valid, p, out, grad_out)
    compiled = _local_backward(q, k, v, index, p, out, grad_out)
    for got, expected in zip(by_kernel, compiled, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_window_keys_outside_the_memory_are_refused() -> None:
    index = torch.tensor([[[0, 5, 12]]])
    with pytest.raises(ValueError, match=r"memory's 12 tokens, got indices 0\.\.12"):
        WindowKeys(index, torch.ones_like(index, dtype=torch.bool), num_tokens=12)


@pytest.mark.parametrize(
    ("windows", "scope", "expected"),
    [((20, 3), "local", "window"), ((30, 3), "local", "dense"), ((8, 3), "global", "dense")],
)
def test_auto_on_the_cpu_takes_window_while_windows_are_small(
    windows: tuple[int, int], scope: str, expected: str
) -> None:
    """The demo's memory (64² BEV + 6 × 4×8 camera cells): window 20 is 9.5 % of it,
    window 30 21 %, past the 12 % where the dense bias gets faster."""
    demo = MemoryLayout(bev_size=(64, 64), num_views=6, cam_size=(4, 8))
    cells = _cells(1, 2, torch.Generator().manual_seed(0), 1.0)
    weights = torch.zeros(1, 2)
    spec = WindowSpec(*windows, scope=scope)
    bias = WindowBias(cells, weights, weights, torch.tensor(1.0), demo, spec, "auto")
    assert bias.resolve_impl(torch.zeros(1)) == expected


def test_auto_off_the_cpu_takes_dense() -> None:
    """The fastest exact path measured on a GPU (docs/benchmarks.md); a meta tensor stands
    in for a CUDA one here."""
    cells = _cells(1, 2, torch.Generator().manual_seed(0), 1.0)
    weights = torch.zeros(1, 2)
    bias = WindowBias(cells, weights, weights, torch.tensor(1.0), LAYOUT, WindowSpec(3, 3), "auto")
    assert bias.resolve_impl(torch.empty(1, device="meta")) == "dense"


def test_window_refuses_a_device_without_its_fused_kernel() -> None:
    gen = torch.Generator().manual_seed(0)
    cells = _cells(1, 2, gen, 1.0)
    weights = torch.zeros(1, 2)
    bias = WindowBias(
        cells, weights, weights, torch.tensor(1.0), LAYOUT, SPECS["uniform"], "window"
    )
    q = torch.zeros(1, 1, 2, 4, device="meta")
    kv = torch.zeros(1, 1, LAYOUT.num_tokens, 4, device="meta")
    with pytest.raises(RuntimeError, match="attn_impl='window' runs on the CPU"):
        bias.attend(q, kv, kv)


@pytest.mark.parametrize(
    ("dtype", "channels"), [(torch.float64, 6), (torch.float32, 6), (torch.float32, 32)]
)
def test_local_attention_paths_agree(dtype: torch.dtype, channels: int) -> None:
    """The weight generator's window softmax: the CPU path (C++ kernels for float32 rows
    of whole vectors, else compiled; its own backward through the key-major sums of keys
    shared by the heads) equals the eager matrix products used off the CPU, outputs and
    gradients of q, k and v, with windows clipped at the borders and camera cells no
    camera sees."""
    gen = torch.Generator().manual_seed(0)
    cells = _cells(2, 9, gen, 0.5)
    index, valid = window_keys(cells, LAYOUT, 5, 3)
    keys = WindowKeys(index, valid, LAYOUT.num_tokens)
    assert not valid.all()
    q = torch.randn(2, 3, 9, channels, generator=gen, dtype=dtype, requires_grad=True)
    k, v = (
        torch.randn(2, LAYOUT.num_tokens, channels, generator=gen, dtype=dtype).requires_grad_()
        for _ in range(2)
    )
    probe = torch.randn(2, 3, 9, channels, generator=gen, dtype=dtype)
    results = []
    for attend in (local_attention, local_attention_eager):
        args = (keys,) if attend is local_attention else (index, valid)
        out = attend(q, k, v, *args)
        results.append((out, *torch.autograd.grad((out * probe).sum(), (q, k, v))))
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5  # float32: exp to 20 ulp
    for got, expected in zip(*results, strict=True):
        assert expected.abs().max() > 0
        torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def _six_cameras() -> torch.Tensor:
    mats = []
    for yaw in np.deg2rad(np.arange(6) * 60.0):
        c, s = np.cos(yaw), np.sin(yaw)
        extrinsic = np.eye(4)
        extrinsic[:3, :3] = np.stack([[s, -c, 0.0], [0.0, 0.0, -1.0], [c, s, 0.0]])
        intrinsic = np.eye(4)
        intrinsic[0, 0] = intrinsic[1, 1] = 60.0
        intrinsic[0, 2], intrinsic[1, 2] = 64.0, 32.0
        mats.append(intrinsic @ extrinsic)
    return torch.tensor(np.stack(mats), dtype=torch.float32)[None]


def test_the_demo_head_trains_the_same_with_window_and_dense() -> None:
    """The demo's new-AQR head (its config, DN queries, window clipped at the map's
    borders): the same losses over three AdamW steps with either implementation."""
    head_cfg = Config.fromfile(DEMO_NEW_AQR).model.pts_bbox_head
    scene = SceneContext(
        lidar2img=_six_cameras(), image_size=(64, 128), bev_size=(64, 64), cam_size=(4, 8)
    )
    torch.manual_seed(0)
    bev = torch.randn(1, head_cfg.in_channels, 64, 64)
    cams = torch.randn(1, 6, head_cfg.embed_dims, 4, 8)
    boxes = [
        LiDARInstance3DBoxes(
            torch.tensor(
                [
                    [5.0, 1.0, -1.0, 4.0, 2.0, 1.5, 0.2, 1.0, 0.0],
                    [-30.0, 29.0, -1.0, 1, 1, 1, 0, 0, 0],
                ]
            ),
            box_dim=9,
        )
    ]
    labels = [torch.tensor([0, 8])]
    torch.manual_seed(1)
    reference = MODELS.build(copy.deepcopy(head_cfg))
    reference.init_weights()
    losses = {}
    for impl in ("dense", "window"):
        cfg = copy.deepcopy(head_cfg)
        cfg.aqr.attn_impl = impl
        head = MODELS.build(cfg)
        head.load_state_dict(reference.state_dict())
        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
        torch.manual_seed(2)  # the same denoising noise
        history = []
        for _ in range(3):
            dn = head.make_denoising(boxes, labels)
            outputs = head(bev, cams, scene, dn)
            total = sum(v for k, v in head.loss(outputs, dn, boxes, labels).items() if "loss" in k)
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append(float(total))
        losses[impl] = history
    assert losses["window"] == pytest.approx(losses["dense"], rel=1e-4)
