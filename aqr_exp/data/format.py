"""Facts of the nuScenes format that both the generator and the checker rely on."""

from __future__ import annotations

# The 13 JSON tables of a version folder (v1.0-trainval/<table>.json).
TABLES = (
    "category",
    "attribute",
    "visibility",
    "instance",
    "sensor",
    "calibrated_sensor",
    "ego_pose",
    "log",
    "scene",
    "sample",
    "sample_data",
    "sample_annotation",
    "map",
)
