"""The nuScenes detection metrics under sample weights, and the paired scene bootstrap.

`evaluate(table, weights)` is the devkit's accumulate → calc_ap / calc_tp → mAP/NDS
computed from a `MatchTable`, with each sample counted `weights[sample]` times: all
ones gives the devkit's own numbers; a bootstrap resample of scenes gives that
resample's numbers without matching again.

The precision and confidence curves change only at true positives, so they are
built from two points per true positive (the last prediction before it, and the
true positive itself) plus the last prediction; `np.interp` over those points gives
what it gives over the devkit's full arrays. The cost of a resample is a few passes
over the predictions, which makes 1,000 resamples of nuScenes val affordable
(`bench/bootstrap.py`).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from aqr_exp.errors import AqrError
from aqr_exp.results.matching import MatchTable
from aqr_exp.results.nuscenes import ERROR_SUMMARY, TP_ERRORS

RECALLS = np.linspace(0, 1, 101)
# The devkit leaves these TP errors undefined for the class (NaN).
UNDEFINED_TP = {
    "traffic_cone": {"attr_err", "vel_err", "orient_err"},
    "barrier": {"attr_err", "vel_err"},
}
UNITS = ("scene", "sample")


@dataclass(frozen=True)
class Curves:
    """One class at one threshold: precision and confidence at the 101 recall levels."""

    precision: np.ndarray
    confidence: np.ndarray | None  # at the TP threshold only (it serves the TP errors)
    tp_errors: np.ndarray | None  # [5, 101] at the TP threshold


def _no_predictions(with_errors: bool) -> Curves:
    if not with_errors:
        return Curves(np.zeros(101), None, None)
    return Curves(np.zeros(101), np.zeros(101), np.ones((5, 101)))


def _cummean(values: np.ndarray) -> np.ndarray:
    """The devkit's NaN-aware cumulative mean (all NaN: ones)."""
    valid = ~np.isnan(values)
    if not valid.any():
        return np.ones(len(values))
    sums = np.cumsum(np.where(valid, values, 0.0))
    counts = np.cumsum(valid)
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts != 0)


def class_curves(
    score: np.ndarray,
    hits: np.ndarray,
    errors: np.ndarray | None,
    weights: np.ndarray,
    cum_weight: np.ndarray,
    npos: int,
) -> Curves:
    """The devkit's `accumulate` for one class and threshold: predictions in score order,
    `hits` the positions of its true positives, each prediction counted `weights` times
    (integers; 0 drops it; `cum_weight` their running sum), as if its sample were copied."""
    with_errors = errors is not None
    hit = hits[weights[hits] > 0]
    if npos == 0 or len(hit) == 0:
        return _no_predictions(with_errors)
    # A true positive drawn m times is m consecutive true positives (equal scores).
    copies = np.repeat(np.arange(len(hit)), weights[hit])
    first_copy = np.cumsum(weights[hit]) - weights[hit]
    offset = np.arange(len(copies)) - first_copy[copies]
    ahead_total = cum_weight[hit] - weights[hit]  # drawn predictions ahead of each
    before = ahead_total[copies] + offset
    tp_cum = np.arange(1, len(copies) + 1, dtype=float)
    n = len(copies)
    # Two points per true positive: the prediction just ahead of it (the devkit's last
    # point at the previous recall) and itself; then the last prediction.
    keep = slice(0 if before[0] > 0 else 1, None)
    rec = np.empty(2 * n + 1)
    rec[0:-1:2], rec[1:-1:2], rec[-1] = (tp_cum - 1) / npos, tp_cum / npos, n / npos
    prec = np.empty(2 * n + 1)
    prec[0:-1:2] = np.divide(tp_cum - 1, before, out=np.zeros(n), where=before > 0)
    prec[1:-1:2], prec[-1] = tp_cum / (before + 1), n / cum_weight[-1]
    precision = np.interp(RECALLS, rec[keep], prec[keep], right=0)
    if not with_errors:
        return Curves(precision, None, None)
    # The prediction ahead is the previous copy, else the last drawn prediction before
    # the true positive: where the running count first reaches the count ahead.
    hit_score = score[hit][copies]
    ahead = score[np.searchsorted(cum_weight, ahead_total, side="left")][copies]
    last = int(np.searchsorted(cum_weight, cum_weight[-1], side="left"))
    conf = np.empty(2 * n + 1)
    conf[0:-1:2] = np.where(offset > 0, hit_score, ahead)
    conf[1:-1:2], conf[-1] = hit_score, score[last]
    confidence = np.interp(RECALLS, rec[keep], conf[keep], right=0)
    tp_errors = np.stack(
        [
            np.interp(confidence[::-1], hit_score[::-1], _cummean(row[hit][copies])[::-1])[::-1]
            for row in errors  # type: ignore[union-attr]
        ]
    )
    return Curves(precision, confidence, tp_errors)


def _calc_ap(precision: np.ndarray, min_recall: float, min_precision: float) -> float:
    clipped = precision[round(100 * min_recall) + 1 :] - min_precision
    return float(np.mean(np.maximum(clipped, 0.0))) / (1.0 - min_precision)


def _calc_tp(curves: Curves, row: int, min_recall: float) -> float:
    first = round(100 * min_recall) + 1
    nonzero = np.flatnonzero(curves.confidence)  # type: ignore[arg-type]
    last = int(nonzero[-1]) if len(nonzero) else 0
    if last < first:
        return 1.0
    return float(np.mean(curves.tp_errors[row, first : last + 1]))  # type: ignore[index]


def true_positives(table: MatchTable) -> list[list[np.ndarray]]:
    """Per class and threshold, the positions of the true positives (computed once)."""
    return [[np.flatnonzero(row) for row in m.tp] for m in table.matches]


def evaluate(
    table: MatchTable, sample_weights: np.ndarray, hits: list[list[np.ndarray]] | None = None
) -> dict[str, float]:
    """mAP, NDS, the five TP errors and per-class AP (`<class>` keys) of the table's
    predictions, each sample counted `sample_weights[sample]` times (integers)."""
    hits = true_positives(table) if hits is None else hits
    cfg = table.config
    tp_row = table.dist_ths.index(table.dist_th_tp)
    class_ap: dict[str, float] = {}
    class_tp: dict[str, list[float]] = {}
    for c, (name, m) in enumerate(zip(table.classes, table.matches, strict=True)):
        weights = sample_weights[m.sample]
        cum_weight = np.cumsum(weights)
        npos = int(np.dot(table.gt_count[c], sample_weights))
        aps = []
        for row in range(len(table.dist_ths)):
            errors = m.errors if row == tp_row else None
            curves = class_curves(m.score, hits[c][row], errors, weights, cum_weight, npos)
            aps.append(_calc_ap(curves.precision, cfg["min_recall"], cfg["min_precision"]))
            if row == tp_row:
                class_tp[name] = [
                    np.nan
                    if metric in UNDEFINED_TP.get(name, ())
                    else _calc_tp(curves, i, cfg["min_recall"])
                    for i, metric in enumerate(TP_ERRORS)
                ]
        class_ap[name] = float(np.mean(aps))
    metrics = {"mAP": float(np.mean(list(class_ap.values())))}
    tp_matrix = np.array([class_tp[name] for name in table.classes])
    for i, metric in enumerate(TP_ERRORS):
        column = tp_matrix[:, i]
        metrics[ERROR_SUMMARY[metric]] = (
            float(np.nanmean(column)) if np.isfinite(column).any() else float("nan")
        )
    tp_scores = [max(0.0, 1.0 - metrics[ERROR_SUMMARY[m]]) for m in TP_ERRORS]
    weight = cfg["mean_ap_weight"]
    metrics["NDS"] = float(
        (weight * metrics["mAP"] + np.sum(tp_scores)) / (weight + len(tp_scores))
    )
    return metrics | class_ap


def resample_counts(groups: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, groups]: how often each scene (or sample) is drawn, with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, groups, size=(resamples, groups))
    return np.stack([np.bincount(row, minlength=groups) for row in draws])


def unit_of_samples(table: MatchTable, unit: str) -> np.ndarray:
    """[S]: the resampled unit each sample belongs to (its scene, or itself)."""
    if unit == "scene":
        return table.sample_scene
    if unit == "sample":
        return np.arange(len(table.samples))
    raise AqrError(f"bootstrap unit {unit!r}: expected one of {', '.join(UNITS)}")


def check_same_split(tables: dict[str, MatchTable]) -> None:
    """Paired resampling needs every run scored on the same samples."""
    reference_name, reference = next(iter(tables.items()))
    for name, table in tables.items():
        if table.samples != reference.samples:
            raise AqrError(
                f"{name} and {reference_name} were evaluated on different samples "
                f"({len(table.samples)} vs {len(reference.samples)}): no paired bootstrap"
            )


def resampled_metrics(table: MatchTable, counts: np.ndarray, unit: str) -> dict[str, np.ndarray]:
    """Every metric of `evaluate` on each resample: name → [resamples]."""
    owner = unit_of_samples(table, unit)
    hits = true_positives(table)
    rows = [evaluate(table, draw[owner], hits) for draw in counts]
    return {name: np.array([row[name] for row in rows]) for name in rows[0]}


_WORKER_TABLES: list[MatchTable] = []


def _keep_tables(tables: list[MatchTable]) -> None:
    _WORKER_TABLES[:] = tables


def _resample_task(index: int, counts: np.ndarray, unit: str) -> dict[str, np.ndarray]:
    return resampled_metrics(_WORKER_TABLES[index], counts, unit)


def _all_resamples(
    tables: list[MatchTable], counts: np.ndarray, unit: str, workers: int
) -> list[dict[str, np.ndarray]]:
    """`resampled_metrics` of every table, the resamples split over worker processes
    (each gets the tables once, at start)."""
    if workers <= 1:
        return [resampled_metrics(table, counts, unit) for table in tables]
    chunks = np.array_split(counts, workers)
    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    )
    with ProcessPoolExecutor(
        workers, context, initializer=_keep_tables, initargs=(tables,)
    ) as pool:
        futures = [
            [pool.submit(_resample_task, i, chunk, unit) for chunk in chunks if len(chunk)]
            for i in range(len(tables))
        ]
        parts = [[future.result() for future in row] for row in futures]
    return [{name: np.concatenate([p[name] for p in row]) for name in row[0]} for row in parts]


def group_resamples(
    groups: dict[str, list[MatchTable]], counts: np.ndarray, unit: str, workers: int = 1
) -> dict[str, dict[str, np.ndarray]]:
    """Per group, every metric on each resample, averaged over the group's runs (seeds);
    all runs see the same resamples, so differences between groups are paired."""
    check_same_split({f"{label}[{i}]": t for label, ts in groups.items() for i, t in enumerate(ts)})
    tables = [table for group in groups.values() for table in group]
    runs = iter(_all_resamples(tables, counts, unit, workers))
    means = {}
    for label, group in groups.items():
        mine = [next(runs) for _ in group]
        means[label] = {name: np.mean([run[name] for run in mine], axis=0) for name in mine[0]}
    return means


@dataclass(frozen=True)
class Interval:
    """A Δ's 95% interval and what it says."""

    low: float
    high: float
    wins: float  # share of resamples where the variant is better
    verdict: str  # better | worse | within noise
    split_sd: float  # std of Δ over the resamples (the validation split's noise)
    seed_se: float | None  # standard error of Δ from the seeds (None without 2+ seeds a side)

    @property
    def noise(self) -> str:
        """Which source of noise is larger."""
        if self.seed_se is None:
            return "split (seeds unknown)"
        return "seeds" if self.seed_se > self.split_sd else "split"


VERDICTS = ("better", "worse", "within noise")


def interval(
    delta: float,
    resampled: np.ndarray,
    higher_is_better: bool,
    seed_se: float | None = None,
    level: float = 0.95,
) -> Interval:
    """Percentile interval of the paired Δ over the resamples; with seeds, each side is
    widened by the seeds' standard error (independent noise sources add in variance)."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    if seed_se is not None:
        z = 1.959963984540054
        low = delta - float(np.hypot(delta - low, z * seed_se))
        high = delta + float(np.hypot(high - delta, z * seed_se))
    good_low, good_high = (low, high) if higher_is_better else (-high, -low)
    verdict = "better" if good_low > 0 else "worse" if good_high < 0 else "within noise"
    wins = float(np.mean(resampled > 0 if higher_is_better else resampled < 0))
    return Interval(float(low), float(high), wins, verdict, float(np.std(resampled)), seed_se)


def resolvable_delta(resampled: np.ndarray, level: float = 0.95) -> float:
    """Half the width of a metric's own bootstrap interval: a smaller Δ cannot be told
    from the split's noise."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return float(high - low) / 2
