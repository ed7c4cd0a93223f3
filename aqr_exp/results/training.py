"""What training lines say about a run: cost, NaN/inf events, AQR scalars.

A training line is a dict in mmengine's naming (`step` = global iteration, `epoch`,
`time` = s/iter averaged over the logging window, `memory` in MB, losses, `aqr/...`);
the legacy parser converts mmcv 1.x lines to the same shape.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

AQR_PREFIX = "aqr/"
_COUNTERS = {"step", "iter", "epoch"}


def _finite_values(lines: list[dict[str, Any]], key: str) -> list[float]:
    values = (line.get(key) for line in lines)
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def train_time_s(lines: list[dict[str, Any]]) -> float | None:
    """Training seconds (validation and checkpointing excluded): each line's windowed
    s/iter times the iterations since the previous line."""
    total, previous = 0.0, 0
    timed = False
    for line in lines:
        step, seconds = line.get("step"), line.get("time")
        if isinstance(step, int) and isinstance(seconds, int | float) and math.isfinite(seconds):
            total += seconds * (step - previous)
            timed = True
        if isinstance(step, int):
            previous = step
    return total if timed else None


def cost(lines: list[dict[str, Any]]) -> dict[str, float | int | None]:
    """s/iter is the median of the logged windows, robust to warm-up and stalls."""
    times = _finite_values(lines, "time")
    memory = _finite_values(lines, "memory")
    steps = [line["step"] for line in lines if isinstance(line.get("step"), int)]
    return {
        "sec_per_iter": statistics.median(times) if times else None,
        "peak_memory_mb": max(memory) if memory else None,
        "train_time_s": train_time_s(lines),
        "iters": max(steps) if steps else None,
    }


def nan_events(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training lines with a NaN or infinite value (loss, grad_norm, AQR scalar ...)."""
    events = []
    for line in lines:
        bad = sorted(
            key
            for key, value in line.items()
            if key not in _COUNTERS and isinstance(value, float) and not math.isfinite(value)
        )
        if bad:
            events.append({"step": line.get("step"), "epoch": line.get("epoch"), "keys": bad})
    return events


def aqr_scalars(lines: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged value of each `aqr/...` scalar."""
    last: dict[str, float] = {}
    for line in lines:
        for key, value in line.items():
            if key.startswith(AQR_PREFIX) and isinstance(value, int | float):
                last[key] = float(value)
    return dict(sorted(last.items()))
