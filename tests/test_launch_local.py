"""The local launcher with real toy trainings: concurrent sweeps, SIGKILL and resume,
failures with exit code and log tail, NaN, cancel, and the detached pool."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import yaml
from fixtures.toy.helpers import cli, make_toy_data, toy_args, toy_importable, wait_for

from aqr_exp import registry
from aqr_exp.errors import AqrError
from aqr_exp.launch import local
from aqr_exp.launch.base import TrainJob
from aqr_exp.launch.lifecycle import failure_reason
from aqr_exp.launch.local import LocalHandle, LocalLauncher, free_port


@pytest.fixture(autouse=True)
def _toy(monkeypatch: pytest.MonkeyPatch) -> None:
    toy_importable(monkeypatch)


def _records(tmp_path: Path) -> dict[str, registry.RunRecord]:
    records = [registry.read(d) for d in registry.runs_of(tmp_path / "results")]
    return {record.run_id: record for record in records if record is not None}


def _by_label(records: dict[str, registry.RunRecord]) -> dict[str, registry.RunRecord]:
    def label(record: registry.RunRecord) -> str:
        return record.variant + (f"={record.sweep['value']}" if record.sweep else "")

    return {label(record): record for record in records.values()}


def test_sweep_with_two_values_and_two_concurrent_runs(tmp_path: Path) -> None:
    result = cli("sweep", "window_size", "--jobs", "2", *toy_args(tmp_path))
    assert result.exit_code == 0, result.output
    assert "local pool: 2 run(s) at a time, CPU" in result.stdout
    runs = _by_label(_records(tmp_path))
    assert sorted(runs) == ["baseline", "new_aqr=2", "new_aqr=3"]
    assert {record.status for record in runs.values()} == {"done"}
    for record in runs.values():
        assert record.exit_code == 0 and "aqr_exp.train" in record.command
        assert (Path(record.work_dir) / "epoch_3.pth").is_file()
    status = cli("status", "--results-root", tmp_path / "results")
    assert status.exit_code == 0 and status.stdout.split().count("done") == 3


def test_sigkill_is_interrupted_and_the_rerun_resumes_it(tmp_path: Path) -> None:
    args = toy_args(tmp_path)
    sweep = ["sweep", "model.step_time", "--values", "0.0,0.6", "--jobs", "3"]
    started = cli(*sweep, "--detach", *args)
    assert started.exit_code == 0, started.output
    assert "in the background" in started.stdout

    def slow() -> registry.RunRecord | None:
        return _by_label(_records(tmp_path)).get("baseline=0.6")

    def checkpointed() -> bool:
        record = slow()
        return (
            bool(record and record.status == "running")
            and (Path(record.work_dir) / "epoch_1.pth").is_file()
        )

    wait_for(checkpointed, 120, "the slow run's first checkpoint")
    os.kill(slow().launcher["pid"], signal.SIGKILL)
    wait_for(lambda: all(r.status in ("done", "interrupted") for r in _records(tmp_path).values())
             and len(_records(tmp_path)) == 3, 120, "the pool to finish")  # fmt: skip
    killed = slow()
    assert killed.status == "interrupted" and killed.signal == "SIGKILL"
    assert "killed by SIGKILL" in killed.reason
    status = cli("status", "--results-root", tmp_path / "results")
    assert "interrupted" in status.stdout
    finished = {k: v for k, v in _by_label(_records(tmp_path)).items() if k != "baseline=0.6"}
    assert {r.status for r in finished.values()} == {"done"}

    plan = cli(*sweep, "--dry-run", *args)
    assert " resume " in plan.stdout and plan.stdout.count(" skip ") == 2

    rerun = cli(*sweep, *args)
    assert rerun.exit_code == 0, rerun.output
    resumed = slow()
    assert resumed.status == "done"
    log = (Path(resumed.work_dir) / "train.log").read_text()
    assert "--resume: continuing from" in log and "resumed epoch:" in log
    attempts = sorted(p for p in Path(resumed.work_dir).iterdir() if (p / "vis_data").is_dir())
    first_iter = yaml.safe_load((attempts[-1] / "vis_data" / "scalars.json").open().readline())[
        "iter"
    ]
    assert len(attempts) == 2 and first_iter > 4  # continues after the first epoch (4 iterations)
    for label, before in finished.items():  # the finished runs were not rerun
        after = _by_label(_records(tmp_path))[label]
        assert after.started == before.started and after.finished == before.finished


def test_a_crash_is_failed_with_exit_code_and_log_tail(tmp_path: Path) -> None:
    result = cli("run", "crash", *toy_args(tmp_path))
    assert result.exit_code == 1
    (record,) = _records(tmp_path).values()
    assert record.status == "failed" and record.exit_code == 1
    assert record.reason == "training exited with code 1: RuntimeError: toy failure at iteration 2"
    assert any("toy failure at iteration 2" in line for line in record.log_tail)
    assert "failed" in result.stdout and "RuntimeError" in result.stdout


def test_a_nan_loss_fails_the_run_and_says_so(tmp_path: Path) -> None:
    args = toy_args(tmp_path)
    result = cli("run", "nan", *args)
    assert result.exit_code == 1
    (record,) = _records(tmp_path).values()
    assert record.status == "failed" and record.exit_code == 3
    assert record.reason.startswith("Non-finite loss at iteration 3 (epoch 1): loss=nan")
    again = cli("run", "nan", "--dry-run", *args)
    assert " skip " in again.stdout and "--retry-failed" in again.stdout
    retry = cli("run", "nan", "--retry-failed", "--dry-run", *args)
    assert " start " in retry.stdout


def test_cancel_stops_a_detached_run(tmp_path: Path) -> None:
    started = cli("run", "slow", "--detach", *toy_args(tmp_path))
    assert started.exit_code == 0, started.output
    wait_for(lambda: any(r.status == "running" for r in _records(tmp_path).values()), 60, "running")
    (record,) = _records(tmp_path).values()

    def shows_progress() -> bool:
        status = cli("status", "--results-root", tmp_path / "results").stdout
        return "running" in status and "/12 (epoch" in status and "ETA" in status

    wait_for(shows_progress, 60, "`status` to show the iteration count")
    result = cli("cancel", record.run_id[:12], "--results-root", tmp_path / "results")
    assert result.exit_code == 0 and f"cancelled {record.run_id}" in result.stdout
    assert not local.pid_alive(record.launcher["pid"])
    wait_for(lambda: registry.read(registry.runs_of(tmp_path / "results")[0]).exit_code is not None,
             30, "the pool to record the exit")  # fmt: skip
    final = registry.read(registry.runs_of(tmp_path / "results")[0])
    assert final.status == "cancelled" and final.signal == "SIGTERM"


def test_gpu_slots_ports_and_torchrun(tmp_path: Path) -> None:
    launcher = LocalLauncher(max_concurrent=8, gpus_per_run=2, gpu_ids=["0", "1", "2", "3"])
    assert launcher.max_concurrent == 2 and launcher.torchrun
    job = TrainJob("r", tmp_path / "run", tmp_path / "work")
    handle = LocalHandle(job, launcher)
    handle.gpus, handle.port = ["2", "3"], free_port(set())
    command, env = launcher._command(handle)
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["MASTER_PORT"] == str(handle.port)
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert "--nproc-per-node" in command and "pytorch" in command
    cpu = LocalLauncher(max_concurrent=2, gpus_per_run=0, gpu_ids=["0"], cpu_count=2)
    handle = LocalHandle(job, cpu)
    handle.port = 1234
    command, env = cpu._command(handle)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "1"
    assert command[1:3] == ["-m", "aqr_exp.train"]


def test_free_port_is_bindable_and_never_one_the_pool_holds() -> None:
    # `taken` holds every port but those divisible by 7: free_port must keep asking the OS
    # until it gets one of those (a free_port ignoring `taken` returns a taken port with
    # probability 6/7 each call). Each port is then bound and held, which fails if it was
    # in use, or if a later call hands out a port that is still held.
    allowed = set(range(7, 65536, 7))
    taken = set(range(1, 65536)) - allowed
    held: list[socket.socket] = []
    try:
        for _ in range(20):
            port = free_port(taken)
            assert port in allowed
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind(("127.0.0.1", port))  # OSError: the port was in use
            taken.add(port)
    finally:
        for sock in held:
            sock.close()


def test_too_many_gpus_per_run_is_a_clear_error() -> None:
    with pytest.raises(AqrError) as error:
        LocalLauncher(gpus_per_run=2, gpu_ids=["0"])
    assert str(error.value) == (
        "2 GPU(s) per run requested, 1 visible (set --gpus-per-run 0 to train on the CPU)"
    )


def test_failure_reason_prefers_the_exception_line() -> None:
    tail = ["Traceback (most recent call last):", "  File x", "ValueError: bad shape"]
    assert failure_reason(1, tail) == "training exited with code 1: ValueError: bad shape"
    assert failure_reason(3, ["... - ERROR - Non-finite loss at iteration 5: loss=inf"]) == (
        "Non-finite loss at iteration 5: loss=inf"
    )


def test_status_marks_a_run_of_a_vanished_pool_interrupted(tmp_path: Path) -> None:
    data = make_toy_data(tmp_path / "data")
    planned = cli("run", "baseline", "--dry-run", *toy_args(tmp_path, data))
    run_id = planned.stdout.split("baseline-s0-")[1].split()[0]
    run_dir = tmp_path / "results" / "toy-toy" / "runs" / f"baseline-s0-{run_id}"
    run_dir.mkdir(parents=True)
    record = registry.RunRecord(
        run_id=run_dir.name, study="toy-toy", variant="baseline", sweep=None, overrides={},
        seed=0, config="toy_config.py", work_dir=str(tmp_path / "w"), status="queued",
        launcher={"type": "local", "host": socket.gethostname(), "pid": 2**22 + 7, "job_id": None},
    )  # fmt: skip
    (run_dir / "run.yaml").write_text(record.to_yaml())
    status = cli("status", "--results-root", tmp_path / "results")
    assert "interrupted" in status.stdout and "is gone" in status.stdout
    assert registry.read(run_dir).status == "interrupted"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="PYTHONSAFEPATH needs Python >= 3.11")
def test_training_runs_the_installed_code_not_an_aqr_exp_folder_in_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoy = tmp_path / "cwd" / "aqr_exp"
    decoy.mkdir(parents=True)
    marker = tmp_path / "decoy-ran"
    (decoy / "__init__.py").write_text("")
    (decoy / "train.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(decoy.parent)
    result = cli("run", "baseline", *toy_args(tmp_path))
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    (record,) = _records(tmp_path).values()
    assert record.status == "done"
    work_log = (Path(record.work_dir) / "train.log").read_text()
    assert "Epoch(train)" in work_log
