"""Trackers: every run logs its losses and metrics to TensorBoard / MLflow / W&B through
mmengine's own backends, read back here with each library's own reader."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.toy.helpers import TOY_SPEC, cli, make_toy_data, toy_args, toy_importable

from aqr_exp import trackers
from aqr_exp.errors import AqrError


@pytest.fixture(autouse=True)
def _toy(monkeypatch: pytest.MonkeyPatch) -> None:
    toy_importable(monkeypatch)
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")  # no W&B login: offline


def _run_id(tmp_path: Path) -> str:
    (run_dir,) = (tmp_path / "results" / "toy-toy" / "runs").iterdir()
    return run_dir.name


def test_a_run_logs_loss_and_metrics_to_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = cli("run", "baseline", *toy_args(tmp_path))
    assert result.exit_code == 0, result.output
    run_id = _run_id(tmp_path)
    logdir = tmp_path / "work" / "toy-toy" / "tensorboard" / run_id
    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = events.Tags()["scalars"]
    losses = [event.value for event in events.Scalars("loss")]
    assert len(losses) == 12  # 3 epochs of 4 iterations, logged every iteration
    assert "lr" in tags and "mse" in tags
    assert [event.step for event in events.Scalars("mse")] == [3]  # validation after epoch 3
    assert (
        f"tensorboard --logdir {tmp_path / 'work' / 'toy-toy' / 'tensorboard'}"
        in cli("status", "--results-root", tmp_path / "results").stdout
    )


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="the mlflow extra")
def test_a_run_logs_to_mlflow_under_the_study(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    result = cli("run", "baseline", "--tracker", "mlflow", *toy_args(tmp_path))
    assert result.exit_code == 0, result.output
    run_id = _run_id(tmp_path)
    store = tmp_path / "work" / "toy-toy" / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("toy-toy")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == run_id
    assert run.data.tags["variant"] == "baseline" and run.data.tags["seed"] == "0"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 12
    assert [m.step for m in client.get_metric_history(run.info.run_id, "mse")] == [3]
    assert not (tmp_path / "work" / "toy-toy" / "tensorboard").exists()  # only the chosen


def _wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a W&B transaction log (.wandb): a 7-byte W&B header, then LevelDB's
    log format (32 KiB blocks of crc32, length, type, data; W&B ships no Python reader)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header: padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            yield pending
            pending = b""


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="the wandb extra")
def test_a_run_logs_to_wandb_offline(tmp_path: Path) -> None:
    from wandb.proto import wandb_internal_pb2

    args = toy_args(tmp_path)
    result = cli("run", "baseline", "--tracker", "wandb", *args)
    assert result.exit_code == 0, result.output
    run_id = _run_id(tmp_path)
    (offline,) = (tmp_path / "work" / "toy-toy" / "wandb").glob(f"offline-run-*-{run_id}")
    logged: dict[str, list[str]] = {}
    group = None
    for data in _wandb_records(offline / f"run-{run_id}.wandb"):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.HasField("run"):
            group = record.run.run_group
        for item in record.history.item:
            logged.setdefault(item.key or "/".join(item.nested_key), []).append(item.value_json)
    assert group == "baseline"
    assert len(logged["loss"]) == 12 and len(logged["mse"]) == 1
    assert "wandb: " in cli("status", "--results-root", tmp_path / "results").stdout


def test_unknown_and_missing_trackers_fail_at_plan_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    typo = cli("run", "baseline", "--tracker", "tensorbord", *toy_args(tmp_path))
    assert typo.exit_code == 2
    assert typo.stderr.splitlines() == [
        "error: --tracker: unknown tracker 'tensorbord' (known: tensorboard, mlflow, wandb, none)"
    ]
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        TOY_SPEC.read_text().replace("study: toy\n", "study: toy\ntrackers: [wandb, w]\n")
        .replace("config_dir: .", f"config_dir: {TOY_SPEC.parent}")
    )  # fmt: skip
    data = make_toy_data(tmp_path / "data")
    in_spec = cli("run", "baseline", "--spec", spec, "--data-root", data)
    assert in_spec.exit_code == 2
    assert in_spec.stderr.splitlines() == [
        f"error: {spec}: trackers: unknown tracker 'w' (known: tensorboard, mlflow, wandb, none)"
    ]
    monkeypatch.setitem(
        trackers.TRACKERS, "wandb", trackers.Tracker("wandb", ("no_such_module",), "wandb", "W")
    )
    with pytest.raises(AqrError, match=r"tracker 'wandb' needs no_such_module, not installed"):
        trackers.check_installed(["wandb"])
    assert not (tmp_path / "results").exists() and not (tmp_path / "work").exists()


def test_none_logs_to_no_tracker_and_trackers_never_change_run_ids(tmp_path: Path) -> None:
    plain = cli("run", "baseline", "--dry-run", "--tracker", "none", *toy_args(tmp_path))
    logged = cli("run", "baseline", "--dry-run", "--tracker", "mlflow", *toy_args(tmp_path))
    ids = [line.split()[0] for r in (plain, logged) for line in r.stdout.splitlines()
           if line.startswith("baseline-")]  # fmt: skip
    assert len(ids) == 2 and ids[0] == ids[1]
