"""Pure geometry for the AQR pictures: what a query contributes to each memory token,
laid out as a BEV map and as per-camera pixel maps.

The model's own pieces (`window_bias` through `WindowBias`, `render_maps`) compute the
values, so a picture shows exactly what the decoder sees, not a re-implementation.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch
from torch import Tensor

from cmt_aqr.aqr.cells import MemoryLayout, QueryCells
from cmt_aqr.aqr.module import AdaptiveQueryRouting
from cmt_aqr.aqr.render import render_maps
from cmt_aqr.aqr.weights import Routing

# LiDARInstance3DBoxes.corners order: the 12 edges of a box, and its bottom face.
BOX_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 0),
    (4, 5), (5, 6), (6, 7), (7, 4),
    (0, 4), (1, 5), (2, 6), (3, 7),
)  # fmt: skip
BOX_BOTTOM = (0, 3, 7, 4)


def select_queries(cells: QueryCells, queries: Tensor) -> QueryCells:
    """The cells of a subset of the queries (index [K] into dim 1)."""
    return QueryCells(*(getattr(cells, f.name)[:, queries] for f in fields(cells)))


@torch.no_grad()
def query_token_rows(
    aqr: AdaptiveQueryRouting,
    cells: QueryCells,
    routing: Routing,
    layout: MemoryLayout,
    queries: Tensor,
) -> np.ndarray:
    """Per chosen query of sample 0, its value on every memory token: [K, N].

    New AQR: the attention bias row B[q, :] added to the cross-attention logits (with
    adaptive windows, shaped by each query's predicted extents).
    Old AQR (no bias): the query's own splat into the weight maps that multiply
    the BEV and camera features (before the sum over queries and the clamp).
    """
    chosen = select_queries(cells, queries)
    picked = routing.pick(queries)
    if aqr.type == "new":
        return aqr.attention_bias(chosen, picked, layout).dense()[0, 0].cpu().numpy()
    lidar, cam = picked.lidar_w, picked.cam_w
    # Old AQR: every query on its own (as a batch of one-query samples) so the splats
    # of neighbouring queries do not add up.
    first = slice(0, 1)
    pos_bev, pos_cam = chosen.bev_pos[first].transpose(0, 1), chosen.cam_pos[first].transpose(0, 1)
    valid = chosen.cam_valid[first].transpose(0, 1)
    view = chosen.cam_view[first].transpose(0, 1)
    lidar, cam = lidar[first].transpose(0, 1), cam[first].transpose(0, 1)
    common = dict(kernel=aqr.render_kernel, sigma=aqr.render_sigma, max_weight=aqr.max_weight)
    bev = render_maps(
        pos_bev, lidar, torch.ones_like(valid), torch.zeros_like(view), 1, layout.bev_size, **common
    )
    camera = render_maps(pos_cam, cam, valid, view, layout.num_views, layout.cam_size, **common)
    return torch.cat((bev.flatten(1), camera.flatten(1)), dim=1).cpu().numpy()


def split_tokens(row: np.ndarray, layout: MemoryLayout) -> tuple[np.ndarray, np.ndarray]:
    """A per-token row [N] -> BEV map [H, W] (row from y, col from x) and camera
    maps [V, h, w], in the memory's order (BEV row-major, then view, row, col)."""
    bev = row[: layout.num_bev].reshape(layout.bev_size)
    cam = row[layout.num_bev :].reshape(layout.num_views, *layout.cam_size)
    return bev, cam


def camera_cells_to_pixels(cam_map: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Camera-cell maps [..., h, w] -> pixel maps [..., H, W]: each pixel takes the
    value of the feature cell its center falls in (as `camera_position` assigns them)."""
    h, w = cam_map.shape[-2:]
    img_h, img_w = image_size
    rows = ((np.arange(img_h) + 0.5) * h / img_h).astype(int)
    cols = ((np.arange(img_w) + 0.5) * w / img_w).astype(int)
    return cam_map[..., rows, :][..., cols]


def project_points(points: np.ndarray, lidar2img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LiDAR points [P, 3] -> pixels [V, P, 2] and depth [V, P] in each view
    (pixels are meaningless where depth <= 0)."""
    homo = np.concatenate((points, np.ones_like(points[:, :1])), axis=1)
    cam = np.einsum("vij,pj->vpi", lidar2img, homo)
    depth = cam[..., 2]
    safe = np.where(depth > 1e-2, depth, 1.0)
    return cam[..., :2] / safe[..., None], depth


def denormalize_ref_points(ref_points: np.ndarray, pc_range: np.ndarray) -> np.ndarray:
    """Reference points in [0, 1] -> meters, as the head maps them."""
    return ref_points * (pc_range[3:] - pc_range[:3]) + pc_range[:3]
