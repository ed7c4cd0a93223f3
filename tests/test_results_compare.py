"""compare: mean/std/n over seeds, Δ direction, best marks, NaN handling, output formats."""

from __future__ import annotations

import io
import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml
from markdown_tables import markdown_tables
from typer.testing import CliRunner

from aqr_exp.cli.main import app
from aqr_exp.cli.results import OutputFormat
from aqr_exp.errors import AqrError
from aqr_exp.results.compare import compare, select_runs
from aqr_exp.results.render import FORMATS, render, tables

NAN = math.nan
STUDY = "handmade"
# variant → seed → (mAP, NDS, mATE, mASE, mAOE, mAVE, mAAE); mAVE undefined everywhere,
# mAAE undefined in one baseline run.
RUNS = {
    "baseline": {
        0: (0.60, 0.70, 0.30, 0.25, 0.40, NAN, 0.20),
        1: (0.62, 0.71, 0.32, 0.25, 0.40, NAN, NAN),
        2: (0.64, 0.72, 0.34, 0.25, 0.40, NAN, 0.22),
    },
    "aqr-new": {
        0: (0.65, 0.705, 0.25, 0.30, 0.40, NAN, 0.20),
        1: (0.66, 0.715, 0.26, 0.30, 0.40, NAN, 0.20),
        2: (0.67, 0.725, 0.27, 0.30, 0.40, NAN, 0.20),
    },
    "aqr-old": {0: (0.58, 0.69, 0.35, 0.26, 0.41, NAN, 0.21)},
}
SUMMARY = ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")


def write_run(
    root: Path,
    run_id: str,
    variant: str,
    seed: int,
    metrics: dict[str, float],
    *,
    study: str = STUDY,
    status: str = "done",
    per_class_ap: dict[str, float] | None = None,
    cost: dict[str, float] | None = None,
    sweep: dict[str, object] | None = None,
    overrides: dict[str, object] | None = None,
) -> Path:
    run_dir = root / study / "runs" / run_id
    run_dir.mkdir(parents=True)
    record = {
        "run_id": run_id,
        "study": study,
        "variant": variant,
        "sweep": sweep,
        "overrides": overrides or {},
        "seed": seed,
        "status": status,
    }
    (run_dir / "run.yaml").write_text(yaml.safe_dump(record))
    payload = {
        **{k: record[k] for k in ("run_id", "study", "variant", "sweep", "seed")},
        "source": {"metrics": {"from": "val", "epoch": 2}},
        "metrics": metrics,
        "per_class_ap": per_class_ap or {},
        "cost": cost or {},
        "aqr": {},
    }
    (run_dir / "metrics.json").write_text(json.dumps(payload))
    return run_dir


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for variant, seeds in RUNS.items():
        for seed, values in seeds.items():
            write_run(
                tmp_path,
                f"{variant}-s{seed}",
                variant,
                seed,
                dict(zip(SUMMARY, values, strict=True)),
                per_class_ap={"car": values[0] + 0.1, "barrier": values[0] - 0.1},
                cost={"sec_per_iter": 1.0 + 0.1 * (variant != "baseline"), "peak_memory_mb": 1000},
            )
    return tmp_path


def _values(variant: str, metric: str) -> list[float]:
    return [v[SUMMARY.index(metric)] for v in RUNS[variant].values()]


def test_mean_std_n_over_seeds(root: Path) -> None:
    _, results, _ = select_runs(root, STUDY)
    comparison = compare(results)
    assert [g.label for g in comparison.groups] == ["baseline", "aqr-new", "aqr-old"]
    for variant in RUNS:
        for metric in ("mAP", "NDS", "mATE"):
            values = _values(variant, metric)
            assert comparison.stat(variant, metric, "mean") == pytest.approx(
                statistics.mean(values)
            )
            assert comparison.stat(variant, metric, "n") == len(values)
            if len(values) > 1:
                std = comparison.stat(variant, metric, "std")
                assert std == pytest.approx(statistics.stdev(values))
            else:
                assert math.isnan(comparison.stat(variant, metric, "std"))


def test_delta_signs_and_best_follow_each_metrics_direction(root: Path) -> None:
    comparison = compare(select_runs(root, STUDY)[1])
    assert comparison.stat("aqr-new", "mAP", "delta") == pytest.approx(0.04)
    assert comparison.stat("aqr-old", "mAP", "delta") == pytest.approx(-0.04)
    assert comparison.stat("aqr-new", "mATE", "delta") == pytest.approx(-0.06)
    assert comparison.stat("aqr-new", "mASE", "delta") == pytest.approx(0.05)
    assert comparison.stat("aqr-new", "sec_per_iter", "delta_rel") == pytest.approx(0.1)
    assert math.isnan(comparison.stat("baseline", "mAP", "delta"))

    def best(metric: str) -> list[str]:
        stats = comparison.stats
        return stats[(stats["metric"] == metric) & stats["best"]]["group"].tolist()

    assert best("mAP") == ["aqr-new"]  # higher is better
    assert best("mATE") == ["aqr-new"]  # lower is better: the smaller error wins
    assert best("mASE") == ["baseline"]
    assert best("sec_per_iter") == ["baseline"]
    assert best("car") == ["aqr-new"]
    assert best("mAVE") == []  # undefined everywhere: nothing to mark


def test_nan_metrics_stay_nan_and_do_not_break_means(root: Path) -> None:
    comparison = compare(select_runs(root, STUDY)[1])
    assert math.isnan(comparison.stat("baseline", "mAVE", "mean"))
    assert math.isnan(comparison.stat("aqr-new", "mAVE", "delta"))
    assert comparison.stat("baseline", "mAAE", "mean") == pytest.approx(0.21)
    assert comparison.stat("baseline", "mAAE", "n") == 2
    assert comparison.stat("baseline", "mAP", "mean") == pytest.approx(0.62)
    text = render(comparison, "markdown")
    detection = tables(comparison, "markdown")[0].frame
    assert (detection["mAVE ↓"] == "NaN").all()
    assert any(
        "mAAE is undefined (NaN) or missing in 1 of 3 runs" in w for w in comparison.warnings
    )
    assert "NaN" in text


def test_warnings_for_single_seed_and_delta_within_spread(root: Path) -> None:
    warnings = compare(select_runs(root, STUDY)[1]).warnings
    assert any(w.startswith("aqr-old: n=1") for w in warnings)
    # NDS: Δ +0.005 < std 0.01 → within the spread; mAP: Δ +0.04 > 0.02 → not.
    assert any(w.startswith("aqr-new: Δ NDS = +0.005") for w in warnings)
    assert not any(w.startswith("aqr-new: Δ mAP") for w in warnings)


def test_delta_table_marks_changes_within_the_spread(root: Path) -> None:
    comparison = compare(select_runs(root, STUDY)[1])
    deltas = {t.key: t.frame for t in tables(comparison, "markdown")}["detection_delta"]
    new = deltas[deltas["variant"] == "aqr-new"].iloc[0]
    assert new["Δ mAP ↑"] == "+0.0400"
    assert new["Δ NDS ↑"] == "+0.0050 †"
    assert new["Δ mATE ↓"] == "-0.0600"


def test_markdown_output_is_valid_markdown(root: Path) -> None:
    comparison = compare(select_runs(root, STUDY)[1])
    text = render(comparison, "markdown")
    parsed = markdown_tables(text)
    expected = tables(comparison, "markdown")
    assert len(parsed) == len(expected) == 6
    for rows, table in zip(parsed, expected, strict=True):
        assert rows[0] == list(table.frame.columns)
        assert len(rows) == len(table.frame) + 1
        assert all(len(r) == len(rows[0]) for r in rows)
    assert parsed[0][2][2] == "**0.6600 ± 0.0100**"  # aqr-new's mAP is the best


def test_csv_carries_the_tidy_numbers(root: Path) -> None:
    comparison = compare(select_runs(root, STUDY)[1])
    frame = pd.read_csv(io.StringIO(render(comparison, "csv")))
    row = frame[(frame["group"] == "aqr-new") & (frame["metric"] == "mATE")].iloc[0]
    assert row["delta"] == pytest.approx(-0.06)
    assert bool(row["best"]) is True
    assert row["n"] == 3


def test_an_unknown_format_is_an_error_naming_the_formats(root: Path) -> None:
    comparison = compare(select_runs(root, STUDY)[1])
    with pytest.raises(AqrError) as error:
        render(comparison, "html")
    assert str(error.value) == "unknown output format 'html': choose one of table, markdown, csv"
    # the CLI's --format choices are exactly the formats render knows
    assert [f.value for f in OutputFormat] == list(FORMATS)


def test_by_param_groups_runs_by_an_override(tmp_path: Path) -> None:
    key = "model.pts_bbox_head.aqr.window_size"
    write_run(tmp_path, "base", "baseline", 0, {"mAP": 0.5, "NDS": 0.6})
    for run_id, window, m in [("w5a", 5, 0.52), ("w5b", 5, 0.54), ("w10", 10, 0.56)]:
        write_run(tmp_path, run_id, "aqr-new", 0, {"mAP": m, "NDS": 0.6}, overrides={key: window})
    comparison = compare(select_runs(tmp_path, STUDY)[1], by="window_size")
    labels = [g.label for g in comparison.groups]
    assert labels == ["baseline", "aqr-new (window_size=5)", "aqr-new (window_size=10)"]
    assert comparison.stat("aqr-new (window_size=5)", "mAP", "mean") == pytest.approx(0.53)


def test_unfinished_and_uncollected_runs_are_left_out_with_a_warning(root: Path) -> None:
    write_run(root, "running-1", "aqr-new", 5, {"mAP": 0.1, "NDS": 0.1}, status="running")
    _, results, notes = select_runs(root, STUDY)
    assert "running-1" not in {r.run_id for r in results}
    assert any("running-1 (running)" in n for n in notes)


def test_cli_compare_formats_and_explicit_runs(root: Path) -> None:
    runner = CliRunner()
    base = ["--results-root", str(root)]
    table = runner.invoke(app, ["compare", "--study", STUDY, *base])
    assert table.exit_code == 0, table.output
    assert "0.6600 ± 0.0100 *" in table.output
    two = runner.invoke(app, ["compare", "baseline-s0", "aqr-new-s0", "-f", "csv", *base])
    assert two.exit_code == 0, two.output
    assert "aqr-old" not in two.stdout


def test_cli_compare_unknown_study_exits_2(root: Path) -> None:
    result = CliRunner().invoke(app, ["compare", "--study", "nope", "--results-root", str(root)])
    assert result.exit_code == 2
    assert "no study 'nope'" in result.output


def test_no_runs_is_an_error() -> None:
    with pytest.raises(AqrError) as error:
        compare([])
    assert str(error.value) == "no runs to compare"
