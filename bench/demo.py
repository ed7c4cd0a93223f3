"""Benchmark: the CPU demo as a user runs it: wall time, s/iteration, mAP and NDS.

Runs the main job (`aqr-exp sweep window_size`, timed like `make demo` on an
installed stack), then the baseline at more seeds for the seed-to-seed spread
(each seed trains its own pretrained CMT first when the profile warm-starts),
then `aqr-exp report`, all in the given results/work roots; writes what it
measured from the runs' collected metrics.json. Run from the repository root:

    python bench/demo.py                                   # temp roots, data in data/synth-nus
    python bench/demo.py --results-root results --work-root work_dirs   # the example report
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from aqr_exp import paths
from aqr_exp.files import write_bench_results

log = logging.getLogger("bench.demo")
RESULTS = Path(__file__).parent / "results"
STUDY = "aqr_cmt-demo"


def aqr_exp(*args: object) -> float:
    """Run one CLI command in a subprocess (as a user would); its wall time."""
    command = [sys.executable, "-m", "aqr_exp.cli.main", *map(str, args)]
    log.info("$ aqr-exp %s", " ".join(map(str, args)))
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def run_rows(results_root: Path) -> list[dict]:
    rows = []
    for metrics_file in sorted((results_root / STUDY / "runs").glob("*/metrics.json")):
        data = json.loads(metrics_file.read_text())
        sweep = data.get("sweep")
        rows.append(
            {
                "run_id": data["run_id"],
                "variant": data["variant"],
                "sweep": None if sweep is None else f"{sweep['param']}={sweep['value']}",
                "seed": data["seed"],
                "mAP": data["metrics"]["mAP"],
                "NDS": data["metrics"]["NDS"],
                "sec_per_iter": (data.get("cost") or {}).get("sec_per_iter"),
                "per_class_ap": data["per_class_ap"],
            }
        )
    return rows


def spread(values: list[float]) -> str:
    if not values:
        return "— (n = 0)"
    if len(values) < 2:
        return f"{values[0]:.4f} (n = 1)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} (n = {len(values)})"


def markdown(result: dict) -> str:
    lines = [
        f"# CPU demo benchmark ({result['device']})",
        "",
        f"Command: `{result['command']}`. `make demo` part: `aqr-exp sweep window_size` on an",
        "installed stack; data generated first when absent.",
        "",
        f"- main job wall time: {result['sweep_s'] / 60:.1f} min "
        f"(data generated in it: {result['data_generated']})",
        f"- extra baseline seeds {result['extra_seeds']}: {result['seeds_s'] / 60:.1f} min",
        f"- baseline over seeds: mAP {result['baseline_mAP']}, NDS {result['baseline_NDS']}",
        f"- pretrained CMT (the fine-tunes' start point) over seeds: mAP "
        f"{result['pretrained_mAP']}, NDS {result['pretrained_NDS']}",
        "",
        "| run | variant | sweep | seed | s/iter | mAP | NDS |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["runs"]:
        sec = "—" if row["sec_per_iter"] is None else f"{row['sec_per_iter']:.2f}"
        lines.append(
            f"| {row['run_id']} | {row['variant']} | {row['sweep'] or '—'} | {row['seed']} | "
            f"{sec} | {row['mAP']:.4f} | {row['NDS']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-root", type=Path, default=None)
    parser.add_argument("--work-root", type=Path, default=None)
    parser.add_argument(
        "--extra-seeds", default="1,2", help="more baseline seeds ('': the main job only)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "demo-cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory() as temp:
        results_root = args.results_root or Path(temp) / "results"
        work_root = args.work_root or Path(temp) / "work_dirs"
        roots = ["--results-root", results_root, "--work-root", work_root]
        data_generated = not paths.default_data_root().is_dir()
        sweep_s = aqr_exp("sweep", "window_size", *roots)
        seeds_s = (
            aqr_exp("run", "baseline", "--seeds", args.extra_seeds, *roots)
            if args.extra_seeds
            else 0.0
        )
        aqr_exp("report", "--study", STUDY, "--results-root", results_root)
        runs = run_rows(results_root)

    baseline = [row for row in runs if row["variant"] == "baseline"]
    pretrained = [row for row in runs if row["variant"] == "pretrained"]
    command = "python bench/demo.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "device": f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}",
        "command": command.strip(),
        "sweep_s": sweep_s,
        "data_generated": data_generated,
        "extra_seeds": args.extra_seeds,
        "seeds_s": seeds_s,
        "baseline_mAP": spread([row["mAP"] for row in baseline]),
        "baseline_NDS": spread([row["NDS"] for row in baseline]),
        "pretrained_mAP": spread([row["mAP"] for row in pretrained]),
        "pretrained_NDS": spread([row["NDS"] for row in pretrained]),
        "runs": runs,
    }
    write_bench_results(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
