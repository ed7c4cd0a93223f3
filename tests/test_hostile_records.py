"""Hostile and broken registry input (issue 24): a corrupt run.yaml or metrics.json costs
one warning naming the file while the rest of its study keeps working, and is never
rewritten; a second `run`/`sweep` on runs another process holds is one line, exit 2.

The commands run as the user runs them: the real CLI in a subprocess, which shows the
warnings (logging) and errors on its stderr."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.toy.helpers import (
    TOY_SPEC,
    cli,
    toy_args,
    toy_importable,
    toy_sweep_plan,
    wait_for,
)

from aqr_exp import execute, registry
from aqr_exp.launch.local import LocalLauncher, pid_alive
from aqr_exp.plan import Plan, Target, plan_variants
from aqr_exp.records import CorruptRecord
from aqr_exp.registry import read_metrics, read_run_record
from aqr_exp.spec import load_spec

STUDY = "hostile"


@pytest.fixture(autouse=True)
def _toy(monkeypatch: pytest.MonkeyPatch) -> None:
    toy_importable(monkeypatch)


def aqr_exp(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aqr_exp.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `root`: its bytes and modification time."""
    return {
        str(path.relative_to(root)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def warnings_naming(stderr: str, path: Path) -> list[str]:
    return [line for line in stderr.splitlines() if "WARNING" in line and str(path) in line]


def _record(run_id: str, work_root: Path, **fields: object) -> registry.RunRecord:
    return registry.RunRecord(
        run_id=run_id, study=STUDY, variant="baseline", sweep=None, overrides={}, seed=0,
        config="toy_config.py", work_dir=str(work_root / run_id), status="done", **fields,
    )  # fmt: skip


def _metrics(run_id: str) -> str:
    payload = {
        "run_id": run_id, "study": STUDY, "variant": "baseline", "sweep": None, "seed": 0,
        "source": {"metrics": {"from": "val", "epoch": 2}},
        "metrics": {"mAP": 0.5, "NDS": 0.6}, "per_class_ap": {"car": 0.5},
        "cost": {"sec_per_iter": 1.0}, "aqr": {},
    }  # fmt: skip
    return json.dumps(payload, indent=2)


def _broken_study(results: Path, work_root: Path) -> tuple[Path, dict[str, Path]]:
    """One good finished run beside runs broken in every way seen: the good run's dir and
    each broken file by what is wrong with it."""
    runs = results / STUDY / "runs"

    def write(run_id: str, run_yaml: str, metrics: str | None = None) -> Path:
        run_dir = runs / run_id
        run_dir.mkdir(parents=True)
        (run_dir / "run.yaml").write_text(run_yaml)
        if metrics is not None:
            (run_dir / "metrics.json").write_text(metrics)
        return run_dir

    good = write("good", _record("good", work_root).to_yaml(), _metrics("good"))
    text = _record("cut", work_root).to_yaml()
    quoted = text.index("created: '") + len("created: '2")
    lines = _record("missing", work_root).to_yaml().splitlines(keepends=True)
    missing = "".join(lines[:3])  # cut at a line end: run_id, study, variant and no more
    broken = {
        "truncated": write("cut", text[:quoted]) / "run.yaml",  # an unterminated string
        "invalid": write("invalid", "run_id: invalid\nstatus: [done\n") / "run.yaml",
        "empty": write("empty", "") / "run.yaml",
        "missing fields": write("missing", missing) / "run.yaml",
        "wrong type": write(
            "typed", _record("typed", work_root).to_yaml().replace("sweep: null", "sweep: 5")
        )
        / "run.yaml",
        "half-written metrics": write(
            "half", _record("half", work_root).to_yaml(), _metrics("half")[:120]
        )
        / "metrics.json",
    }
    return good, broken


def test_one_corrupt_record_is_one_warning_and_the_study_keeps_working(tmp_path: Path) -> None:
    results, work = tmp_path / "results", tmp_path / "work"
    good, broken = _broken_study(results, work)
    bad_dirs = {path.parent for path in broken.values()}
    before = {d: snapshot(d) for d in bad_dirs}
    run_yaml_broken = [path for path in broken.values() if path.name == "run.yaml"]
    root = ["--results-root", results]

    status = aqr_exp("status", *root)
    assert status.returncode == 0, status.stderr
    assert " good " in status.stdout and " half " in status.stdout  # run.yaml of half is sound
    for path in run_yaml_broken:
        assert len(warnings_naming(status.stderr, path)) == 1, (path, status.stderr)
    assert "Traceback" not in status.stderr

    compared = aqr_exp("compare", "--study", STUDY, "--resamples", "0", *root)
    assert compared.returncode == 0, compared.stderr
    assert re.search(r"^baseline\s+1\s+0\.5000", compared.stdout, re.M)  # the good run alone
    for path in broken.values():
        assert len(warnings_naming(compared.stderr, path)) == 1, (path, compared.stderr)

    report = aqr_exp("report", "--study", STUDY, "--resamples", "0", *root)
    assert report.returncode == 0, report.stderr
    text = (results / STUDY / "report.md").read_text()
    assert "good" in text and "left out 6 runs with a corrupt file" in text
    assert all(len(warnings_naming(report.stderr, path)) == 1 for path in broken.values())

    collected = aqr_exp("collect", "--study", STUDY, *root)
    assert collected.returncode == 0, collected.stderr
    assert "skipped   hostile/good" in collected.stdout
    assert "skipped   hostile/half" in collected.stdout  # its work dir has no results yet
    for path in run_yaml_broken:
        assert len(warnings_naming(collected.stderr, path)) == 1, (path, collected.stderr)

    (cut,) = warnings_naming(status.stderr, broken["truncated"])  # what is wrong, and where
    assert re.search(re.escape(str(broken["truncated"])) + r":\d+:\d+: malformed YAML", cut)
    (missing,) = warnings_naming(status.stderr, broken["missing fields"])
    assert "missing fields sweep, overrides, seed, config, work_dir, status" in missing
    assert "delete" in missing and str(broken["missing fields"].parent) in missing
    (typed,) = warnings_naming(status.stderr, broken["wrong type"])
    assert "sweep is int 5, expected a mapping" in typed
    (half,) = warnings_naming(compared.stderr, broken["half-written metrics"])
    assert "not valid JSON" in half and "aqr-exp collect" in half
    assert {d: snapshot(d) for d in bad_dirs} == before  # nothing rewritten, nothing added

    # A command about one named corrupt run: one line naming the file, exit 2.
    for args, path in (
        (["status", "invalid"], broken["invalid"]),
        (["cancel", "empty"], broken["empty"]),
        (["compare", "half"], broken["half-written metrics"]),
    ):
        result = aqr_exp(*args, *root)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"error: {path}"), line
    assert {d: snapshot(d) for d in bad_dirs} == before
    assert (good / "metrics.json").read_text() == _metrics("good")


def test_the_planner_does_not_overwrite_a_corrupt_record_of_its_run(tmp_path: Path) -> None:
    args = toy_args(tmp_path)
    target = Target(tmp_path / "results", tmp_path / "work", data_root=tmp_path / "data")
    (run,) = plan_variants(load_spec(TOY_SPEC), ["baseline"], target).runs
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "run.yaml").write_text("run_id: [half a list\n")
    before = snapshot(tmp_path / "results")

    dry = aqr_exp("run", "baseline", "--dry-run", *args)
    assert dry.returncode == 0, dry.stderr
    assert " blocked " in dry.stdout and "0 of 1 runs would start" in dry.stdout
    assert len(warnings_naming(dry.stderr, run.run_dir / "run.yaml")) == 1

    real = aqr_exp("run", "baseline", *args)
    assert real.returncode == 2
    (line,) = real.stderr.splitlines()
    assert line.startswith("error: 1 run(s) of this plan cannot start, nothing was started: ")
    assert f"{run.run_dir / 'run.yaml'}:2:1: malformed YAML" in line
    assert snapshot(tmp_path / "results") == before
    assert not (tmp_path / "work").exists()


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    return toy_sweep_plan(tmp_path)


def test_a_run_claimed_by_another_process_is_neither_reset_nor_claimed_again(
    plan: Plan,
) -> None:
    """Two commands that decided at once: the later claim loses, cleanly."""
    first, second = plan.runs[:2]
    job = execute.prepare(plan, first, fresh=False)
    holder = subprocess.Popen(["sleep", "120"])  # stands for the other command's live pool
    try:
        info = {"type": "local", "host": socket.gethostname(), "pid": holder.pid, "job_id": None}
        registry.claim(job.run_dir, info)
        first.work_dir.mkdir(parents=True)
        (first.work_dir / "epoch_1.pth").write_text("the other run's checkpoint")
        held = f"{first.run_id} (queued, pid {holder.pid} on {socket.gethostname()})"
        with pytest.raises(registry.RunHeld, match=re.escape(f"another process holds {held}:")):
            execute.prepare(plan, first, fresh=True)  # --force would delete its work dir
        assert (first.work_dir / "epoch_1.pth").is_file()

        launcher = LocalLauncher(max_concurrent=1, gpus_per_run=0, gpu_ids=[])
        mine = execute.prepare(plan, second, fresh=False)
        with pytest.raises(registry.RunHeld, match="another process holds"):
            launcher.submit_all([mine, job])
        given_back = registry.read(mine.run_dir)
        assert given_back.status == "cancelled" and "not started" in given_back.reason
        assert launcher.queue == []
        kept = registry.read(job.run_dir)
        assert kept.status == "queued" and kept.launcher["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_second_sweep_on_runs_another_process_holds_says_which_and_exits_2(
    tmp_path: Path,
) -> None:
    args = toy_args(tmp_path)
    sweep = ["sweep", "model.step_time", "--values", "5.0", "--jobs", "2"]
    started = cli(*sweep, "--detach", *args)
    assert started.exit_code == 0, started.output
    results = tmp_path / "results"

    def records() -> list[registry.RunRecord]:
        return [registry.read(run_dir) for run_dir in registry.runs_of(results)]

    def slow() -> registry.RunRecord | None:
        return next((r for r in records() if r.sweep), None)

    try:
        wait_for(
            lambda: (
                [r.status for r in records() if not r.sweep] == ["done"]
                and (slow() is not None and slow().status == "running")
            ),
            180,
            "the baseline to finish and the slow run to train",
        )
        holder = slow()
        before = snapshot(results)
        second = aqr_exp(*sweep, *args)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "Traceback" not in second.stderr
        (line,) = second.stderr.splitlines()
        pid, host = holder.launcher["pid"], socket.gethostname()
        assert line.startswith("error: another process holds ")
        assert f"{holder.run_id} (running, pid {pid} on {host})" in line
        assert "aqr-exp cancel" in line
        assert snapshot(results) == before
        assert slow().status == "running" and pid_alive(pid)
    finally:
        cancel = cli("cancel", "--all", "--results-root", results)
        assert cancel.exit_code == 0, cancel.output
        wait_for(
            lambda: (
                all(r.status in registry.FINAL_STATES for r in records())
                and all(r.exit_code is not None for r in records() if r.sweep)
            ),
            60,
            "the pool to record the cancelled run",
        )


def test_status_of_a_study_with_only_a_corrupt_run_says_so_without_a_traceback(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "results" / STUDY / "runs" / "bomb"
    run_dir.mkdir(parents=True)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    (run_dir / "run.yaml").write_text(bomb)
    result = aqr_exp("status", "--results-root", tmp_path / "results")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    (warning,) = warnings_naming(result.stderr, run_dir / "run.yaml")
    assert "aliases" in warning


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("status: null\n", "status None is none of planned, queued"),
        ("status: finished\n", "status 'finished' is none of"),
        ("colour: red\nstatus: done\n", "unknown fields colour"),
        ("status: done\nstatus: failed\n", "duplicate key 'status'"),
        ("- status: done\n", "expected a mapping of run fields, got list"),
        ("status: done\nseed: true\n", "seed is bool True, expected int"),
        ("status: done\nlauncher: pid 5\n", "launcher is str 'pid 5', expected a mapping"),
    ],
)
def test_the_run_yaml_reader_names_what_is_wrong(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(CorruptRecord, match=re.escape(problem)) as raised:
        read_run_record(tmp_path)
    assert str(raised.value).startswith(str(tmp_path / "run.yaml"))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ("[1, 2]", "expected a JSON object of metrics, got list"),
        ('{"metrics": [0.5]}', "metrics is list, expected an object"),
        ('{"metrics": {"mAP": "0.5"}}', "metrics.mAP is '0.5', expected a number"),
        ('{"metrics": {"mAP": 0.5', "not valid JSON"),
    ],
)
def test_the_metrics_reader_names_what_is_wrong(tmp_path: Path, payload: str, problem: str) -> None:
    (tmp_path / "metrics.json").write_text(payload)
    with pytest.raises(CorruptRecord, match=re.escape(problem)):
        read_metrics(tmp_path)
