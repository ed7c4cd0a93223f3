"""Progress from mmengine's log lines (what the live view and `status` show)."""

from __future__ import annotations

from pathlib import Path

from aqr_exp.progress import parse_progress, read_progress

EPOCH_LINES = [
    "11/25 08:54:48 - mmengine - INFO - Epoch(train)  [1][ 4/20]  lr: 1.0e-02  eta: 0:05:10  "
    "time: 0.2  data_time: 0.01  memory: 0  loss: 3.4632  loss_cls: 1.2",
    "11/25 08:54:48 - mmengine - INFO - Saving checkpoint at 1 epochs",
    "11/25 08:54:49 - mmengine - INFO - Epoch(train)  [2][10/20]  lr: 1.0e-02  eta: 0:04:00  "
    "time: 0.2  data_time: 0.01  memory: 0  loss: nan  loss_cls: nan",
    "11/25 08:54:50 - mmengine - INFO - Epoch(val) [2][5/6]    eta: 0:00:01  time: 0.1",
]


def test_epoch_based_progress_counts_iterations_over_epochs() -> None:
    progress = parse_progress(EPOCH_LINES, ("epoch", 6))
    assert progress is not None
    assert (progress.iteration, progress.total, progress.epoch) == (30, 120, 2)
    assert progress.eta == "0:04:00" and progress.loss != progress.loss  # NaN
    assert progress.fraction == 0.25


def test_iteration_based_progress_and_unknown_total() -> None:
    line = "Iter(train) [ 150/1000]  lr: 1e-3  eta: 1:00:00  time: 1.0  loss: 0.5"
    progress = parse_progress([line])
    assert progress is not None and (progress.iteration, progress.total) == (150, 1000)
    assert parse_progress(EPOCH_LINES[:1]).total is None  # max_epochs not given


def test_no_training_line_yet(tmp_path: Path) -> None:
    assert read_progress(tmp_path / "absent.log") is None
    log = tmp_path / "train.log"
    log.write_text("=== starting\nloading annotations\n")
    assert read_progress(log) is None
    log.write_text("\n".join(EPOCH_LINES))
    assert read_progress(log, ("epoch", 6)).iteration == 30
