"""Exact attention with new AQR's window bias at the cost of fused no-bias attention.

The bias is zero outside each query's window (|W| keys of N), so

    softmax(s + B) v = (Z·O₀ + Σ_W c_k v_k) / (Z + Σ_W c_k),   c_k = (e^{B_k} − 1) e^{s_k},

where O₀ and log Z come from the fused kernel without bias and the sums run over the
window keys only. The backward calls the fused backward with the biased output and
log-sum-exp, exact for every key outside the window, and corrects the window keys.
docs/window-attention.md derives both; no [Q, N] tensor is ever built.

The window work in float32 runs in C++ kernels (csrc/window_kernels.cpp, built once per
machine at first use): one pass per query over its window keys, the next window rows
prefetched, since they lie scattered over the memory (docs/window-attention.md). Other
dtypes and head widths that are not whole vectors (the float64 tests) take the same sums
written as indexing and compiled: inductor fuses the gather of each query's window keys
into the loops that use them, so the [B, Q, W, H, D] window keys are never materialized.
The corrections that land on keys (∂ℓ/∂k, ∂ℓ/∂v) are sums over the queries whose window
holds each key: a sparse matrix per batch (keys × window entries, every head in one
entry), its pattern built once per batch by a counting sort and summed in place onto the
gradients by a C++ kernel in every dtype.

`local_attention` is the weight generator's window softmax (every key outside the window
masked out) built from the same pieces, for keys shared by the heads.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

_KERNEL_SOURCE = Path(__file__).with_name("csrc") / "window_kernels.cpp"


def _window_rows(x: Tensor, index: Tensor) -> Tensor:
    """x [B, N, ...] (keys in their memory layout), index [B, Q, W] -> [B, Q, W, ...].
    Written as indexing so that inductor reads the rows inside its loops instead of
    copying them."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None, None], index]


def _head_rows(x: Tensor, index: Tensor) -> Tensor:
    """x [B, H, N, D] -> [B, Q, W, H, D]."""
    return _window_rows(x.transpose(1, 2), index)


def _forward_windows(q, k, v, bias, index, valid, out0, lse0):
    """The biased output and log-sum-exp from the unbiased ones, and the window logits
    (saved for the backward)."""
    q_t = q.transpose(1, 2)  # [B, Q, H, D]
    logits = (q_t[:, :, None] * _head_rows(k, index)).sum(dim=-1) * q.shape[-1] ** -0.5
    mass = torch.exp(logits - lse0.transpose(1, 2)[:, :, None]) * valid[..., None]
    extra = torch.expm1(bias)[..., None] * mass  # c_k / Z, [B, Q, W, H]
    denom = 1 + extra.sum(dim=2)  # [B, Q, H]
    window_sum = (extra[..., None] * _head_rows(v, index)).sum(dim=2)
    out = (out0.transpose(1, 2) + window_sum) / denom[..., None]
    return out.transpose(1, 2), lse0 + torch.log(denom).transpose(1, 2), logits


# Vector instructions per ATen CPU capability (what torch itself dispatches to here; the
# ATEN_CPU_CAPABILITY variable lowers it): the kernel is built and named per capability, so
# a cache shared by machines of different CPUs (a cluster's home directory) stays safe.
_ARCH_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}


@functools.cache
def window_kernel():
    """The C++ kernels (csrc/window_kernels.cpp), compiled for this machine's vector
    instructions on first use (about 30 s) and cached by torch with its other extensions
    (TORCH_EXTENSIONS_DIR)."""
    from torch.utils import cpp_extension

    capability = torch.backends.cpu.get_cpu_capability()
    log.info("loading the window attention kernels for %s (built once, about 30 s)", capability)
    return cpp_extension.load(
        f"aqr_window_kernels_{capability.lower()}",
        [str(_KERNEL_SOURCE)],
        extra_cflags=["-O3", "-fopenmp", *_ARCH_FLAGS.get(capability, [])],
        extra_ldflags=["-fopenmp"],
    )


def kernel_applies(q: Tensor) -> bool:
    """The query-major kernels handle float32 with head widths of whole vectors; the rest
    is compiled."""
    return q.dtype == torch.float32 and q.shape[-1] % window_kernel().lanes == 0


def _token_rows(x: Tensor) -> Tensor:
    """[B, H, L, D] -> [B, L, H * D], the memory layout of q, k, v and the outputs
    (a view; copied only if x is laid out otherwise)."""
    batch, heads, length, dims = x.shape
    return x.transpose(1, 2).contiguous().view(batch, length, heads * dims)


def forward_windows_kernel(q, k, v, bias, index, out0, lse0):
    """`_forward_windows` (with the invalid entries' bias zero) by the C++ kernel."""
    batch, heads, queries, dims = q.shape
    out, lse, logits = window_kernel().window_forward(
        _token_rows(q), _token_rows(k), _token_rows(v), torch.expm1(bias), index.contiguous(),
        _token_rows(out0), lse0.transpose(1, 2).contiguous(), heads, dims**-0.5,
    )  # fmt: skip
    out = out.view(batch, queries, heads, dims).transpose(1, 2)
    return out, lse.transpose(1, 2), logits


def backward_windows_kernel(q, k, v, bias, index, valid, logits, out, lse, grad_out, grad_q):
    """`_backward_windows` by the C++ kernel (grad_q corrected in place)."""
    batch, heads, queries, dims = q.shape
    grad_q_rows = _token_rows(grad_q)
    grad_bias, missing_logits, missing_p = window_kernel().window_backward(
        _token_rows(q), _token_rows(k), _token_rows(v), torch.expm1(bias), index.contiguous(),
        valid.contiguous(), logits.contiguous(), _token_rows(out),
        lse.transpose(1, 2).contiguous(), _token_rows(grad_out), grad_q_rows, heads, dims**-0.5,
    )  # fmt: skip
    grad_q = grad_q_rows.view(batch, queries, heads, dims).transpose(1, 2)
    return grad_q, grad_bias, missing_logits, missing_p


def _backward_windows(q, k, v, bias, index, valid, logits, out, lse, grad_out, grad_q):
    """The window keys' share of the gradients: ∂ℓ/∂q corrected, ∂ℓ/∂B, and the per-key
    weights of the corrections that land on keys (on q's rows: ∂ℓ/∂k, on g's: ∂ℓ/∂v)."""
    scale = q.shape[-1] ** -0.5
    go_t = grad_out.transpose(1, 2)
    fused_p = torch.exp(logits - lse.transpose(1, 2)[:, :, None]) * valid[..., None]
    missing_p = fused_p * torch.expm1(bias)[..., None]  # what the fused backward left out
    row_dot = (go_t * out.transpose(1, 2)).sum(dim=-1)[:, :, None]
    grad_p = (go_t[:, :, None] * _head_rows(v, index)).sum(dim=-1) - row_dot
    grad_bias = ((fused_p + missing_p) * grad_p).sum(dim=-1)  # summed over the heads
    missing_logits = missing_p * grad_p * scale
    grad_q = grad_q + (missing_logits[..., None] * _head_rows(k, index)).sum(dim=2).transpose(1, 2)
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


def _take_rows(x: Tensor, rows: Tensor, dim: int) -> Tensor:
    """x [B, ..., Q, ...] (queries at dim 1 or 2) with its (batch, query) rows taken in
    the flat order `rows` [B * Q]."""
    y = x.transpose(1, dim)  # [B, Q, ...]: the memory layout of q, k, v and the output
    taken = y.reshape(y.shape[0] * y.shape[1], -1).index_select(0, rows)
    return taken.view(y.shape).transpose(1, dim)


def _queries_major(x: Tensor) -> Tensor:
    """x [B, H, Q, D] in the memory layout [B, Q, H, D] of q (copied only if not)."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


class _Reorder(torch.autograd.Function):
    """A permutation of the queries whose gradient is the inverse permutation (autograd's
    own, for a gather, fills zeros and scatters)."""

    @staticmethod
    def forward(ctx, x: Tensor, rows: Tensor, inverse_rows: Tensor, dim: int) -> Tensor:
        ctx.inverse_rows, ctx.dim = inverse_rows, dim
        return _take_rows(x, rows, dim)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _take_rows(grad, ctx.inverse_rows, ctx.dim), None, None, None


class KeyMajorWindows:
    """Each key's window entries (b, q, w): the sparsity pattern of the corrections that
    land on keys, a sparse matrix (keys × entries) in CSR form whose rows follow the keys'
    layout [B, N, ...]. Each entry carries every head: it reads one block of the query's
    row in q's layout [B, Q, H, D] and of the weights [B, Q, W, H], so neither side is
    copied into another layout. Built once per batch (a counting sort in C++) and shared by
    every layer's backward."""

    def __init__(self, index: Tensor, num_tokens: int) -> None:
        self.crow, self.query, self.entry = window_kernel().key_major_pattern(
            index.contiguous(), num_tokens
        )
        self.num_rows = self.crow.numel() - 1

    def add_to_keys(
        self, target: Tensor | None, weights: Tensor, rows: Tensor, shared: bool = False
    ) -> Tensor:
        """target (None: zeros; else updated in place) plus, at each key, Σ over its
        entries (q, w) of weights[b, q, w, h] · rows[b, h, q]: rows [B, H, Q, D] ->
        [B, H, N, D], or summed over the heads (keys shared by the heads) [B, N, D]."""
        batch, heads, _, dims = rows.shape
        rows = rows.transpose(1, 2).reshape(-1, heads, dims).contiguous()  # q's layout
        if target is None:
            added = rows.new_empty(self.num_rows, dims if shared else heads * dims)
        else:  # added in place: the targets are fresh gradients
            added = (target if shared else target.transpose(1, 2)).contiguous()
        window_kernel().key_sums(
            added.view(self.num_rows, -1), self.crow, self.query, self.entry,
            weights.reshape(-1, heads).contiguous(), rows, shared, target is not None,
        )  # fmt: skip
        if shared:
            return added.view(batch, -1, dims)
        return added.view(batch, -1, heads, dims).transpose(1, 2)


class WindowKeys:
    """Each query's window keys [B, Q, W] and whether they exist, with their key-major
    pattern built on the first backward.

    The queries are held in an order where neighbours in the map come one after another
    (by their first window key): consecutive queries then read mostly the same key rows,
    which stay in the cache (the window sums at 800×320, Q = 1,800: 72 → 41 ms)."""

    def __init__(self, index: Tensor, valid: Tensor, num_tokens: int) -> None:
        batch, queries, _ = index.shape
        lowest, highest = (int(index.min()), int(index.max())) if index.numel() else (0, 0)
        if lowest < 0 or highest >= num_tokens:
            raise ValueError(
                f"window keys must index the memory's {num_tokens} tokens, "
                f"got indices {lowest}..{highest}"
            )
        order = index[:, :, 0].argsort(dim=1)  # [B, Q]: sorted position -> query
        first = torch.arange(batch, device=index.device)[:, None] * queries
        self._rows = (first + order).reshape(-1)
        self._inverse_rows = torch.empty_like(self._rows)
        self._inverse_rows[self._rows] = torch.arange(batch * queries, device=index.device)
        self.index = self.by_locality(index, dim=1)
        self.valid = self.by_locality(valid, dim=1)
        self.num_tokens = num_tokens
        self._key_major: KeyMajorWindows | None = None

    def by_locality(self, x: Tensor, dim: int) -> Tensor:
        """x with its query dimension `dim` (1 or 2) put in the keys' order."""
        return _Reorder.apply(x, self._rows, self._inverse_rows, dim)

    def by_query(self, x: Tensor, dim: int) -> Tensor:
        """The inverse of `by_locality`."""
        return _Reorder.apply(x, self._inverse_rows, self._rows, dim)

    def key_major(self) -> KeyMajorWindows:
        """The key-major pattern (built on first use)."""
        if self._key_major is None:
            self._key_major = KeyMajorWindows(self.index, self.num_tokens)
        return self._key_major


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, keys: WindowKeys):
        out0, lse0 = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
        if kernel_applies(q):
            out, lse, logits = forward_windows_kernel(q, k, v, bias, keys.index, out0, lse0)
        else:
            queries_vary((q, 2), (bias, 1), (keys.index, 1), (keys.valid, 1))
            queries_vary((out0, 2), (lse0, 2))
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
        grad_out = _queries_major(grad_out)
        # The fused backward with the biased output and log-sum-exp: its probabilities
        # e^{s - lse} are the biased ones everywhere but in the windows.
        grad_q, grad_k, grad_v = (
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                grad_out, q, k, v, out, lse, 0.0, False
            )
        )
        backward_windows = backward_windows_kernel
        if not kernel_applies(q):
            queries_vary((q, 2), (bias, 1), (keys.index, 1), (keys.valid, 1), (logits, 1))
            queries_vary((out, 2), (lse, 2), (grad_out, 2), (grad_q, 2))
            backward_windows = compiled_once(_backward_windows)
        grad_q, grad_bias, missing_logits, missing_p = backward_windows(
            q, k, v, bias, keys.index, keys.valid, logits, out, lse, grad_out, grad_q
        )
        grad_k = keys.key_major().add_to_keys(grad_k, missing_logits, q)
        grad_v = keys.key_major().add_to_keys(grad_v, missing_p, grad_out)
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


def _local_forward(q, k, v, index, valid):
    """Softmax over each query's window keys only: the output and the probabilities
    (saved for the backward)."""
    q_t = q.transpose(1, 2)[:, :, None]  # [B, Q, 1, H, C]
    logits = (q_t * _window_rows(k, index)[..., None, :]).sum(dim=-1)  # [B, Q, W, H]
    p = torch.softmax(torch.where(valid[..., None], logits, float("-inf")), dim=2)
    out = (p[..., None] * _window_rows(v, index)[..., None, :]).sum(dim=2)
    return out.transpose(1, 2), p


def _local_backward(q, k, v, index, p, out, grad_out):
    """∂ℓ/∂q and the per-entry weights of ∂ℓ/∂k (on q's rows) and of ∂ℓ/∂v (on g's: p)."""
    go_t = grad_out.transpose(1, 2)  # [B, Q, H, C]
    row_dot = (go_t * out.transpose(1, 2)).sum(dim=-1)[:, :, None]
    grad_p = (go_t[:, :, None] * _window_rows(v, index)[..., None, :]).sum(dim=-1) - row_dot
    grad_logits = p * grad_p
    grad_q = (grad_logits[..., None] * _window_rows(k, index)[..., None, :]).sum(dim=2)
    return grad_q.transpose(1, 2), grad_logits


def local_forward_kernel(q, k, v, index, valid):
    """`_local_forward` by the C++ kernel."""
    batch, heads, queries, channels = q.shape
    out, p = window_kernel().local_forward(
        _token_rows(q), k.contiguous(), v.contiguous(), index.contiguous(), valid.contiguous(),
        heads,
    )  # fmt: skip
    return out.view(batch, queries, heads, channels).transpose(1, 2), p


def local_backward_kernel(q, k, v, index, valid, p, out, grad_out):
    """`_local_backward` by the C++ kernel."""
    batch, heads, queries, channels = q.shape
    grad_q, grad_logits = window_kernel().local_backward(
        _token_rows(q), k.contiguous(), v.contiguous(), index.contiguous(), valid.contiguous(),
        p.contiguous(), _token_rows(out), _token_rows(grad_out), heads,
    )  # fmt: skip
    return grad_q.view(batch, queries, heads, channels).transpose(1, 2), grad_logits


class _LocalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, keys: WindowKeys):
        if kernel_applies(q):
            out, p = local_forward_kernel(q, k, v, keys.index, keys.valid)
        else:
            queries_vary((q, 2), (keys.index, 1), (keys.valid, 1))
            out, p = compiled_once(_local_forward)(q, k, v, keys.index, keys.valid)
        ctx.keys = keys
        ctx.save_for_backward(q, k, v, p, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, p, out = ctx.saved_tensors
        keys: WindowKeys = ctx.keys
        grad_out = _queries_major(grad_out)
        if kernel_applies(q):
            grad_q, grad_logits = local_backward_kernel(
                q, k, v, keys.index, keys.valid, p, out, grad_out
            )
        else:
            queries_vary((q, 2), (keys.index, 1), (p, 1), (out, 2), (grad_out, 2))
            grad_q, grad_logits = compiled_once(_local_backward)(
                q, k, v, keys.index, p, out, grad_out
            )
        grad_k = keys.key_major().add_to_keys(None, grad_logits, q, shared=True)
        grad_v = keys.key_major().add_to_keys(None, p, grad_out, shared=True)
        return grad_q, grad_k, grad_v, None


def local_attention_eager(q: Tensor, k: Tensor, v: Tensor, index: Tensor, valid: Tensor) -> Tensor:
    """`local_attention` in matrix products over the gathered windows [B, Q, W, C] under
    autograd (off the CPU)."""
    logits = q.transpose(1, 2) @ _window_rows(k, index).transpose(2, 3)
    logits = logits.masked_fill(~valid[:, :, None], float("-inf"))  # [B, Q, H, W]
    return (torch.softmax(logits, dim=-1) @ _window_rows(v, index)).transpose(1, 2)


def local_attention(q: Tensor, k: Tensor, v: Tensor, keys: WindowKeys) -> Tensor:
    """softmax(q·kᵀ) v over each query's window keys (where keys.valid) only: q [B, H, Q, C]
    (scaled by the caller), k and v [B, N, C] shared by the heads -> [B, H, Q, C]. Every
    query needs a valid key.

    On the CPU compiled, with the key-major sums of `window_attention` in its backward;
    elsewhere eager matrix products over the gathered windows."""
    q = keys.by_locality(q, dim=2)  # keys.index and keys.valid are in this order
    if q.device.type == "cpu":
        out = _LocalAttention.apply(q, k, v, keys)
    else:
        out = local_attention_eager(q, k, v, keys.index, keys.valid)
    return keys.by_query(out, dim=2)
