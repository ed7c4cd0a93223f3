"""Compare: runs' metrics.json → per group (variant or sweep value) mean ± std over seeds,
Δ vs the baseline, the best value per metric, and warnings where the numbers are thin.

Everything is computed here once, as a tidy table (`Comparison.stats`, one row per
group × metric); the renderers (`render.py`) and the report only format it, so the
numbers in the terminal, the markdown, the CSV and the report are the same numbers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aqr_exp.errors import AqrError
from aqr_exp.records import CorruptRecord, readable
from aqr_exp.registry import (
    BASELINE_VARIANT,
    METRICS_FILE,
    RUN_FILE,
    default_study,
    read_metrics,
    read_run_record,
    resolve_run_ref,
    study_run_dirs,
)
from aqr_exp.results import matching
from aqr_exp.results.bootstrap import (
    UNITS,
    group_resamples,
    interval,
    resample_counts,
    resolvable_delta,
)
from aqr_exp.results.nuscenes import HIGHER_IS_BETTER, SUMMARY, class_order

DETECTION, PER_CLASS_AP, COST, AQR = "detection", "per_class_ap", "cost", "aqr"
SPREAD_CHECKED = (DETECTION, COST)
_METRICS_FIELD = {DETECTION: "metrics", PER_CLASS_AP: "per_class_ap", COST: "cost", AQR: "aqr"}


@dataclass(frozen=True)
class MetricSpec:
    """One compared quantity: where it lives in metrics.json and how to show it."""

    section: str
    name: str
    label: str
    higher_is_better: bool | None
    digits: int
    scale: float = 1.0
    relative_delta: bool = False


COST_SPECS = (
    MetricSpec(COST, "sec_per_iter", "s/iter", False, 3, relative_delta=True),
    MetricSpec(COST, "peak_memory_mb", "peak memory (MB)", False, 0, relative_delta=True),
    MetricSpec(COST, "train_time_s", "train time (h)", False, 2, 1 / 3600, relative_delta=True),
)


@dataclass(frozen=True)
class RunResult:
    """A run's registry record (empty when run.yaml is absent) and its metrics.json."""

    run_dir: Path
    record: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def run_id(self) -> str:
        return str(self.metrics.get("run_id") or self.record.get("run_id") or self.run_dir.name)

    def field(self, name: str) -> Any:
        """An identity field, from metrics.json first (it is what the numbers belong to)."""
        value = self.metrics.get(name)
        return self.record.get(name) if value is None else value


@dataclass(frozen=True)
class Group:
    """The runs compared as one row: a variant, or one value of a swept parameter."""

    label: str
    variant: str
    param: str | None
    value: Any

    @property
    def is_baseline(self) -> bool:
        return self.variant == BASELINE_VARIANT


@dataclass(frozen=True)
class BootstrapSettings:
    """The paired bootstrap behind each Δ's interval (`resamples` 0: none)."""

    resamples: int = 1000
    unit: str = "scene"
    seed: int = 0
    workers: int = field(default_factory=lambda: min(os.cpu_count() or 1, 8))

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise AqrError(f"bootstrap unit {self.unit!r}: expected one of {', '.join(UNITS)}")


@dataclass(frozen=True)
class Bootstrap:
    """What the intervals were computed from, and the baseline's own resolution."""

    settings: BootstrapSettings
    units: int  # scenes (or samples) resampled
    groups: list[str]  # the groups with intervals
    resolvable: dict[str, float]  # metric → smallest Δ the split resolves


@dataclass(frozen=True)
class Comparison:
    study: str | None
    groups: list[Group]
    runs: dict[str, list[RunResult]]
    specs: list[MetricSpec]
    stats: pd.DataFrame
    warnings: list[str]
    bootstrap: Bootstrap | None = None

    @property
    def baseline(self) -> Group | None:
        return next((g for g in self.groups if g.is_baseline), None)

    def row(self, group: str, name: str) -> dict[str, Any]:
        """The numbers of one group × metric ({} when the metric is not compared)."""
        rows = self.stats[(self.stats["group"] == group) & (self.stats["metric"] == name)]
        return rows.iloc[0].to_dict() if len(rows) else {}

    def stat(self, group: str, name: str, column: str) -> Any:
        return self.row(group, name).get(column, math.nan)


def _load(run_dir: Path) -> RunResult:
    record = read_run_record(run_dir) if (run_dir / RUN_FILE).is_file() else {}
    return RunResult(run_dir, record, read_metrics(run_dir))


def select_runs(
    results_root: Path, study: str | None = None, refs: Iterable[str] = ()
) -> tuple[str | None, list[RunResult], list[str]]:
    """Runs named explicitly are taken as they are; a study contributes its finished runs
    with metrics, and the others are named in a warning."""
    refs = list(refs)
    warnings: list[str] = []
    if refs:
        results = [_load(resolve_run_ref(results_root, ref, study)) for ref in refs]
        for result in results:
            status = result.record.get("status")
            if status not in (None, "done"):
                warnings.append(f"{result.run_id}: status {status}: its numbers may be partial")
        return study, results, warnings
    study = study or default_study(results_root)
    results, unfinished, uncollected = [], [], []
    corrupt: list[CorruptRecord] = []  # named in a warning each; the other runs compare
    for run_dir, record in readable(study_run_dirs(results_root, study), read_run_record, corrupt):
        if record.get("status") != "done":
            unfinished.append(f"{run_dir.name} ({record.get('status')})")
        elif not (run_dir / METRICS_FILE).is_file():
            uncollected.append(run_dir.name)
        else:
            for _, metrics in readable([run_dir], read_metrics, corrupt):
                results.append(RunResult(run_dir, record, metrics))
    if corrupt:
        files = ", ".join(f"{err.path.parent.name}/{err.path.name}" for err in corrupt)
        warnings.append(f"left out {len(corrupt)} runs with a corrupt file: {files}")
    if unfinished:
        warnings.append(f"left out {len(unfinished)} unfinished runs: {', '.join(unfinished)}")
    if uncollected:
        warnings.append(
            f"left out {len(uncollected)} done runs without {METRICS_FILE} "
            f"(run `aqr-exp collect`): {', '.join(uncollected)}"
        )
    if not results:
        raise AqrError(f"study {study!r}: no finished run with {METRICS_FILE} to compare")
    return study, results, warnings


def param_value(result: RunResult, param: str) -> Any:
    """A run's value of `param`: its sweep (by name or dotted key), else its overrides
    (exact dotted key, else the key's last part)."""
    sweep = result.field("sweep") or {}
    if param in (sweep.get("param"), sweep.get("key")):
        return sweep.get("value")
    overrides = result.record.get("overrides") or {}
    if param in overrides:
        return overrides[param]
    hits = {k: v for k, v in overrides.items() if k.rsplit(".", 1)[-1] == param}
    if len(hits) > 1:
        raise AqrError(f"{result.run_id}: {param!r} matches several overrides: {sorted(hits)}")
    return next(iter(hits.values()), None)


def format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _hashable(value: Any) -> Any:
    """Sweep values key groups: YAML lists become tuples, mappings their repr."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return repr(value) if isinstance(value, dict) else value


def group_of(result: RunResult, by: str | None) -> Group:
    variant = str(result.field("variant") or result.run_id)
    if variant == BASELINE_VARIANT:
        return Group(BASELINE_VARIANT, variant, None, None)
    param = by or (result.field("sweep") or {}).get("param")
    value = _hashable(param_value(result, param)) if param else None
    if value is None:
        return Group(variant, variant, None, None)
    return Group(f"{variant} ({param}={format_value(value)})", variant, param, value)


def _order(group: Group) -> tuple[Any, ...]:
    numeric = isinstance(group.value, int | float) and not isinstance(group.value, bool)
    value_key = (0, group.value, "") if numeric else (1, 0, str(group.value))
    return (not group.is_baseline, group.variant, group.param or "", value_key)


def metric_specs(results: list[RunResult]) -> list[MetricSpec]:
    """Detection metrics always; per-class AP for the classes present; AQR scalars logged."""
    classes = class_order({cls for r in results for cls in r.metrics.get("per_class_ap") or {}})
    aqr_keys = sorted({key for r in results for key in r.metrics.get("aqr") or {}})
    return [
        *(MetricSpec(DETECTION, m, m, HIGHER_IS_BETTER[m], 4) for m in SUMMARY),
        *(MetricSpec(PER_CLASS_AP, c, c, True, 3) for c in classes),
        *COST_SPECS,
        *(MetricSpec(AQR, k, k, None, 4) for k in aqr_keys),
    ]


def _raw_value(result: RunResult, spec: MetricSpec) -> float:
    value = (result.metrics.get(_METRICS_FIELD[spec.section]) or {}).get(spec.name)
    return math.nan if value is None else float(value)


def _aggregate(groups: dict[str, list[RunResult]], specs: list[MetricSpec]) -> pd.DataFrame:
    rows = [
        {"group": label, "metric": spec.name, "value": _raw_value(result, spec)}
        for label, results in groups.items()
        for spec in specs
        for result in results
    ]
    values = pd.DataFrame(rows, columns=["group", "metric", "value"])
    grouped = values.groupby(["group", "metric"], sort=False)["value"]
    stats = grouped.agg(runs="size", n="count", mean="mean", std="std").reset_index()
    meta = pd.DataFrame(
        [
            {
                "metric": s.name,
                "section": s.section,
                "higher_is_better": s.higher_is_better,
                "digits": s.digits,
                "scale": s.scale,
            }
            for s in specs
        ]
    )
    return stats.merge(meta, on="metric", how="left")


def _add_deltas(stats: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """Δ = group mean − baseline mean (NaN for the baseline itself and without one)."""
    base = stats[stats["group"] == baseline][["metric", "mean", "std"]]
    stats = stats.merge(
        base.rename(columns={"mean": "base_mean", "std": "base_std"}), on="metric", how="left"
    )
    is_base = stats["group"] == baseline
    stats["delta"] = (stats["mean"] - stats["base_mean"]).where(~is_base)
    stats["delta_rel"] = stats["delta"] / stats["base_mean"]
    spread = stats[["std", "base_std"]].max(axis=1, skipna=False)
    stats["within_spread"] = stats["delta"].abs() < spread
    return stats


def _mark_best(stats: pd.DataFrame) -> pd.DataFrame:
    """The best mean per metric in the metric's direction, judged at the displayed
    precision (so rows that print the same value are all marked)."""
    best = pd.Series(False, index=stats.index)
    for _, rows in stats[stats["higher_is_better"].notna()].groupby("metric", sort=False):
        digits, scale = int(rows["digits"].iloc[0]), float(rows["scale"].iloc[0])
        means = (rows["mean"] * scale).round(digits).dropna()
        if means.empty:
            continue
        target = means.max() if bool(rows["higher_is_better"].iloc[0]) else means.min()
        best[means.index[means == target]] = True
    stats["best"] = best
    return stats


def signed(value: float, digits: int) -> str:
    """+0.0400 / -0.0600; a difference that rounds to zero prints as +0.0000, not -0.0000."""
    if math.isnan(value):
        return "NaN"
    shown = value if round(value, digits) else 0.0
    return f"{shown:+.{digits}f}"


def delta_text(row: Any, spec: MetricSpec) -> str:
    """Δ as shown: relative (%) for cost, in the metric's unit and precision otherwise."""
    if spec.relative_delta:
        rel = row["delta_rel"]
        return "NaN" if math.isnan(rel) else signed(rel * 100, 1) + "%"
    return signed(row["delta"] * spec.scale, spec.digits)


def _warnings(
    comparison_stats: pd.DataFrame, groups: dict[str, list[RunResult]], specs: list[MetricSpec]
) -> list[str]:
    warnings = [
        f"{label}: n={len(results)}: no seed spread, so its Δ cannot be told from seed noise"
        for label, results in groups.items()
        if len(results) < 2
    ]
    by_name = {spec.name: spec for spec in specs}
    checked = comparison_stats[comparison_stats["section"].isin(SPREAD_CHECKED)]
    for _, row in checked[checked["within_spread"]].iterrows():
        spec = by_name[row["metric"]]
        spread = max(row["std"], row["base_std"]) * spec.scale
        warnings.append(
            f"{row['group']}: Δ {spec.label} = {delta_text(row, spec)} is within the seeds' "
            f"spread (std {spread:.{spec.digits}f}): not distinguishable from seed noise"
        )
    partial = comparison_stats[
        (comparison_stats["n"] > 0) & (comparison_stats["n"] < comparison_stats["runs"])
    ]
    for row in partial[partial["section"] != AQR].itertuples():
        warnings.append(
            f"{row.group}: {row.metric} is undefined (NaN) or missing in "
            f"{row.runs - row.n} of {row.runs} runs; its mean is over the other {row.n}"
        )
    epochs = {
        label: sorted(
            {str((r.metrics.get("source") or {}).get("metrics", {}).get("epoch")) for r in results}
        )
        for label, results in groups.items()
    }
    if len({e for es in epochs.values() for e in es}) > 1:
        listed = "; ".join(f"{label}: {', '.join(es)}" for label, es in epochs.items())
        warnings.append(f"the numbers come from different epochs ({listed})")
    return warnings


INTERVAL_COLUMNS = ["ci_low", "ci_high", "wins", "verdict", "noise"]
INTERVAL_SECTIONS = (DETECTION, PER_CLASS_AP)
FEW_UNITS = 20


def _match_tables(results: list[RunResult]) -> list[matching.MatchTable] | None:
    """The runs' matched predictions (collect keeps them), or None if any run has none."""
    paths = [(r.metrics.get("predictions") or {}).get("matches") for r in results]
    if not all(paths) or not all(Path(p).is_file() for p in paths):
        return None
    return [matching.load(Path(p)) for p in paths]


def _seed_se(stats: pd.DataFrame, group: str, baseline: str, metric: str) -> float | None:
    """Standard error of Δ from the seeds, when both sides have at least two runs."""
    rows = {
        g: stats[(stats["group"] == g) & (stats["metric"] == metric)] for g in (group, baseline)
    }
    if any(r.empty or int(r["n"].iloc[0]) < 2 for r in rows.values()):
        return None
    return float(
        math.sqrt(sum(float(r["std"].iloc[0]) ** 2 / int(r["n"].iloc[0]) for r in rows.values()))
    )


def _intervals(
    stats: pd.DataFrame,
    runs: dict[str, list[RunResult]],
    specs: list[MetricSpec],
    baseline: str,
    settings: BootstrapSettings,
) -> tuple[pd.DataFrame, Bootstrap | None, list[str]]:
    """Each Δ's interval from a paired bootstrap of the validation split, widened by the
    seeds' spread where there are seeds."""
    tables = {label: _match_tables(results) for label, results in runs.items()}
    if tables[baseline] is None:
        note = "no intervals: the baseline's runs kept no predictions (collected before "
        note += "predictions were kept, or imported from a log)"
        return pd.DataFrame(columns=["group", "metric", *INTERVAL_COLUMNS]), None, [note]
    notes = [
        f"{label}: no interval: its runs kept no predictions (imported, or collected before "
        "predictions were kept)"
        for label, found in tables.items()
        if found is None
    ]
    kept = {label: found for label, found in tables.items() if found is not None}
    reference = kept[baseline][0]
    units = len(reference.scenes if settings.unit == "scene" else reference.samples)
    counts = resample_counts(units, settings.resamples, settings.seed)
    means = group_resamples(kept, counts, settings.unit, settings.workers)
    rows = []
    for label in kept:
        if label == baseline:
            continue
        for spec in specs:
            if spec.section not in INTERVAL_SECTIONS or spec.name not in means[label]:
                continue
            row = stats[(stats["group"] == label) & (stats["metric"] == spec.name)].iloc[0]
            resampled = means[label][spec.name] - means[baseline][spec.name]
            if not np.isfinite(resampled).all() or math.isnan(row["delta"]):
                continue
            seed_se = _seed_se(stats, label, baseline, spec.name)
            found = interval(
                float(row["delta"]), resampled, spec.higher_is_better is not False, seed_se
            )
            rows.append(
                {
                    "group": label,
                    "metric": spec.name,
                    "ci_low": found.low,
                    "ci_high": found.high,
                    "wins": found.wins,
                    "verdict": found.verdict,
                    "noise": found.noise,
                }
            )
    if units < FEW_UNITS:
        unit = settings.unit
        notes.append(
            f"the split has only {units} {unit}s to resample: its intervals are coarse"
            + (
                " (`--bootstrap-unit sample` resamples samples, ignoring that a scene's "
                "samples are correlated)"
                if unit == "scene"
                else ""
            )
        )
    resolvable = {m: resolvable_delta(means[baseline][m]) for m in ("mAP", "NDS")}
    summary = Bootstrap(settings, units, [g for g in kept if g != baseline], resolvable)
    frame = pd.DataFrame(rows, columns=["group", "metric", *INTERVAL_COLUMNS])
    return frame, summary, notes


def compare(
    results: list[RunResult],
    by: str | None = None,
    study: str | None = None,
    notes: Iterable[str] = (),
    bootstrap: BootstrapSettings | None = None,
) -> Comparison:
    """Group runs (baseline, then variants and their sweep values) and aggregate over seeds;
    `notes` (e.g. which runs the selection left out) lead the warnings."""
    if not results:
        raise AqrError("no runs to compare")
    keyed = [(group_of(r, by), r) for r in results]
    groups = sorted({g for g, _ in keyed}, key=_order)
    if len({g.label for g in groups}) < len(groups):
        raise AqrError("two groups share a label: check the runs' variant and sweep fields")
    runs = {g.label: [r for k, r in keyed if k == g] for g in groups}
    specs = metric_specs(results)
    baseline = next((g.label for g in groups if g.is_baseline), None)
    stats = _mark_best(_add_deltas(_aggregate(runs, specs), baseline))
    warnings = [*notes, *_warnings(stats, runs, specs)]
    summary = None
    if baseline is not None and bootstrap is not None and bootstrap.resamples > 0:
        found, summary, bootstrap_notes = _intervals(stats, runs, specs, baseline, bootstrap)
        stats = stats.merge(found, on=["group", "metric"], how="left")
        warnings += bootstrap_notes
    else:
        stats = stats.assign(**{column: math.nan for column in INTERVAL_COLUMNS})
    if baseline is None:
        warnings.insert(0, f"no baseline (variant {BASELINE_VARIANT!r}) among the runs: no Δ")
    return Comparison(study, groups, runs, specs, stats, warnings, summary)
