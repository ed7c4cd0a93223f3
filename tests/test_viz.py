"""`aqr-exp viz bias | weights`: the overlay geometry (pure functions, known camera rig)
and the commands end to end on the demo config (real model forward on CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mmengine.logging import HistoryBuffer
from typer.testing import CliRunner

from aqr_exp.cli.main import app
from aqr_exp.paths import PLUGIN_CONFIGS
from aqr_exp.viz.overlays import (
    camera_cells_to_pixels,
    project_points,
    query_token_rows,
    split_tokens,
)
from aqr_exp.viz.weights import BUCKETS
from cmt_aqr.aqr.cells import MemoryLayout, locate_queries
from cmt_aqr.aqr.module import AdaptiveQueryRouting
from cmt_aqr.aqr.weights import Routing

SUFFIX = "lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py"
NEW = PLUGIN_CONFIGS / f"cmt-aqr-new_{SUFFIX}"
OLD = PLUGIN_CONFIGS / f"cmt-aqr-old_{SUFFIX}"
ADAPTIVE = PLUGIN_CONFIGS / f"cmt-aqr-adaptive_{SUFFIX}"
BASELINE = PLUGIN_CONFIGS / f"cmt_{SUFFIX}"
CLASSES = 10

IMAGE = (128, 256)  # (H, W)
LAYOUT = MemoryLayout(bev_size=(64, 64), num_views=6, cam_size=(8, 16))  # stride 16
PC_RANGE = np.array([-32.0, -32.0, -5.0, 32.0, 32.0, 3.0])  # 1 m BEV cells
FOCAL = 100.0


def _rig() -> np.ndarray:
    """Six pinhole cameras at the origin, view k looking along yaw k·60°: [6, 4, 4]."""
    mats = []
    for view in range(6):
        yaw = view * math.pi / 3
        forward = [math.cos(yaw), math.sin(yaw), 0.0]
        right = [math.sin(yaw), -math.cos(yaw), 0.0]
        lidar2cam = np.eye(4)
        lidar2cam[:3, :3] = [right, [0.0, 0.0, -1.0], forward]
        intrinsics = np.eye(4)
        intrinsics[:3, :3] = [[FOCAL, 0, IMAGE[1] / 2], [0, FOCAL, IMAGE[0] / 2], [0, 0, 1]]
        mats.append(intrinsics @ lidar2cam)
    return np.stack(mats)


@pytest.mark.parametrize("aqr_type", ["new", "old"])
def test_overlay_of_a_query_sits_on_its_projection_and_its_bev_cell(aqr_type: str) -> None:
    # 10 m ahead of view 2 (yaw 120°), 1.5 m to its right, 0.5 m up:
    # pixel (u, v) = (128 + 100·1.5/10, 64 − 100·0.5/10) = (143, 59) -> camera cell (3, 8).
    yaw = 2 * math.pi / 3
    forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    point = 10 * forward + 1.5 * right + np.array([0.0, 0.0, 0.5])
    rig = _rig()
    pixels, depth = project_points(point[None], rig)
    np.testing.assert_allclose(pixels[2, 0], [143.0, 59.0], atol=1e-6)
    inside = (pixels[..., 0] >= 0) & (pixels[..., 0] < IMAGE[1])
    inside &= (pixels[..., 1] >= 0) & (pixels[..., 1] < IMAGE[0])
    visible = torch.from_numpy((depth > 1e-2) & inside)[None]
    ref = (point - PC_RANGE[:3]) / (PC_RANGE[3:] - PC_RANGE[:3])
    cells = locate_queries(
        torch.tensor(ref[None, None], dtype=torch.float32),
        torch.tensor(pixels[None], dtype=torch.float32),
        visible,
        LAYOUT,
        IMAGE,
    )
    aqr = AdaptiveQueryRouting(8, type=aqr_type, window_size=3)
    routing = Routing(torch.tensor([[0.8]]), torch.tensor([[0.6]]))
    rows = query_token_rows(aqr, cells, routing, LAYOUT, torch.tensor([0]))
    assert rows.shape == (1, LAYOUT.num_tokens)
    bev, cam = split_tokens(rows[0], LAYOUT)
    heat = camera_cells_to_pixels(cam, IMAGE)
    assert heat.shape == (6, *IMAGE)

    # Camera: only view 2 lights up; its hottest pixels lie in the 3x3-cell window
    # around cell (3, 8), i.e. pixel rows 32..79 and columns 112..159, and include
    # the projected pixel itself.
    assert not np.any(np.delete(heat, 2, axis=0))
    hot_rows, hot_cols = np.nonzero(heat[2] == heat[2].max())
    assert heat[2].max() > 0
    assert hot_rows.min() >= 32 and hot_rows.max() <= 79
    assert hot_cols.min() >= 112 and hot_cols.max() <= 159
    assert heat[2, 59, 143] == heat[2].max()

    # BEV: row from y, col from x, 1 m cells from -32 m.
    row, col = int(point[1] + 32), int(point[0] + 32)
    assert (row, col) == (41, 28)
    hot_rows, hot_cols = np.nonzero(bev == bev.max())
    assert hot_rows.min() >= row - 1 and hot_rows.max() <= row + 1
    assert hot_cols.min() >= col - 1 and hot_cols.max() <= col + 1
    assert bev[row, col] == bev.max() > 0
    if aqr_type == "new":  # uniform window: exactly the 3x3 cells, scale · weight
        assert len(hot_rows) == 9
        np.testing.assert_allclose(bev.max(), float(aqr.scale().detach()) * 0.8, rtol=1e-5)


@pytest.fixture
def data_root(synth_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AQR_DATA_ROOT", f"{synth_root}/")
    return synth_root


def _invoke(*args: str):
    return CliRunner().invoke(app, ["viz", *args])


def _png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 300 and image.shape[1] > 500
    assert image.std() > 0.01  # not blank
    return image


@pytest.mark.parametrize(
    ("config", "queries"),
    [
        (NEW, ["--queries", "top"]),
        (OLD, ["-q", "3,7", "-q", "199"]),
        (ADAPTIVE, ["--top", "2"]),
    ],
)
def test_viz_bias_writes_camera_and_bev_pngs(
    config: Path, queries: list[str], data_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "viz"
    result = _invoke("bias", "--config", str(config), "--sample", "1", *queries, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["sample0001_bev.png", "sample0001_cameras.png"]
    for path in out.iterdir():
        _png(path)


@pytest.mark.parametrize("config", [NEW, ADAPTIVE])
def test_viz_weights_writes_one_row_per_class_and_bucket(
    config: Path, data_root: Path, tmp_path: Path
) -> None:
    # A checkpoint of another variant (the baseline): the AQR weights stay freshly initialized.
    from mmdet3d.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    init_default_scope("mmdet3d")
    torch.manual_seed(0)
    baseline = MODELS.build(Config.fromfile(BASELINE).model)
    checkpoint = tmp_path / "baseline.pth"
    # As mmengine's CheckpointHook writes it: the message hub's HistoryBuffers are
    # pickled too, which torch >= 2.6's weights-only loading refuses unless allowed.
    history = HistoryBuffer()
    history.update(1.0)
    meta = {"message_hub": {"log_scalars": {"train/loss": history}}}
    torch.save({"meta": meta, "state_dict": baseline.state_dict()}, checkpoint)

    out = tmp_path / "viz"
    torch.manual_seed(0)
    result = _invoke(
        "weights", "-c", str(config), "-k", str(checkpoint), "--samples", "2", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "weights.csv")
    matched = pd.read_csv(out / "weights-matched.csv")
    assert len(table) == CLASSES * len(BUCKETS)
    assert not table.duplicated(["class", "distance"]).any()
    assert set(table["distance"]) == set(BUCKETS)
    assert len(matched) > 0
    assert table["count"].sum() == len(matched)
    assert f"{len(matched)} of " in result.output
    assert set(matched["sample"]) <= {0, 1}
    assert not matched.duplicated(["sample", "query"]).any()  # one query per GT
    assert (table["bias_scale"].between(0.0, 5.0)).all()
    _png(out / "weights.png")
    # adaptive windows: each matched query's predicted extents, within their bounds
    adaptive = config == ADAPTIVE
    assert (out / "extents.png").exists() == adaptive
    assert matched["bev_extent"].notna().all() == adaptive
    if adaptive:
        _png(out / "extents.png")
        assert matched["bev_extent"].between(3.0, 15.0).all()
        assert matched["cam_extent"].between(1.0, 3.0).all()
        filled = table[table["count"] > 0]
        assert filled["bev_extent_mean"].between(3.0, 15.0).all()


def test_the_bias_picture_follows_the_predicted_extent() -> None:
    """A query that predicts a small window puts its bias on fewer cells."""
    aqr = AdaptiveQueryRouting(8, type="new", window_mode="adaptive", window_profile="gaussian",
                               window_min=2.0, window_max=15, cam_window_min=1.0,
                               cam_window_max=3)  # fmt: skip
    unseen = torch.zeros(1, 1, 6, dtype=torch.bool)
    cells = locate_queries(
        torch.tensor([[[0.5, 0.5, 0.5]]]), torch.zeros(1, 1, 6, 2), unseen, LAYOUT, IMAGE
    )

    def lit_cells(extent: float) -> int:
        routing = Routing(torch.ones(1, 1), torch.ones(1, 1), torch.tensor([[extent]]),
                          torch.ones(1, 1))  # fmt: skip
        row = query_token_rows(aqr, cells, routing, LAYOUT, torch.tensor([0]))[0]
        bev, _ = split_tokens(row, LAYOUT)
        return int((bev > 0.5 * bev.max()).sum())

    assert lit_cells(3.0) < lit_cells(8.0) < lit_cells(15.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bias", "-c", str(BASELINE)], "has no AQR"),
        (["weights", "-c", str(BASELINE)], "has no AQR"),
        (["bias", "-c", str(NEW), "-k", "missing.pth"], "checkpoint missing.pth does not exist"),
        (["bias", "-c", str(NEW), "--sample", "99"], "--sample 99 is out of range"),
        (["bias", "-c", str(NEW), "-q", "5,x"], "bad: x"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(
    args: list[str], message: str, data_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "viz"
    result = _invoke(*args, "--out", str(out))
    assert result.exit_code == 2, result.output
    # One message (mmengine's own log lines may come before it in-process).
    (error,) = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert message in error
    assert not out.exists()


def _registry_run(root: Path, run_id: str, config: Path, nds: float, checkpoint: Path) -> None:
    """A collected run as the registry holds it: run.yaml, config.py, metrics.json."""
    from mmengine.config import Config

    run_dir = root / "study" / "runs" / run_id
    run_dir.mkdir(parents=True)
    variant = run_id.split("-")[0]
    record = {"run_id": run_id, "study": "study", "variant": variant, "seed": 0}
    (run_dir / "run.yaml").write_text(yaml.safe_dump({**record, "status": "done"}))
    Config.fromfile(config).dump(run_dir / "config.py")
    metrics = {
        **record,
        "sweep": None,
        "source": {"metrics": {"from": "val", "epoch": 1}, "last_checkpoint": str(checkpoint)},
        "metrics": {"mAP": nds / 2, "NDS": nds},
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


def test_report_viz_draws_the_best_aqr_run_into_the_report(data_root: Path, tmp_path: Path) -> None:
    from mmdet3d.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    init_default_scope("mmdet3d")
    checkpoint = tmp_path / "new.pth"
    torch.save({"state_dict": MODELS.build(Config.fromfile(NEW).model).state_dict()}, checkpoint)
    root = tmp_path / "results"
    _registry_run(root, "baseline-s0", BASELINE, 0.30, checkpoint)
    _registry_run(root, "new_aqr-s0", NEW, 0.20, checkpoint)
    _registry_run(root, "old_aqr-s0", OLD, 0.10, checkpoint)

    result = CliRunner().invoke(
        app,
        ["report", "--study", "study", "--results-root", str(root), "--viz",
         "--viz-sample", "1", "--viz-samples", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = (root / "study" / "report.md").read_text()
    section = report.split("## Seeing AQR", 1)[1].split("\n## ", 1)[0]
    # The baseline has the best NDS but no AQR; among the AQR runs new_aqr is best.
    assert "`new_aqr-s0`" in section and "old_aqr-s0" not in section
    for name in ("sample0001_cameras.png", "sample0001_bev.png", "weights.png"):
        assert f"](figures/viz/{name})" in section
        _png(root / "study" / "figures" / "viz" / name)


def test_report_viz_without_an_aqr_run_says_so(data_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "results"
    _registry_run(root, "baseline-s0", BASELINE, 0.30, tmp_path / "none.pth")
    result = CliRunner().invoke(
        app, ["report", "--study", "study", "--results-root", str(root), "--viz"]
    )
    assert result.exit_code == 2
    assert "no collected AQR run" in result.output
    assert not (root / "study" / "report.md").exists()
