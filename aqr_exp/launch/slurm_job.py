"""Inside a Slurm job: train one registry run and keep its status file true.

`python -m aqr_exp.launch.slurm_job RUN_DIR` is what the generated sbatch
scripts execute. It records running (job id, node, restart count), trains
with `--resume` (so a requeued job continues from the run's last checkpoint),
and records how training ended. Slurm stops a job with SIGTERM (scancel,
preemption, requeue); that ends as interrupted, unless `aqr-exp cancel`
recorded the run as cancelled first. With a time limit, Slurm's warning
signal (USR1, `--signal=B:USR1@N`) makes the job requeue itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from aqr_exp import registry
from aqr_exp.launch import slurmctl
from aqr_exp.launch.base import SAFE_PATH_ENV, TrainJob, job_of
from aqr_exp.launch.lifecycle import record_exit, start_training
from aqr_exp.launch.slurm import JOB_ENTRY

log = logging.getLogger("aqr_exp.slurm_job")

STOPPED = (
    "stopped by Slurm ({signal}: scancel, preemption, time limit or requeue); a requeued "
    "job resumes from its last checkpoint, otherwise `aqr-exp run`/`sweep` does"
)
# How a run gets back to queued when its job (re)starts.
_TO_QUEUED = {
    "planned": ["queued"],
    "queued": [],
    "running": ["queued"],  # requeued before it could record its end
    "interrupted": ["queued"],  # requeued after it recorded SIGTERM
    "failed": ["planned", "queued"],  # its script submitted again by hand
}


def slurm_job_id(env: Mapping[str, str]) -> str:
    """The id squeue shows for this job: '12_3' for an array task, else '12'."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env["SLURM_JOB_ID"]


def master_port(env: Mapping[str, str]) -> int:
    """A rendezvous port per job, so two jobs sharing a node never collide."""
    return 20000 + int(env["SLURM_JOB_ID"]) % 20000


def training_command(job: TrainJob, tasks: int) -> list[str]:
    """One process, or one per task through srun and mmengine's slurm launcher."""
    if tasks > 1:
        return ["srun", "--kill-on-bad-exit=1", sys.executable, *job.train_args("slurm")]
    return [sys.executable, *job.train_args()]


def training_env(env: Mapping[str, str], tasks: int) -> dict[str, str]:
    child = dict(env, **SAFE_PATH_ENV, PYTHONUNBUFFERED="1")
    if tasks > 1:
        child["MASTER_PORT"] = str(master_port(env))
    if env.get("SLURM_CPUS_PER_TASK"):
        child.setdefault("OMP_NUM_THREADS", env["SLURM_CPUS_PER_TASK"])
    return child


def _start_record(run_dir: Path, env: Mapping[str, str]) -> registry.RunRecord | None:
    """Move the run to queued for this start; None when it must not train."""
    record = registry.read(run_dir)
    if record is None:
        raise SystemExit(f"{run_dir}: no {registry.RUN_FILE}: not a run of the registry")
    if record.status in ("cancelled", "done"):
        log.info("%s is %s: nothing to train", record.run_id, record.status)
        return None
    restarts = int(env.get("SLURM_RESTART_COUNT") or 0)
    for status in _TO_QUEUED[record.status]:
        reason = f"requeued by Slurm (restart {restarts})" if status == "queued" else None
        registry.transition(run_dir, status, reason=reason)
    return registry.add_launcher_info(
        run_dir,
        type="slurm",
        job_id=slurm_job_id(env),
        host=socket.gethostname(),
        restarts=restarts,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Train the run in RUN_DIR inside this Slurm job; exit 0 when it is done."""
    parse = argparse.ArgumentParser(prog=f"python -m {JOB_ENTRY}", description=main.__doc__)
    parse.add_argument("run_dir", type=Path)
    run_dir = parse.parse_args(argv).run_dir
    logging.basicConfig(level=logging.INFO, format="%(asctime)s aqr-exp: %(message)s")
    env = dict(os.environ)
    stopped: list[str] = []
    children: list[subprocess.Popen[bytes]] = []

    def on_term(signum: int, frame: object) -> None:
        stopped.append(signal.Signals(signum).name)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    if _start_record(run_dir, env) is None:
        return 0
    job = job_of(run_dir)
    tasks = int(env.get("SLURM_NTASKS") or 1)
    command = training_command(job, tasks)

    def on_time_limit(signum: int, frame: object) -> None:
        log.info("time limit close: requeueing job %s", env["SLURM_JOB_ID"])
        slurmctl.requeue(env["SLURM_JOB_ID"])

    signal.signal(signal.SIGUSR1, on_time_limit)

    job.work_dir.mkdir(parents=True, exist_ok=True)
    with open(job.log_path, "ab") as train_log:
        header = f"slurm job {slurm_job_id(env)} on {socket.gethostname()}"
        proc = start_training(job, command, training_env(env, tasks), header, train_log)
        children.append(proc)
        log.info("%s: training (pid %d): %s", job.run_id, proc.pid, shlex.join(command))
        code = proc.wait()
    status = record_exit(run_dir, code, job.log_path, STOPPED, stopped[0] if stopped else None)
    log.info("%s: %s (exit code %d)", job.run_id, status, code)
    if status == "done":
        return 0
    return 128 + signal.SIGTERM if stopped else (code if code > 0 else 1)


if __name__ == "__main__":
    sys.exit(main())
