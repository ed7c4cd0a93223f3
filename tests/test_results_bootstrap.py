"""Is a Δ real? The devkit's metric re-accumulated under resampling weights, and the
paired bootstrap built on it.

The reference is nuscenes-devkit itself: the same predictions scored by its
`NuScenesEval` on the synthetic nuScenes-format split, and on copies of that split in
which samples are dropped or repeated."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aqr_exp.errors import AqrError
from aqr_exp.results import matching
from aqr_exp.results.bootstrap import (
    evaluate,
    group_resamples,
    interval,
    resample_counts,
    resolvable_delta,
)
from aqr_exp.results.nuscenes import ERROR_SUMMARY

VERSION = "v1.0-trainval"


def _noisy_predictions(root: Path, out: Path, seed: int, noise: float) -> Path:
    """Ground truth moved by `noise` m, some boxes missed, random false positives."""
    from nuscenes import NuScenes
    from nuscenes.eval.common.loaders import load_gt
    from nuscenes.eval.detection.data_classes import DetectionBox

    rng = np.random.default_rng(seed)
    nusc = NuScenes(VERSION, str(root), verbose=False)
    gt = load_gt(nusc, "val", DetectionBox, verbose=False)
    names = sorted({box.detection_name for box in gt.all})
    results: dict[str, list[dict[str, Any]]] = {}
    for token in gt.sample_tokens:
        boxes = []
        for box in gt[token]:
            if rng.random() < 0.2:
                continue
            boxes.append(
                {
                    "sample_token": token,
                    "translation": (np.array(box.translation) + rng.normal(0, noise, 3)).tolist(),
                    "size": (np.array(box.size) * rng.uniform(0.8, 1.2, 3)).tolist(),
                    "rotation": list(box.rotation),
                    "velocity": (np.array(box.velocity) + rng.normal(0, 0.5, 2)).tolist(),
                    "detection_name": box.detection_name,
                    "detection_score": float(rng.random()),
                    "attribute_name": box.attribute_name,
                }
            )
        for box in rng.choice(gt[token], size=min(10, len(gt[token])), replace=False):
            boxes.append(
                {
                    "sample_token": token,
                    "translation": (
                        np.array(box.translation) + np.array([8.0, -6.0, 0.0])
                    ).tolist(),
                    "size": list(box.size),
                    "rotation": list(box.rotation),
                    "velocity": [0.0, 0.0],
                    "detection_name": str(rng.choice(names)),
                    "detection_score": float(rng.random() * 0.7),
                    "attribute_name": "",
                }
            )
        results[token] = boxes
    meta = {"use_camera": True, "use_lidar": True, "use_radar": False}
    meta |= {"use_map": False, "use_external": False}
    out.write_text(json.dumps({"meta": meta, "results": results}))
    return out


def _devkit(root: Path, predictions: Path, tmp: Path) -> Any:
    from nuscenes import NuScenes
    from nuscenes.eval.detection.config import config_factory
    from nuscenes.eval.detection.evaluate import NuScenesEval

    nusc = NuScenes(VERSION, str(root), verbose=False)
    config = config_factory("detection_cvpr_2019")
    return NuScenesEval(nusc, config, str(predictions), "val", output_dir=str(tmp), verbose=False)


def _devkit_metrics(evaluation: Any) -> dict[str, float]:
    metrics, _ = evaluation.evaluate()
    summary = metrics.serialize()
    values = {"mAP": summary["mean_ap"], "NDS": summary["nd_score"]}
    values |= {ERROR_SUMMARY[k]: v for k, v in summary["tp_errors"].items()}
    return values | summary["mean_dist_aps"]


def _copied_split(evaluation: Any, samples: tuple[str, ...], weights: np.ndarray) -> None:
    """Replace the devkit's boxes by a split where sample i appears weights[i] times."""
    from nuscenes.eval.common.data_classes import EvalBoxes

    gt, pred = EvalBoxes(), EvalBoxes()
    for token, times in zip(samples, weights, strict=True):
        for copy_index in range(times):
            name = f"{token}#{copy_index}"
            for source, target in ((evaluation.gt_boxes, gt), (evaluation.pred_boxes, pred)):
                boxes = [copy.copy(box) for box in source[token]]
                for box in boxes:
                    box.sample_token = name
                target.add_boxes(name, boxes)
    evaluation.gt_boxes, evaluation.pred_boxes = gt, pred


@pytest.fixture(scope="module")
def scored(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("bootstrap")
    paths = {
        name: _noisy_predictions(synth_root, tmp / f"{name}.json", seed, noise)
        for name, seed, noise in (("good", 0, 0.3), ("poor", 1, 1.2))
    }
    tables = {name: matching.match_predictions(p, synth_root, VERSION) for name, p in paths.items()}
    return {"root": synth_root, "paths": paths, "tables": tables, "tmp": tmp}


def test_all_samples_once_equals_the_devkit(scored: dict[str, Any]) -> None:
    for name, table in scored["tables"].items():
        expected = _devkit_metrics(_devkit(scored["root"], scored["paths"][name], scored["tmp"]))
        got = evaluate(table, np.ones(len(table.samples), dtype=np.int64))
        assert set(expected) <= set(got)
        for metric, value in expected.items():
            assert got[metric] == pytest.approx(value, abs=1e-9), (name, metric)
        assert 0.05 < got["mAP"] < 0.95  # the predictions are neither empty nor perfect


def test_dropped_and_repeated_samples_equal_the_devkit_on_that_split(
    scored: dict[str, Any],
) -> None:
    table = scored["tables"]["good"]
    rng = np.random.default_rng(3)
    for _ in range(2):
        weights = rng.integers(0, 4, size=len(table.samples))
        evaluation = _devkit(scored["root"], scored["paths"]["good"], scored["tmp"])
        _copied_split(evaluation, table.samples, weights)
        expected = _devkit_metrics(evaluation)
        got = evaluate(table, weights)
        for metric, value in expected.items():
            assert got[metric] == pytest.approx(value, abs=1e-9), metric


def test_match_table_round_trips_through_its_file(scored: dict[str, Any], tmp_path: Path) -> None:
    table = scored["tables"]["poor"]
    matching.save(table, tmp_path / "matches.npz")
    loaded = matching.load(tmp_path / "matches.npz")
    ones = np.ones(len(table.samples), dtype=np.int64)
    assert loaded.samples == table.samples and loaded.scenes == table.scenes
    assert evaluate(loaded, ones) == evaluate(table, ones)


def test_paired_bootstrap_finds_the_better_predictions(scored: dict[str, Any]) -> None:
    tables = scored["tables"]
    counts = resample_counts(len(tables["good"].samples), 200, seed=0)
    means = group_resamples({"poor": [tables["poor"]], "good": [tables["good"]]}, counts, "sample")
    ones = np.ones(len(tables["good"].samples), dtype=np.int64)
    point = evaluate(tables["good"], ones)["mAP"] - evaluate(tables["poor"], ones)["mAP"]
    found = interval(point, means["good"]["mAP"] - means["poor"]["mAP"], higher_is_better=True)
    assert point > 0 and found.verdict == "better" and found.low > 0 and found.wins == 1.0
    # The same predictions against themselves: every resampled Δ is zero, no verdict.
    same = group_resamples({"a": [tables["good"]], "b": [tables["good"]]}, counts, "sample")
    assert interval(0.0, same["a"]["NDS"] - same["b"]["NDS"], True).verdict == "within noise"
    assert resolvable_delta(means["good"]["mAP"]) > 0


def test_two_workers_give_the_same_resamples_as_one(scored: dict[str, Any]) -> None:
    groups = {"good": [scored["tables"]["good"]]}
    counts = resample_counts(len(scored["tables"]["good"].samples), 6, seed=1)
    one = group_resamples(groups, counts, "sample", workers=1)
    two = group_resamples(groups, counts, "sample", workers=2)
    for metric, values in one["good"].items():
        np.testing.assert_array_equal(values, two["good"][metric])


def test_interval_direction_seeds_and_verdicts() -> None:
    rng = np.random.default_rng(0)
    lower_better = interval(-0.05, rng.normal(-0.05, 0.01, 1000), higher_is_better=False)
    assert lower_better.verdict == "better" and lower_better.wins > 0.99
    worse = interval(-0.05, rng.normal(-0.05, 0.01, 1000), higher_is_better=True)
    assert worse.verdict == "worse" and worse.wins < 0.01
    split_only = interval(0.03, rng.normal(0.03, 0.01, 1000), higher_is_better=True)
    with_seeds = interval(0.03, rng.normal(0.03, 0.01, 1000), True, seed_se=0.02)
    assert split_only.verdict == "better" and with_seeds.verdict == "within noise"
    assert with_seeds.low < split_only.low and with_seeds.noise == "seeds"
    assert split_only.noise == "split (seeds unknown)"


def test_resample_counts_draw_every_unit_count_times_in_total() -> None:
    counts = resample_counts(7, 50, seed=4)
    assert counts.shape == (50, 7) and (counts.sum(axis=1) == 7).all()
    np.testing.assert_array_equal(counts, resample_counts(7, 50, seed=4))
    assert not np.array_equal(counts, resample_counts(7, 50, seed=5))


def test_different_splits_are_not_paired(scored: dict[str, Any]) -> None:
    table = scored["tables"]["good"]
    other = matching.MatchTable(**{**table.__dict__, "samples": table.samples[::-1]})
    counts = resample_counts(len(table.samples), 2, seed=0)
    with pytest.raises(AqrError, match="different samples"):
        group_resamples({"a": [table], "b": [other]}, counts, "sample")


def test_compare_and_report_show_each_delta_with_interval_and_verdict(
    scored: dict[str, Any], tmp_path: Path
) -> None:
    from test_results_compare import write_run
    from typer.testing import CliRunner

    from aqr_exp.cli.main import app

    root = tmp_path / "results"
    for variant, name in (("baseline", "poor"), ("better_variant", "good")):
        table = scored["tables"][name]
        values = evaluate(table, np.ones(len(table.samples), dtype=np.int64))
        summary = {k: values[k] for k in ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")}
        run_dir = write_run(root, f"{variant}-s0", variant, 0, summary,
                            per_class_ap={c: values[c] for c in table.classes})  # fmt: skip
        matching.save(table, run_dir / "matches.npz")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        metrics["predictions"] = {"file": str(scored["paths"][name]),
                                  "matches": str(run_dir / "matches.npz")}  # fmt: skip
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    runner = CliRunner()
    args = ["--study", "handmade", "--results-root", str(root), "--resamples", "200"]
    shown = runner.invoke(app, ["compare", *args, "--bootstrap-unit", "sample"])
    assert shown.exit_code == 0, shown.output
    assert "Is the Δ real?" in shown.stdout
    row = next(
        line for line in shown.stdout.splitlines() if "better_variant" in line and "mAP" in line
    )
    assert "better" in row.split("mAP")[1] and "100%" in row
    csv = runner.invoke(app, ["compare", *args, "--format", "csv"])
    frame = __import__("pandas").read_csv(__import__("io").StringIO(csv.stdout))
    nds = frame[(frame["group"] == "better_variant") & (frame["metric"] == "NDS")].iloc[0]
    assert nds["ci_low"] <= nds["delta"] <= nds["ci_high"] and nds["verdict"] in (
        "better", "worse", "within noise")  # fmt: skip
    # The small split has few scenes: scene resampling is possible but coarse, and says so.
    scenes = len(scored["tables"]["good"].scenes)
    assert f"the split has only {scenes} scenes to resample" in csv.stderr
    bad = runner.invoke(app, ["compare", *args, "--bootstrap-unit", "frame"])
    assert bad.exit_code == 2 and "bootstrap unit 'frame'" in bad.output
    report = runner.invoke(app, ["report", *args, "--bootstrap-unit", "sample"])
    assert report.exit_code == 0, report.output
    text = (root / "handmade" / "report.md").read_text()
    assert "Beyond noise on mAP: `better_variant` beats the baseline" in text
    assert "The smallest Δ this split can resolve" in text


def test_a_detector_without_boxes_scores_zero_under_the_metric_names(
    scored: dict[str, Any], tmp_path: Path
) -> None:
    """The devkit raises on an empty prediction set; the plugin's metric reports what the
    devkit defines for it, under the names NuScenesMetric uses for a real evaluation."""
    from cmt_aqr.metric import CmtNuScenesMetric

    root = scored["root"]
    metric = CmtNuScenesMetric(data_root=str(root), ann_file=str(root / "nuscenes_infos_val.pkl"))
    metric.version = VERSION
    names = list(matching.match_predictions(scored["paths"]["good"], root, VERSION).classes)
    real = metric._evaluate_single(str(scored["paths"]["good"]), names)
    payload = json.loads(scored["paths"]["good"].read_text())
    empty = tmp_path / "empty" / "results_nusc.json"
    empty.parent.mkdir()
    empty.write_text(json.dumps({**payload, "results": {key: [] for key in payload["results"]}}))
    zero = metric._evaluate_single(str(empty), names)
    assert set(zero) == set(real)
    prefix = "pred_instances_3d_NuScenes/"
    assert zero[f"{prefix}mAP"] == zero[f"{prefix}NDS"] == 0.0 and zero[f"{prefix}mATE"] == 1.0
    assert zero[f"{prefix}car_AP_dist_4.0"] == 0.0 and zero[f"{prefix}car_vel_err"] == 1.0
    assert np.isnan(zero[f"{prefix}traffic_cone_attr_err"])
    for key, value in real.items():  # the devkit's NaNs are the same ones
        assert np.isnan(value) == np.isnan(zero[key]), key


def test_collect_keeps_predictions_only_if_they_reproduce_the_logged_numbers(
    scored: dict[str, Any],
) -> None:
    from aqr_exp.results.collect import numbers_differ

    table = scored["tables"]["good"]
    logged = evaluate(table, np.ones(len(table.samples), dtype=np.int64))
    path = scored["paths"]["good"]
    assert numbers_differ(table, {"mAP": logged["mAP"], "NDS": logged["NDS"]}, path) is None
    problem = numbers_differ(table, {"mAP": logged["mAP"] + 0.01}, path)
    assert problem is not None and str(path) in problem and "mAP" in problem
