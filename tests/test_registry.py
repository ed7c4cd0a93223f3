"""The run registry: atomic status files, the state machine, dead-process detection,
and what a re-run does with each status."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from fixtures.toy.helpers import toy_sweep_plan

from aqr_exp import execute, registry
from aqr_exp.launch import backends
from aqr_exp.plan import Plan


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    return toy_sweep_plan(tmp_path)


def test_prepare_writes_config_and_run_yaml(plan: Plan) -> None:
    run = plan.runs[1]
    job = execute.prepare(plan, run, fresh=False)
    assert job.config_path.read_text().startswith("custom_imports")
    record = yaml.safe_load((run.run_dir / "run.yaml").read_text())
    assert list(record) == [f.name for f in dataclasses.fields(registry.RunRecord)]
    assert record["status"] == "planned"
    assert record["sweep"] == {"param": "window_size", "key": run.sweep.key, "value": 2}
    assert record["overrides"]["model.pts_bbox_head.aqr.window_size"] == 2
    assert record["config"] == "toy_config.py" and record["data_root"] == str(plan.data_root)
    assert job.train_len == ("epoch", 3)
    assert [p.name for p in run.run_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_state_machine_allows_only_forward_moves(plan: Plan) -> None:
    run_dir = execute.prepare(plan, plan.runs[0], fresh=False).run_dir
    for status in ("queued", "running", "done"):
        registry.transition(run_dir, status)
    with pytest.raises(registry.TransitionError, match="done → running"):
        registry.transition(run_dir, "running")
    assert registry.read(run_dir).status == "done"


def _finished_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_running_run_whose_process_is_gone_is_interrupted(plan: Plan) -> None:
    run_dir = execute.prepare(plan, plan.runs[0], fresh=False).run_dir
    registry.transition(run_dir, "queued")
    launcher = {
        "type": "local",
        "host": socket.gethostname(),
        "pid": _finished_pid(),
        "job_id": None,
    }
    registry.transition(run_dir, "running", launcher=launcher)
    assert backends.observe(registry.read(run_dir))[0] == "interrupted"
    assert registry.read(run_dir).status == "running"  # observing writes nothing
    record = backends.reconcile(run_dir)
    assert record.status == "interrupted" and "is gone" in record.reason
    assert registry.read(run_dir).status == "interrupted"


def test_a_live_process_stays_running(plan: Plan) -> None:
    run_dir = execute.prepare(plan, plan.runs[0], fresh=False).run_dir
    registry.transition(run_dir, "queued")
    launcher = {"type": "local", "host": socket.gethostname(), "pid": os.getpid(), "job_id": None}
    registry.transition(run_dir, "running", launcher=launcher)
    assert backends.reconcile(run_dir).status == "running"


def _actions(plan: Plan, **flags: bool) -> list[str]:
    return [step.action for step in execute.decide(plan, **flags)]


def test_decide_skips_done_resumes_interrupted_and_retries_failed_on_request(plan: Plan) -> None:
    done, failed, interrupted = plan.runs
    for run, final in ((done, "done"), (failed, "failed"), (interrupted, "interrupted")):
        run_dir = execute.prepare(plan, run, fresh=False).run_dir
        registry.transition(run_dir, "queued")
        registry.transition(run_dir, "running")
        registry.transition(run_dir, final, reason="exit 1" if final == "failed" else None)
    interrupted.work_dir.mkdir(parents=True)
    (interrupted.work_dir / "last_checkpoint").write_text("epoch_1.pth")
    assert _actions(plan) == ["skip", "skip", "resume"]
    assert _actions(plan, retry_failed=True) == ["skip", "start", "resume"]
    assert _actions(plan, force=True) == ["rerun", "rerun", "rerun"]
    assert "--retry-failed" in execute.decide(plan)[1].note


def test_force_deletes_the_work_dir(plan: Plan) -> None:
    run = plan.runs[0]
    run.work_dir.mkdir(parents=True)
    (run.work_dir / "epoch_1.pth").write_text("old")
    execute.prepare(plan, run, fresh=True)
    assert not run.work_dir.exists()
