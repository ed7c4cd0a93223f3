"""`viz bias`: the chosen queries' AQR windows on the six cameras and on the BEV map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mmdet3d.structures import LiDARInstance3DBoxes
from torch import Tensor

from aqr_exp.errors import AqrError
from aqr_exp.viz.draw import GT_COLOR, PRED_COLOR, Boxes, bev_figure, camera_figure
from aqr_exp.viz.model import Loaded, SampleRun
from aqr_exp.viz.overlays import (
    camera_cells_to_pixels,
    denormalize_ref_points,
    query_token_rows,
    split_tokens,
)
from cmt_aqr.box_coder import decode_codes


def choose_queries(run: SampleRun, queries: list[str], top: int) -> Tensor:
    """'top' (the `top` highest-scoring queries) or query ids, comma-separated or repeated."""
    num_query = run.lidar_w.shape[1]
    if queries in ([], ["top"]):
        if not 1 <= top <= num_query:
            raise AqrError(f"--top {top} is out of range: the model has {num_query} queries")
        scores = run.outputs.cls_logits[-1, 0].sigmoid().max(dim=-1).values
        return scores.topk(top).indices
    ids = [part.strip() for value in queries for part in value.split(",") if part.strip()]
    bad = [value for value in ids if not (value.isdigit() and int(value) < num_query)]
    if bad or not ids:
        raise AqrError(
            f"--queries {' '.join(queries)!r} is not valid: use 'top' or query ids "
            f"0..{num_query - 1} (comma-separated or repeated); bad: {', '.join(bad) or 'none'}"
        )
    return torch.tensor(sorted({int(value) for value in ids}))


def _box_groups(run: SampleRun, queries: Tensor) -> list[Boxes]:
    """The chosen queries' own predicted boxes (last decoder layer), and the GT."""
    codes = run.outputs.codes[-1, 0, queries]
    pred = LiDARInstance3DBoxes(decode_codes(codes), box_dim=9)
    gt_boxes, _ = run.gt
    return [
        Boxes(pred.corners.numpy(), PRED_COLOR, "predicted (chosen queries)"),
        Boxes(gt_boxes.corners.numpy(), GT_COLOR, "ground truth"),
    ]


def _rgb_images(run: SampleRun) -> np.ndarray:
    """The pipeline's (resized, cropped) images as RGB [V, H, W, 3]; they match lidar2img."""
    img = run.data["inputs"]["img"]
    return img.permute(0, 2, 3, 1).numpy()[..., ::-1]  # mmcv loads BGR


def render(loaded: Loaded, run: SampleRun, queries: Tensor) -> dict[str, bytes]:
    """PNG bytes by file name: the camera overlays and the BEV map."""
    aqr = loaded.aqr
    rows = query_token_rows(aqr, run.cells, run.routing, run.layout, queries)
    bev_heat, cam_heat = split_tokens(rows.sum(axis=0), run.layout)
    image_size = run.ctx.image_size
    pixel_heat = camera_cells_to_pixels(cam_heat, image_size)
    lidar2img = run.ctx.lidar2img[0].double().numpy()
    boxes = _box_groups(run, queries)
    ids = ", ".join(str(int(q)) for q in queries)
    if aqr.type == "new":
        what = f"new AQR attention bias (scale {float(aqr.scale().detach()):.3f})"
        heat_label = "bias added to the attention logits"
        if run.routing.bev_extent is not None:
            bev = run.routing.bev_extent[0, queries].numpy()
            cam = run.routing.cam_extent[0, queries].numpy()
            what += (
                f"; predicted windows (cells) BEV {' '.join(f'{e:.1f}' for e in bev)}, "
                f"camera {' '.join(f'{e:.1f}' for e in cam)}"
            )
    else:
        what = "old AQR feature-modulation weight (old AQR adds no attention bias)"
        heat_label = "weight the query splats onto the features"
    title = f"{loaded.config.name} — sample {run.index}\nqueries {ids}: {what}"
    metainfo = run.data["data_samples"].metainfo
    view_names = [Path(path).parent.name for path in metainfo["img_path"]]
    cameras = camera_figure(
        _rgb_images(run), pixel_heat, lidar2img, boxes, view_names, title, heat_label
    )
    pc_range = loaded.pc_range
    ref_points = loaded.model.pts_bbox_head.reference_points.weight.detach().numpy()
    ref_xy = denormalize_ref_points(ref_points, pc_range)[:, :2]
    lidar_w = run.lidar_w[0].numpy()
    cam_w = np.where(run.cells.cam_valid[0].numpy(), run.cam_w[0].numpy(), 0.0)
    points = run.data["inputs"]["points"].numpy()
    bev = bev_figure(
        points,
        bev_heat,
        pc_range,
        ref_xy,
        lidar_w - cam_w,
        queries.numpy(),
        boxes,
        title,
        heat_label,
        "query LiDAR − camera weight (camera 0 where unseen)",
    )
    stem = f"sample{run.index:04d}"
    return {f"{stem}_cameras.png": cameras, f"{stem}_bev.png": bev}
