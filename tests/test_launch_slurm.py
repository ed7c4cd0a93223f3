"""The Slurm launcher: generated scripts checked as text, bad options, Slurm's view
merged into a run's status, and real jobs on a real single-node Slurm started by
the tests (a smoke sweep, cancel, requeue with resume)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import slurm_cluster
import yaml
from fixtures.toy.helpers import cli, nothing_written, toy_args, toy_importable, wait_for

from aqr_exp import registry
from aqr_exp.errors import AqrError
from aqr_exp.launch import backends, slurmctl
from aqr_exp.launch.base import TrainJob
from aqr_exp.launch.slurm import (
    JOB_ENTRY,
    array_script,
    directives,
    log_pattern,
    run_script,
    slurm_view,
)
from aqr_exp.launch.slurm_job import slurm_job_id, training_command, training_env
from aqr_exp.spec import SlurmSettings

SMOKE_SPEC = Path(__file__).parent / "fixtures" / "smoke_spec.yaml"


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurm_cluster.SlurmCluster]:
    """A real Slurm for the session; CI sets AQR_REQUIRE_SLURM so it never skips there."""
    why = slurm_cluster.missing()
    if why is not None:
        if os.environ.get("AQR_REQUIRE_SLURM"):
            pytest.fail(f"AQR_REQUIRE_SLURM is set, but {why}")
        pytest.skip(why)
    cluster = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    if previous is None:
        del os.environ["SLURM_CONF"]
    else:
        os.environ["SLURM_CONF"] = previous
    cluster.stop()


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    toy_importable(monkeypatch)


def _records(results: Path) -> list[registry.RunRecord]:
    return [record for d in registry.runs_of(results) if (record := registry.read(d)) is not None]


def _label(record: registry.RunRecord) -> str:
    return record.variant + (f"={record.sweep['value']}" if record.sweep else "")


def _by_label(results: Path) -> dict[str, registry.RunRecord]:
    return {_label(record): record for record in _records(results)}


# ------------------------------------------------------------------ scripts as text


def test_sbatch_directives_of_a_multi_node_multi_gpu_run(tmp_path: Path) -> None:
    settings = SlurmSettings(
        partition="gpu", nodes=2, gpus_per_node=8, cpus_per_task=10, mem="480G",
        time="2-00:00:00", account="proj42", qos="high",
        extra_args=("--constraint=h100", "--exclusive"), requeue_before_s=600,
    )  # fmt: skip
    job = TrainJob("new_aqr-s0-abc", tmp_path / "run dir", tmp_path / "work")
    script = run_script(job, "aqr_cmt-full", settings)
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    sbatch = [line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH ")]
    for expected in [
        "--job-name=aqr-aqr_cmt-full-new_aqr-s0-abc",
        f"--output={tmp_path / 'work'}/slurm-%j.out",
        "--requeue",
        "--nodes=2",
        "--ntasks-per-node=8",
        "--gres=gpu:8",
        "--cpus-per-task=10",
        "--mem=480G",
        "--time=2-00:00:00",
        "--partition=gpu",
        "--account=proj42",
        "--qos=high",
        "--signal=B:USR1@600",
        "--constraint=h100",
        "--exclusive",
    ]:
        assert expected in sbatch, (expected, sbatch)
    assert not any(option.startswith("--array") for option in sbatch)
    assert lines[-1] == (
        f"exec env PYTHONSAFEPATH=1 {sys.executable} -m aqr_exp.launch.slurm_job "
        f"'{tmp_path / 'run dir'}'"
    )
    # 2 nodes x 8 GPUs: 16 tasks through srun and mmengine's slurm launcher.
    command = training_command(job, tasks=16)
    assert command[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert command[-2:] == ["--launcher", "slurm"] and "--resume" in command
    env = training_env({"SLURM_JOB_ID": "123", "SLURM_CPUS_PER_TASK": "10"}, tasks=16)
    assert env["MASTER_PORT"] == "20123" and env["OMP_NUM_THREADS"] == "10"
    assert training_command(job, tasks=1)[1:3] == ["-m", "aqr_exp.train"]


def test_a_cpu_run_asks_for_one_task_and_no_gpu(tmp_path: Path) -> None:
    sbatch = directives(SlurmSettings(), "name", "out")
    assert "#SBATCH --ntasks-per-node=1" in sbatch and "#SBATCH --nodes=1" in sbatch
    assert not any("gres" in line or "signal" in line or "time" in line for line in sbatch)


def test_a_sweep_is_one_job_array(tmp_path: Path) -> None:
    jobs = [TrainJob(f"r{i}", tmp_path / f"run{i}", tmp_path / f"w{i}") for i in range(3)]
    script = array_script(jobs, "s", SlurmSettings(max_running=2), tmp_path / "logs")
    assert "#SBATCH --array=0-2%2" in script
    assert f"#SBATCH --output={tmp_path / 'logs'}/%A_%a.out" in script
    body = script.split("RUN_DIRS=(")[1]
    assert [line.split()[0] for line in body.splitlines()[1:4]] == [
        str(job.run_dir) for job in jobs
    ]
    assert '"${RUN_DIRS[$SLURM_ARRAY_TASK_ID]}"' in script.splitlines()[-1]


def test_the_job_id_of_an_array_task() -> None:
    array = {"SLURM_JOB_ID": "17", "SLURM_ARRAY_JOB_ID": "15", "SLURM_ARRAY_TASK_ID": "2"}
    assert slurm_job_id(array) == "15_2"
    assert slurm_job_id({"SLURM_JOB_ID": "17"}) == "17"


# ------------------------------------------------------------------ Slurm's view of a run


def _job(state: str, reason: str = "None") -> slurmctl.SlurmJob:
    return slurmctl.SlurmJob("7_1", state, reason, "")


def test_slurm_view_of_requeued_gone_and_failed_jobs() -> None:
    launcher = {"type": "slurm", "job_id": "7_1", "slurm_log": "/w/7_1.out"}
    view = slurm_view
    status, reason = view("interrupted", "stopped", launcher, _job("PENDING", "BeginTime"))
    assert status == "queued" and "requeued by Slurm (job 7_1 PENDING (BeginTime))" in reason
    assert view("running", None, launcher, _job("PENDING"))[0] == "queued"
    assert view("running", None, launcher, _job("RUNNING")) == ("running", None)
    assert view("queued", None, launcher, _job("PENDING")) == ("queued", None)
    gone = view("running", None, launcher, None)
    assert gone[0] == "interrupted" and "is gone" in gone[1]
    failed = view("running", None, launcher, _job("NODE_FAIL"))
    assert (
        failed[0] == "interrupted" and "ended NODE_FAIL" in failed[1] and "/w/7_1.out" in failed[1]
    )
    assert view("done", None, launcher, None) == ("done", None)
    assert view("cancelled", "by me", launcher, _job("CANCELLED")) == ("cancelled", "by me")


def test_parse_queue_keeps_array_tasks_apart() -> None:
    jobs = slurmctl.parse_queue(
        "5_0|RUNNING|None|vm\n5_1|PENDING|Resources|\n6|CANCELLED|None|vm\n"
    )
    assert jobs["5_1"].describe() == "PENDING (Resources)" and jobs["5_0"].nodes == "vm"
    assert jobs["6"].state == "CANCELLED"


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--time", "4h"], "--time: Slurm time like 30 (minutes), 4:00:00 or 2-00:00:00, got '4h'"),
        (["--mem", "lots"], "--mem: Slurm memory like 64G or 500M"),
        (["--nodes", "2"], "--nodes: 2 nodes need gpus_per_node >= 1"),
        (["--sbatch-arg", "exclusive"], "--sbatch-arg: 'exclusive' is not an sbatch option"),
        (["--gpus-per-run", "1"], "--gpus-per-run is for the local launchers"),
    ],
)
def test_bad_slurm_options(tmp_path: Path, options: list[str], message: str) -> None:
    result = cli("sweep", "window_size", "--launcher", "slurm", *options, *toy_args(tmp_path))
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert nothing_written(tmp_path)


def test_a_slurm_option_without_the_slurm_launcher(tmp_path: Path) -> None:
    result = cli("run", "baseline", "--partition", "gpu", *toy_args(tmp_path))
    assert result.exit_code == 2
    assert "--partition is a Slurm option: add --launcher slurm" in result.stderr


def test_a_bad_slurm_block_in_the_spec_names_file_and_key(tmp_path: Path) -> None:
    spec = yaml.safe_load(
        (Path(__file__).parent / "fixtures" / "toy" / "toy_spec.yaml").read_text()
    )
    spec["config_dir"] = str(Path(__file__).parent / "fixtures" / "toy")
    spec["launcher"]["slurm"] = {"partiton": "gpu"}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = cli("plan", "--spec", path)
    assert result.exit_code == 2
    assert (
        f"{path}: launcher.slurm.partiton: unknown key; did you mean 'partition'?" in result.stderr
    )


def test_dry_run_needs_no_slurm_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dry run only prints the scripts: it works where sbatch is not installed."""
    no_slurm = tmp_path / "bin"
    no_slurm.mkdir()
    monkeypatch.setenv("PATH", str(no_slurm))
    assert not slurmctl.available()
    result = cli(
        "sweep", "window_size", "--launcher", "slurm", "--dry-run", "--partition", "debug",
        "--jobs", "2", *toy_args(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    headers = [line for line in result.stdout.splitlines() if line.startswith("--- ")]
    assert sum(line.endswith("/slurm.sbatch") for line in headers) == 3 and len(headers) == 4
    assert "#SBATCH --array=0-2%2" in result.stdout
    assert "#SBATCH --partition=debug" in result.stdout
    assert nothing_written(tmp_path)
    submit = cli("sweep", "window_size", "--launcher", "slurm", *toy_args(tmp_path))
    assert submit.exit_code == 2 and "sbatch/squeue not found" in submit.stderr
    assert submit.stderr.count("\n") == 1 and nothing_written(tmp_path)


_HOSTILE = ["gpu\ntouch injected", "$(touch injected)", "`touch injected`", "gpu injected"]


@pytest.mark.parametrize("value", _HOSTILE)
@pytest.mark.parametrize(
    ("flag", "prefix"),
    [
        ("--partition", ""), ("--account", ""), ("--qos", ""), ("--mem", "64G"),
        ("--time", "30"), ("--sbatch-arg", "--comment="),
    ],
)  # fmt: skip
def test_hostile_slurm_values_are_refused_at_plan_time(
    tmp_path: Path, flag: str, prefix: str, value: str
) -> None:
    """Nothing that could end a #SBATCH line (and start a shell command) reaches a script."""
    given = prefix + value
    result = cli("run", "baseline", "--launcher", "slurm", "--dry-run", flag, given,
                 *toy_args(tmp_path))  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {flag}: ") and repr(given) in result.stderr
    assert result.stderr.count("\n") == 1 and "#SBATCH" not in result.stdout
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("partition", "gpu\ntouch injected"),
        ("account", "$(touch injected)"),
        ("qos", "`touch injected`"),
        ("extra_args", ["--constraint=a100 --wrap=touch"]),
    ],
)
def test_hostile_slurm_values_in_the_spec_name_file_and_key(
    tmp_path: Path, key: str, value: object
) -> None:
    spec = yaml.safe_load(
        (Path(__file__).parent / "fixtures" / "toy" / "toy_spec.yaml").read_text()
    )
    spec["config_dir"] = str(Path(__file__).parent / "fixtures" / "toy")
    spec["launcher"]["slurm"] = {key: value}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = cli("run", "baseline", "--dry-run", "--spec", path, *toy_args(tmp_path)[2:])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    shown = repr(value[0] if isinstance(value, list) else value)
    assert f"{path}: launcher.slurm.{key}: {shown} is not" in result.stderr
    assert nothing_written(tmp_path)


def test_a_work_root_with_a_newline_is_refused_at_plan_time(tmp_path: Path) -> None:
    args = toy_args(tmp_path)
    work = tmp_path / "work\ntouch injected"
    args[args.index("--work-root") + 1] = work
    result = cli("run", "baseline", "--launcher", "slurm", "--dry-run", *args)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert f"--work-root {str(work)!r} has a control character" in result.stderr
    assert nothing_written(tmp_path) and not work.exists()


# The characters sbatch's #SBATCH parser treats specially, and a log file name pattern.
_ODD_DIR = "logs dir 'single' \"double\" #hash 100%j"


def test_paths_with_spaces_and_quotes_are_quoted_for_sbatch(tmp_path: Path) -> None:
    work = tmp_path / _ODD_DIR
    job = TrainJob("baseline-s0-abc", tmp_path / "run dir $(touch injected)", work)
    script = run_script(job, "toy-toy", SlurmSettings(extra_args=("--exclusive",)))
    output = next(line for line in script.splitlines() if line.startswith("#SBATCH --output="))
    escaped = str(work).replace("%", "%%").replace('"', '\\"')
    assert output == f'#SBATCH --output="{escaped}/slurm-%j.out"'
    assert "#SBATCH --exclusive" in script and "#SBATCH --requeue" in script
    # For bash every line but the last is a comment; the run dir is one inert word.
    lines = script.splitlines()
    assert all(line.startswith("#") or not line for line in lines[:-1])
    entry = f" -m {JOB_ENTRY} "
    assert lines[-1].endswith(entry + shlex.quote(str(job.run_dir)))
    probe = [*lines[:-1], "printf %s " + lines[-1].split(entry, 1)[1]]
    shell = subprocess.run(
        ["bash", "-c", "\n".join(probe)], cwd=tmp_path, capture_output=True, text=True
    )
    assert shell.stdout == str(job.run_dir) and not (tmp_path / "injected").exists()
    with pytest.raises(AqrError, match=r"sbatch --output .*'/x\\ny/slurm-%j.out' has a control"):
        run_script(TrainJob("r", tmp_path, Path("/x\ny")), "toy-toy", SlurmSettings())
    with pytest.raises(AqrError, match="has a backslash, which Slurm's log file names cannot"):
        run_script(TrainJob("r", tmp_path, Path("/x\\y")), "toy-toy", SlurmSettings())


# ------------------------------------------------------------------ a real Slurm


@pytest.mark.slurm
@pytest.mark.slow
def test_smoke_sweep_on_slurm_completes_and_is_collected(
    slurm: slurm_cluster.SlurmCluster, synth_root: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    result = cli(
        "sweep", "window_size", "--values", "5", "--spec", SMOKE_SPEC, "--data-root", synth_root,
        "--results-root", results, "--work-root", tmp_path / "work",
        "--launcher", "slurm", "--cpus-per-task", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Submitted 2 run(s) to slurm" in result.stdout
    records = _records(results)
    assert len(records) == 2 and {r.status for r in records} <= {"queued", "running", "planned"}
    array_ids = {r.launcher["job_id"].split("_")[0] for r in records}
    assert len(array_ids) == 1  # one job array
    for run_dir in registry.runs_of(results):
        assert (run_dir / "slurm.sbatch").read_text().startswith("#!/usr/bin/env bash")

    def finished() -> bool:
        states = {backends.reconcile(d).status for d in registry.runs_of(results)}
        assert not states & {"failed", "interrupted", "cancelled"}, _debug(results)
        return states == {"done"}

    wait_for(finished, 900, "the two smoke jobs to finish")

    def completed() -> bool:  # the jobs end just after they record done
        return cli("status", "--results-root", results).stdout.count("COMPLETED") == 2

    wait_for(completed, 60, "squeue to show both jobs COMPLETED")
    for record in _records(results):
        assert record.launcher["host"] and record.exit_code == 0
        assert "slurm job" in (Path(record.work_dir) / "train.log").read_text()
    collected = cli("collect", "--results-root", results)
    assert collected.exit_code == 0 and collected.stdout.count("collected") >= 2, collected.output
    compared = cli(
        "compare", "--study", "smoke-smoke", "--results-root", results, "--format", "csv"
    )
    assert compared.exit_code == 0, compared.output
    assert "NDS" in compared.stdout and "baseline" in compared.stdout and "5" in compared.stdout


def _debug(results: Path) -> str:
    parts = []
    for record in _records(results):
        parts.append(record.to_yaml())
        log = Path(record.work_dir) / "train.log"
        if log.is_file():
            parts.append("\n".join(log.read_text().splitlines()[-20:]))
        slurm_log = (record.launcher or {}).get("slurm_log")
        if slurm_log and Path(slurm_log).is_file():
            parts.append(Path(slurm_log).read_text()[-2000:])
    return "\n".join(parts)


@pytest.mark.slurm
def test_cancel_a_running_and_a_pending_job(
    slurm: slurm_cluster.SlurmCluster, toy: None, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    args = toy_args(tmp_path)
    sweep = cli(
        "sweep", "model.step_time", "--values", "2.0", "--variant", "slow", "--launcher", "slurm",
        "--cpus-per-task", "1", *args,
    )  # fmt: skip
    assert sweep.exit_code == 0, sweep.output
    later = cli("run", "crash", "--launcher", "slurm", "--sbatch-arg=--begin=now+1hour", *args)
    assert later.exit_code == 0, later.output

    def slow_running() -> bool:
        record = _by_label(results).get("slow=2.0")
        log = Path(record.work_dir) / "train.log" if record else None
        return bool(record and record.status == "running" and log.is_file()
                    and "Epoch(train)" in log.read_text())  # fmt: skip

    wait_for(slow_running, 120, "the slow run to train")
    slow, pending = _by_label(results)["slow=2.0"], _by_label(results)["crash"]
    assert slurmctl.queue()[pending.launcher["job_id"]].state == "PENDING"
    for record in (slow, pending):
        result = cli("cancel", record.run_id, "--results-root", results)
        assert result.exit_code == 0 and f"cancelled {record.run_id}" in result.stdout

    slow_dir = next(d for d in registry.runs_of(results) if d.name == slow.run_id)
    wait_for(lambda: registry.read(slow_dir).exit_code is not None, 60, "the job to record its end")
    assert registry.read(slow_dir).status == "cancelled"
    assert registry.read(slow_dir).signal == "SIGTERM"
    wait_for(lambda: _by_label(results)["baseline"].status == "done", 120, "the baseline")

    def both_cancelled() -> bool:  # Slurm shows COMPLETING until the job's processes are gone
        status = cli("status", "--results-root", results).stdout
        lines = {_line_label(line): line for line in status.splitlines()}
        return all(
            "cancelled" in lines[run_id] and "CANCELLED" in lines[run_id]
            for run_id in (slow.run_id, pending.run_id)
        )

    wait_for(both_cancelled, 60, "`status` to show both runs and jobs cancelled")
    assert not (Path(pending.work_dir) / "train.log").exists()  # never started
    again = cli("cancel", slow.run_id, "--results-root", results)
    assert again.exit_code == 2 and "is cancelled: nothing to cancel" in again.stderr


def _line_label(line: str) -> str:
    parts = line.split()
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.slurm
def test_a_requeued_job_resumes_from_its_checkpoint(
    slurm: slurm_cluster.SlurmCluster, toy: None, tmp_path: Path
) -> None:
    """Requeued twice: by `scontrol requeue` (as on preemption), then by the job itself on
    Slurm's time-limit warning signal; each time it continues from its last checkpoint."""
    results = tmp_path / "results"
    sweep = cli(
        "sweep", "model.step_time", "--values", "1.5", "--variant", "slow", "--launcher", "slurm",
        "--cpus-per-task", "1", *toy_args(tmp_path),
    )  # fmt: skip
    assert sweep.exit_code == 0, sweep.output

    def slow() -> registry.RunRecord:
        return _by_label(results)["slow=1.5"]

    def training_past(epoch: int, restarts: int) -> bool:
        record = slow()
        return (
            record.status == "running"
            and (record.launcher or {}).get("restarts") == restarts
            and (Path(record.work_dir) / f"epoch_{epoch}.pth").is_file()
        )

    def requeued() -> bool:
        status = cli("status", "--results-root", results).stdout
        line = next(line for line in status.splitlines() if " slow " in line)
        return "queued" in line and "PENDING" in line and "requeued by Slurm" in line

    wait_for(lambda: training_past(1, 0), 120, "the slow run's first checkpoint")
    job_id = slow().launcher["job_id"]
    slurm.command("scontrol", "requeue", job_id)  # what preemption does
    wait_for(requeued, 60, "`status` to show the job requeued")
    slurm.release(job_id)

    wait_for(lambda: training_past(2, 1), 120, "the resumed run's second checkpoint")
    slurm.command("scancel", "--batch", "--signal=USR1", job_id)  # the time-limit warning
    wait_for(requeued, 60, "the job to requeue itself")
    slurm.release(job_id)
    wait_for(lambda: slow().status == "done", 180, "the run to finish")

    record = slow()
    assert record.launcher["restarts"] == 2 and record.launcher["job_id"] == job_id
    assert "time limit close: requeueing" in Path(record.launcher["slurm_log"]).read_text()
    log = (Path(record.work_dir) / "train.log").read_text()
    assert log.count(f"slurm job {job_id}") == 3
    assert log.count("--resume: continuing from") == 2
    attempts = sorted(p for p in Path(record.work_dir).iterdir() if (p / "vis_data").is_dir())
    first_iters = [
        yaml.safe_load((attempt / "vis_data" / "scalars.json").open().readline())["iter"]
        for attempt in attempts
    ]
    # Each attempt starts after the checkpoint it resumed from (4 iterations per epoch).
    assert len(attempts) == 3 and first_iters[0] <= 4 < first_iters[1] and first_iters[2] > 8


@pytest.mark.slurm
def test_sbatch_refusing_the_job_is_a_clear_error(
    slurm: slurm_cluster.SlurmCluster, toy: None, tmp_path: Path
) -> None:
    result = cli(
        "run", "baseline", "--launcher", "slurm", "--partition", "nope", *toy_args(tmp_path)
    )
    assert result.exit_code == 2
    assert "sbatch" in result.stderr and "invalid partition" in result.stderr.lower()
    (record,) = _records(tmp_path / "results")
    assert record.status == "planned" and record.launcher is None  # nothing was submitted


@pytest.mark.slurm
def test_sbatch_reads_quoted_paths_back_exactly(
    slurm: slurm_cluster.SlurmCluster, tmp_path: Path
) -> None:
    """The real sbatch parses our quoting: the job's log lands in the odd folder, as named."""
    folder = tmp_path / _ODD_DIR
    folder.mkdir()
    lines = directives(SlurmSettings(), "odd job name", log_pattern(folder, "slurm-%j.out"))
    script = tmp_path / "odd.sbatch"
    script.write_text("\n".join(["#!/usr/bin/env bash", *lines, "", "echo inert"]) + "\n")
    job_id = slurmctl.sbatch(script)
    log = folder / f"slurm-{job_id}.out"
    wait_for(lambda: log.is_file() and "inert" in log.read_text(), 60, "the job's log")
    assert [path.name for path in folder.iterdir()] == [log.name]
    name = slurm.command("scontrol", "show", "job", job_id)
    assert "JobName=odd job name" in name
