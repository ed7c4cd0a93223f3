"""Figures of a Comparison (matplotlib, Agg canvas, no pyplot global state)."""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aqr_exp.results.compare import PER_CLASS_AP, Comparison, Group

SWEPT_METRICS = ("mAP", "NDS")


def _figure(width: float, height: float) -> tuple[Figure, FigureCanvasAgg]:
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, FigureCanvasAgg(figure)


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _std(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def _draw_baseline(ax: Axes, comparison: Comparison, metric: str) -> None:
    """The baseline as a dashed line, its seed spread as a band."""
    baseline = comparison.baseline
    if baseline is None:
        return
    mean = comparison.stat(baseline.label, metric, "mean")
    std = comparison.stat(baseline.label, metric, "std")
    if math.isnan(mean):
        return
    ax.axhline(mean, linestyle="--", color="black", label="baseline")
    if not math.isnan(std):
        ax.axhspan(mean - std, mean + std, color="black", alpha=0.1, linewidth=0)


def sweep_params(comparison: Comparison) -> list[str]:
    return sorted({g.param for g in comparison.groups if g.param})


def _numeric(groups: list[Group]) -> bool:
    return all(isinstance(g.value, int | float) and not isinstance(g.value, bool) for g in groups)


def sweep_figure(comparison: Comparison, param: str) -> Figure:
    """mAP and NDS vs the swept parameter, one line per variant, error bars = std over seeds."""
    swept = [g for g in comparison.groups if g.param == param]
    numeric = _numeric(swept)
    categories = sorted({str(g.value) for g in swept}) if not numeric else []
    figure, _ = _figure(5.0 * len(SWEPT_METRICS), 3.8)
    for ax, metric in zip(figure.subplots(1, len(SWEPT_METRICS)), SWEPT_METRICS, strict=True):
        for variant in sorted({g.variant for g in swept}):
            line = [g for g in swept if g.variant == variant]
            xs = [g.value if numeric else categories.index(str(g.value)) for g in line]
            means = [comparison.stat(g.label, metric, "mean") for g in line]
            stds = [_std(comparison.stat(g.label, metric, "std")) for g in line]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=4, label=variant)
        _draw_baseline(ax, comparison, metric)
        if not numeric:
            ax.set_xticks(range(len(categories)), categories)
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs {param}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return figure


def overview_figure(comparison: Comparison) -> Figure:
    """mAP and NDS per row as points with std error bars (not bars from zero, which
    would hide differences of a few points), the baseline dashed."""
    labels = [g.label for g in comparison.groups]
    figure, _ = _figure(max(6.0, 1.1 * len(labels)) * 1.6, 4.2)
    for ax, metric in zip(figure.subplots(1, len(SWEPT_METRICS)), SWEPT_METRICS, strict=True):
        means = [comparison.stat(label, metric, "mean") for label in labels]
        stds = [_std(comparison.stat(label, metric, "std")) for label in labels]
        ax.errorbar(range(len(labels)), means, yerr=stds, fmt="o", capsize=4, color="tab:blue")
        _draw_baseline(ax, comparison, metric)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize="small")
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    return figure


def per_class_delta_figure(comparison: Comparison) -> Figure | None:
    """Per-class AP Δ vs the baseline, one bar group per class; None without a baseline."""
    others = [g for g in comparison.groups if not g.is_baseline]
    classes = [s.name for s in comparison.specs if s.section == PER_CLASS_AP]
    if comparison.baseline is None or not others or not classes:
        return None
    figure, _ = _figure(max(8.0, 0.9 * len(classes)), 4.2)
    ax = figure.subplots()
    width = 0.8 / len(others)
    positions = np.arange(len(classes))
    for index, group in enumerate(others):
        deltas = [comparison.stat(group.label, cls, "delta") for cls in classes]
        ax.bar(
            positions + (index - (len(others) - 1) / 2) * width, deltas, width, label=group.label
        )
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(positions, classes, rotation=35, ha="right")
    ax.set_ylabel("Δ AP vs baseline")
    ax.set_title("Per-class AP: variant − baseline")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure
