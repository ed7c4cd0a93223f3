"""Diagnostic: how much a trained detector relies on each sensor.

Scores one checkpoint three times on its config's val split with the real
NuScenesMetric: as trained, with every camera image blanked, and with the LiDAR
sweep cut to one point (CMT's own modality mask, `CmtModalityMask`, applied to
every test sample). A modality whose blanking leaves mAP and NDS unchanged is one
the detector does not use; for AQR, which routes each query between LiDAR and
camera, that is the first thing to know about a baseline. Run from the
repository root:

    python bench/modality.py CONFIG CHECKPOINT --out bench/results/modality-cpu
"""

from __future__ import annotations

import argparse
import copy
import datetime
import logging
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from aqr_exp.checkpoints import allow_mmengine_checkpoints
from aqr_exp.errors import AqrError
from aqr_exp.files import check_input_file, write_bench_results
from aqr_exp.results.render import table_text

log = logging.getLogger("bench.modality")

# What each evaluation blanks, as CmtModalityMask probabilities (1.0: every sample).
BLANKING = {
    "as trained": None,
    "cameras blanked": dict(camera_prob=1.0, lidar_prob=0.0),
    "LiDAR blanked": dict(camera_prob=0.0, lidar_prob=1.0),
}
PREFIX = "NuScenes metric/pred_instances_3d_NuScenes/"


def blanked_pipeline(pipeline: list[dict], mask: dict | None) -> list[dict]:
    """The test pipeline with the modality mask placed where CMT trains with it: after
    the image augmentation, before lidar2img is composed."""
    pipeline = copy.deepcopy(pipeline)
    if mask is None:
        return pipeline
    types = [step["type"] for step in pipeline]
    if "CmtComposeLidar2Img" not in types:
        raise ValueError(f"the test pipeline has no CmtComposeLidar2Img step: {types}")
    at = types.index("CmtComposeLidar2Img")
    return [*pipeline[:at], dict(type="CmtModalityMask", **mask), *pipeline[at:]]


def evaluate(base: Config, checkpoint: Path, mask: dict | None, work_dir: str) -> dict:
    cfg = copy.deepcopy(base)
    cfg.work_dir = work_dir
    cfg.load_from = str(checkpoint)
    dataset = cfg.test_dataloader.dataset
    dataset.pipeline = blanked_pipeline(dataset.pipeline, mask)
    cfg.test_evaluator.jsonfile_prefix = f"{work_dir}/predictions"
    return Runner.from_cfg(cfg).test()


def table(scores: dict[str, dict], classes: list[str]) -> str:
    rows = [("mAP", "mAP"), ("NDS", "NDS")] + [
        (f"{c} AP (2 m)", f"{c}_AP_dist_2.0") for c in classes
    ]
    frame = pd.DataFrame(
        [
            {"metric": label} | {n: f"{s[PREFIX + key]:.4f}" for n, s in scores.items()}
            for label, key in rows
        ]
    )
    return table_text(frame, "markdown") + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="results stem (.md, .json)")
    args = parser.parse_args(argv)
    check_input_file(args.config, "config", "an mmdet3d config file")
    check_input_file(args.checkpoint, "checkpoint", "a checkpoint (.pth) of that config")
    allow_mmengine_checkpoints()
    base = Config.fromfile(args.config)
    scores = {}
    with tempfile.TemporaryDirectory(prefix="aqr-modality-") as tmp:
        for name, mask in BLANKING.items():
            log.info("scoring %s", name)
            scores[name] = evaluate(base, args.checkpoint, mask, f"{tmp}/{len(scores)}")
    command = "python bench/modality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    today = datetime.date.today().isoformat()
    text = (
        f"# Sensor reliance of one checkpoint (CPU, torch {torch.__version__})\n\n"
        f"Command: `{command}`, on {today}. Val split, "
        f"NuScenesMetric; blanking by `CmtModalityMask` on every test sample.\n\n"
        + table(scores, list(base.class_names))
    )
    payload = {
        "command": command,
        "date": today,
        "config": str(args.config),
        "checkpoint": str(args.checkpoint),
        "scores": {n: {k[len(PREFIX) :]: v for k, v in s.items()} for n, s in scores.items()},
    }
    write_bench_results(args.out, payload, text)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        main()
    except AqrError as error:
        sys.exit(f"bench/modality.py: {error}")
