"""The benchmark scripts run end to end and write what docs/benchmarks.md quotes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from markdown_tables import markdown_tables

from aqr_exp import paths


def test_attention_bench_writes_ratios_to_the_floor_of_the_same_run(tmp_path: Path) -> None:
    """Every method at every window, the floor once per pass; each ratio is to that floor."""
    stem = tmp_path / "attention"
    subprocess.run(
        [
            sys.executable, str(paths.PACKAGE_ROOT / "bench" / "attention.py"),
            "--sizes", "demo", "--methods", "floor,dense,window-shared,prototype",
            "--windows", "8x8,15x3", "--budget-s", "0", "--rounds", "2", "--out", str(stem),
        ],
        check=True, cwd=paths.PACKAGE_ROOT,
    )  # fmt: skip
    payload = json.loads(stem.with_suffix(".json").read_text())
    rows = payload["results"]
    passes = ("forward", "forward+backward")
    assert sorted((r["method"], r["window"], r["pass"]) for r in rows) == sorted(
        [("floor", "—", p) for p in passes]
        + [
            (m, w, p)
            for m in ("dense", "window-shared", "prototype")
            for w in ("8x8", "15x3")
            for p in passes
        ]
    )
    assert all(r["time_ms"] > 0 and r["rounds"] == 2 and r["repeats"] >= 6 for r in rows)
    table = markdown_tables(stem.with_suffix(".md").read_text())[0]
    assert len(table) == len(rows) + 1
    for row in table[1:]:
        pass_, method, window = row[1], row[2], row[3]
        floor = next(r for r in rows if r["method"] == "floor" and r["pass"] == pass_)
        mine = next(
            r for r in rows if (r["method"], r["window"], r["pass"]) == (method, window, pass_)
        )
        assert row[5] == f"{mine['time_ms'] / floor['time_ms']:.2f}×"


def test_attention_bench_refuses_a_malformed_window(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, str(paths.PACKAGE_ROOT / "bench" / "attention.py"),
            "--windows", "8,8", "--out", str(tmp_path / "attention"),
        ],
        capture_output=True, text=True, cwd=paths.PACKAGE_ROOT,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "window '8': expected BEVxCAMERA cells" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_bootstrap_bench_runs_small_and_reports_its_time(tmp_path: Path) -> None:
    stem = tmp_path / "bootstrap"
    subprocess.run(
        [
            sys.executable, str(paths.PACKAGE_ROOT / "bench" / "bootstrap.py"),
            "--resamples", "4", "--samples", "60", "--scenes", "6", "--per-sample", "40",
            "--workers", "2", "--out", str(stem),
        ],
        check=True, cwd=paths.PACKAGE_ROOT,
    )  # fmt: skip
    payload = json.loads(stem.with_suffix(".json").read_text())
    assert payload["resamples"] == 4 and payload["predictions_per_run"] == 60 * 40
    assert (
        f"**{payload['seconds']:.1f} s** with 2 worker processes"
        in stem.with_suffix(".md").read_text()
    )


def test_cli_bench_times_help_and_status_over_the_runs_it_writes(tmp_path: Path) -> None:
    stem = tmp_path / "out" / "cli"
    scratch = tmp_path / "scratch"  # the bench's registry goes here (TMPDIR), then away
    scratch.mkdir()
    subprocess.run(
        [sys.executable, str(paths.PACKAGE_ROOT / "bench" / "cli.py"),
         "--runs", "20", "--repeats", "1", "--out", str(stem)],
        check=True, cwd=paths.PACKAGE_ROOT, env={**os.environ, "TMPDIR": str(scratch)},
    )  # fmt: skip
    payload = json.loads(stem.with_suffix(".json").read_text())
    assert payload["runs"] == 20 and payload["repeats"] == 1
    assert set(payload["provenance"]) >= {"machine", "python", "aqr_exp", "git_commit", "date"}
    assert payload["goals_s"] == {"help": 1.0, "status": 2.0, "status_study": 2.0}
    for row in payload["results"].values():
        assert len(row["times_s"]) == 1 and row["median_s"] == row["times_s"][0] > 0
    table = markdown_tables(stem.with_suffix(".md").read_text())[0]
    assert [row[0] for row in table[1:]] == [
        "`aqr-exp --help`",
        "`aqr-exp status` (20 runs)",
        "`aqr-exp status --study aqr_cmt-bench` (20 runs)",
    ]
    for row, key in zip(table[1:], ("help", "status", "status_study"), strict=True):
        median = payload["results"][key]["median_s"]
        assert row[1] == f"{median:.2f} s"
        assert row[5] == ("yes" if median <= payload["goals_s"][key] else "no")
    assert list(scratch.iterdir()) == []  # the 20 run dirs were removed


def _bench_script(name: str):
    """A bench/ script imported as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", paths.PACKAGE_ROOT / "bench" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_train_step_ratio_is_taken_within_each_round() -> None:
    """Round 2 runs everything 2x slower (load drift): the per-round ratio stays 1.5."""
    round_ratio = _bench_script("train_step").round_ratio
    baseline = [1.0, 1.0, 2.0, 2.0, 1.0, 1.1]
    variant = [1.5, 1.5, 3.0, 3.0, 1.5, 1.65]
    assert round_ratio(variant, baseline, steps=2) == pytest.approx(1.5)
    assert round_ratio(baseline, baseline, steps=2) == 1.0


def test_train_step_interval_brackets_the_round_ratios() -> None:
    """The bootstrap interval of the median ratio lies within the rounds' ratios, is a
    point when every round agrees, and widens when the rounds disagree."""
    ratio_interval = _bench_script("train_step").ratio_interval
    baseline = [1.0] * 10
    steady = [1.2] * 10
    assert ratio_interval(steady, baseline, steps=1) == pytest.approx((1.2, 1.2))
    spread = [1.0, 1.1, 1.2, 1.3, 1.4, 1.0, 1.1, 1.2, 1.3, 1.4]
    low, high = ratio_interval(spread, baseline, steps=1)
    assert 1.0 <= low < 1.2 < high <= 1.4


def test_train_step_feeds_every_step_the_voxels_training_would(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mmdet3d's PillarFeatureNet edits its input voxels in place: a step that reused the
    first step's voxels would see them shifted by the pillar offsets once more."""
    monkeypatch.setenv("AQR_DATA_ROOT", f"{synth_root}/")
    bench = _bench_script("train_step")
    runner = bench.build(paths.PLUGIN_CONFIGS / bench.VARIANTS["baseline"], str(tmp_path))
    trainer = bench.Trainer(runner, next(iter(runner.train_dataloader)), 1e-4)
    seen = []
    trainer.model.pts_voxel_encoder.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].clone())
    )
    assert trainer.step() > 0 and trainer.step() > 0
    assert len(seen) == 2 and seen[0].abs().sum() > 0
    torch.testing.assert_close(seen[1], seen[0], rtol=0, atol=0)


def test_attention_rounds_combine_to_the_median_time_and_the_largest_memory() -> None:
    combine_rounds = _bench_script("attention").combine_rounds
    rounds = [
        {"time_ms": 30.0, "repeats": 3, "peak_mb": 10.0},
        {"time_ms": 10.0, "repeats": 4, "peak_mb": 12.0},
        {"time_ms": 20.0, "repeats": 5, "peak_mb": 11.0},
    ]
    assert combine_rounds(rounds) == {
        "time_ms": 20.0, "repeats": 12, "rounds": 3, "peak_mb": 12.0
    }  # fmt: skip
    failed = {"error": "out of memory"}
    assert combine_rounds([rounds[0], failed]) == failed
