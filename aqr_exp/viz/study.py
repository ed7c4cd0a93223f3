"""AQR pictures of a study's best run, for `aqr-exp report --viz`."""

from __future__ import annotations

import math
from pathlib import Path

from mmengine.config import Config

from aqr_exp.errors import AqrError
from aqr_exp.files import write_atomic
from aqr_exp.registry import CONFIG_FILE
from aqr_exp.results.compare import RunResult, select_runs
from aqr_exp.results.report import ExtraFigure
from aqr_exp.viz.pictures import bias_pictures, weight_pictures

VIZ_DIR = Path("figures") / "viz"


def _has_aqr(run: RunResult) -> bool:
    config = run.run_dir / CONFIG_FILE
    return config.is_file() and Config.fromfile(config).model.pts_bbox_head.get("aqr") is not None


def _nds(run: RunResult) -> float:
    value = (run.metrics.get("metrics") or {}).get("NDS")
    return float(value) if value is not None and not math.isnan(float(value)) else -math.inf


def best_aqr_run(runs: list[RunResult], study: str) -> RunResult:
    """The AQR run with the highest NDS that has its config and last checkpoint."""
    candidates = [
        run
        for run in runs
        if (run.metrics.get("source") or {}).get("last_checkpoint") and _has_aqr(run)
    ]
    if not candidates:
        raise AqrError(
            f"study {study!r} has no collected AQR run with a saved config and checkpoint: "
            "nothing to draw for --viz (the baseline has no AQR)"
        )
    return max(candidates, key=_nds)


def study_pictures(
    results_root: Path, study: str | None, sample: int, samples: int | None
) -> list[ExtraFigure]:
    """Draw the best AQR run's windows and weights under <study>/figures/viz/."""
    study, runs, _ = select_runs(results_root, study)
    run = best_aqr_run(runs, str(study))
    config = run.run_dir / CONFIG_FILE
    checkpoint = Path(run.metrics["source"]["last_checkpoint"])
    if not checkpoint.is_file():
        raise AqrError(f"the checkpoint of {run.run_id} is gone ({checkpoint}): rerun it to draw")
    bias = bias_pictures(config, checkpoint, sample, ["top"], 5)
    weights = weight_pictures(config, checkpoint, samples, 2.0)
    out = results_root / str(study) / VIZ_DIR
    for name, data in {**bias.files, **weights.files}.items():
        write_atomic(out / name, data)
    where = f"best AQR run `{run.run_id}` (NDS {_nds(run):.4f}), {checkpoint.name}"
    pngs = sorted(name for name in bias.files if name.endswith(".png"))
    figures = [ExtraFigure(str(VIZ_DIR / name), f"{bias.summary}; {where}.") for name in pngs]
    figures.append(
        ExtraFigure(
            str(VIZ_DIR / "weights.png"),
            f"{weights.summary}; {where}; table: {VIZ_DIR / 'weights.csv'}.",
        )
    )
    return figures
