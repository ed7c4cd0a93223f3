"""Exact attention with new AQR's window bias at the cost of fused no-bias attention.

The bias is zero outside each query's window (|W| keys of N), so

    softmax(s + B) v = (Z·O₀ + Σ_W c_k v_k) / (Z + Σ_W c_k),   c_k = (e^{B_k} − 1) e^{s_k},

where O₀ and log Z come from the fused kernel without bias and the sums run over the
window keys only. The backward calls the fused backward with the biased output and
log-sum-exp, exact for every key outside the window, and corrects the window keys.
docs/window-attention.md derives both; no [Q, N] tensor is ever built.

The window work is compiled: inductor fuses the gather of each query's window keys into
the loops that use them, so the [B, Q, W, H, D] window keys are never materialized (eager
PyTorch copies them, and that copy cost more than the fused attention itself). The
corrections that land on keys (∂ℓ/∂k, ∂ℓ/∂v) are sums over the queries whose window
holds each key: a sparse [N, Q] matrix per head, multiplied by MKL's sparse kernel.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor


def _window_rows(x: Tensor, index: Tensor) -> Tensor:
    """x [B, H, N, D], index [B, Q, W] -> [B, Q, W, H, D]. Written as indexing so that
    inductor reads the rows inside its loops instead of copying them."""
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x.transpose(1, 2)[batch, index]


def _forward_windows(q, k, v, bias, index, valid, out0, lse0):
    """The biased output and log-sum-exp from the unbiased ones, and the window logits
    (saved for the backward)."""
    q_t = q.transpose(1, 2)  # [B, Q, H, D]
    logits = (q_t[:, :, None] * _window_rows(k, index)).sum(dim=-1) * q.shape[-1] ** -0.5
    mass = torch.exp(logits - lse0.transpose(1, 2)[:, :, None]) * valid[..., None]
    extra = torch.expm1(bias)[..., None] * mass  # c_k / Z, [B, Q, W, H]
    denom = 1 + extra.sum(dim=2)  # [B, Q, H]
    window_sum = (extra[..., None] * _window_rows(v, index)).sum(dim=2)
    out = (out0.transpose(1, 2) + window_sum) / denom[..., None]
    return out.transpose(1, 2), lse0 + torch.log(denom).transpose(1, 2), logits


def _backward_windows(q, k, v, bias, index, valid, logits, out, lse, grad_out, grad_q):
    """The window keys' share of the gradients: ∂ℓ/∂q corrected, ∂ℓ/∂B, and the per-key
    weights of the corrections that land on keys (on q's rows: ∂ℓ/∂k, on g's: ∂ℓ/∂v)."""
    scale = q.shape[-1] ** -0.5
    go_t = grad_out.transpose(1, 2)
    fused_p = torch.exp(logits - lse.transpose(1, 2)[:, :, None]) * valid[..., None]
    missing_p = fused_p * torch.expm1(bias)[..., None]  # what the fused backward left out
    row_dot = (go_t * out.transpose(1, 2)).sum(dim=-1)[:, :, None]
    grad_p = (go_t[:, :, None] * _window_rows(v, index)).sum(dim=-1) - row_dot
    grad_bias = ((fused_p + missing_p) * grad_p).sum(dim=-1)  # summed over the heads
    missing_logits = missing_p * grad_p * scale
    grad_q = grad_q + (missing_logits[..., None] * _window_rows(k, index)).sum(dim=2).transpose(
        1, 2
    )
    return grad_q, grad_bias, missing_logits, missing_p


@functools.cache
def compiled_once(fn):
    """Compiled once per process (and cached on disk by inductor)."""
    return torch.compile(fn)


def queries_vary(*dims: tuple[Tensor, int]) -> None:
    """Compile the query dimension as dynamic from the start (the DN queries vary per
    batch), other sizes static: one compilation, and loops over heads and channels that
    the compiler can unroll (18 % faster than all-dynamic at 800×320)."""
    for tensor, dim in dims:
        torch._dynamo.maybe_mark_dynamic(tensor, dim)


def _take_queries(x: Tensor, order: Tensor, dim: int) -> Tensor:
    """x [B, ..., Q, ...] (queries at `dim`) reordered along Q by order [B, Q]."""
    shape = [order.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = order.shape[1]
    return x.gather(dim, order.view(shape).expand(*x.shape[:dim], -1, *x.shape[dim + 1 :]))


class KeyMajorWindows:
    """Each key's (query, window slot) entries: the sparsity pattern of the corrections
    that land on keys, one block per (batch, head). Built once per batch and shared by
    every layer's backward."""

    def __init__(self, index: Tensor, num_tokens: int, heads: int) -> None:
        batch, queries, width = index.shape
        flat = index.reshape(batch, -1)
        self.order = flat.argsort(dim=1, stable=True)  # entries sorted by key, [B, E]
        counts = torch.zeros(batch, num_tokens, dtype=torch.int64, device=index.device)
        counts.scatter_add_(1, flat, torch.ones_like(flat))
        per_row = counts[:, None].expand(batch, heads, num_tokens).reshape(-1)
        self.crow = torch.cat((per_row.new_zeros(1), per_row.cumsum(0))).to(torch.int32)
        block = torch.arange(batch * heads, device=index.device).view(batch, heads, 1)
        self.col = (self.order[:, None] // width + block * queries).reshape(-1).to(torch.int32)
        self.shape = (batch * heads * num_tokens, batch * heads * queries)

    def add_to_keys(self, target: Tensor, weights: Tensor, rows: Tensor) -> Tensor:
        """target [B, H, N, D] plus, at each key, Σ over its entries (q, w) of
        weights[b, q, w, h] · rows[b, h, q]."""
        batch, heads, length, dims = target.shape
        values = weights.reshape(batch, -1, heads).gather(
            1, self.order[..., None].expand(-1, -1, heads)
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            matrix = torch.sparse_csr_tensor(
                self.crow,
                self.col,
                values.transpose(1, 2).reshape(-1),
                size=self.shape,
                check_invariants=False,
            )
        added = matrix @ rows.reshape(-1, dims)
        return target + added.view(batch, heads, length, dims)


class WindowKeys:
    """Each query's window keys [B, Q, W] and whether they exist, with their key-major
    pattern built on the first backward.

    The queries are held in an order where neighbours in the map come one after another
    (by their first window key): consecutive queries then read mostly the same key rows,
    which stay in the cache (the window sums at 800×320, Q = 1,800: 72 → 41 ms)."""

    def __init__(self, index: Tensor, valid: Tensor, num_tokens: int) -> None:
        self.order = index[:, :, 0].argsort(dim=1)  # [B, Q]: sorted position -> query
        self.inverse = self.order.argsort(dim=1)  # query -> sorted position
        self.index = self.by_locality(index, dim=1)
        self.valid = self.by_locality(valid, dim=1)
        self.num_tokens = num_tokens
        self._key_major: dict[int, KeyMajorWindows] = {}

    def by_locality(self, x: Tensor, dim: int) -> Tensor:
        """x with its query dimension `dim` put in the keys' order."""
        return _take_queries(x, self.order, dim)

    def by_query(self, x: Tensor, dim: int) -> Tensor:
        """The inverse of `by_locality`."""
        return _take_queries(x, self.inverse, dim)

    def key_major(self, heads: int) -> KeyMajorWindows:
        if heads not in self._key_major:
            self._key_major[heads] = KeyMajorWindows(self.index, self.num_tokens, heads)
        return self._key_major[heads]


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, keys: WindowKeys):
        out0, lse0 = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
        queries_vary((q, 2), (bias, 1), (keys.index, 1), (keys.valid, 1), (out0, 2), (lse0, 2))
        out, lse, logits = compiled_once(_forward_windows)(
            q, k, v, bias, keys.index, keys.valid, out0, lse0
        )
        ctx.keys = keys
        ctx.save_for_backward(q, k, v, bias, logits, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias, logits, out, lse = ctx.saved_tensors
        keys: WindowKeys = ctx.keys
        grad_out = grad_out.contiguous()
        # The fused backward with the biased output and log-sum-exp: its probabilities
        # e^{s - lse} are the biased ones everywhere but in the windows.
        grad_q, grad_k, grad_v = (
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                grad_out, q, k, v, out, lse, 0.0, False
            )
        )
        queries_vary((q, 2), (bias, 1), (keys.index, 1), (keys.valid, 1), (logits, 1))
        queries_vary((out, 2), (lse, 2), (grad_out, 2), (grad_q, 2))
        grad_q, grad_bias, missing_logits, missing_p = compiled_once(_backward_windows)(
            q, k, v, bias, keys.index, keys.valid, logits, out, lse, grad_out, grad_q
        )
        key_major = keys.key_major(q.shape[1])
        grad_k = key_major.add_to_keys(grad_k, missing_logits, q)
        grad_v = key_major.add_to_keys(grad_v, missing_p, grad_out)
        return grad_q, grad_k, grad_v, grad_bias, None


def window_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, keys: WindowKeys) -> Tensor:
    """softmax(q·kᵀ/√d + B) v with B[q, keys.index[q, j]] = bias[q, j] (shared by the
    heads) where keys.valid, and 0 elsewhere. q [B, H, Q, D], k/v [B, H, N, D], bias [B, Q, W]."""
    if q.device.type != "cpu":
        raise RuntimeError(
            "attn_impl='window' runs on the CPU (its fused kernel is the CPU flash attention); "
            "use 'flex' or 'dense' on other devices"
        )
    bias = keys.by_locality(bias, dim=1)
    bias = torch.where(keys.valid, bias, torch.zeros_like(bias))
    out = _WindowAttention.apply(keys.by_locality(q, dim=2), k, v, bias, keys)
    return keys.by_query(out, dim=2)
