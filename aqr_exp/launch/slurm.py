"""The Slurm backend: one sbatch script per run, a job array per sweep; non-blocking.

Submitting writes each run's script beside its run.yaml (`slurm.sbatch`, a
plain script a human can read and submit again by hand) and, for several runs,
one array script whose task i trains run i. Slurm then owns the jobs: inside
each job `python -m aqr_exp.launch.slurm_job RUN_DIR` records the run's
status, so `aqr-exp status` works after the submitting command is gone, and
a requeued job (preemption, time limit, `scontrol requeue`) resumes from the
run's last checkpoint.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from aqr_exp import paths, registry
from aqr_exp.errors import AqrError
from aqr_exp.files import write_atomic
from aqr_exp.launch import backends, slurmctl
from aqr_exp.launch.base import SAFE_PATH_ENV, Backend, Launcher, RunHandle, TrainJob
from aqr_exp.launch.lifecycle import record_cancel
from aqr_exp.registry import ACTIVE, RunRecord
from aqr_exp.spec import LauncherSettings, SlurmSettings

SCRIPT_NAME = "slurm.sbatch"
JOB_ENTRY = "aqr_exp.launch.slurm_job"


def sbatch_quote(value: str, what: str) -> str:
    """A value as sbatch reads it back from a #SBATCH line: bare when plain, else quoted.

    sbatch splits #SBATCH lines itself (no shell): whitespace separates options,
    an unquoted # starts a comment, quotes group and a backslash escapes the
    next character, inside quotes too. A control character (a newline) cannot
    be written at all: it would end the comment line and start a shell command."""
    if any(not char.isprintable() for char in value):
        raise AqrError(f"{what} {value!r} has a control character, which sbatch cannot take")
    if value and not any(char.isspace() or char in "\"'\\#" for char in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def log_pattern(folder: Path, name: str) -> str:
    """An sbatch --output file name pattern in `folder`: its % are literal, `name`'s are not.

    Slurm reads a backslash in a log name as "no patterns here" (so %j stays
    literal and the log is not where the run looks): such a folder is refused."""
    if "\\" in str(folder):
        raise AqrError(f"{str(folder)!r} has a backslash, which Slurm's log file names cannot")
    return f"{str(folder).replace('%', '%%')}/{name}"


def directives(
    settings: SlurmSettings, job_name: str, output: str, array: str | None = None
) -> list[str]:
    """The #SBATCH lines of one run's job: one task per GPU on each node (mmengine's
    slurm launcher), or one CPU task; requeue-able, with the time-limit warning
    signal the job entry turns into a requeue. Every value is quoted for sbatch."""
    named: dict[str, object] = {
        "job-name": job_name,
        "output": output,
        "open-mode": "append",  # a requeued job adds to its log
        "chdir": paths.project_root(),
        "requeue": True,
        "nodes": settings.nodes,
        "ntasks-per-node": max(1, settings.gpus_per_node),
        "gres": f"gpu:{settings.gpus_per_node}" if settings.gpus_per_node else None,
        "cpus-per-task": settings.cpus_per_task,
        "mem": settings.mem,
        "time": settings.time,
        "partition": settings.partition,
        "account": settings.account,
        "qos": settings.qos,
    }
    if settings.time is not None and settings.requeue_before_s:
        named["signal"] = f"B:USR1@{settings.requeue_before_s}"
    named["array"] = array
    options = [_option(name, value) for name, value in named.items() if value is not None]
    options += [sbatch_quote(arg, "sbatch option") for arg in settings.extra_args]
    return [f"#SBATCH {option}" for option in options]


def _option(name: str, value: object) -> str:
    """`--name=value`, the value quoted for sbatch; `--name` for a flag (True)."""
    if value is True:
        return f"--{name}"
    return f"--{name}={sbatch_quote(str(value), f'sbatch --{name}')}"


def _entry(run_dir: str) -> str:
    safe = " ".join(f"{key}={value}" for key, value in SAFE_PATH_ENV.items())
    return f"exec env {safe} {shlex.quote(sys.executable)} -m {JOB_ENTRY} {run_dir}"


def run_script(job: TrainJob, study: str, settings: SlurmSettings) -> str:
    """The sbatch script of one run (also what `sbatch` of it by hand would train)."""
    lines = [
        "#!/usr/bin/env bash",
        f"# aqr-exp run {job.run_id} of study {study}. `sbatch` this file to start or continue",
        "# it (from its last checkpoint); `aqr-exp status` shows how it goes.",
        *directives(
            settings, f"aqr-{study}-{job.run_id}", log_pattern(job.work_dir, "slurm-%j.out")
        ),
        "",
        _entry(shlex.quote(str(job.run_dir))),
    ]
    return "\n".join(lines) + "\n"


def array_script(
    jobs: Sequence[TrainJob], study: str, settings: SlurmSettings, log_dir: Path
) -> str:
    """One job array for several runs: task i trains RUN_DIRS[i]."""
    indices = f"0-{len(jobs) - 1}" + (f"%{settings.max_running}" if settings.max_running else "")
    lines = [
        "#!/usr/bin/env bash",
        f"# aqr-exp: {len(jobs)} runs of study {study} as one job array; task i trains",
        "# RUN_DIRS[i]. Each run also has its own script, slurm.sbatch, beside its run.yaml.",
        *directives(settings, f"aqr-{study}", log_pattern(log_dir, "%A_%a.out"), array=indices),
        "",
        "RUN_DIRS=(",
        *(f"  {shlex.quote(str(job.run_dir))}" for job in jobs),
        ")",
        _entry('"${RUN_DIRS[$SLURM_ARRAY_TASK_ID]}"'),
    ]
    return "\n".join(lines) + "\n"


class SlurmHandle(RunHandle):
    """A submitted run; its state is the registry's, checked against Slurm's queue."""

    def state(self) -> str:
        record = registry.read(self.job.run_dir)
        return SlurmBackend().observe(record)[0] if record else "queued"

    def cancel(self, reason: str = "cancelled by the user") -> None:
        backends.cancel_run(self.job.run_dir, reason)


class SlurmLauncher(Launcher):
    """Submits runs with sbatch and returns; Slurm runs them."""

    runs_here = False

    def __init__(self, settings: SlurmSettings, study: str) -> None:
        self.settings = settings
        self.study = study
        self.handles: list[RunHandle] = []

    def describe(self) -> str:
        where = (
            f"partition {self.settings.partition}"
            if self.settings.partition
            else "default partition"
        )
        gpus = (
            f"{self.settings.gpus_per_node} GPU(s) per node"
            if self.settings.gpus_per_node
            else "CPU"
        )
        shape = "a job array" if self.settings.array else "one job per run"
        return f"slurm: {shape}, {where}, {self.settings.nodes} node(s), {gpus}"

    def array_path(self, jobs: Sequence[TrainJob]) -> Path | None:
        """Where the array script of these jobs goes (None: one job per run)."""
        if len(jobs) < 2 or not self.settings.array:
            return None
        folder = jobs[0].work_dir.parent / "slurm"
        return folder / f"array-{datetime.now():%Y%m%d_%H%M%S_%f}.sbatch"

    def scripts(self, jobs: Sequence[TrainJob]) -> dict[Path, str]:
        """Every script a submission of these jobs writes (pure: for --dry-run too)."""
        return self._scripts(jobs, self.array_path(jobs))

    def _scripts(self, jobs: Sequence[TrainJob], array: Path | None) -> dict[Path, str]:
        written = {
            job.run_dir / SCRIPT_NAME: run_script(job, self.study, self.settings) for job in jobs
        }
        if array is not None:
            written[array] = array_script(jobs, self.study, self.settings, array.parent)
        return written

    def submit_all(self, jobs: Sequence[TrainJob]) -> list[RunHandle]:
        """Write the scripts and sbatch them (one array, or one job per run).

        Each run records its job as soon as Slurm has it, so a refusal halfway
        leaves the runs before it submitted and the rest planned."""
        if not jobs:
            return []
        array = self.array_path(jobs)
        for path, text in self._scripts(jobs, array).items():
            write_atomic(path, text)
        for job in jobs:
            job.work_dir.mkdir(parents=True, exist_ok=True)
        if array is not None:
            array_id = slurmctl.sbatch(array)
            for index, job in enumerate(jobs):
                log = array.parent / f"{array_id}_{index}.out"
                self._submitted(job, f"{array_id}_{index}", array, log)
        else:
            for job in jobs:
                script = job.run_dir / SCRIPT_NAME
                job_id = slurmctl.sbatch(script)
                self._submitted(job, job_id, script, job.work_dir / f"slurm-{job_id}.out")
        return self.handles[-len(jobs) :]

    def _submitted(self, job: TrainJob, job_id: str, script: Path, log: Path) -> None:
        registry.add_launcher_info(
            job.run_dir,
            status="queued",
            type="slurm",
            job_id=job_id,
            script=str(script),
            slurm_log=str(log),
        )
        self.handles.append(SlurmHandle(job))

    def submit(self, job: TrainJob) -> RunHandle:
        return self.submit_all([job])[0]

    def update(self) -> None:
        """Nothing to advance: Slurm schedules the jobs, the jobs record their states."""

    def shutdown(self, reason: str) -> None:
        for handle in self.handles:
            if not handle.finished:
                handle.cancel(reason)


def slurm_view(
    status: str, reason: str | None, launcher: dict[str, Any], job: slurmctl.SlurmJob | None
) -> tuple[str, str | None]:
    """A Slurm run's status from its record and its job in the queue (None: gone).

    Requeued (preemption, time limit, scontrol requeue): the job is pending
    again while the record says running or interrupted → queued. Gone or
    ended in a failure state while the record says active → interrupted (the
    job could not record its own end: node failure, SIGKILL, out of memory).
    """
    job_id = launcher.get("job_id")
    if job is not None and job.state in slurmctl.PENDING and status in ("running", "interrupted"):
        return "queued", (
            f"requeued by Slurm (job {job_id} {job.describe()}); "
            "it resumes from its last checkpoint when it starts"
        )
    if status not in ACTIVE:
        return status, reason
    if job is not None and job.state in slurmctl.PENDING | slurmctl.RUNNING | slurmctl.ENDING:
        return status, reason
    ended = "is gone" if job is None else f"ended {job.state}"
    log = f"; Slurm's log: {launcher['slurm_log']}" if launcher.get("slurm_log") else ""
    return "interrupted", (
        f"Slurm job {job_id} {ended} but the run never recorded its end (node failure, "
        f"out of memory, or the job script failed{log}); running it again resumes from its "
        "last checkpoint"
    )


@backends.register
class SlurmBackend(Backend):
    """Runs as Slurm jobs: their state is the record checked against Slurm's queue."""

    name = "slurm"
    scheduler = True

    def launcher(self, settings: LauncherSettings, study: str, dry_run: bool) -> Launcher:
        """A dry run only prints the scripts, so it needs no Slurm tools: a Slurm plan
        can be checked on a laptop."""
        if not dry_run and not slurmctl.available():
            raise AqrError(
                "launcher 'slurm': sbatch/squeue not found; run on a machine with Slurm's "
                "client tools (a login node), or use --launcher local"
            )
        return SlurmLauncher(settings.slurm, study)

    def observe(self, record: RunRecord) -> tuple[str, str | None]:
        """The record checked against Slurm's queue (which may not be askable: then
        nobody may conclude that a job is gone)."""
        launcher = record.launcher or {}
        job_id = launcher.get("job_id")
        jobs = slurmctl.queue() if job_id is not None else None
        if jobs is None or job_id is None:
            return record.status, record.reason
        return slurm_view(record.status, record.reason, launcher, jobs.get(str(job_id)))

    def queue_states(self, records: Sequence[RunRecord]) -> list[str]:
        """'12_0 RUNNING' ('gone' once Slurm forgot the job; no job id yet: "")."""
        jobs = slurmctl.queue()
        states = []
        for record in records:
            job_id = (record.launcher or {}).get("job_id")
            if not job_id:
                states.append("")
            elif jobs is None:
                states.append(f"{job_id} (squeue unavailable)")
            else:
                job = jobs.get(str(job_id))
                states.append(f"{job_id} {job.describe() if job else 'gone'}")
        return states

    def cancel(self, run_dir: Path, reason: str) -> RunRecord:
        """Record the run as cancelled, then scancel its job (pending or running). The
        job entry sees the record when Slurm stops it and keeps it cancelled."""
        record, _ = record_cancel(run_dir, reason)
        job_id = (record.launcher or {}).get("job_id")
        if job_id:
            slurmctl.scancel(str(job_id))
        return record
