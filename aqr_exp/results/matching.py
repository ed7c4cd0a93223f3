"""Match a run's nuScenes predictions to the ground truth once, as the devkit does.

nuscenes-devkit's `accumulate` matches greedily in global score order, but a
prediction can only take a ground-truth box of its own sample, so whether it is a
true positive (and its errors) depends only on the order of the predictions within
its sample. The match is therefore fixed for every subset of samples: the
bootstrap (`bootstrap.py`) re-accumulates these per-prediction flags under
resampled sample weights instead of rerunning the devkit.

Loading and filtering go through the devkit's own `NuScenesEval` (the class
mmdet3d's NuScenesMetric calls), so the boxes are the ones the metric scored.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aqr_exp.errors import AqrError
from aqr_exp.results.nuscenes import TP_ERRORS

# What NuScenesMetric evaluates for each dataset version.
EVAL_SETS = {"v1.0-trainval": "val", "v1.0-mini": "mini_val"}
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ClassMatches:
    """One class's predictions in the devkit's score order, matched at each threshold."""

    score: np.ndarray  # [P] float64, descending
    sample: np.ndarray  # [P] int, index into MatchTable.samples
    tp: np.ndarray  # [T, P] bool, one row per distance threshold
    errors: np.ndarray  # [5, P] float64 at the TP threshold (NaN where not a TP there)


@dataclass(frozen=True)
class MatchTable:
    """Everything the nuScenes detection metric needs, per prediction and per sample."""

    classes: tuple[str, ...]
    dist_ths: tuple[float, ...]
    dist_th_tp: float
    samples: tuple[str, ...]  # sample tokens
    scenes: tuple[str, ...]  # scene tokens
    sample_scene: np.ndarray  # [S] int, index into scenes
    gt_count: np.ndarray  # [C, S] int: ground-truth boxes per class and sample
    matches: tuple[ClassMatches, ...]  # one per class, in `classes` order
    config: dict[str, float]  # min_recall, min_precision, mean_ap_weight


def _class_matches(
    class_name: str, gt_boxes: Any, pred_boxes: Any, sample_index: dict[str, int], cfg: Any
) -> ClassMatches:
    from nuscenes.eval.common.utils import attr_acc, scale_iou, velocity_l2, yaw_diff

    preds = [box for box in pred_boxes.all if box.detection_name == class_name]
    scores = np.array([box.detection_score for box in preds], dtype=float)
    # The devkit's order: score descending, ties by list position descending.
    order = np.lexsort((np.arange(len(preds)), scores))[::-1]
    preds = [preds[i] for i in order]
    dist_ths = list(cfg.dist_ths)
    tp = np.zeros((len(dist_ths), len(preds)), dtype=bool)
    errors = np.full((len(TP_ERRORS), len(preds)), np.nan)
    tp_row = dist_ths.index(cfg.dist_th_tp)
    period = np.pi if class_name == "barrier" else 2 * np.pi

    by_sample: dict[str, list[int]] = {}
    for position, box in enumerate(preds):
        by_sample.setdefault(box.sample_token, []).append(position)
    for token, positions in by_sample.items():
        gts = [gt for gt in gt_boxes[token] if gt.detection_name == class_name]
        if not gts:
            continue
        gt_xy = np.array([gt.translation[:2] for gt in gts], dtype=float)
        pred_xy = np.array([preds[p].translation[:2] for p in positions], dtype=float)
        distances = np.linalg.norm(pred_xy[:, None, :] - gt_xy[None, :, :], axis=2)
        for row, threshold in enumerate(dist_ths):
            free = np.ones(len(gts), dtype=bool)
            for local, position in enumerate(positions):
                candidates = np.where(free, distances[local], np.inf)
                best = int(np.argmin(candidates))  # the first of equal distances, as the devkit
                if not candidates[best] < threshold:
                    continue
                free[best] = False
                tp[row, position] = True
                if row == tp_row:
                    gt, pred = gts[best], preds[position]
                    errors[:, position] = (
                        candidates[best],
                        1 - scale_iou(gt, pred),
                        yaw_diff(gt, pred, period=period),
                        velocity_l2(gt, pred),
                        1 - attr_acc(gt, pred),
                    )
    sample = np.array([sample_index[box.sample_token] for box in preds], dtype=np.int64)
    return ClassMatches(scores[order], sample, tp, errors)


def match_predictions(result_path: Path, data_root: Path, version: str) -> MatchTable:
    """Load a results_nusc.json with the devkit and match it at every threshold."""
    from nuscenes import NuScenes
    from nuscenes.eval.detection.config import config_factory
    from nuscenes.eval.detection.evaluate import NuScenesEval

    if version not in EVAL_SETS:
        raise AqrError(f"{data_root}: version {version!r} has no nuScenes val split")
    if not result_path.is_file():
        raise AqrError(f"{result_path}: no such predictions file")
    nusc = NuScenes(version=version, dataroot=str(data_root), verbose=False)
    cfg = config_factory("detection_cvpr_2019")
    with tempfile.TemporaryDirectory() as scratch:
        evaluation = NuScenesEval(
            nusc, cfg, str(result_path), EVAL_SETS[version], output_dir=scratch, verbose=False
        )
    gt_boxes, pred_boxes = evaluation.gt_boxes, evaluation.pred_boxes
    samples = tuple(gt_boxes.sample_tokens)
    sample_index = {token: i for i, token in enumerate(samples)}
    scene_of = [nusc.get("sample", token)["scene_token"] for token in samples]
    scenes = tuple(sorted(set(scene_of)))
    scene_index = {token: i for i, token in enumerate(scenes)}
    classes = tuple(cfg.class_names)
    gt_count = np.zeros((len(classes), len(samples)), dtype=np.int64)
    for token, i in sample_index.items():
        for gt in gt_boxes[token]:
            gt_count[classes.index(gt.detection_name), i] += 1
    return MatchTable(
        classes=classes,
        dist_ths=tuple(float(t) for t in cfg.dist_ths),
        dist_th_tp=float(cfg.dist_th_tp),
        samples=samples,
        scenes=scenes,
        sample_scene=np.array([scene_index[s] for s in scene_of], dtype=np.int64),
        gt_count=gt_count,
        matches=tuple(_class_matches(c, gt_boxes, pred_boxes, sample_index, cfg) for c in classes),
        config={
            "min_recall": float(cfg.min_recall),
            "min_precision": float(cfg.min_precision),
            "mean_ap_weight": float(cfg.mean_ap_weight),
        },
    )


def save(table: MatchTable, path: Path) -> None:
    """One .npz per run (written atomically: a temporary file, then a rename)."""
    arrays: dict[str, Any] = {
        "format_version": np.array(FORMAT_VERSION),
        "classes": np.array(table.classes),
        "dist_ths": np.array(table.dist_ths),
        "dist_th_tp": np.array(table.dist_th_tp),
        "samples": np.array(table.samples),
        "scenes": np.array(table.scenes),
        "sample_scene": table.sample_scene,
        "gt_count": table.gt_count,
        "config": np.array([table.config[k] for k in sorted(table.config)]),
        "config_keys": np.array(sorted(table.config)),
    }
    for i, m in enumerate(table.matches):
        arrays |= {
            f"score_{i}": m.score,
            f"sample_{i}": m.sample,
            f"tp_{i}": m.tp,
            f"errors_{i}": m.errors,
        }
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def load(path: Path) -> MatchTable:
    with np.load(path) as data:
        if int(data["format_version"]) != FORMAT_VERSION:
            raise AqrError(f"{path}: match table format {int(data['format_version'])}, "
                           f"expected {FORMAT_VERSION} (run `aqr-exp collect` again)")  # fmt: skip
        classes = tuple(str(c) for c in data["classes"])
        return MatchTable(
            classes=classes,
            dist_ths=tuple(float(t) for t in data["dist_ths"]),
            dist_th_tp=float(data["dist_th_tp"]),
            samples=tuple(str(s) for s in data["samples"]),
            scenes=tuple(str(s) for s in data["scenes"]),
            sample_scene=data["sample_scene"],
            gt_count=data["gt_count"],
            matches=tuple(
                ClassMatches(
                    data[f"score_{i}"], data[f"sample_{i}"], data[f"tp_{i}"], data[f"errors_{i}"]
                )
                for i in range(len(classes))
            ),
            config=dict(
                zip((str(k) for k in data["config_keys"]), map(float, data["config"]), strict=True)
            ),
        )
