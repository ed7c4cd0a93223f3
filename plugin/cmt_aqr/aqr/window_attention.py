"""Exact attention with new AQR's window bias at the cost of fused no-bias attention.

The bias is zero outside each query's window (|W| keys of N), so

    softmax(s + B) v = (Z·O₀ + Σ_W c_k v_k) / (Z + Σ_W c_k),   c_k = (e^{B_k} − 1) e^{s_k},

where O₀ and log Z come from the fused kernel without bias and the sums run over the
gathered window keys only. The backward calls the fused backward with the biased output
and log-sum-exp, exact for every key outside the window, and corrects the window keys.
docs/window-attention.md derives both; no [Q, N] tensor is ever built.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cmt_aqr.aqr.cells import flat_token_index, gather_tokens


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """x [B, H, N, D] (a head view of [B, N, H*D], as the layer makes them), index
    [B, Q, W] -> the window keys [B, Q, W, H, D]."""
    batch, heads, length, dims = x.shape
    tokens = x.transpose(1, 2).reshape(batch, length, heads * dims)
    return gather_tokens(tokens, index).view(*index.shape, heads, dims)


def _scatter_add(target: Tensor, index: Tensor, values: Tensor) -> Tensor:
    """target [B, H, N, D] plus values [B, Q, W, H, D] added at the keys `index` [B, Q, W]."""
    batch, heads, length, dims = target.shape
    added = torch.zeros(batch * length, heads * dims, dtype=target.dtype, device=target.device)
    added.index_add_(0, flat_token_index(index, length), values.reshape(-1, heads * dims))
    return target + added.view(batch, length, heads, dims).transpose(1, 2)


class _WindowAttention(torch.autograd.Function):
    """Window tensors are laid out [B, Q, W, H] (+ D): the layer's own token-major layout,
    so gathering window keys copies whole rows."""

    @staticmethod
    def forward(ctx, q, k, v, bias, index, valid):
        scale = q.shape[-1] ** -0.5
        out0, lse0 = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
        q_t = q.transpose(1, 2)  # [B, Q, H, D]
        k_w, v_w = _gather(k, index), _gather(v, index)
        logits = (q_t[:, :, None] * k_w).sum(dim=-1) * scale  # [B, Q, W, H]
        mass = torch.exp(logits - lse0.transpose(1, 2)[:, :, None]) * valid[..., None]
        extra = torch.expm1(bias)[..., None] * mass  # c_k / Z
        denom = 1 + extra.sum(dim=2)  # [B, Q, H]
        out_t = (out0.transpose(1, 2) + (extra[..., None] * v_w).sum(dim=2)) / denom[..., None]
        out = out_t.transpose(1, 2)
        lse = lse0 + torch.log(denom).transpose(1, 2)
        ctx.save_for_backward(q, k, v, bias, index, valid, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, bias, index, valid, out, lse = ctx.saved_tensors
        scale = q.shape[-1] ** -0.5
        # The fused backward with the biased output and log-sum-exp: its probabilities
        # e^{s - lse} are the biased ones everywhere but in the windows.
        grad_q, grad_k, grad_v = (
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                grad_out, q, k, v, out, lse, 0.0, False
            )
        )
        q_t, go_t, out_t = q.transpose(1, 2), grad_out.transpose(1, 2), out.transpose(1, 2)
        k_w, v_w = _gather(k, index), _gather(v, index)
        logits = (q_t[:, :, None] * k_w).sum(dim=-1) * scale
        fused_p = torch.exp(logits - lse.transpose(1, 2)[:, :, None]) * valid[..., None]
        true_p = fused_p * torch.exp(bias)[..., None]
        missing_p = true_p - fused_p
        row_dot = (go_t * out_t).sum(dim=-1)[:, :, None]
        grad_p = (go_t[:, :, None] * v_w).sum(dim=-1) - row_dot
        grad_logits = true_p * grad_p  # the window logits' true gradient (and the bias's)
        missing_logits = missing_p * grad_p
        grad_q = grad_q + ((missing_logits[..., None] * k_w).sum(dim=2) * scale).transpose(1, 2)
        grad_k = _scatter_add(grad_k, index, missing_logits[..., None] * q_t[:, :, None] * scale)
        grad_v = _scatter_add(grad_v, index, missing_p[..., None] * go_t[:, :, None])
        return grad_q, grad_k, grad_v, grad_logits.sum(dim=-1), None, None


def window_attention(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor, index: Tensor, valid: Tensor
) -> Tensor:
    """softmax(q·kᵀ/√d + B) v with B[q, index[q, j]] = bias[q, j] (shared by the heads)
    where valid, and 0 elsewhere. q [B, H, Q, D], k/v [B, H, N, D], bias [B, Q, W]."""
    if q.device.type != "cpu":
        raise RuntimeError(
            "attn_impl='window' runs on the CPU (its fused kernel is the CPU flash attention); "
            "use 'flex' or 'dense' on other devices"
        )
    bias = torch.where(valid, bias, torch.zeros_like(bias))
    return _WindowAttention.apply(q, k, v, bias, index, valid)
