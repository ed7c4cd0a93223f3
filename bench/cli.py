"""Benchmark: how fast the CLI answers: `aqr-exp --help` and `aqr-exp status` over many runs.

Each command runs in a fresh subprocess, as a user types it (the installed `aqr-exp`
script next to this Python, else `python -m aqr_exp.cli.main`); the median over
`--repeats` runs is reported, after one untimed warm-up run per command. `status` reads
a registry of `--runs` finished runs of one study (done, failed with a log tail, and
cancelled, by a local pool whose processes are gone), written with the registry's own
RunRecord and writer into a temporary results root. Run from the repository root:

    python bench/cli.py        # writes bench/results/cli-cpu.{md,json}
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from aqr_exp import registry
from aqr_exp.files import write_bench_results

log = logging.getLogger("bench.cli")
RESULTS = Path(__file__).parent / "results"
STUDY = "aqr_cmt-bench"
# Goals of issue 22 on a 2-core machine, in seconds.
GOALS = {"help": 1.0, "status": 2.0, "status_study": 2.0}
STATUSES = ("done", "done", "failed", "done", "cancelled")  # mostly done, as a real study
WINDOWS = (3, 5, 7, 9)
LOG_TAIL = [
    f"2026/11/25 10:{i:02d}:00 - mmengine - INFO - Iter(train) [{i * 10}/400]  lr: 2.0e-04  "
    f"eta: 0:0{i % 10}:00  time: 1.1700  loss: {3.2 - i * 0.05:.4f}"
    for i in range(19)
] + ["RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"]


def cli_command() -> list[str]:
    """What a user runs: the console script of this environment when it is installed."""
    script = Path(sys.executable).with_name("aqr-exp")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "aqr_exp.cli.main"]


def make_runs(results_root: Path, work_root: Path, count: int) -> None:
    """`count` finished runs of STUDY: variants × window sweep × seeds, as a study grows."""
    host = socket.gethostname()
    tracker = str(work_root / STUDY / "tensorboard")
    for index in range(count):
        variant = ("baseline", "aqr-old", "aqr-new")[index % 3]
        window = WINDOWS[index // 3 % len(WINDOWS)]
        seed = index // 12
        swept = variant == "aqr-new"
        run_id = f"{variant}-s{seed}-{index:08x}"
        run_dir = registry.runs_dir(results_root, STUDY) / run_id
        run_dir.mkdir(parents=True)
        status = STATUSES[index % len(STATUSES)]
        failed = status == "failed"
        record = registry.RunRecord(
            run_id=run_id,
            study=STUDY,
            variant=variant,
            sweep={"param": "window_size", "value": window} if swept else None,
            overrides={"model.pts_bbox_head.aqr.window_size": window} if swept else {},
            seed=seed,
            config=f"plugin/configs/cmt-{variant}_lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py",
            work_dir=str(work_root / STUDY / run_id),
            status=status,
            reason={
                "failed": "training exited with code 1: RuntimeError: CUDA out of memory.",
                "cancelled": "cancelled by the user",
            }.get(status),
            exit_code=1 if failed else (0 if status == "done" else None),
            signal="SIGTERM" if status == "cancelled" else None,
            log_tail=LOG_TAIL if failed else None,
            command=f"{sys.executable} -m aqr_exp.train {run_dir / registry.CONFIG_FILE}",
            started="2026-11-25T10:00:00+00:00",
            finished="2026-11-25T10:40:00+00:00",
            launcher={"type": "local", "host": host, "pid": 2**22 + index, "job_id": None},
            git_commit="0123456789abcdef0123456789abcdef01234567",
            code=str(Path.cwd()),
            data_root="data/synth-nus",
            trackers={"tensorboard": tracker},
        )
        registry.write_record(run_dir, record)
        # status orders runs by their config's mtime; the real one is the resolved config.
        (run_dir / registry.CONFIG_FILE).write_text(f"# resolved config of {run_id}\n")


def timed(command: list[str], repeats: int, expect: str) -> dict[str, object]:
    """Median wall time of `command` in fresh subprocesses; each run must succeed and
    print `expect` (a benchmark of an error message measures nothing)."""
    times = []
    for attempt in range(repeats + 1):  # the first warms the disk cache, untimed
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if done.returncode != 0 or expect not in done.stdout:
            raise SystemExit(
                f"{' '.join(command)} failed (exit {done.returncode}):\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        if attempt:
            times.append(seconds)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "times_s": times}  # fmt: skip


def shown_runs(command: list[str]) -> int:
    """How many runs `status` lists (each row names the run's study)."""
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return sum(line.startswith(STUDY) for line in out.splitlines())


def provenance() -> dict[str, object]:
    """Where and with what the numbers were measured."""
    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "os": platform.platform(),
        "python": platform.python_version(),
        "aqr_exp": importlib.metadata.version("aqr-exp"),
        "typer": importlib.metadata.version("typer"),
        "git_commit": registry.git_commit(),
        "date": date.today().isoformat(),
        # other work on the machine slows every number down: say how busy it was
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def markdown(result: dict) -> str:
    prov = result["provenance"]
    names = {
        "help": "`aqr-exp --help`",
        "status": f"`aqr-exp status` ({result['runs']:,} runs)",
        "status_study": f"`aqr-exp status --study {STUDY}` ({result['runs']:,} runs)",
    }
    lines = [
        f"# CLI latency benchmark ({prov['machine']}, Python {prov['python']})",
        "",
        f"Command: `{result['command']}`. Each command in a fresh subprocess "
        f"(`{result['cli']}`), median of {result['repeats']} after one warm-up run; "
        f"`status` reads {result['runs']:,} finished runs of one study (done, failed, "
        "cancelled) written with the registry's RunRecord.",
        "",
        f"aqr-exp {prov['aqr_exp']} at {prov['git_commit']}, typer {prov['typer']}, "
        f"{prov['os']}, {prov['date']}; load average before: {prov['load_average_1min']}.",
        "",
        "| command | median | min | max | goal | meets it |",
        "|---|---|---|---|---|---|",
    ]
    for key, name in names.items():
        row = result["results"][key]
        lines.append(
            f"| {name} | {row['median_s']:.2f} s | {row['min_s']:.2f} s | {row['max_s']:.2f} s "
            f"| ≤ {GOALS[key]:.0f} s | {'yes' if row['median_s'] <= GOALS[key] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="recorded runs `status` reads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per command")
    parser.add_argument("--out", type=Path, default=RESULTS / "cli-cpu")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.repeats < 1:
        parser.error("--runs and --repeats must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    machine = provenance()  # before the bench's own load
    cli = cli_command()
    temp = Path(tempfile.mkdtemp(prefix="aqr-bench-cli-"))
    try:
        results_root = temp / "results"
        make_runs(results_root, temp / "work_dirs", args.runs)
        status = [*cli, "status", "--results-root", str(results_root)]
        commands = {"help": [*cli, "--help"], "status": status,
                    "status_study": [*status, "--study", STUDY]}  # fmt: skip
        shown = shown_runs(status)
        if shown != args.runs:
            raise SystemExit(f"`status` listed {shown} runs, expected {args.runs}")
        results = {}
        for key, command in commands.items():
            results[key] = timed(command, args.repeats, "Usage" if key == "help" else STUDY)
            log.info("%s: median %.2f s", key, results[key]["median_s"])
    finally:
        shutil.rmtree(temp, ignore_errors=True)

    command = "python bench/cli.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "provenance": machine,
        "command": command.strip(),
        "cli": "aqr-exp" if len(cli) == 1 else "python -m aqr_exp.cli.main",
        "runs": args.runs,
        "repeats": args.repeats,
        "goals_s": GOALS,
        "results": results,
    }
    write_bench_results(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
