"""Matplotlib (Agg, no pyplot) figures, rendered to PNG bytes for atomic writes."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from aqr_exp.viz.overlays import BOX_BOTTOM, BOX_EDGES, project_points

PRED_COLOR, GT_COLOR = "#ff3030", "#30ff60"


@dataclass
class Boxes:
    corners: np.ndarray  # [B, 8, 3] in LiDAR meters
    color: str
    label: str


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _norm(heat: np.ndarray) -> TwoSlopeNorm:
    """Signed values (tanh weights) around a white zero."""
    peak = float(np.abs(heat).max()) or 1.0
    return TwoSlopeNorm(vcenter=0.0, vmin=-peak, vmax=peak)


def camera_figure(
    images: np.ndarray,
    heat: np.ndarray,
    lidar2img: np.ndarray,
    boxes: list[Boxes],
    view_names: list[str],
    title: str,
    heat_label: str,
) -> bytes:
    """Six views (RGB [V, H, W, 3]) with the heat [V, H, W] (zero: transparent) and
    the boxes projected with the sample's lidar2img."""
    views, img_h, img_w = heat.shape
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    axes = fig.subplots(2, (views + 1) // 2).flatten()
    norm = _norm(heat)
    mappable = None
    for view, ax in enumerate(axes[:views]):
        ax.imshow(images[view], extent=(0, img_w, img_h, 0))
        masked = np.ma.masked_equal(heat[view], 0.0)
        mappable = ax.imshow(
            masked, cmap="coolwarm", norm=norm, alpha=0.6, extent=(0, img_w, img_h, 0)
        )
        for group in boxes:
            _draw_boxes_in_view(ax, group, lidar2img[view : view + 1])
        ax.set_xlim(0, img_w)
        ax.set_ylim(img_h, 0)
        ax.set_title(view_names[view], fontsize=9)
        ax.set_axis_off()
    fig.colorbar(mappable, ax=axes.tolist(), shrink=0.8, label=heat_label)
    _legend(fig, boxes)
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def _draw_boxes_in_view(ax, group: Boxes, lidar2img: np.ndarray) -> None:
    for corners in group.corners:
        pixels, depth = project_points(corners, lidar2img)
        pixels, depth = pixels[0], depth[0]
        for a, b in BOX_EDGES:
            if depth[a] > 0.1 and depth[b] > 0.1:
                ax.plot(*pixels[[a, b]].T, color=group.color, linewidth=0.8)


def _legend(fig: Figure, boxes: list[Boxes]) -> None:
    handles = [fig.axes[0].plot([], [], color=group.color, label=group.label)[0] for group in boxes]
    fig.legend(handles=handles, loc="lower left", fontsize=8)


def bev_figure(
    points: np.ndarray,
    heat: np.ndarray,
    pc_range: np.ndarray,
    ref_xy: np.ndarray,
    ref_value: np.ndarray,
    chosen: np.ndarray,
    boxes: list[Boxes],
    title: str,
    heat_label: str,
    ref_label: str,
) -> bytes:
    """Top view: LiDAR points, the chosen queries' BEV heat [H, W] (row from y, col
    from x), every query's reference point coloured by `ref_value`, and the boxes."""
    x0, y0, x1, y1 = pc_range[0], pc_range[1], pc_range[3], pc_range[4]
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots()
    ax.scatter(points[:, 0], points[:, 1], s=0.3, c="0.55", linewidths=0)
    masked = np.ma.masked_equal(heat, 0.0)
    window = ax.imshow(
        masked,
        cmap="coolwarm",
        norm=_norm(heat),
        alpha=0.6,
        origin="lower",
        extent=(x0, x1, y0, y1),
    )
    refs = ax.scatter(
        ref_xy[:, 0],
        ref_xy[:, 1],
        c=ref_value,
        cmap="PiYG_r",
        norm=_norm(ref_value),
        s=14,
        edgecolors="k",
        linewidths=0.3,
    )
    ax.scatter(
        ref_xy[chosen, 0], ref_xy[chosen, 1], s=90, facecolors="none", edgecolors="k", linewidths=1
    )
    for group in boxes:
        for corners in group.corners:
            ring = corners[[*BOX_BOTTOM, BOX_BOTTOM[0]], :2]
            ax.plot(ring[:, 0], ring[:, 1], color=group.color, linewidth=1)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    fig.colorbar(window, ax=ax, shrink=0.6, label=heat_label)
    fig.colorbar(refs, ax=ax, shrink=0.6, label=ref_label)
    _legend(fig, boxes)
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


# Each pooled mean and the count that weighs it: camera values count the queries it sees.
POOLED_MEANS = {
    "lidar_w_mean": "count",
    "cam_w_mean": "cam_seen",
    "bev_extent_mean": "count",
    "cam_extent_mean": "cam_seen",
}


def weights_figure(table: pd.DataFrame, title: str) -> bytes:
    """Mean LiDAR vs camera weight of the matched queries by class and by distance."""
    bars = (("lidar_w_mean", "LiDAR weight"), ("cam_w_mean", "camera weight (seen)"))
    return _bars_by_class_and_distance(table, bars, title, zero_line=True)


def extents_figure(table: pd.DataFrame, title: str) -> bytes:
    """Mean predicted window extent (cells) of the matched queries, per modality."""
    bars = (
        ("bev_extent_mean", "BEV window (cells)"),
        ("cam_extent_mean", "camera window (cells, seen)"),
    )
    return _bars_by_class_and_distance(table, bars, title, zero_line=False)


def _bars_by_class_and_distance(
    table: pd.DataFrame, bars: tuple[tuple[str, str], ...], title: str, zero_line: bool
) -> bytes:
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    by_class_ax, by_distance_ax = fig.subplots(1, 2, width_ratios=(2, 1))
    width = 0.8 / len(bars)
    for ax, key in ((by_class_ax, "class"), (by_distance_ax, "distance")):
        grouped = _pooled(table, key)
        positions = np.arange(len(grouped))
        for i, (column, label) in enumerate(bars):
            offset = (i - (len(bars) - 1) / 2) * width
            ax.bar(positions + offset, grouped[column], width, label=label)
        ax.set_xticks(positions, [f"{k}\n(n={n})" for k, n in grouped["count"].items()])
        ax.tick_params(axis="x", labelsize=7, labelrotation=30)
        if zero_line:
            ax.axhline(0.0, color="k", linewidth=0.5)
        ax.set_title(f"by {key}", fontsize=9)
    by_class_ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def _pooled(table: pd.DataFrame, key: str) -> pd.DataFrame:
    """Count-weighted means over the other key (rows with no matches drop out)."""
    means = [column for column in POOLED_MEANS if column in table]
    sums = (
        table.assign(
            **{column: table[column].fillna(0) * table[POOLED_MEANS[column]] for column in means}
        )
        .groupby(key, sort=False)[["count", "cam_seen", *means]]
        .sum()
    )
    pooled = {"count": sums["count"]}
    for column in means:
        weight = sums[POOLED_MEANS[column]]
        pooled[column] = sums[column] / weight.where(weight > 0)
    return pd.DataFrame(pooled)
