"""Render a Comparison as text: terminal table, markdown or CSV.

Only formatting lives here; `compare.py` owns every number. The report embeds the same
markdown tables, so a number in the report is the number `aqr-exp compare` prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from aqr_exp.errors import AqrError
from aqr_exp.results.compare import (
    AQR,
    COST,
    DETECTION,
    INTERVAL_COLUMNS,
    PER_CLASS_AP,
    Comparison,
    MetricSpec,
    delta_text,
    signed,
)

FORMATS = ("table", "markdown", "csv")
ARROWS = {True: " ↑", False: " ↓", None: ""}
WITHIN_SPREAD = " †"
LEGEND = (
    "↑ higher is better, ↓ lower is better; the best value per column is {best}; "
    "Δ = variant − baseline, † = |Δ| within the seeds' standard deviation."
)
_TITLES = {
    DETECTION: "Detection metrics (mean ± std over seeds)",
    PER_CLASS_AP: "Per-class AP, mean over the four distance thresholds (mean ± std over seeds)",
    COST: "Training cost (mean ± std over seeds)",
    AQR: "AQR scalars, last logged value (mean ± std over seeds)",
}
_DELTA_TITLES = {
    DETECTION: "Δ vs baseline: detection metrics",
    PER_CLASS_AP: "Δ vs baseline: per-class AP",
    COST: "Δ vs baseline: training cost (relative)",
}
CSV_COLUMNS = [
    "group",
    "variant",
    "param",
    "value",
    "section",
    "metric",
    "runs",
    "n",
    "mean",
    "std",
    "delta",
    "delta_rel",
    "within_spread",
    "best",
    "higher_is_better",
    *INTERVAL_COLUMNS,
]


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    frame: pd.DataFrame


def _number(value: float, digits: int) -> str:
    return "NaN" if math.isnan(value) else f"{value:.{digits}f}"


def _mark_best(text: str, fmt: str) -> str:
    return f"**{text}**" if fmt == "markdown" else f"{text} *"


def value_cell(row: dict[str, Any], spec: MetricSpec, fmt: str) -> str:
    """mean ± std; a dash where a cost or AQR value was never logged for the row."""
    if row["n"] == 0 and spec.section in (COST, AQR):
        return "—"
    mean, std = row["mean"] * spec.scale, row["std"] * spec.scale
    text = _number(mean, spec.digits)
    if not math.isnan(mean) and not math.isnan(std):
        text += f" ± {std:.{spec.digits}f}"
    return _mark_best(text, fmt) if row["best"] else text


def delta_cell(row: dict[str, Any], spec: MetricSpec) -> str:
    text = delta_text(row, spec)
    return text + WITHIN_SPREAD if row["within_spread"] else text


def _rows(comparison: Comparison) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (row["group"], row["metric"]): row for row in comparison.stats.to_dict(orient="records")
    }


def _shown_specs(comparison: Comparison, section: str) -> list[MetricSpec]:
    """Detection columns always (NaN there means undefined); other columns only with data."""
    specs = [s for s in comparison.specs if s.section == section]
    if section == DETECTION:
        return specs
    defined = comparison.stats[comparison.stats["n"] > 0]["metric"]
    return [s for s in specs if s.name in set(defined)]


def _header(spec: MetricSpec, delta: bool) -> str:
    label = f"Δ {spec.label}" if delta else spec.label
    return label + ("" if spec.section == PER_CLASS_AP else ARROWS[spec.higher_is_better])


def section_tables(comparison: Comparison, section: str, fmt: str) -> list[Table]:
    specs = _shown_specs(comparison, section)
    if not specs:
        return []
    rows = _rows(comparison)
    values = pd.DataFrame(
        [
            {
                "variant": g.label,
                "n": str(len(comparison.runs[g.label])),
                **{_header(s, False): value_cell(rows[(g.label, s.name)], s, fmt) for s in specs},
            }
            for g in comparison.groups
        ]
    )
    tables = [Table(section, _TITLES[section], values)]
    others = [g for g in comparison.groups if not g.is_baseline]
    if comparison.baseline is None or section == AQR or not others:
        return tables
    deltas = pd.DataFrame(
        [
            {
                "variant": g.label,
                "n": str(len(comparison.runs[g.label])),
                **{_header(s, True): delta_cell(rows[(g.label, s.name)], s) for s in specs},
            }
            for g in others
        ]
    )
    return [*tables, Table(f"{section}_delta", _DELTA_TITLES[section], deltas)]


def interval_text(row: dict[str, Any], spec: MetricSpec) -> str:
    low, high = row["ci_low"] * spec.scale, row["ci_high"] * spec.scale
    return f"[{signed(low, spec.digits)}, {signed(high, spec.digits)}]"


def interval_table(comparison: Comparison) -> Table | None:
    """Each detection Δ with its 95% interval, the share of resamples the variant wins
    and the verdict: the answer to "is this Δ real?"."""
    summary = comparison.bootstrap
    if summary is None or not summary.groups:
        return None
    rows = _rows(comparison)
    specs = [s for s in comparison.specs if s.section == DETECTION]
    frame = pd.DataFrame(
        [
            {
                "variant": label,
                "n": str(len(comparison.runs[label])),
                "metric": _header(spec, False),
                "Δ": delta_text(row, spec),
                "95% interval": interval_text(row, spec),
                "variant better in": f"{row['wins']:.0%}",
                "verdict": row["verdict"],
                "larger noise": row["noise"],
            }
            for label in summary.groups
            for spec in specs
            if isinstance((row := rows[(label, spec.name)])["verdict"], str)
        ]
    )
    unit = summary.settings.unit
    title = (
        f"Is the Δ real? 95% intervals from a paired bootstrap over the {summary.units} "
        f"validation {unit}s ({summary.settings.resamples:,} resamples, seed "
        f"{summary.settings.seed}), widened by the seeds' spread where n ≥ 2 on both sides"
    )
    return Table(f"{DETECTION}_intervals", title, frame) if len(frame) else None


def tables(comparison: Comparison, fmt: str) -> list[Table]:
    """All tables of a comparison, in reading order."""
    detection = section_tables(comparison, DETECTION, fmt)
    significance = interval_table(comparison)
    return [
        *detection,
        *([significance] if significance else []),
        *(
            table
            for section in (PER_CLASS_AP, COST, AQR)
            for table in section_tables(comparison, section, fmt)
        ),
    ]


def table_text(frame: pd.DataFrame, fmt: str) -> str:
    """`disable_numparse` keeps the cells as formatted (tabulate would reformat '0.6400')."""
    tablefmt = "pipe" if fmt == "markdown" else "simple"
    return frame.to_markdown(index=False, tablefmt=tablefmt, disable_numparse=True)


def stats_frame(comparison: Comparison) -> pd.DataFrame:
    """The tidy numbers (one row per group × metric), as the CSV output carries them."""
    meta = pd.DataFrame(
        [
            {"group": g.label, "variant": g.variant, "param": g.param, "value": g.value}
            for g in comparison.groups
        ]
    )
    return comparison.stats.merge(meta, on="group", how="left")[CSV_COLUMNS]


def render(comparison: Comparison, fmt: str) -> str:
    """The text `aqr-exp compare` prints, in one of FORMATS. `fmt` is a plain string, so
    anything else is an error: a typo would otherwise fall through to the table."""
    if fmt not in FORMATS:
        raise AqrError(f"unknown output format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return stats_frame(comparison).to_csv(index=False)
    legend = LEGEND.format(best="in bold" if fmt == "markdown" else "marked *")
    parts = []
    for table in tables(comparison, fmt):
        title = (
            f"### {table.title}"
            if fmt == "markdown"
            else f"{table.title}\n{'-' * len(table.title)}"
        )
        parts.append(f"{title}\n\n{table_text(table.frame, fmt)}")
    parts.append(legend)
    if comparison.warnings:
        heading = "**Warnings**" if fmt == "markdown" else "Warnings"
        parts.append(heading + "\n\n" + "\n".join(f"- {w}" for w in comparison.warnings))
    return "\n\n".join(parts) + "\n"
