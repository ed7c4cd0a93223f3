"""The real thing at smoke scale: the plugin's smoke config on synthetic nuScenes
data, a sweep of two window sizes plus the baseline, two runs at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.toy.helpers import cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aqr_exp import registry

SMOKE_SPEC = Path(__file__).parent / "fixtures" / "smoke_spec.yaml"


@pytest.mark.slow
def test_smoke_sweep_two_values_two_concurrent_runs(tmp_path: Path, synth_root: Path) -> None:
    result = cli(
        "sweep", "window_size", "--jobs", "2", "--spec", SMOKE_SPEC, "--data-root", synth_root,
        "--results-root", tmp_path / "results", "--work-root", tmp_path / "work",
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-4000:]
    records = [registry.read(run_dir) for run_dir in registry.runs_of(tmp_path / "results")]
    values = sorted(r.sweep["value"] for r in records if r.sweep)
    assert values == [5, 8]
    assert {r.status for r in records} == {"done"} and len(records) == 3
    assert "local pool: 2 run(s) at a time" in result.stdout
    for record in records:
        assert (Path(record.work_dir) / "last_checkpoint").is_file()
    report = tmp_path / "results" / "smoke-smoke" / "report.md"
    assert f"Report: {report}" in result.stdout and report.is_file()
    assert "mAP" in result.stdout
    # The predictions behind every number are kept and matched once, so each Δ gets a
    # paired-bootstrap interval and a verdict.
    for run_dir in registry.runs_of(tmp_path / "results"):
        kept = json.loads((run_dir / "metrics.json").read_text())["predictions"]
        assert Path(kept["file"]).is_file() and Path(kept["matches"]).is_file()
        assert kept["samples"] > 0 and kept["scenes"] >= 1
    text = report.read_text()
    assert "Is the Δ real?" in text and "Beyond noise on NDS" in text
    intervals = [line for line in text.splitlines() if line.startswith("| new_aqr")]
    assert any(v in line for line in intervals for v in ("better", "worse", "within noise"))
    # TensorBoard (the default tracker): one folder per run under the study, with the
    # losses, the AQR scalars and the nuScenes metrics; the report says where.
    board = tmp_path / "work" / "smoke-smoke" / "tensorboard"
    assert f"tensorboard: tensorboard --logdir {board}" in text
    for record in records:
        events = EventAccumulator(str(board / record.run_id))
        events.Reload()
        tags = events.Tags()["scalars"]
        assert "loss" in tags and any(tag.endswith("/NDS") for tag in tags), tags
        assert ("aqr/bias_scale" in tags) == (record.variant == "new_aqr")


@pytest.mark.slow
def test_the_report_shows_the_adaptive_windows_extents(tmp_path: Path, synth_root: Path) -> None:
    """Baseline vs new AQR with adaptive windows: the report's AQR diagnostics carry the
    predicted extents per modality, within their bounds."""
    result = cli(
        "run", "baseline", "new_aqr_adaptive", "--jobs", "2", "--spec", SMOKE_SPEC,
        "--data-root", synth_root, "--results-root", tmp_path / "results",
        "--work-root", tmp_path / "work",
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-4000:]
    text = (tmp_path / "results" / "smoke-smoke" / "report.md").read_text()
    lines = text.split("AQR diagnostics")[1].splitlines()
    header = next(line for line in lines if line.startswith("| variant"))
    row = next(line for line in lines if line.startswith("| new_aqr_adaptive"))
    cells = dict(zip(_cells(header), _cells(row), strict=True))
    for name, (low, high) in {"bev_extent_mean": (3, 15), "cam_extent_mean": (1, 3)}.items():
        assert low <= float(cells[f"aqr/{name}"]) <= high, cells
    assert float(cells["aqr/bev_extent_std"]) >= 0 and float(cells["aqr/cam_extent_std"]) >= 0


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]
