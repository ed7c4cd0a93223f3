"""The nuScenes detection metrics: names, directions, and one evaluation's values.

Both sources (mmengine scalars and legacy text logs) reduce an evaluation to flat
names without prefix (`mAP`, `car_AP_dist_0.5`, `car_trans_err`) and build an
`Evaluation` from them here, so the metrics.json format has one definition.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

CLASSES = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)
SUMMARY = ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")
DISTANCES = ("0.5", "1.0", "2.0", "4.0")
TP_ERRORS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
# Each TP error and the summary metric that averages it over classes (mATE, ...).
ERROR_SUMMARY = dict(zip(TP_ERRORS, SUMMARY[2:], strict=True))
HIGHER_IS_BETTER = {"mAP": True, "NDS": True} | {name: False for name in SUMMARY[2:]}
BEST_BY = "NDS"

_PER_CLASS = re.compile(
    r"^(?P<cls>[A-Za-z_]+?)_(?P<field>AP_dist_\d+(?:\.\d+)?|" + "|".join(TP_ERRORS) + r")$"
)


@dataclass(frozen=True)
class Evaluation:
    """One nuScenes evaluation (a validation epoch or a test run) and where it came from."""

    epoch: int | None
    metrics: dict[str, float]
    per_class: dict[str, dict[str, float]]
    per_class_ap: dict[str, float]
    origin: dict[str, object] = field(default_factory=dict)


def class_order(names: set[str] | list[str]) -> list[str]:
    """nuScenes classes in their canonical order, then any others alphabetically."""
    known = [c for c in CLASSES if c in names]
    return known + sorted(set(names) - set(CLASSES))


def mean_distance_ap(values: Mapping[str, float]) -> float | None:
    """Per-class AP as the devkit defines it: the mean over the four distance thresholds."""
    aps = [values.get(f"AP_dist_{d}") for d in DISTANCES]
    if any(ap is None for ap in aps):
        return None
    return math.fsum(aps) / len(aps)  # type: ignore[arg-type]


def split_flat(values: Mapping[str, float]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Flat metric names → (summary metrics, class → per-class values)."""
    summary = {name: float(values[name]) for name in SUMMARY if name in values}
    per_class: dict[str, dict[str, float]] = {}
    for name, value in values.items():
        match = _PER_CLASS.match(name)
        if match:
            per_class.setdefault(match["cls"], {})[match["field"]] = float(value)
    ordered = {cls: per_class[cls] for cls in class_order(list(per_class))}
    return summary, ordered


def evaluation_from_flat(
    values: Mapping[str, float],
    epoch: int | None,
    origin: dict[str, object],
    table_ap: Mapping[str, float] | None = None,
) -> Evaluation:
    """Build an Evaluation; `table_ap` (the devkit's printed per-class AP) fills classes
    whose four distance APs were not logged."""
    summary, per_class = split_flat(values)
    per_class_ap: dict[str, float] = {}
    for cls in class_order(list(per_class) + list(table_ap or {})):
        ap = mean_distance_ap(per_class.get(cls, {}))
        if ap is None and table_ap and cls in table_ap:
            ap = table_ap[cls]
        if ap is not None:
            per_class_ap[cls] = ap
    return Evaluation(epoch, summary, per_class, per_class_ap, origin)


def best_evaluation(evaluations: list[Evaluation]) -> Evaluation | None:
    """The validation epoch with the highest NDS (the earliest on ties; NaN never wins)."""
    scored = [
        e
        for e in evaluations
        if e.epoch is not None and not math.isnan(e.metrics.get(BEST_BY, math.nan))
    ]
    return max(scored, key=lambda e: (e.metrics[BEST_BY], -e.epoch), default=None)  # type: ignore[operator]
