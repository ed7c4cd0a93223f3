"""One-to-one Hungarian matching of queries to ground truth."""

from __future__ import annotations

import torch
from mmdet3d.registry import TASK_UTILS
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def focal_class_cost(
    cls_logits: Tensor,
    gt_labels: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    eps: float = 1e-12,
) -> Tensor:
    """[Q, C] logits, [G] labels -> [Q, G]: focal loss of matching minus of not matching."""
    prob = cls_logits.sigmoid()
    neg = -(1 - prob + eps).log() * (1 - alpha) * prob.pow(gamma)
    pos = -(prob + eps).log() * alpha * (1 - prob).pow(gamma)
    return pos[:, gt_labels] - neg[:, gt_labels]


def weighted_l1_cost(
    pred_codes: Tensor, gt_codes: Tensor, code_weights: Tensor, num_dims: int = 8
) -> Tensor:
    """[Q, D], [G, D] -> [Q, G] L1 distance on the first `num_dims` code-weighted dims.

    CMT matches on 8 dims (center, size, rotation), not on the velocity.
    """
    weights = code_weights[:num_dims]
    return torch.cdist(pred_codes[:, :num_dims] * weights, gt_codes[:, :num_dims] * weights, p=1)


@TASK_UTILS.register_module()
class CmtHungarianAssigner3D:
    """Minimizes cls_weight * focal cost + reg_weight * L1 cost over queries x GT."""

    def __init__(
        self,
        cls_weight: float = 2.0,
        reg_weight: float = 0.25,
        alpha: float = 0.25,
        gamma: float = 2.0,
        reg_dims: int = 8,
    ) -> None:
        self.cls_weight = cls_weight
        self.reg_weight = reg_weight
        self.reg_dims = reg_dims
        self.alpha = alpha
        self.gamma = gamma

    def cost(
        self,
        cls_logits: Tensor,
        pred_codes: Tensor,
        gt_labels: Tensor,
        gt_codes: Tensor,
        code_weights: Tensor,
    ) -> Tensor:
        cls_cost = focal_class_cost(cls_logits, gt_labels, self.alpha, self.gamma)
        reg_cost = weighted_l1_cost(pred_codes, gt_codes, code_weights, self.reg_dims)
        return self.cls_weight * cls_cost + self.reg_weight * reg_cost

    @torch.no_grad()
    def assign(
        self,
        cls_logits: Tensor,
        pred_codes: Tensor,
        gt_labels: Tensor,
        gt_codes: Tensor,
        code_weights: Tensor,
    ) -> Tensor:
        """Returns, per query, the index of its matched GT or -1."""
        assigned = torch.full(
            (cls_logits.shape[0],), -1, dtype=torch.long, device=cls_logits.device
        )
        if gt_labels.numel() == 0:
            return assigned
        cost = self.cost(cls_logits, pred_codes, gt_labels, gt_codes, code_weights)
        cost = torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8)
        rows, cols = linear_sum_assignment(cost.float().cpu().numpy())
        assigned[torch.as_tensor(rows, device=assigned.device)] = torch.as_tensor(
            cols, device=assigned.device
        )
        return assigned
