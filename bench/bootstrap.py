"""Benchmark: 1,000 paired scene-bootstrap resamples at nuScenes val scale.

Generated match tables stand in for two runs' matched predictions: 6,019 samples
in 150 scenes, the top 300 predictions of each sample spread over the 10 classes,
about 30 ground-truth boxes per sample, true positives more likely at high scores.
What is timed is the step `aqr-exp compare` repeats per resample (the matching is
done once per run at collect time and is not part of it). Run from the repository
root:

    python bench/bootstrap.py        # writes bench/results/bootstrap-cpu.{md,json}
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from aqr_exp.files import write_bench_results
from aqr_exp.results.bootstrap import group_resamples, resample_counts
from aqr_exp.results.matching import ClassMatches, MatchTable
from aqr_exp.results.nuscenes import TP_ERRORS

log = logging.getLogger("bench.bootstrap")
RESULTS = Path(__file__).parent / "results"
CLASSES = (
    "car", "truck", "construction_vehicle", "bus", "trailer",
    "barrier", "motorcycle", "bicycle", "pedestrian", "traffic_cone",
)  # fmt: skip
DIST_THS = (0.5, 1.0, 2.0, 4.0)


def generated_table(samples: int, scenes: int, per_sample: int, seed: int) -> MatchTable:
    """Predictions whose chance of being a true positive grows with the score and the
    distance threshold, as a trained detector's do."""
    rng = np.random.default_rng(seed)
    class_of = rng.integers(0, len(CLASSES), size=(samples, per_sample))
    matches = []
    for c in range(len(CLASSES)):
        sample = np.nonzero(class_of == c)[0]
        score = rng.beta(0.6, 2.0, size=len(sample))
        order = np.argsort(-score, kind="stable")
        sample, score = sample[order], score[order]
        # About 4-7 % true positives (a few per sample of ~30 boxes), most at high scores.
        base = rng.random(len(score))
        tp = np.stack([base < score**2 * (0.4 + 0.1 * i) for i in range(len(DIST_THS))])
        errors = np.where(tp[2], rng.gamma(2.0, 0.15, size=(len(TP_ERRORS), len(score))), np.nan)
        matches.append(ClassMatches(score, sample, tp, errors))
    return MatchTable(
        classes=CLASSES,
        dist_ths=DIST_THS,
        dist_th_tp=2.0,
        samples=tuple(f"sample-{i}" for i in range(samples)),
        scenes=tuple(f"scene-{i}" for i in range(scenes)),
        sample_scene=np.sort(rng.integers(0, scenes, size=samples)),
        gt_count=rng.poisson(3.0, size=(len(CLASSES), samples)),
        matches=tuple(matches),
        config={"min_recall": 0.1, "min_precision": 0.1, "mean_ap_weight": 5.0},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=6019)
    parser.add_argument("--scenes", type=int, default=150)
    parser.add_argument("--per-sample", type=int, default=300)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=RESULTS / "bootstrap-cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    tables = {
        name: generated_table(args.samples, args.scenes, args.per_sample, seed)
        for seed, name in enumerate(("baseline", "variant"))
    }
    predictions = sum(len(m.score) for m in tables["baseline"].matches)
    counts = resample_counts(args.scenes, args.resamples, seed=0)
    start = time.perf_counter()
    groups = {name: [table] for name, table in tables.items()}
    means = group_resamples(groups, counts, "scene", workers=args.workers)
    seconds = time.perf_counter() - start
    spread = means["variant"]["mAP"] - means["baseline"]["mAP"]
    device = f"CPU ({torch.get_num_threads()} threads), numpy {np.__version__}"
    command = "python bench/bootstrap.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join(
        [
            f"# Paired scene bootstrap benchmark ({device})",
            "",
            f"Command: `{command.strip()}`. Two runs, {args.samples:,} samples in "
            f"{args.scenes} scenes, {predictions:,} predictions per run; "
            f"{args.resamples:,} resamples of the scenes, every metric of both runs on each.",
            "",
            f"- time: **{seconds:.1f} s** with {args.workers} worker processes "
            "(goal: ≤ 60 s on 2 cores)",
            f"- per resample and run, per worker: "
            f"{1000 * seconds * args.workers / args.resamples / 2:.1f} ms",
            f"- Δ mAP over the resamples: std {spread.std():.4f} (generated data)",
            "",
        ]
    )
    payload = {"device": device, "command": command.strip(), "seconds": seconds,
               "resamples": args.resamples, "samples": args.samples, "scenes": args.scenes,
               "predictions_per_run": predictions}  # fmt: skip
    write_bench_results(args.out, payload, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
