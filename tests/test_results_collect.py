"""collect on real mmengine work dirs: a toy model trained by a real Runner, interrupted,
resumed (a second timestamp folder) and tested, with a metric that logs NuScenesMetric keys."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from mmengine.evaluator import BaseMetric
from mmengine.logging import MessageHub
from mmengine.model import BaseModel
from mmengine.runner import Runner
from typer.testing import CliRunner

from aqr_exp.cli.main import app
from aqr_exp.data.synth import SynthSpec, generate
from aqr_exp.results.collect import METRIC_PREFIX, collect, read_json_lines
from aqr_exp.results.nuscenes import CLASSES

ITERS_PER_EPOCH = 4
NAN_STEP = 6  # attempt 1 logs NaN here (kept) and at 10 (replaced by attempt 2)
TEST_VALUES = {"mAP": 0.777, "NDS": 0.888}


def nds(epoch: int) -> float:
    return {1: 0.40, 2: 0.55, 3: 0.50}[epoch]


def metric_values(epoch: int, attempt: int) -> dict[str, float]:
    """What the toy metric reports: epoch- and attempt-dependent, so a resumed epoch
    is told apart from the interrupted one."""
    values = {"mAP": 0.1 * epoch + 0.01 * attempt, "NDS": nds(epoch), "mATE": 0.5, "mAVE": math.nan}
    for k, cls in enumerate(CLASSES):
        for i, d in enumerate(("0.5", "1.0", "2.0", "4.0")):
            values[f"{cls}_AP_dist_{d}"] = 0.05 * k + 0.1 * i + 0.01 * epoch + 0.001 * attempt
        values[f"{cls}_trans_err"] = 0.3
        values[f"{cls}_attr_err"] = math.nan if cls == "barrier" else 0.2
    return values


class ToyDetector(BaseModel):
    def __init__(self, attempt: int) -> None:
        super().__init__()
        self.attempt = attempt
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mode: str = "tensor") -> Any:
        out = self.linear(x).squeeze(-1)
        if mode != "loss":
            return list(out)
        hub = MessageHub.get_current_instance()
        step = hub.get_info("iter") + 1
        bad = self.attempt == 1 and step in (NAN_STEP, 10)
        hub.update_scalar("train/aqr/lidar_w_mean", math.nan if bad else 0.5)
        hub.update_scalar("train/aqr/bias_scale", self.attempt + step / 100)
        return {"loss_cls": ((out - y) ** 2).mean()}


class ToyNuScenesMetric(BaseMetric):
    default_prefix = "NuScenes metric"

    def __init__(self, attempt: int, test: bool = False) -> None:
        super().__init__()
        self.attempt, self.test = attempt, test

    def process(self, data_batch: Any, data_samples: Any) -> None:
        self.results.append(len(data_samples))

    def compute_metrics(self, results: list) -> dict[str, float]:
        if self.test:
            values = TEST_VALUES
        else:
            epoch = MessageHub.get_current_instance().get_info("epoch") + 1
            values = metric_values(epoch, self.attempt)
        return {f"pred_instances_3d_NuScenes/{k}": v for k, v in values.items()}


def _loader() -> dict[str, Any]:
    data = [{"x": torch.tensor([float(i), 1.0]), "y": torch.tensor(float(i))} for i in range(8)]
    return {
        "dataset": data,
        "sampler": {"type": "DefaultSampler", "shuffle": False},
        "batch_size": 2,
        "collate_fn": {"type": "default_collate"},
    }


def _runner(work_dir: Path, attempt: int, name: str, **kwargs: Any) -> Runner:
    time.sleep(1.1)  # mmengine names a start's folder by the second
    return Runner(
        model=ToyDetector(attempt),
        work_dir=str(work_dir),
        experiment_name=name,
        default_hooks={"logger": {"type": "LoggerHook", "interval": 1}},
        **kwargs,
    )


def _train(work_dir: Path, attempt: int, resume: bool) -> None:
    _runner(
        work_dir,
        attempt,
        f"train-{attempt}-{work_dir.name}",
        train_dataloader=_loader(),
        val_dataloader=_loader(),
        train_cfg={"by_epoch": True, "max_epochs": 3, "val_interval": 1},
        val_cfg={},
        val_evaluator=[ToyNuScenesMetric(attempt)],
        optim_wrapper={"optimizer": {"type": "SGD", "lr": 0.01}},
        resume=resume,
    ).train()


@pytest.fixture(scope="module")
def work_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`resumed`: trained to epoch 3, its epoch-3 checkpoint lost, resumed from epoch 2
    (two timestamp folders that overlap on epoch 3). `tested`: a copy plus a test run."""
    base = tmp_path_factory.mktemp("work_dirs")
    resumed = base / "resumed"
    with pytest.MonkeyPatch.context() as patch:
        # torch >= 2.6 loads weights_only by default, which mmengine 0.10's resume breaks on.
        patch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
        _train(resumed, attempt=1, resume=False)
        (resumed / "epoch_3.pth").unlink()
        (resumed / "last_checkpoint").write_text(str(resumed / "epoch_2.pth"))
        _train(resumed, attempt=2, resume=True)
        tested = base / "tested"
        shutil.copytree(resumed, tested)
        _runner(
            tested,
            2,
            "test",
            test_dataloader=_loader(),
            test_cfg={},
            test_evaluator=[ToyNuScenesMetric(2, test=True)],
            load_from=str(tested / "epoch_2.pth"),
        ).test()
    return {"resumed": resumed, "tested": tested}


def _register(root: Path, run_id: str, work_dir: Path) -> Path:
    run_dir = root / "toy" / "runs" / run_id
    run_dir.mkdir(parents=True)
    record = {"run_id": run_id, "study": "toy", "variant": "baseline", "sweep": None, "seed": 0}
    record |= {"work_dir": str(work_dir), "status": "done"}
    (run_dir / "run.yaml").write_text(yaml.safe_dump(record))
    return run_dir


@pytest.fixture
def collected(work_dirs: dict[str, Path], tmp_path: Path) -> dict[str, dict[str, Any]]:
    root = tmp_path / "results"
    dirs = {name: _register(root, name, path) for name, path in work_dirs.items()}
    (root / "toy" / "runs" / "planned").mkdir()
    (root / "toy" / "runs" / "planned" / "run.yaml").write_text(
        yaml.safe_dump(
            {"run_id": "planned", "work_dir": str(tmp_path / "none"), "status": "planned"}
        )
    )
    outcomes = {o.run_dir.name: o for o in collect(root, "toy")}
    assert outcomes["planned"].state == "skipped"
    assert all(outcomes[name].state == "collected" for name in dirs)
    return {name: json.loads((d / "metrics.json").read_text()) for name, d in dirs.items()}


def _same(a: float, b: float) -> bool:
    return a == pytest.approx(b) or (math.isnan(a) and math.isnan(b))


def test_resumed_run_has_two_folders_and_the_later_one_wins(
    work_dirs: dict[str, Path], collected: dict[str, dict[str, Any]]
) -> None:
    metrics = collected["resumed"]
    folders = metrics["source"]["folders"]
    assert len(folders) == 2
    assert metrics["epoch_last"] == 3
    assert metrics["epoch_best"] == 2  # NDS peaks at epoch 2
    assert metrics["source"]["metrics"] == {
        "from": "val",
        "file": f"{folders[1]}/vis_data/scalars.json",
        "epoch": 3,
    }
    expected = metric_values(3, attempt=2)  # not attempt 1's epoch 3
    assert metrics["metrics"] == pytest.approx(
        {k: expected[k] for k in ("mAP", "NDS", "mATE")} | {"mAVE": math.nan}, nan_ok=True
    )


def test_per_class_values_and_ap_mean_over_distances(collected: dict[str, dict[str, Any]]) -> None:
    metrics = collected["resumed"]
    expected = metric_values(3, attempt=2)
    assert list(metrics["per_class_ap"]) == list(CLASSES)
    for cls in CLASSES:
        aps = [expected[f"{cls}_AP_dist_{d}"] for d in ("0.5", "1.0", "2.0", "4.0")]
        assert metrics["per_class_ap"][cls] == pytest.approx(sum(aps) / 4)
        assert metrics["per_class"][cls]["AP_dist_2.0"] == pytest.approx(aps[2])
        assert _same(metrics["per_class"][cls]["attr_err"], expected[f"{cls}_attr_err"])


def test_values_match_what_the_logs_hold(
    work_dirs: dict[str, Path], collected: dict[str, dict[str, Any]]
) -> None:
    """Cross-check against scalars.json read line by line, independently of the merge."""
    metrics = collected["resumed"]
    last_folder = work_dirs["resumed"] / metrics["source"]["folders"][1]
    lines = read_json_lines(last_folder / "vis_data" / "scalars.json")
    val = [line for line in lines if "iter" not in line][-1]
    assert val["step"] == 3
    assert metrics["metrics"]["NDS"] == val[f"{METRIC_PREFIX}NDS"]
    assert math.isnan(val[f"{METRIC_PREFIX}mAVE"])
    train = [line for line in lines if "iter" in line]
    assert metrics["aqr"] == {
        "aqr/bias_scale": train[-1]["aqr/bias_scale"],
        "aqr/lidar_w_mean": 0.5,
    }
    assert metrics["aqr"]["aqr/bias_scale"] == pytest.approx(2 + 3 * ITERS_PER_EPOCH / 100)


def test_cost_and_nan_events_from_merged_training_lines(
    work_dirs: dict[str, Path], collected: dict[str, dict[str, Any]]
) -> None:
    metrics = collected["resumed"]
    folders = [work_dirs["resumed"] / f for f in metrics["source"]["folders"]]
    first = read_json_lines(folders[0] / "vis_data" / "scalars.json")
    assert math.isnan(next(x for x in first if x.get("iter") == 10)["aqr/lidar_w_mean"])
    by_step: dict[int, dict[str, Any]] = {}
    for folder in folders:
        for line in read_json_lines(folder / "vis_data" / "scalars.json"):
            if "iter" in line:
                by_step[line["step"]] = line
    assert sorted(by_step) == list(range(1, 3 * ITERS_PER_EPOCH + 1))
    times = [by_step[s]["time"] for s in sorted(by_step)]
    assert metrics["cost"]["iters"] == 3 * ITERS_PER_EPOCH
    assert metrics["cost"]["sec_per_iter"] == pytest.approx(statistics.median(times))
    assert metrics["cost"]["train_time_s"] == pytest.approx(sum(times))
    assert metrics["cost"]["peak_memory_mb"] is None  # CPU: mmengine logs no memory
    # step 10's NaN was logged by the interrupted attempt and replaced by the resumed one
    assert metrics["nan_events"] == [{"step": NAN_STEP, "epoch": 2, "keys": ["aqr/lidar_w_mean"]}]


def test_test_run_supplies_the_numbers_with_its_checkpoint(
    collected: dict[str, dict[str, Any]],
) -> None:
    metrics = collected["tested"]
    assert metrics["metrics"] == pytest.approx(TEST_VALUES)
    where = metrics["source"]["metrics"]
    assert where["from"] == "test"
    assert where["checkpoint"].endswith("epoch_2.pth")
    assert where["epoch"] == 2
    assert metrics["epoch_last"] == 3  # still the training's last validation
    assert metrics["source"]["last_checkpoint"].endswith("epoch_3.pth")


def test_cli_collect(work_dirs: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "results"
    run_dir = _register(root, "resumed", work_dirs["resumed"])
    result = CliRunner().invoke(app, ["collect", "--study", "toy", "--results-root", str(root)])
    assert result.exit_code == 0, result.output
    assert "collected toy/resumed: mAP 0.3200 NDS 0.5000 (val epoch 3" in result.output
    assert (run_dir / "metrics.json").is_file()


def test_cli_collect_reports_a_corrupt_log_and_exits_2(tmp_path: Path) -> None:
    work_dir = tmp_path / "work"
    scalars = work_dir / "20240101_000000" / "vis_data" / "scalars.json"
    scalars.parent.mkdir(parents=True)
    scalars.write_text('{"step": 1, "iter": 1}\n{not json\n{"step": 2, "iter": 2}\n')
    root = tmp_path / "results"
    _register(root, "broken", work_dir)
    result = CliRunner().invoke(app, ["collect", "--results-root", str(root)])
    assert result.exit_code == 2
    assert f"{scalars}:2: not a JSON line" in result.output


def test_a_partial_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "scalars.json"
    path.write_text('{"step": 1, "iter": 1}\n{"step": 2, "it')
    assert read_json_lines(path) == [{"step": 1, "iter": 1}]


SMOKE_CONFIG = (
    Path(__file__).resolve().parents[1]
    / "plugin"
    / "configs"
    / "cmt_lc_pillar100_r18_128x64_1xb2-smoke_synth-nus.py"
)


def _train_smoke(data_root: Path, work_dir: Path, *extra: str) -> None:
    env = {**os.environ, "AQR_DATA_ROOT": f"{data_root}/"}
    command = [
        sys.executable,
        "-m",
        "aqr_exp.train",
        str(SMOKE_CONFIG),
        "--work-dir",
        str(work_dir),
    ]
    done = subprocess.run([*command, *extra], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_collect_a_resumed_smoke_training_of_the_plugin(tmp_path: Path) -> None:
    """The real plugin, the real NuScenesMetric: one epoch, then resumed for a second."""
    data_root = tmp_path / "synth-nus"
    generate(SynthSpec(train_scenes=1, val_scenes=1, samples_per_scene=4), data_root)
    work_dir = tmp_path / "work"
    _train_smoke(data_root, work_dir, "--checkpoint-interval", "1")
    time.sleep(1.1)
    _train_smoke(data_root, work_dir, "--resume", "--cfg-options", "train_cfg.max_epochs=2")
    root = tmp_path / "results"
    run_dir = _register(root, "smoke", work_dir)
    (outcome,) = collect(root, "toy")
    assert outcome.state == "collected", outcome.detail
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["source"]["folders"]) == 2
    assert metrics["epoch_last"] == 2
    assert set(metrics["metrics"]) == {"mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE"}
    assert list(metrics["per_class_ap"]) == list(CLASSES)
    last = metrics["source"]["folders"][1]
    val = [
        x for x in read_json_lines(work_dir / last / "vis_data" / "scalars.json") if "iter" not in x
    ]
    assert val[-1]["step"] == 2
    assert metrics["metrics"]["NDS"] == val[-1][f"{METRIC_PREFIX}NDS"]
    assert metrics["cost"]["iters"] > 0 and metrics["cost"]["sec_per_iter"] > 0
