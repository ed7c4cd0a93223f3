"""Real training: mmdet3d's own tools/train.py trains the smoke config of each
variant on a small synthetic data set and NuScenesMetric scores it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mmdet3d
import pytest

from aqr_exp.paths import PLUGIN_CONFIGS

SMOKE = PLUGIN_CONFIGS / "cmt_lc_pillar100_r18_256x128_1xb2-smoke_synth-nus.py"
TRAIN_PY = Path(mmdet3d.__file__).parent / ".mim" / "tools" / "train.py"
METRIC = "NuScenes metric/pred_instances_3d_NuScenes"

AQR_BLOCKS = {
    "baseline": "",
    "old_aqr": "model = dict(pts_bbox_head=dict(aqr=dict(_delete_=True, type='old', "
    "weight_activation='sigmoid')))",
    "new_aqr": "model = dict(pts_bbox_head=dict(aqr=dict(_delete_=True, type='new', "
    "window_size=5)))",
}


def _scalars(work_dir: Path) -> list[dict]:
    (path,) = work_dir.glob("*/vis_data/scalars.json")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(AQR_BLOCKS))
def test_mmdet3d_train_py_trains_the_smoke_config(
    variant: str, synth_root: Path, tmp_path: Path
) -> None:
    config = tmp_path / f"smoke_{variant}.py"
    config.write_text(f"_base_ = ['{SMOKE}']\n{AQR_BLOCKS[variant]}\n")
    work_dir = tmp_path / "work"
    env = {**os.environ, "AQR_DATA_ROOT": f"{synth_root}/"}
    proc = subprocess.run(
        [sys.executable, str(TRAIN_PY), str(config), "--work-dir", str(work_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _scalars(work_dir)
    train = [line for line in lines if "iter" in line]
    val = [line for line in lines if f"{METRIC}/mAP" in line]
    assert len(train) == 6  # 12 samples, batch 2, logged every iteration
    assert all(math.isfinite(line["loss"]) for line in train)
    assert len(val) == 1
    assert 0.0 <= val[0][f"{METRIC}/mAP"] <= 1.0
    assert 0.0 <= val[0][f"{METRIC}/NDS"] <= 1.0
    aqr_keys = {key for key in train[-1] if key.startswith("aqr/")}
    if variant == "baseline":
        assert not aqr_keys
    else:
        assert {"aqr/lidar_w_mean", "aqr/cam_w_mean", "aqr/prefer_lidar"} <= aqr_keys
    if variant == "new_aqr":
        assert {"aqr/bias_scale", "aqr/bias_in_window_mean"} <= aqr_keys
    assert (work_dir / "epoch_1.pth").exists()
