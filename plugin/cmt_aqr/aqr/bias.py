"""New AQR: a local-window bias added to the cross-attention logits.

    softmax(q·k/√d + B[q, k]) · v,   B[q, k] = s · w(q, modality(k)) · g(k − c(q))

g is 1 inside the window (uniform) or exp(−|k − c(q)|² / 2σ²) there (Gaussian); with
adaptive windows σ is per query and modality, σ = extent / (2 · window_cut), and the
window is the largest extent allowed.

One formula (`window_bias`) written in index arithmetic serves every
implementation: `dense` evaluates it on the whole [Q, N] grid once and
broadcasts the [B, 1, Q, N] result over heads into scaled_dot_product_attention;
`flex` evaluates it inside flex_attention's score_mod; `window` evaluates it on
each query's window keys only and corrects the fused no-bias attention there
(`window_attention`, exact, CPU). Neither of the last two builds a [Q, N] tensor.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmt_aqr.aqr.cells import (
    MemoryLayout,
    QueryCells,
    key_coordinates,
    window_keys,
    window_offsets,
)
from cmt_aqr.aqr.window_attention import (
    WindowKeys,
    compiled_once,
    queries_vary,
    window_attention,
)

IMPLEMENTATIONS = ("dense", "flex", "window", "auto")
# `auto` on the CPU takes `window` up to this share of window keys in the memory: with the
# C++ kernels a layer's forward + backward at the demo's size (one bias per batch, as in the
# head) is as fast as dense or faster up to window 20 (8.4 %), slower from 30 (18.7 %)
# (bench/results/attention-window-size-cpu.md); the window path also keeps a quarter of the
# dense bias's memory.
WINDOW_SHARE_MAX = 0.12


@dataclass(frozen=True)
class WindowSpec:
    bev_window: int
    cam_window: int
    profile: str = "uniform"  # or "gaussian"
    sigma: float = 1.0
    scope: str = "local"  # or "global": w on every key of the modality

    def __post_init__(self) -> None:
        window_offsets(self.bev_window)
        window_offsets(self.cam_window)
        if self.profile not in ("uniform", "gaussian"):
            raise ValueError(
                f"window_profile must be 'uniform' or 'gaussian', got {self.profile!r}"
            )
        if self.scope not in ("local", "global"):
            raise ValueError(f"scope must be 'local' or 'global', got {self.scope!r}")
        if self.sigma <= 0:
            raise ValueError(f"window_sigma must be positive, got {self.sigma}")


class BiasScale(nn.Module):
    """The bias scale s: fixed, or learnable within [min, max] through a sigmoid,
    so it keeps a gradient everywhere and never sticks at a clamp."""

    def __init__(
        self, value: float, learnable: bool, scale_min: float = 0.0, scale_max: float = 5.0
    ) -> None:
        super().__init__()
        self.learnable = learnable
        self.scale_min, self.scale_max = scale_min, scale_max
        if learnable:
            if not scale_min < value < scale_max:
                raise ValueError(
                    f"bias_scale {value} must lie strictly inside [{scale_min}, {scale_max}]"
                )
            frac = (value - scale_min) / (scale_max - scale_min)
            self.logit = nn.Parameter(torch.tensor(math.log(frac / (1 - frac))))
        else:
            self.register_buffer("value", torch.tensor(float(value)))

    def forward(self) -> Tensor:
        if self.learnable:
            return self.scale_min + (self.scale_max - self.scale_min) * torch.sigmoid(self.logit)
        return self.value


def window_bias(
    query: dict[str, Tensor],
    key_index: Tensor,
    layout: MemoryLayout,
    spec: WindowSpec,
    scale: Tensor | float,
) -> Tensor:
    """B[q, k] from per-query values (broadcastable against key_index)."""
    is_bev, view, row, col = key_coordinates(key_index, layout)
    weight = torch.where(is_bev, query["lidar_w"], query["cam_w"])
    if spec.scope == "global":
        return scale * weight
    d_row = row - torch.where(is_bev, query["bev_row"], query["cam_row"])
    d_col = col - torch.where(is_bev, query["bev_col"], query["cam_col"])
    bev_lo, bev_hi = window_offsets(spec.bev_window)
    cam_lo, cam_hi = window_offsets(spec.cam_window)
    lo = torch.where(is_bev, bev_lo, cam_lo)
    hi = torch.where(is_bev, bev_hi, cam_hi)
    inside = (d_row >= lo) & (d_row <= hi) & (d_col >= lo) & (d_col <= hi)
    inside = inside & (is_bev | (query["cam_valid"] & (view == query["cam_view"])))
    if spec.profile == "gaussian":
        dist2 = (d_row * d_row + d_col * d_col).to(weight.dtype)
        sigma = torch.where(is_bev, query["bev_sigma"], query["cam_sigma"])
        weight = weight * torch.exp(-dist2 / (2 * sigma * sigma))
    return torch.where(inside, scale * weight, torch.zeros_like(weight))


def _import_flex():
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    return flex_attention


class WindowBias:
    """The AQR bias of one batch, attached to every decoder layer's cross-attention."""

    def __init__(
        self,
        cells: QueryCells,
        lidar_w: Tensor,
        cam_w: Tensor,
        scale: Tensor,
        layout: MemoryLayout,
        spec: WindowSpec,
        impl: str = "auto",
        bev_sigma: Tensor | None = None,
        cam_sigma: Tensor | None = None,
    ) -> None:
        """bev_sigma, cam_sigma [B, Q]: per-query Gaussian σ (adaptive windows); None
        takes the spec's σ for every query."""
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"attn_impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
        self.cells = cells
        self.query = {
            "bev_row": cells.bev_row,
            "bev_col": cells.bev_col,
            "cam_view": cells.cam_view,
            "cam_row": cells.cam_row,
            "cam_col": cells.cam_col,
            "cam_valid": cells.cam_valid,
            "lidar_w": lidar_w,
            "cam_w": cam_w,
            "bev_sigma": torch.full_like(lidar_w, spec.sigma) if bev_sigma is None else bev_sigma,
            "cam_sigma": torch.full_like(cam_w, spec.sigma) if cam_sigma is None else cam_sigma,
        }
        self.scale = scale
        self.layout = layout
        self.spec = spec
        self.impl = impl
        self._dense: Tensor | None = None
        self._window: tuple[WindowKeys, Tensor] | None = None

    def resolve_impl(self, q: Tensor) -> str:
        """auto: the fastest exact path measured on each device. CUDA: dense (forward +
        backward 1.07-1.15x the no-bias floor on an H200, flex 1.7-2.3x; flex keeps the
        floor's memory, the choice where memory binds: docs/benchmarks.md). CPU: window
        while the windows are small next to the memory (docs/window-attention.md), else
        dense. A global scope has no window: `window` computes it densely."""
        impl = self.impl
        if impl == "auto":
            if q.device.type == "cpu":
                per_query = self.spec.bev_window**2 + self.spec.cam_window**2
                small = per_query <= WINDOW_SHARE_MAX * self.layout.num_tokens
                impl = "window" if small else "dense"
            else:
                impl = "dense"
        return "dense" if impl == "window" and self.spec.scope == "global" else impl

    def dense(self) -> Tensor:
        """[B, 1, Q, N], computed once per batch and shared by all layers."""
        if self._dense is None:
            device = self.query["lidar_w"].device
            keys = torch.arange(self.layout.num_tokens, device=device)[None, None, :]
            per_query = {name: value[..., None] for name, value in self.query.items()}
            self._dense = window_bias(per_query, keys, self.layout, self.spec, self.scale)[:, None]
        return self._dense

    def window(self) -> tuple[WindowKeys, Tensor]:
        """Each query's window keys [B, Q, W] and their bias values, once per batch."""
        if self._window is None:
            index, valid = window_keys(
                self.cells, self.layout, self.spec.bev_window, self.spec.cam_window
            )
            per_query = {name: value[..., None] for name, value in self.query.items()}
            # Compiled into one loop over the [B, Q, W] entries (8 -> 2 ms at 800x320,
            # Q = 900; eager runs a dozen index-arithmetic passes over them).
            queries_vary(*((value, 1) for value in per_query.values()), (index, 1))
            values = compiled_once(window_bias)(
                per_query, index, self.layout, self.spec, self.scale
            )
            self._window = WindowKeys(index, valid, self.layout.num_tokens), values
        return self._window

    def score_mod(self):
        # The scale goes into the per-query weights here, outside the kernel: flex's
        # compiled backward cannot return a gradient for a captured 0-d tensor (torch 2.11,
        # measured in docs/benchmarks.md), but can for captured per-query values.
        query = {
            **self.query,
            "lidar_w": self.query["lidar_w"] * self.scale,
            "cam_w": self.query["cam_w"] * self.scale,
        }
        layout, spec = self.layout, self.spec

        def add_bias(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            per_query = {name: value[b, q_idx] for name, value in query.items()}
            return score + window_bias(per_query, kv_idx, layout, spec, 1.0).to(score.dtype)

        return add_bias

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        impl = self.resolve_impl(q)
        if impl == "dense":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.dense().to(q.dtype))
        if impl == "window":
            keys, values = self.window()
            return window_attention(q, k, v, values.to(q.dtype), keys)
        flex_attention = _import_flex()
        if flex_attention is None:
            raise RuntimeError(
                "attn_impl='flex' needs torch.nn.attention.flex_attention (torch >= 2.5)"
            )
        if q.is_cuda:
            flex_attention = _compiled_flex()
        return flex_attention(q, k, v, score_mod=self.score_mod())


@functools.cache
def _compiled_flex():
    """flex_attention is only fast compiled; compile once per process."""
    return torch.compile(_import_flex(), dynamic=False)
