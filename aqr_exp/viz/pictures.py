"""The two kinds of AQR pictures, from a config and a checkpoint to PNG/CSV contents.

Shared by `aqr-exp viz` and `aqr-exp report --viz`, so both draw the same thing."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from aqr_exp.viz.bias import choose_queries, render
from aqr_exp.viz.draw import extents_figure, weights_figure
from aqr_exp.viz.model import check_sample, load, run_sample
from aqr_exp.viz.weights import collect


@dataclass
class Pictures:
    """File contents by file name, and a one-line summary of what they show."""

    files: dict[str, bytes | str]
    summary: str


def bias_pictures(
    config: Path, checkpoint: Path | None, sample: int, queries: list[str], top: int
) -> Pictures:
    loaded = load(config, checkpoint)
    check_sample(loaded, sample)
    run = run_sample(loaded, sample)
    chosen = choose_queries(run, queries, top)
    ids = ", ".join(str(int(q)) for q in chosen)
    kind = "attention bias" if loaded.aqr.type == "new" else "feature-modulation windows"
    summary = f"{config.name}, val sample {sample}: AQR {kind} of queries {ids}"
    return Pictures(render(loaded, run, chosen), summary)


def weight_pictures(
    config: Path, checkpoint: Path | None, samples: int | None, max_distance: float
) -> Pictures:
    loaded = load(config, checkpoint)
    stats = collect(loaded, samples, max_distance)
    scale = "none (old AQR)" if math.isnan(stats.bias_scale) else f"{stats.bias_scale:.3f}"
    title = (
        f"{config.name} — {stats.samples} val samples, {len(stats.matched)} of {stats.num_gt} "
        f"GT boxes matched (≤ {max_distance:g} m)\nbias scale {scale}"
    )
    files: dict[str, bytes | str] = {
        "weights.csv": stats.table.to_csv(index=False),
        "weights-matched.csv": stats.matched.to_csv(index=False),
        "weights.png": weights_figure(stats.table, title),
    }
    if loaded.aqr.window_mode == "adaptive":
        files["extents.png"] = extents_figure(stats.table, title)
    return Pictures(files, title.replace("\n", " — "))
