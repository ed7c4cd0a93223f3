"""Denoising (DN) queries: noised copies of GT boxes and the self-attention mask.

Matching queries must not see DN queries (they would leak GT), and DN groups
must not see each other; DN queries may see the matching queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class DenoisingPlan:
    """DN queries of a batch, placed before the matching queries."""

    ref_points: Tensor  # [B, P, 3] normalized to [0, 1]
    blocked: Tensor  # [P + Q, P + Q] bool, True = may not attend
    labels: Tensor  # [B, P] class targets, num_classes = background, -1 = padding
    gt_index: Tensor  # [B, P] index of the GT each DN query copies, -1 = padding
    num_groups: int

    @property
    def pad_size(self) -> int:
        return self.ref_points.shape[1]


def dn_attention_mask(
    pad_size: int, num_groups: int, num_query: int, device: torch.device
) -> Tensor:
    """Bool [P + Q, P + Q] with True where attention is blocked."""
    size = pad_size + num_query
    blocked = torch.zeros(size, size, dtype=torch.bool, device=device)
    blocked[pad_size:, :pad_size] = True
    if num_groups == 0:
        return blocked
    group = pad_size // num_groups
    for g in range(num_groups):
        rows = slice(g * group, (g + 1) * group)
        blocked[rows, : g * group] = True
        blocked[rows, (g + 1) * group : pad_size] = True
    return blocked


def build_denoising(
    gt_centers: list[Tensor],
    gt_dims: list[Tensor],
    gt_labels: list[Tensor],
    point_cloud_range: Tensor,
    num_query: int,
    num_classes: int,
    max_groups: int = 10,
    noise_scale: float = 1.0,
    split: float = 0.75,
    generator: torch.Generator | None = None,
) -> DenoisingPlan | None:
    """Noised GT centers as extra reference points; None when the batch has no GT.

    gt_centers: per sample [G, 3] gravity centers in meters; gt_dims [G, 3].
    A center moved by more than `split` of its half-size (in norm) becomes a
    background target, which teaches the decoder to reject bad proposals.
    """
    counts = [len(c) for c in gt_centers]
    max_known = max(counts, default=0)
    if max_known == 0:
        return None
    groups = min(max_groups, num_query // max_known)
    if groups == 0:
        return None
    device = point_cloud_range.device
    batch = len(gt_centers)
    pad_size = max_known * groups
    ref_points = torch.zeros(batch, pad_size, 3, device=device)
    labels = torch.full((batch, pad_size), -1, dtype=torch.long, device=device)
    gt_index = torch.full((batch, pad_size), -1, dtype=torch.long, device=device)
    lo, hi = point_cloud_range[:3], point_cloud_range[3:]
    for b, (centers, dims, cls) in enumerate(zip(gt_centers, gt_dims, gt_labels, strict=True)):
        count = len(centers)
        if count == 0:
            continue
        rand = torch.rand(groups, count, 3, device=device, generator=generator) * 2 - 1
        noised = centers[None] + rand * (dims[None] / 2) * noise_scale
        normalized = ((noised - lo) / (hi - lo)).clamp(0, 1)
        target = cls[None].expand(groups, count).clone()
        target[rand.norm(dim=-1) > split] = num_classes
        slots = (
            torch.arange(groups, device=device)[:, None] * max_known
            + torch.arange(count, device=device)
        ).flatten()
        ref_points[b, slots] = normalized.reshape(-1, 3)
        labels[b, slots] = target.flatten()
        gt_index[b, slots] = torch.arange(count, device=device).repeat(groups)
    blocked = dn_attention_mask(pad_size, groups, num_query, device)
    return DenoisingPlan(ref_points, blocked, labels, gt_index, groups)
