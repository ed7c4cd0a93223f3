"""report: report.md and PNG figures for a sweep study; its tables are compare's tables."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from markdown_tables import markdown_tables
from matplotlib.container import ErrorbarContainer
from matplotlib.image import imread
from typer.testing import CliRunner

from aqr_exp import paths
from aqr_exp.cli.main import app
from aqr_exp.results.compare import compare, select_runs
from aqr_exp.results.figures import sweep_figure
from aqr_exp.results.nuscenes import CLASSES
from aqr_exp.results.report import portable, write_report

STUDY = "window_size"
KEY = "model.pts_bbox_head.aqr.window_size"
PNG = b"\x89PNG\r\n\x1a\n"
# (variant, window) → mAP per seed 0, 1
MAP = {
    ("baseline", None): (0.60, 0.62),
    ("aqr-new", 5): (0.61, 0.63),
    ("aqr-new", 8): (0.64, 0.66),
    ("aqr-new", 10): (0.62, 0.62),
}
CONFIG = """model = dict(
    type='AqrCmtDetector',
    pts_bbox_head=dict(
        type='AqrCmtHead',
        aqr={aqr},
    ),
)
randomness = dict(seed={seed})
"""


def _write_run(root: Path, variant: str, window: int | None, seed: int, m: float) -> None:
    run_id = f"{variant}-w{window}-s{seed}" if window else f"{variant}-s{seed}"
    run_dir = root / STUDY / "runs" / run_id
    run_dir.mkdir(parents=True)
    sweep = {"param": "window_size", "key": KEY, "value": window} if window else None
    record = {
        "run_id": run_id,
        "study": STUDY,
        "variant": variant,
        "sweep": sweep,
        "overrides": {KEY: window} if window else {},
        "seed": seed,
        "status": "done",
        "command": f"aqr-exp train cfg.py --seed {seed}",
        "git_commit": "abc1234def567890",
        "data_root": "data/synth-nus",
        "init_from": f"baseline-s{seed}" if window else None,
    }
    (run_dir / "run.yaml").write_text(yaml.safe_dump(record))
    aqr = f"dict(type='new', window_size={window}, bias_scale=1.0)" if window else "None"
    (run_dir / "config.py").write_text(CONFIG.format(aqr=aqr, seed=seed))
    metrics = {
        **{k: record[k] for k in ("run_id", "study", "variant", "sweep", "seed")},
        "source": {
            "metrics": {"from": "val", "file": "20240101_000000/vis_data/scalars.json", "epoch": 2},
            "last_checkpoint": "/work_dirs/x/epoch_2.pth",
        },
        "metrics": {"mAP": m, "NDS": m + 0.1, "mATE": 0.3, "mASE": 0.25, "mAOE": 0.4}
        | {"mAVE": float("nan"), "mAAE": 0.2},
        "per_class_ap": {cls: m + 0.01 * k for k, cls in enumerate(CLASSES)},
        "cost": {"sec_per_iter": 1.0 + (window or 0) / 100, "peak_memory_mb": 1000 + seed},
        "aqr": {"aqr/bias_scale": 1.0} if window else {},
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for (variant, window), values in MAP.items():
        for seed, m in enumerate(values):
            _write_run(tmp_path, variant, window, seed, m)
    return tmp_path


def test_report_and_figures_exist_and_figures_are_pngs(root: Path) -> None:
    report = write_report(root, STUDY)
    assert report == root / STUDY / "report.md"
    text = report.read_text()
    for name in ("overview", "sweep_window_size", "per_class_delta"):
        png = root / STUDY / "figures" / f"{name}.png"
        assert png.read_bytes().startswith(PNG)
        height, width, _ = imread(png).shape
        assert height > 200 and width > 300
        assert f"](figures/{name}.png)" in text
    assert not list((root / STUDY).rglob("*.tmp"))


def test_sweep_figure_plots_each_value_with_error_bars_and_a_dashed_baseline(root: Path) -> None:
    comparison = compare(select_runs(root, STUDY)[1])
    figure = sweep_figure(comparison, "window_size")
    ax = figure.axes[0]
    assert ax.get_xlabel() == "window_size" and ax.get_ylabel() == "mAP"
    (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    line = bars.lines[0]
    assert list(line.get_xdata()) == [5, 8, 10]
    means = [statistics.mean(MAP[("aqr-new", w)]) for w in (5, 8, 10)]
    assert list(line.get_ydata()) == pytest.approx(means)
    (baseline,) = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert list(baseline.get_ydata()) == pytest.approx([0.61, 0.61])


def test_every_table_in_the_report_is_a_table_compare_prints(root: Path) -> None:
    write_report(root, STUDY)
    report_tables = markdown_tables((root / STUDY / "report.md").read_text())
    result = CliRunner().invoke(
        app, ["compare", "--study", STUDY, "--format", "markdown", "--results-root", str(root)]
    )
    assert result.exit_code == 0, result.output
    compare_tables = markdown_tables(result.stdout)
    provenance = report_tables.pop()  # the report's last table lists the runs
    assert provenance[0][:2] == ["run", "row"]
    assert report_tables == compare_tables
    detection = report_tables[0]
    w8 = next(r for r in detection if r[0] == "aqr-new (window_size=8)")
    assert w8[2] == "**0.6500 ± 0.0141**"


def test_report_reads_like_a_results_section(root: Path) -> None:
    text = write_report(root, STUDY).read_text()
    assert text.startswith("# Results: window_size\n")
    assert "seeds 0, 1" in text and "`data/synth-nus`" in text
    assert "- Best mAP: `aqr-new (window_size=8)`, 0.6500 ± 0.0141" in text
    assert "Table 1: Detection metrics" in text and "*Figure 2: mAP and NDS vs window_size" in text
    for heading in ("Summary", "Main results", "Per-class AP", "Training cost", "Caveats"):
        assert f"## {heading}\n" in text


def test_config_diffs_and_provenance(root: Path) -> None:
    text = write_report(root, STUDY).read_text()
    assert "### `aqr-new (window_size=5)` vs baseline" in text
    assert "```diff\n--- baseline-s0/config.py\n+++ aqr-new-w5-s0/config.py" in text
    assert "-        aqr=None," in text
    assert "+        aqr=dict(type='new', window_size=5, bias_scale=1.0)," in text
    diffs = text.split("## Configuration differences")[1].split("## Provenance")[0]
    assert "-randomness" not in diffs and "+randomness" not in diffs  # same seed paired
    provenance = text.split("## Provenance")[1]
    assert "| aqr-new-w8-s1 | aqr-new (window_size=8) | 1 | done | baseline-s1 |" in provenance
    assert "| baseline-s0 | baseline | 0 | done | — |" in provenance
    assert "val epoch 2 (20240101_000000/vis_data/scalars.json)" in provenance
    assert "last: epoch_2.pth | abc1234def56 | data/synth-nus |" in provenance
    assert "aqr-new-w8-s1: aqr-exp train cfg.py --seed 1" in provenance


def test_rewriting_drops_stale_figures(root: Path) -> None:
    stale = root / STUDY / "figures" / "sweep_old_param.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(PNG)
    write_report(root, STUDY)
    assert not stale.exists()


def test_cli_report(root: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["report", "--study", STUDY, "--results-root", str(root)])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip() == f"wrote {root / STUDY / 'report.md'}"
    missing = runner.invoke(app, ["report", "--study", "nope", "--results-root", str(root)])
    assert missing.exit_code == 2


def test_paths_inside_the_project_are_shown_project_relative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(paths.ROOT_ENV, str(tmp_path))
    inside = f"python -m aqr_exp.train {tmp_path.resolve()}/results/s/runs/r/config.py"
    assert portable(inside) == "python -m aqr_exp.train results/s/runs/r/config.py"
    assert portable(str(tmp_path.resolve())) == "."
    assert portable("/elsewhere/data/nuscenes") == "/elsewhere/data/nuscenes"
