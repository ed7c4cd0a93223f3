"""bench/modality.py: a checkpoint scored as trained and with each sensor blanked."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures.training import train_py
from markdown_tables import markdown_tables
from mmdet3d.registry import DATASETS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from aqr_exp import paths

SMOKE = paths.PLUGIN_CONFIGS / "cmt_lc_pillar100_r18_128x64_1xb2-smoke_synth-nus.py"
SCRIPT = paths.PACKAGE_ROOT / "bench" / "modality.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_modality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first_test_sample(pipeline: list[dict], synth_root: Path) -> dict:
    init_default_scope("mmdet3d")
    cfg = Config.fromfile(SMOKE)
    dataset = cfg.test_dataloader.dataset
    dataset.data_root = f"{synth_root}/"
    dataset.pipeline = pipeline
    return DATASETS.build(dataset)[0]["inputs"]


def test_blanking_empties_exactly_the_named_sensor(
    synth_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AQR_DATA_ROOT", f"{synth_root}/")
    bench = _bench()
    pipeline = Config.fromfile(SMOKE).test_dataloader.dataset.pipeline
    samples = {
        name: _first_test_sample(bench.blanked_pipeline(pipeline, mask), synth_root)
        for name, mask in bench.BLANKING.items()
    }
    trained = samples["as trained"]
    assert trained["img"].abs().sum() > 0 and len(trained["points"]) > 100
    cameras = samples["cameras blanked"]
    assert cameras["img"].abs().sum() == 0
    np.testing.assert_array_equal(cameras["points"].numpy(), trained["points"].numpy())
    lidar = samples["LiDAR blanked"]
    assert len(lidar["points"]) == 1
    np.testing.assert_array_equal(lidar["img"].numpy(), trained["img"].numpy())


def test_blanking_refuses_a_pipeline_without_lidar2img() -> None:
    with pytest.raises(ValueError, match="CmtComposeLidar2Img"):
        _bench().blanked_pipeline([dict(type="LoadPointsFromFile")], dict(camera_prob=1.0))


@pytest.mark.slow
def test_modality_bench_scores_a_trained_checkpoint_three_ways(
    synth_root: Path, tmp_path: Path
) -> None:
    work_dir = tmp_path / "work"
    train_py(SMOKE, work_dir, synth_root)
    stem = tmp_path / "modality"
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(SMOKE),
            str(work_dir / "epoch_1.pth"),
            "--out",
            str(stem),
        ],
        check=True,
        cwd=paths.PACKAGE_ROOT,
        env={**os.environ, "AQR_DATA_ROOT": f"{synth_root}/"},
    )
    payload = json.loads(stem.with_suffix(".json").read_text())
    assert list(payload["scores"]) == ["as trained", "cameras blanked", "LiDAR blanked"]
    header, *rows = markdown_tables(stem.with_suffix(".md").read_text())[0]
    assert header[1:] == list(payload["scores"])
    by_metric = {row[0]: row[1:] for row in rows}
    for column, scores in enumerate(payload["scores"].values()):
        assert by_metric["mAP"][column] == f"{scores['mAP']:.4f}"
        assert by_metric["NDS"][column] == f"{scores['NDS']:.4f}"
        assert by_metric["car AP (2 m)"][column] == f"{scores['car_AP_dist_2.0']:.4f}"
