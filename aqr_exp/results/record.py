"""Assemble a run's metrics.json (the fields fixed by docs/architecture.md)."""

from __future__ import annotations

from typing import Any

from aqr_exp.results.nuscenes import BEST_BY, Evaluation, best_evaluation
from aqr_exp.results.training import aqr_scalars, cost, nan_events

IDENTITY = ("run_id", "study", "variant", "sweep", "seed")


def identity(run_record: dict[str, Any]) -> dict[str, Any]:
    """The run.yaml fields metrics.json repeats, so it can be read on its own."""
    return {key: run_record.get(key) for key in IDENTITY}


def metrics_payload(
    run_identity: dict[str, Any],
    evaluations: list[Evaluation],
    chosen: Evaluation,
    train_lines: list[dict[str, Any]],
    source: dict[str, Any],
) -> dict[str, Any]:
    """`chosen` supplies the reported numbers; `evaluations` give the last and best epoch."""
    best = best_evaluation(evaluations)
    epochs = [e.epoch for e in evaluations if e.epoch is not None]
    return {
        **run_identity,
        "source": {
            **source,
            "metrics": {**chosen.origin, "epoch": chosen.epoch},
            "best": {"by": BEST_BY, "epoch": best.epoch if best else None},
        },
        "epoch_last": max(epochs) if epochs else None,
        "epoch_best": best.epoch if best else None,
        "metrics": chosen.metrics,
        "per_class_ap": chosen.per_class_ap,
        "per_class": chosen.per_class,
        "cost": cost(train_lines),
        "nan_events": nan_events(train_lines),
        "aqr": aqr_scalars(train_lines),
    }
