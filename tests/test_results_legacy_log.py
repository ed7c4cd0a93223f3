"""import-log: a legacy mmdet3d ≤ 1.0 / mmcv 1.x text log gives exactly its numbers."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from aqr_exp import registry
from aqr_exp.cli.main import app
from aqr_exp.errors import AqrError
from aqr_exp.results.compare import compare, select_runs
from aqr_exp.results.legacy_log import import_log, legacy_metrics, parse_legacy_log

# The devkit prints classes in its own order, not mmdet3d's.
DEVKIT_ORDER = (
    "car",
    "truck",
    "bus",
    "trailer",
    "construction_vehicle",
    "pedestrian",
    "motorcycle",
    "bicycle",
    "traffic_cone",
    "barrier",
)
ERRORS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
SUMMARY_ERRORS = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE"}
SUMMARY_ERRORS |= {"vel_err": "mAVE", "attr_err": "mAAE"}
NDS = {1: 0.6011, 2: 0.6543, 3: 0.6400}  # best at epoch 2, last at epoch 3
PREFIX = "2023-03-01 10:00:00,000 - mmdet - INFO - "
TIMES = {1: (1.234, 1.200), 2: (1.180, 1.190), 3: (1.210, 1.250)}
MEMORY = {1: (10234, 10240), 2: (10300, 10310), 3: (10290, 10295)}


def class_values(epoch: int, k: int, cls: str) -> dict[str, float]:
    """Per-class values as the log prints them (4 decimals)."""
    values = {
        f"AP_dist_{d}": round(0.30 + 0.04 * k + 0.1 * i + 0.0123 * epoch, 4)
        for i, d in enumerate(("0.5", "1.0", "2.0", "4.0"))
    }
    values |= {"trans_err": 0.2 + 0.01 * k, "scale_err": 0.25, "orient_err": 0.3 + 0.01 * k}
    values |= {"vel_err": 0.4, "attr_err": 0.15}
    if cls == "traffic_cone":
        values |= {"orient_err": math.nan, "vel_err": math.nan, "attr_err": math.nan}
    if cls == "barrier":
        values |= {"vel_err": math.nan, "attr_err": math.nan}
    return {key: round(v, 4) for key, v in values.items()}


def evaluation(epoch: int) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    per_class = {cls: class_values(epoch, k, cls) for k, cls in enumerate(DEVKIT_ORDER)}
    summary = {"mAP": round(0.5 + 0.0211 * epoch, 4), "NDS": NDS[epoch]}
    for err, name in SUMMARY_ERRORS.items():
        values = [v[err] for v in per_class.values() if not math.isnan(v[err])]
        summary[name] = round(statistics.mean(values), 4)
    return summary, per_class


def devkit_block(epoch: int) -> list[str]:
    summary, per_class = evaluation(epoch)
    lines = ["Evaluating bboxes of pts_bbox", f"mAP: {summary['mAP']:.4f}"]
    lines += [f"{SUMMARY_ERRORS[e]}: {summary[SUMMARY_ERRORS[e]]:.4f}" for e in ERRORS]
    lines += [f"NDS: {summary['NDS']:.4f}", "Eval time: 95.3s", "", "Per-class results:"]
    lines.append("Object Class\tAP\tATE\tASE\tAOE\tAVE\tAAE")
    for cls, values in per_class.items():
        ap = statistics.mean(values[f"AP_dist_{d}"] for d in ("0.5", "1.0", "2.0", "4.0"))
        cells = [f"{ap:.3f}", *(f"{values[e]:.3f}" for e in ERRORS)]
        lines.append("\t".join([cls, *cells]))
    return lines


def flat_items(epoch: int) -> list[tuple[str, float]]:
    summary, per_class = evaluation(epoch)
    items = [
        (f"pts_bbox_NuScenes/{cls}_{key}", value)
        for cls, values in per_class.items()
        for key, value in values.items()
    ]
    items += [
        (f"pts_bbox_NuScenes/{SUMMARY_ERRORS[e]}", summary[SUMMARY_ERRORS[e]]) for e in ERRORS
    ]
    return [
        *items,
        ("pts_bbox_NuScenes/NDS", summary["NDS"]),
        ("pts_bbox_NuScenes/mAP", summary["mAP"]),
    ]


def val_line(epoch: int) -> str:
    text = ", ".join(f"{key}: {value:.4f}" for key, value in flat_items(epoch))
    return f"{PREFIX}Epoch(val) [{epoch}][6019]\t{text}"


def train_line(epoch: int, index: int, loss: str = "3.5801", grad: str = "45.6789") -> str:
    it = 50 * (index + 1)
    time, memory = TIMES[epoch][index], MEMORY[epoch][index]
    return (
        f"{PREFIX}Epoch [{epoch}][{it}/100]\tlr: 1.400e-04, eta: 1 day, 2:03:04, "
        f"time: {time:.3f}, data_time: 0.050, memory: {memory}, loss_cls: 1.2345, "
        f"loss_bbox: 2.3456, loss: {loss}, grad_norm: {grad}"
    )


def training_log() -> str:
    lines = [
        f"{PREFIX}Environment info:",
        "sys.platform: linux",
        f"{PREFIX}Config:",
        "model = dict(",
    ]
    for epoch in (1, 2, 3):
        lines.append(train_line(epoch, 0))
        bad = epoch == 2
        lines.append(train_line(epoch, 1, "nan" if bad else "3.4", "inf" if bad else "40.1"))
        lines.append("[>>>>>>>>>>>>>>>>>>>>>] 6019/6019, 20.1 task/s, elapsed: 300s, ETA:     0s")
        lines += devkit_block(epoch)
        lines.append(val_line(epoch))
    return "\n".join(lines) + "\n"


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "20230301_100000.log"
    path.write_text(training_log())
    return path


def test_legacy_log_gives_exactly_its_numbers(log_file: Path) -> None:
    metrics = legacy_metrics(log_file, {"run_id": "old"})
    summary, per_class = evaluation(3)
    assert metrics["metrics"] == summary
    for cls, values in per_class.items():
        for key, value in values.items():
            got = metrics["per_class"][cls][key]
            assert got == value or (math.isnan(got) and math.isnan(value)), (cls, key)
        aps = [values[f"AP_dist_{d}"] for d in ("0.5", "1.0", "2.0", "4.0")]
        assert metrics["per_class_ap"][cls] == pytest.approx(math.fsum(aps) / 4, rel=1e-12)
    assert list(metrics["per_class"])[:3] == ["car", "truck", "construction_vehicle"]
    assert metrics["epoch_last"] == 3
    assert metrics["epoch_best"] == 2
    assert metrics["source"]["metrics"]["from"] == "val"
    assert metrics["source"]["metrics"]["epoch"] == 3


def test_legacy_training_lines_give_cost_and_nan_events(log_file: Path) -> None:
    metrics = legacy_metrics(log_file, {})
    times = [t for pair in TIMES.values() for t in pair]
    assert metrics["cost"]["sec_per_iter"] == pytest.approx(statistics.median(times))
    assert metrics["cost"]["peak_memory_mb"] == 10310
    assert metrics["cost"]["iters"] == 300
    assert metrics["cost"]["train_time_s"] == pytest.approx(50 * sum(times))
    assert metrics["nan_events"] == [{"step": 200, "epoch": 2, "keys": ["grad_norm", "loss"]}]


def test_devkit_block_alone_gives_the_table_numbers(tmp_path: Path) -> None:
    path = tmp_path / "test.out"
    path.write_text("\n".join(devkit_block(1)) + "\n")
    metrics = legacy_metrics(path, {})
    summary, _ = evaluation(1)
    assert metrics["metrics"] == summary
    table = {line.split("\t")[0]: line.split("\t") for line in devkit_block(1)[-10:]}
    for cls in DEVKIT_ORDER:
        assert metrics["per_class_ap"][cls] == float(table[cls][1])
        assert metrics["per_class"][cls]["trans_err"] == float(table[cls][2])
    assert metrics["epoch_last"] is None
    assert metrics["source"]["metrics"]["from"] == "eval block"


def test_test_script_result_dict_is_read(tmp_path: Path) -> None:
    """tools/test.py prints the devkit block, then the result dict (4 decimals, per distance)."""
    items = ", ".join(f"'{key}': {value}" for key, value in flat_items(1))
    path = tmp_path / "test.out"
    path.write_text("\n".join([*devkit_block(1), "{" + items + "}"]) + "\n")
    metrics = legacy_metrics(path, {})
    assert metrics["per_class"]["car"]["AP_dist_0.5"] == evaluation(1)[1]["car"]["AP_dist_0.5"]
    assert metrics["source"]["metrics"]["from"] == "test"
    assert len(parse_legacy_log(path).evaluations) == 1


def test_truncated_log_names_the_file_and_what_is_missing(log_file: Path) -> None:
    text = log_file.read_text()
    cut = text[: text.index("pedestrian\t", text.index("Evaluating bboxes", 0))]
    log_file.write_text(cut)
    with pytest.raises(AqrError) as err:
        parse_legacy_log(log_file)
    message = str(err.value)
    assert str(log_file) in message
    assert "incomplete" in message
    assert "the table row for pedestrian" in message


def test_summary_cut_short_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.log"
    path.write_text("\n".join(devkit_block(1)[:3]) + "\n")
    with pytest.raises(
        AqrError, match=r"missing NDS, mASE, mAOE, mAVE, mAAE, the .Per-class results:. table"
    ):
        parse_legacy_log(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello\nthis is not a training log\n", "not an mmdet3d ≤ 1.0 / mmcv 1.x log"),
        (
            "2024/01/01 10:00:00 - mmengine - INFO - Epoch(train) [1][50/100]  lr: 1e-4\n",
            "mmengine-era",
        ),
        (train_line(1, 0) + "\n", "no nuScenes evaluation in 1 training lines"),
    ],
)
def test_foreign_logs_are_refused_clearly(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "foreign.log"
    path.write_text(text)
    with pytest.raises(AqrError, match=expected):
        parse_legacy_log(path)


def test_cli_import_log_creates_a_done_run(log_file: Path, tmp_path: Path) -> None:
    root = tmp_path / "results"
    args = ["import-log", str(log_file), "--name", "cmt-2023", "--results-root", str(root)]
    result = CliRunner().invoke(app, [*args, "--variant", "baseline", "--seed", "0"])
    assert result.exit_code == 0, result.output
    run_dir = root / "imported" / "runs" / "cmt-2023"
    record = yaml.safe_load((run_dir / "run.yaml").read_text())
    assert record["status"] == "done"
    assert record["command"] == f"imported from {log_file.resolve()}"
    assert record["launcher"]["type"] == "imported"
    assert registry.read(run_dir).status == "done"  # the registry reads it like its own
    assert record["variant"] == "baseline"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["metrics"]["NDS"] == NDS[3]
    assert metrics["run_id"] == "cmt-2023"

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2
    assert "pass --force" in again.stderr
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 0


def test_cli_import_of_a_truncated_log_exits_2_with_one_message(
    log_file: Path, tmp_path: Path
) -> None:
    text = log_file.read_text()
    log_file.write_text(text[: text.index("bus\t", text.rindex("Per-class results:"))])
    root = tmp_path / "results"
    args = ["import-log", str(log_file), "--name", "cut", "--results-root", str(root)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {log_file}:")
    assert not (root / "imported" / "runs" / "cut").exists()


def test_imported_runs_join_a_comparison(log_file: Path, tmp_path: Path) -> None:
    root = tmp_path / "results"
    import_log(log_file, "base", "legacy", root, variant="baseline")
    variant_log = tmp_path / "variant.log"
    variant_log.write_text(
        log_file.read_text()
        .replace("NDS: 0.6400", "NDS: 0.6500")
        .replace("pts_bbox_NuScenes/NDS: 0.6400", "pts_bbox_NuScenes/NDS: 0.6500")
    )
    import_log(variant_log, "aqr", "legacy", root, variant="aqr-new")
    comparison = compare(select_runs(root, "legacy")[1])
    assert comparison.stat("aqr-new", "NDS", "delta") == pytest.approx(0.01)


def test_bad_run_name_is_refused(log_file: Path, tmp_path: Path) -> None:
    with pytest.raises(AqrError, match="not usable as a directory name"):
        import_log(log_file, "../escape", "legacy", tmp_path)
