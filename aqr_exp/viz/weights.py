"""`viz weights`: the per-query modality weights over the val split, matched to GT.

A GT box is matched to the query whose predicted center (last decoder layer) is
nearest in BEV, within `max_distance` meters; each query serves at most one GT
(greedy, closest pairs first).
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from aqr_exp.errors import AqrError
from aqr_exp.viz.model import Loaded, run_sample

log = logging.getLogger(__name__)

BUCKET_EDGES = (0.0, 10.0, 20.0, 30.0)
BUCKETS = ("0-10", "10-20", "20-30", "30+")


@dataclass
class WeightStats:
    matched: pd.DataFrame  # one row per matched query
    table: pd.DataFrame  # one row per (class, distance bucket)
    bias_scale: float  # NaN for old AQR (no bias)
    samples: int
    num_gt: int


def match(query_xy: np.ndarray, gt_xy: np.ndarray, max_distance: float) -> list[tuple[int, int]]:
    """(gt, query) pairs: closest pairs first, each GT and each query used once."""
    if len(gt_xy) == 0 or len(query_xy) == 0:
        return []
    dist = np.linalg.norm(gt_xy[:, None, :] - query_xy[None, :, :], axis=-1)
    pairs, used_gt, used_query = [], set(), set()
    for flat in np.argsort(dist, axis=None):
        gt, query = np.unravel_index(flat, dist.shape)
        if dist[gt, query] > max_distance:
            break
        if gt not in used_gt and query not in used_query:
            pairs.append((int(gt), int(query)))
            used_gt.add(gt)
            used_query.add(query)
    return pairs


def distance_bucket(distance: float) -> str:
    """'0-10', '10-20', '20-30' or '30+' (meters from the ego vehicle)."""
    return BUCKETS[bisect.bisect_right(BUCKET_EDGES, distance) - 1]


def collect(loaded: Loaded, samples: int | None, max_distance: float) -> WeightStats:
    """Run the first `samples` val samples (all without it) and match their queries."""
    size = len(loaded.dataset)
    if samples is not None and not 1 <= samples <= size:
        raise AqrError(
            f"--samples {samples} is out of range: the val split of {loaded.config.name} "
            f"has {size} samples (1..{size})"
        )
    count = size if samples is None else samples
    rows, num_gt = [], 0
    for index in range(count):
        run = run_sample(loaded, index)
        gt_boxes, gt_labels = run.gt
        gt_center = gt_boxes.gravity_center.numpy()
        query_xy = run.outputs.codes[-1, 0, :, :2].numpy()
        seen = run.cells.cam_valid[0].numpy()
        lidar_w, cam_w = run.lidar_w[0].numpy(), run.cam_w[0].numpy()
        extents = [
            np.full(lidar_w.shape, np.nan) if e is None else e[0].numpy()
            for e in (run.routing.bev_extent, run.routing.cam_extent)
        ]
        num_gt += len(gt_labels)
        for gt, query in match(query_xy, gt_center[:, :2], max_distance):
            distance = float(np.linalg.norm(gt_center[gt, :2]))
            rows.append(
                {
                    "sample": index,
                    "query": query,
                    "class": loaded.class_names[int(gt_labels[gt])],
                    "distance_m": distance,
                    "distance": distance_bucket(distance),
                    "lidar_w": float(lidar_w[query]),
                    "cam_w": float(cam_w[query]),
                    "cam_seen": bool(seen[query]),
                    "bev_extent": float(extents[0][query]),
                    "cam_extent": float(extents[1][query]),
                }
            )
        log.info("sample %d/%d: %d GT boxes", index + 1, count, len(gt_labels))
    matched = pd.DataFrame(
        rows,
        columns=[
            "sample", "query", "class", "distance_m", "distance", "lidar_w", "cam_w", "cam_seen",
            "bev_extent", "cam_extent",
        ],
    ).astype({"cam_seen": bool})  # fmt: skip
    aqr = loaded.aqr
    scale = float(aqr.scale().detach()) if aqr.type == "new" else math.nan
    return WeightStats(matched, summarize(matched, loaded.class_names, scale), scale, count, num_gt)


def summarize(matched: pd.DataFrame, class_names: list[str], bias_scale: float) -> pd.DataFrame:
    """One row per (class, distance bucket), empty ones included (count 0, NaN means).

    The camera weight and window extent are averaged over the queries a camera sees:
    elsewhere the model does not use them. Extents (cells) are NaN for fixed windows."""
    table = []
    for name in class_names:
        for bucket in BUCKETS:
            group = matched[(matched["class"] == name) & (matched["distance"] == bucket)]
            seen = group[group["cam_seen"]]
            table.append(
                {
                    "class": name,
                    "distance": bucket,
                    "count": len(group),
                    "cam_seen": len(seen),
                    "lidar_w_mean": group["lidar_w"].mean(),
                    "cam_w_mean": seen["cam_w"].mean(),
                    "prefer_lidar": (
                        ((group["lidar_w"] > group["cam_w"]) | ~group["cam_seen"]).mean()
                    ),
                    "bias_scale": bias_scale,
                    "bev_extent_mean": group["bev_extent"].mean(),
                    "cam_extent_mean": seen["cam_extent"].mean(),
                }
            )
    return pd.DataFrame(table)
