"""NuScenesMetric that scores a detector without any box instead of crashing.

nuscenes-devkit cannot filter an empty prediction set (`_get_box_class_field` raises
"Invalid box type: None"), so mmdet3d's NuScenesMetric stops training at the first
validation of a model whose boxes all fall outside `post_center_range`, as an
untrained one's may. Such a detector has, by the devkit's own definitions, AP 0 for
every class and threshold, TP errors 1 (NaN where the devkit leaves them undefined),
mAP 0 and NDS 0; this metric reports exactly that, under the same names. With any box
it is NuScenesMetric unchanged.
"""

from __future__ import annotations

import mmengine
from mmdet3d.evaluation.metrics import NuScenesMetric
from mmdet3d.registry import METRICS

DISTANCES = ("0.5", "1.0", "2.0", "4.0")
# The devkit's NaN TP errors (DetectionEval.evaluate).
UNDEFINED_TP = {
    "traffic_cone": {"attr_err", "vel_err", "orient_err"},
    "barrier": {"attr_err", "vel_err"},
}


@METRICS.register_module()
class CmtNuScenesMetric(NuScenesMetric):
    def _evaluate_single(
        self,
        result_path: str,
        classes: list[str] | None = None,
        result_name: str = "pred_instances_3d",
    ) -> dict[str, float]:
        if any(mmengine.load(result_path)["results"].values()):
            return super()._evaluate_single(result_path, classes, result_name)
        prefix = f"{result_name}_NuScenes"
        detail: dict[str, float] = {}
        for name in classes or []:
            detail |= {f"{prefix}/{name}_AP_dist_{d}": 0.0 for d in DISTANCES}
            detail |= {
                f"{prefix}/{name}_{err}": float("nan") if err in UNDEFINED_TP.get(name, ()) else 1.0
                for err in self.ErrNameMapping
            }
        detail |= {f"{prefix}/{summary}": 1.0 for summary in self.ErrNameMapping.values()}
        detail |= {f"{prefix}/NDS": 0.0, f"{prefix}/mAP": 0.0}
        return detail
