"""Benchmark: seconds per training iteration of baseline, old AQR and new AQR.

All variants train on the same batch in one process, their steps interleaved (each
round runs one step of every variant in a new random order, `--steps` times), so the
ratios to the baseline are not skewed by load that comes and goes; each ratio comes with
a bootstrap interval over the rounds. The
models are the plugin's configs (the CPU demo by default) built by mmengine's
Runner; a step is preprocessing (voxelization) + forward + loss + backward + AdamW
update, as in training.
Run from the repository root:

    python bench/train_step.py                   # writes bench/results/train_step-cpu.*
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from aqr_exp import paths
from aqr_exp.files import write_bench_results

log = logging.getLogger("bench.train_step")

SUFFIX = "lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py"
VARIANTS = {
    "baseline": f"cmt_{SUFFIX}",
    "old_aqr": f"cmt-aqr-old_{SUFFIX}",
    "new_aqr": f"cmt-aqr-new_{SUFFIX}",
    "new_aqr (dense bias)": f"cmt-aqr-new_{SUFFIX}",
}
# Config overrides per variant: new AQR's default (`auto`: the window path on the CPU)
# against the dense [B, 1, Q, N] bias.
OVERRIDES = {"new_aqr (dense bias)": {"model.pts_bbox_head.aqr.attn_impl": "dense"}}
RESULTS = Path(__file__).parent / "results"


def build(config: Path, work_dir: str, overrides: dict | None = None) -> Runner:
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(overrides or {})
    cfg.work_dir = work_dir
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    cfg.randomness = dict(seed=0)
    return Runner.from_cfg(cfg)


class Trainer:
    """One variant's model and optimizer, stepping on a fixed batch."""

    def __init__(self, runner: Runner, batch: dict, lr: float) -> None:
        self.model = runner.model
        self.model.init_weights()
        self.model.train()
        self.batch = batch
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)

    def step(self) -> float:
        """One training iteration, the data preprocessor (voxelization) included: as in
        training, each step gets freshly made inputs (mmdet3d's PillarFeatureNet edits its
        voxels in place, so reusing them would feed every later step drifted points)."""
        start = time.perf_counter()
        data = self.model.data_preprocessor(self.batch, True)
        losses = self.model(**data, mode="loss")
        loss = sum(value for key, value in losses.items() if "loss" in key)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def round_ratios(variant: list[float], baseline: list[float], steps: int) -> np.ndarray:
    """Per round: the variant's median step / the baseline's (times listed round by round)."""
    return np.array(
        [
            statistics.median(variant[i : i + steps]) / statistics.median(baseline[i : i + steps])
            for i in range(0, len(baseline), steps)
        ]
    )


def round_ratio(variant: list[float], baseline: list[float], steps: int) -> float:
    """The median over rounds of each round's ratio."""
    return float(np.median(round_ratios(variant, baseline, steps)))


def ratio_interval(
    variant: list[float], baseline: list[float], steps: int, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile interval of `round_ratio` over the rounds resampled with
    replacement: how far the median ratio moves with the load of the rounds drawn."""
    ratios = round_ratios(variant, baseline, steps)
    draws = np.random.default_rng(seed).integers(0, len(ratios), (resamples, len(ratios)))
    low, high = np.percentile(np.median(ratios[draws], axis=1), [2.5, 97.5])
    return float(low), float(high)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_step-cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory() as work:
        runners = {
            name: build(paths.PLUGIN_CONFIGS / config, f"{work}/{index}", OVERRIDES.get(name))
            for index, (name, config) in enumerate(VARIANTS.items())
        }
        batch = next(iter(runners["baseline"].train_dataloader))
        trainers = {name: Trainer(runner, batch, 1e-4) for name, runner in runners.items()}
        for trainer in trainers.values():
            trainer.step()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in trainers}
        order = random.Random(0)
        for round_index in range(args.rounds):
            # Steps interleaved, in a new order each time: no variant always runs right
            # after the same one, and a round's steps of each variant lie seconds apart.
            for _ in range(args.steps):
                for name in order.sample(list(trainers), len(trainers)):
                    times[name].append(trainers[name].step())
            log.info(
                "round %d: %s", round_index + 1, {k: f"{v[-1]:.3f}s" for k, v in times.items()}
            )

    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = {name: round_ratio(times[name], times["baseline"], args.steps) for name in times}
    interval = {name: ratio_interval(times[name], times["baseline"], args.steps) for name in times}
    device = f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}"
    command = "python bench/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = [
        f"| {name} | {VARIANTS[name]} | {median[name]:.3f} | {ratio[name]:.3f}× | "
        f"{interval[name][0]:.3f}–{interval[name][1]:.3f} | {len(times[name])} |"
        for name in VARIANTS
    ]
    text = "\n".join(
        [
            f"# Training step benchmark ({device})",
            "",
            f"Command: `{command.strip()}`. One batch of the CPU demo config (batch 2),",
            "preprocessing + forward + loss + backward + AdamW step; s/iter: median over",
            "all steps; each round runs one step of every variant in a new random order,",
            "`--steps` times; × baseline: the median over rounds of each round's ratio (the",
            "load drifts between rounds more than within one), with its 95 % bootstrap",
            "interval over the rounds.",
            "",
            "| variant | config | s/iter | × baseline | 95 % interval | steps timed |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    payload = {
        "device": device,
        "command": command.strip(),
        "seconds": times,
        "median": median,
        "ratio_to_baseline": ratio,
        "ratio_interval_95": interval,
    }
    write_bench_results(args.out, payload, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
