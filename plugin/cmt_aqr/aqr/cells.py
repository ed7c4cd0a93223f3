"""Where each query sits in the fused memory: its BEV cell and its camera cell."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class MemoryLayout:
    """The memory is BEV tokens (row-major) then camera tokens (view, row, col)."""

    bev_size: tuple[int, int]  # (H, W)
    num_views: int
    cam_size: tuple[int, int]  # (h, w)

    @property
    def num_bev(self) -> int:
        return self.bev_size[0] * self.bev_size[1]

    @property
    def num_tokens(self) -> int:
        return self.num_bev + self.num_views * self.cam_size[0] * self.cam_size[1]


@dataclass
class QueryCells:
    """Per query: BEV (row, col); camera view and (row, col); whether a camera sees it.

    `*_pos` hold the continuous (row, col) in cell units (the cell is their floor);
    the old AQR's bilinear/gaussian splats need them.
    """

    bev_row: Tensor  # [B, Q] long
    bev_col: Tensor
    cam_view: Tensor  # [B, Q] long, 0 where cam_valid is False (never read there)
    cam_row: Tensor
    cam_col: Tensor
    cam_valid: Tensor  # [B, Q] bool
    bev_pos: Tensor  # [B, Q, 2] float (row, col)
    cam_pos: Tensor  # [B, Q, 2] float (row, col)

    def slice(self, start: int) -> QueryCells:
        """The queries from `start` on (e.g. the matching queries after the DN ones)."""
        return QueryCells(*(getattr(self, f.name)[:, start:] for f in fields(self)))


def _floor_cell(pos: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    row = pos[..., 0].floor().long().clamp(0, size[0] - 1)
    col = pos[..., 1].floor().long().clamp(0, size[1] - 1)
    return row, col


def bev_position(ref_points: Tensor, bev_size: tuple[int, int]) -> Tensor:
    """Normalized (x, y) -> (row from y, col from x) in cells, as PointPillarsScatter
    lays out the map."""
    height, width = bev_size
    return torch.stack((ref_points[..., 1] * height, ref_points[..., 0] * width), dim=-1)


def camera_position(
    pixels: Tensor, visible: Tensor, image_size: tuple[int, int], cam_size: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Pick, per query, the view that sees it (tie: closest to the image center).

    pixels [B, V, Q, 2], visible [B, V, Q] -> view [B, Q], (row, col) in cells
    [B, Q, 2], valid [B, Q].
    """
    img_h, img_w = image_size
    center = pixels.new_tensor([img_w / 2, img_h / 2])
    dist = (pixels - center).norm(dim=-1)
    dist = torch.where(visible, dist, torch.full_like(dist, float("inf")))
    view = dist.argmin(dim=1)  # [B, Q]
    valid = visible.any(dim=1)
    chosen = pixels.gather(1, view[:, None, :, None].expand(-1, 1, -1, 2)).squeeze(1)
    h, w = cam_size
    pos = torch.stack((chosen[..., 1] / img_h * h, chosen[..., 0] / img_w * w), dim=-1)
    pos = torch.where(valid[..., None], pos, torch.zeros_like(pos))
    return torch.where(valid, view, torch.zeros_like(view)), pos, valid


def locate_queries(
    ref_points: Tensor,
    pixels: Tensor,
    visible: Tensor,
    layout: MemoryLayout,
    image_size: tuple[int, int],
) -> QueryCells:
    bev_pos = bev_position(ref_points, layout.bev_size)
    view, cam_pos, valid = camera_position(pixels, visible, image_size, layout.cam_size)
    bev_row, bev_col = _floor_cell(bev_pos, layout.bev_size)
    cam_row, cam_col = _floor_cell(cam_pos, layout.cam_size)
    return QueryCells(bev_row, bev_col, view, cam_row, cam_col, valid, bev_pos, cam_pos)


def window_offsets(size: int) -> tuple[int, int]:
    """Inclusive (lo, hi) offsets of a window of `size` cells around a cell.

    Odd sizes are symmetric. Even sizes cannot be: the extra cell goes to the
    negative side (rows above, columns left), e.g. 4 -> offsets -2..1.
    """
    if size <= 0:
        raise ValueError(f"window size must be positive, got {size}")
    return -(size // 2), (size - 1) // 2


def key_coordinates(index: Tensor, layout: MemoryLayout) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Memory token index -> is_bev, view (-1 for BEV), row, col.

    Pure index arithmetic, so the same code runs on a whole [N] range (dense)
    and on the scalar kv_idx of a flex-attention score_mod.
    """
    width = layout.bev_size[1]
    h, w = layout.cam_size
    is_bev = index < layout.num_bev
    cam_index = (index - layout.num_bev).clamp(min=0)
    view = torch.where(is_bev, torch.full_like(index, -1), cam_index // (h * w))
    row = torch.where(is_bev, index // width, (cam_index % (h * w)) // w)
    col = torch.where(is_bev, index % width, cam_index % w)
    return is_bev, view, row, col


def window_keys(
    cells: QueryCells, layout: MemoryLayout, bev_window: int, cam_window: int
) -> tuple[Tensor, Tensor]:
    """Memory indices [B, Q, K] of each query's BEV window then camera window, and whether
    each cell exists: False past a map's border (never wrapped) and for the camera cells
    of a query no camera sees. Missing cells hold a clamped, valid index to mask out."""

    def offsets(size: int) -> tuple[Tensor, Tensor]:
        lo, hi = window_offsets(size)
        steps = torch.arange(lo, hi + 1, device=cells.bev_row.device)
        d_row, d_col = torch.meshgrid(steps, steps, indexing="ij")
        return d_row.flatten(), d_col.flatten()

    height, width = layout.bev_size
    d_row, d_col = offsets(bev_window)
    rows = cells.bev_row[..., None] + d_row
    cols = cells.bev_col[..., None] + d_col
    bev_ok = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    bev_index = rows.clamp(0, height - 1) * width + cols.clamp(0, width - 1)

    h, w = layout.cam_size
    d_row, d_col = offsets(cam_window)
    rows = cells.cam_row[..., None] + d_row
    cols = cells.cam_col[..., None] + d_col
    cam_ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w) & cells.cam_valid[..., None]
    cam_index = (
        layout.num_bev
        + cells.cam_view[..., None] * (h * w)
        + rows.clamp(0, h - 1) * w
        + cols.clamp(0, w - 1)
    )
    return torch.cat((bev_index, cam_index), dim=-1), torch.cat((bev_ok, cam_ok), dim=-1)
