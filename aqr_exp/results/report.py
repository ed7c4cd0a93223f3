"""Report: a study's comparison as `results/<study>/report.md` plus PNG figures.

It reads like the results section of a paper draft: setup, main result, tables (the
very tables `aqr-exp compare --format markdown` prints), figures, caveats, each
variant's config diff against the baseline, and where every number comes from.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from aqr_exp import paths, trackers
from aqr_exp.files import write_atomic
from aqr_exp.registry import CONFIG_FILE
from aqr_exp.results.compare import (
    AQR,
    COST,
    DETECTION,
    PER_CLASS_AP,
    BootstrapSettings,
    Comparison,
    RunResult,
    compare,
    delta_text,
    select_runs,
)
from aqr_exp.results.figures import (
    overview_figure,
    per_class_delta_figure,
    png_bytes,
    sweep_figure,
    sweep_params,
)
from aqr_exp.results.render import LEGEND, Table, table_text, tables

REPORT_FILE = "report.md"
FIGURES_DIR = "figures"
FINDING_METRICS = ("NDS", "mAP")
_EVALUATION_WORDS = {
    "val": "the validation",
    "test": "the test run",
    "eval block": "the evaluation printed in the imported log",
}
_SECTION_HEADINGS = {
    DETECTION: "Main results",
    PER_CLASS_AP: "Per-class AP",
    COST: "Training cost",
    AQR: "AQR diagnostics",
}


@dataclass(frozen=True)
class ReportFigure:
    file: str
    section: str
    caption: str
    figure: Figure


def build_figures(comparison: Comparison) -> list[ReportFigure]:
    figures = [
        ReportFigure(
            f"{FIGURES_DIR}/overview.png",
            DETECTION,
            "mAP and NDS per row; error bars: std over seeds; dashed line and band: "
            "the baseline's mean ± std.",
            overview_figure(comparison),
        )
    ]
    for param in sweep_params(comparison):
        figures.append(
            ReportFigure(
                f"{FIGURES_DIR}/sweep_{re.sub(r'[^A-Za-z0-9_.-]', '_', param)}.png",
                DETECTION,
                f"mAP and NDS vs {param}; error bars: std over seeds; dashed line and band: "
                "the baseline's mean ± std.",
                sweep_figure(comparison, param),
            )
        )
    per_class = per_class_delta_figure(comparison)
    if per_class is not None:
        figures.append(
            ReportFigure(
                f"{FIGURES_DIR}/per_class_delta.png",
                PER_CLASS_AP,
                "Per-class AP difference to the baseline (mean over seeds).",
                per_class,
            )
        )
    return figures


def _all_runs(comparison: Comparison) -> list[RunResult]:
    return [run for runs in comparison.runs.values() for run in runs]


def _where(result: RunResult) -> dict[str, object]:
    return (result.metrics.get("source") or {}).get("metrics") or {}


def numbers_from(result: RunResult) -> str:
    """Which evaluation a run's numbers are, and which file or log line holds it."""
    where = _where(result)
    text = str(where.get("from", "unknown"))
    if where.get("epoch") is not None:
        text += f" epoch {where['epoch']}"
    detail = where.get("file") or (f"log line {where['line']}" if "line" in where else None)
    return f"{text} ({detail})" if detail else text


def checkpoint_of(result: RunResult) -> str:
    if _where(result).get("checkpoint"):
        return str(_where(result)["checkpoint"])
    last = (result.metrics.get("source") or {}).get("last_checkpoint")
    return f"last: {Path(str(last)).name}" if last else "—"


def _setup(comparison: Comparison) -> str:
    runs = _all_runs(comparison)
    seeds = sorted({str(r.field("seed")) for r in runs})
    data = sorted({portable(str(r.record["data_root"])) for r in runs if r.record.get("data_root")})
    evaluations = {(str(_where(r).get("from")), _where(r).get("epoch")) for r in runs}
    if len(evaluations) == 1:
        kind, epoch = next(iter(evaluations))
        source = _EVALUATION_WORDS.get(kind, f"the {kind} evaluation")
        source += f" at epoch {epoch}" if epoch is not None else ""
    else:
        source = "each run's final evaluation (they differ: see Provenance)"
    labels = ", ".join(f"`{g.label}`" for g in comparison.groups)
    dataset = ", ".join(f"`{d}`" for d in data) if data else "a data set the runs did not record"
    return (
        f"We compare {len(comparison.groups)} configurations ({labels}) over {len(runs)} runs "
        f"(seeds {', '.join(seeds)}) on {dataset}. Every number is the mean ± sample standard "
        f"deviation over the n runs of a row, taken from {source}. " + LEGEND.format(best="in bold")
    )


def _value_text(comparison: Comparison, label: str, metric: str) -> str:
    mean = comparison.stat(label, metric, "mean")
    std = comparison.stat(label, metric, "std")
    return f"{mean:.4f}" + ("" if math.isnan(std) else f" ± {std:.4f}")


def _finding(comparison: Comparison, metric: str) -> str:
    stats = comparison.stats
    best = stats[(stats["metric"] == metric) & stats["best"]]["group"].tolist()
    if not best:
        return f"- {metric} is undefined in every row."
    baseline = comparison.baseline
    winner = best[0]
    value = _value_text(comparison, winner, metric)
    if baseline is None:
        return f"- Best {metric}: `{winner}`, {value} (no baseline to compare with)."
    base_value = _value_text(comparison, baseline.label, metric)
    if baseline.label in best:
        return f"- {metric}: no variant improves on the baseline ({base_value})."
    delta = comparison.stat(winner, metric, "delta")
    small = min(len(comparison.runs[winner]), len(comparison.runs[baseline.label])) < 2
    row = comparison.row(winner, metric)
    if isinstance(row.get("verdict"), str):
        verdict = (
            f"95% interval [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]: {row['verdict']}"
            + (", split noise only: n = 1 on one side" if small else "")
        )
    elif small:
        verdict = "n = 1 on one side, so there is no seed spread to judge it against"
    elif comparison.stat(winner, metric, "within_spread"):
        verdict = "within the seeds' spread: not a measurable difference"
    else:
        verdict = "larger than the seeds' spread"
    return (
        f"- Best {metric}: `{winner}`, {value} vs the baseline's {base_value} "
        f"(Δ {delta:+.4f}, {verdict})."
    )


def _interval_findings(comparison: Comparison) -> list[str]:
    """Which variants beat the baseline beyond noise, and what the split can resolve."""
    summary = comparison.bootstrap
    if summary is None:
        return []
    stats = comparison.stats
    lines = []
    for metric in FINDING_METRICS:
        rows = stats[(stats["metric"] == metric) & stats["group"].isin(summary.groups)]
        better = rows[rows["verdict"] == "better"]["group"].tolist()
        worse = rows[rows["verdict"] == "worse"]["group"].tolist()
        said = ", ".join(f"`{g}`" for g in better) if better else "no variant"
        line = f"- Beyond noise on {metric}: {said} beats the baseline"
        if worse:
            line += f"; {', '.join(f'`{g}`' for g in worse)} is worse"
        lines.append(line + ".")
    unit = summary.settings.unit
    resolvable = ", ".join(f"{m} ±{v:.4f}" for m, v in summary.resolvable.items())
    lines.append(
        f"- The smallest Δ this split can resolve (half the width of the baseline's own 95% "
        f"interval over {summary.units} {unit}s): {resolvable}."
    )
    return lines


def _cost_finding(comparison: Comparison) -> str | None:
    """What the best-NDS row costs relative to the baseline."""
    stats = comparison.stats
    best = stats[(stats["metric"] == FINDING_METRICS[0]) & stats["best"]]["group"].tolist()
    baseline = comparison.baseline
    if not best or baseline is None or baseline.label in best:
        return None
    parts = [
        f"{spec.label} {delta_text(comparison.row(best[0], spec.name), spec)}"
        for spec in comparison.specs
        if spec.section == COST and not math.isnan(comparison.stat(best[0], spec.name, "delta"))
    ]
    if not parts:
        return None
    return f"- Cost of `{best[0]}` relative to the baseline: {', '.join(parts)}."


def _table_block(table: Table, number: int) -> str:
    return f"Table {number}: {table.title}.\n\n{table_text(table.frame, 'markdown')}"


def _figure_block(file: str, caption: str, number: int) -> str:
    return f"![Figure {number}]({file})\n\n*Figure {number}: {caption}*"


def _matching_pair(
    base_runs: list[RunResult], runs: list[RunResult]
) -> tuple[RunResult, RunResult]:
    """A baseline and a variant run with the same seed where possible, so the diff shows
    the variant's change and not the seed."""
    for run in runs:
        for base in base_runs:
            if run.field("seed") == base.field("seed"):
                return base, run
    return base_runs[0], runs[0]


def portable(text: str) -> str:
    """Paths inside the project as project-relative, so a report reads the same (and can
    be shared) wherever the project lives."""
    root = str(paths.project_root())
    return text.replace(f"{root}/", "").replace(root, ".")


WORK_DIR_LINE = "work_dir = "


def _config_lines(path: Path) -> list[str]:
    """The saved config without `work_dir`, which names the run, not the variant (paths
    under it, such as where predictions go, read `<work_dir>`; the run's id elsewhere,
    such as its tracker names, reads `<run_id>`)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    work_dir = next((line[len(WORK_DIR_LINE) :].strip("'\"") for line in lines
                     if line.startswith(WORK_DIR_LINE)), None)  # fmt: skip
    run_id = path.parent.name
    return [
        portable(line.replace(work_dir, "<work_dir>") if work_dir else line).replace(
            run_id, "<run_id>"
        )
        for line in lines
        if not line.startswith(WORK_DIR_LINE)
    ]


def config_diff(base: RunResult, run: RunResult) -> str:
    """Unified diff of the saved resolved configs, or why there is none."""
    base_file, run_file = base.run_dir / CONFIG_FILE, run.run_dir / CONFIG_FILE
    missing = [f"`{p.parent.name}`" for p in (base_file, run_file) if not p.is_file()]
    if missing:
        return f"No saved {CONFIG_FILE} for {' and '.join(missing)}: no diff."
    diff = list(
        difflib.unified_diff(
            _config_lines(base_file),
            _config_lines(run_file),
            fromfile=f"{base.run_id}/{CONFIG_FILE}",
            tofile=f"{run.run_id}/{CONFIG_FILE}",
            lineterm="",
        )
    )
    if not diff:
        return f"Identical to the baseline's config (`{base.run_id}`)."
    return "```diff\n" + "\n".join(diff) + "\n```"


def _config_section(comparison: Comparison) -> str:
    baseline = comparison.baseline
    if baseline is None:
        return "No baseline among the runs: no config diffs."
    parts = []
    base_runs = comparison.runs[baseline.label]
    for group in comparison.groups:
        if group.is_baseline:
            continue
        base, run = _matching_pair(base_runs, comparison.runs[group.label])
        parts.append(f"### `{group.label}` vs baseline\n\n{config_diff(base, run)}")
    return "\n\n".join(parts) if parts else "Only the baseline was run."


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|")


def _provenance(comparison: Comparison) -> str:
    header = (
        "| run | row | seed | status | warm start from | numbers from | checkpoint | git commit "
        "| data root |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    rows, commands, curves, recorded = [], [], [], []
    for group in comparison.groups:
        for run in comparison.runs[group.label]:
            record = run.record
            commit = str(record.get("git_commit") or "—")[:12]
            cells = [
                run.run_id,
                group.label,
                run.field("seed"),
                record.get("status", "—"),
                record.get("init_from") or "—",
                numbers_from(run),
                checkpoint_of(run),
                commit,
                portable(str(record.get("data_root") or "—")),
            ]
            rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
            command = portable(str(record.get("command") or "not recorded"))
            commands.append(f"{run.run_id}: {command}")
            logged = record.get("trackers") or {}
            recorded.append(logged)
            places = [f"{name} {trackers.run_location(name, place, run.run_id)}"
                      for name, place in logged.items()]  # fmt: skip
            curves.append(f"{run.run_id}: {'; '.join(places) if places else 'no tracker'}")
    block = "\n".join(commands)
    look = "\n".join(trackers.where_to_look_all(recorded))
    curve_block = portable("\n".join([*([look, ""] if look else []), *curves]))
    return (
        f"{header}\n" + "\n".join(rows) + f"\n\nCommands:\n\n```text\n{block}\n```"
        f"\n\nTraining curves (losses, learning rate, AQR scalars, validation metrics):"
        f"\n\n```text\n{curve_block}\n```"
    )


@dataclass
class ExtraFigure:
    """A picture made elsewhere (e.g. `aqr-exp viz`), already written under the study."""

    file: str  # relative to the report
    caption: str


def report_markdown(
    comparison: Comparison, figures: list[ReportFigure], extra: Sequence[ExtraFigure] = ()
) -> str:
    title = comparison.study or "selected runs"
    parts = [f"# Results: {title}", _setup(comparison)]
    findings = [_finding(comparison, m) for m in FINDING_METRICS]
    findings += _interval_findings(comparison)
    cost = _cost_finding(comparison)
    parts.append("## Summary\n\n" + "\n".join([*findings, *([cost] if cost else [])]))
    table_number = figure_number = 0
    by_section: dict[str, list[Table]] = {}
    for table in tables(comparison, "markdown"):
        section = table.key.removesuffix("_delta").removesuffix("_intervals")
        by_section.setdefault(section, []).append(table)
    for section, heading in _SECTION_HEADINGS.items():
        blocks = []
        for table in by_section.get(section, []):
            table_number += 1
            blocks.append(_table_block(table, table_number))
        for figure in (f for f in figures if f.section == section):
            figure_number += 1
            blocks.append(_figure_block(figure.file, figure.caption, figure_number))
        if blocks:
            parts.append(f"## {heading}\n\n" + "\n\n".join(blocks))
    caveats = "\n".join(f"- {w}" for w in comparison.warnings) or (
        "None: every row has n ≥ 2 and every Δ of the detection and cost metrics exceeds "
        "the seeds' spread."
    )
    if extra:
        blocks = []
        for figure in extra:
            figure_number += 1
            blocks.append(_figure_block(figure.file, figure.caption, figure_number))
        parts.append("## Seeing AQR\n\n" + "\n\n".join(blocks))
    parts.append(f"## Caveats\n\n{caveats}")
    parts.append(f"## Configuration differences\n\n{_config_section(comparison)}")
    parts.append(f"## Provenance\n\n{_provenance(comparison)}")
    return "\n\n".join(parts) + "\n"


def _remove_stale_figures(folder: Path, keep: set[str]) -> None:
    """Figures of an earlier report that this one no longer draws would mislead."""
    if folder.is_dir():
        for png in folder.glob("*.png"):
            if png.name not in keep:
                png.unlink()


def write_report(
    results_root: Path,
    study: str | None = None,
    by: str | None = None,
    extra: Sequence[ExtraFigure] = (),
    bootstrap: BootstrapSettings | None = None,
) -> Path:
    """Write `<results_root>/<study>/report.md` and its figures; return the report's path."""
    study, results, notes = select_runs(results_root, study)
    comparison = compare(results, by=by, study=study, notes=notes, bootstrap=bootstrap)
    out_dir = results_root / str(study)
    figures = build_figures(comparison)
    for figure in figures:
        write_atomic(out_dir / figure.file, png_bytes(figure.figure))
    _remove_stale_figures(out_dir / FIGURES_DIR, {Path(f.file).name for f in figures})
    report = out_dir / REPORT_FILE
    write_atomic(report, report_markdown(comparison, figures, extra))
    return report
