"""Legacy logs: mmdet3d ≤ 1.0 / mmcv 1.x text logs → the same metrics.json as collect.

Runs made before this tool only left text logs. Three kinds of lines carry numbers:

- training lines `Epoch [E][i/N]\\tlr: ..., eta: ..., time: ..., memory: ..., loss: ...`
- validation lines `Epoch(val) [E][N]\\tpts_bbox_NuScenes/mAP: ..., ...` (and the result
  dict `{'pts_bbox_NuScenes/mAP': ...}` that tools/test.py prints)
- the devkit's printed block `mAP: ...` … `NDS: ...`, `Per-class results:` and its table
  (stdout, so present when the log is the job's captured output).

A block is merged into the validation line that follows it (the line wins: it has
four decimals and the per-distance APs); a block with no such line is an evaluation
of its own (a test run). Truncated or foreign logs raise AqrError naming what is missing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aqr_exp.errors import AqrError
from aqr_exp.files import check_input_file, write_json_atomic
from aqr_exp.registry import (
    IMPORTED,
    METRICS_FILE,
    RUN_FILE,
    check_name,
    is_imported,
    read_run_record,
    runs_dir,
    write_run_record,
)
from aqr_exp.results.nuscenes import CLASSES, SUMMARY, TP_ERRORS, Evaluation, evaluation_from_flat
from aqr_exp.results.record import identity, metrics_payload

_LOGGER_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} - \S+ - [A-Z]+ - ")
_TRAIN = re.compile(r"\bEpoch \[(?P<epoch>\d+)\]\[(?P<iter>\d+)/(?P<total>\d+)\]\s+(?P<rest>.*)$")
_VAL = re.compile(r"\bEpoch\(val\) \[(?P<epoch>\d+)\]\[\d+\]\s+(?P<rest>.*)$")
_PAIR = re.compile(r"(?:^|,\s*)(?P<key>[A-Za-z_][\w./-]*): (?P<value>[^,]+)")
_DICT_ITEM = re.compile(r"'(?P<key>\w+_NuScenes/[\w.]+)': (?P<value>[^,}]+)")
_RESULT_KEY = re.compile(r"^(?P<result>\w+?)_NuScenes/(?P<name>.+)$")
_SUMMARY_LINE = re.compile(r"^(?P<name>" + "|".join(SUMMARY) + r"): (?P<value>\S+)$")
_EVALUATING = re.compile(r"Evaluating bboxes of (\w+)")
_MMENGINE_ERA = re.compile(r"Epoch\(train\)|NuScenes metric/")
_TABLE_FIELDS = ("AP", *TP_ERRORS)
PREFERRED_RESULT = "pts_bbox"


@dataclass
class _Block:
    """The devkit's printed summary and per-class table."""

    line: int
    result: str | None
    summary: dict[str, float] = field(default_factory=dict)
    table: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class LegacyLog:
    train: list[dict[str, Any]]
    evaluations: list[Evaluation]


def _number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None


def _pairs(text: str) -> dict[str, float]:
    """`key: value` items of an mmcv line, numbers only (skips `eta: 1 day, 2:03:04`)."""
    found = ((m["key"], _number(m["value"])) for m in _PAIR.finditer(text))
    return {key: value for key, value in found if value is not None}


def _by_result(values: dict[str, float]) -> dict[str, dict[str, float]]:
    """`pts_bbox_NuScenes/mAP` → {'pts_bbox': {'mAP': ...}}."""
    grouped: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        match = _RESULT_KEY.match(key)
        if match:
            grouped.setdefault(match["result"], {})[match["name"]] = value
    return grouped


def _table_row(line: str) -> tuple[str, dict[str, float]] | None:
    parts = line.split()
    if len(parts) != len(_TABLE_FIELDS) + 1 or not parts[0].replace("_", "").isalpha():
        return None
    numbers = [_number(p) for p in parts[1:]]
    if any(n is None for n in numbers):
        return None
    return parts[0], dict(zip(_TABLE_FIELDS, numbers, strict=True))  # type: ignore[arg-type]


def _read_block(lines: list[str], start: int, path: Path, result: str | None) -> tuple[_Block, int]:
    """Read the block starting at `start` (a `mAP:` line); return it and the next index."""
    block = _Block(line=start + 1, result=result)
    i = start
    while i < len(lines) and (match := _SUMMARY_LINE.match(lines[i])):
        value = _number(match["value"])
        if value is not None:
            block.summary[match["name"]] = value
        i += 1
    while i < len(lines) and (not lines[i] or lines[i].startswith("Eval time")):
        i += 1
    if i < len(lines) and lines[i] == "Per-class results:":
        i += 1
        if i < len(lines) and lines[i].startswith("Object Class"):
            i += 1
        while i < len(lines) and (row := _table_row(lines[i])):
            block.table[row[0]] = row[1]
            i += 1
    missing = [name for name in SUMMARY if name not in block.summary]
    if not block.table:
        missing.append("the 'Per-class results:' table")
    else:
        missing += [f"the table row for {cls}" for cls in CLASSES if cls not in block.table]
    if missing:
        raise AqrError(
            f"{path}: the nuScenes evaluation block at line {block.line} is incomplete "
            f"(truncated log?): missing {', '.join(missing)}"
        )
    return block, i


def _block_flat(block: _Block) -> dict[str, float]:
    flat = dict(block.summary)
    for cls, row in block.table.items():
        flat.update({f"{cls}_{err}": row[err] for err in TP_ERRORS})
    return flat


def _pick_block(pending: list[_Block], name: str | None) -> _Block | None:
    """The block printed for result `name` (blocks without an 'Evaluating bboxes of'
    line match any result)."""
    candidates = pending if name is None else [b for b in pending if b.result in (name, None)]
    return candidates[-1] if candidates else None


def _merge(
    values: dict[str, float],
    block: _Block | None,
    epoch: int | None,
    origin: dict[str, object],
    path: Path,
) -> Evaluation:
    """One evaluation from a validation line's values (they win) and its devkit block."""
    flat = {**(_block_flat(block) if block else {}), **values}
    missing = [m for m in ("mAP", "NDS") if m not in flat]
    if missing:
        raise AqrError(
            f"{path}: the evaluation at line {origin['line']} is incomplete "
            f"(truncated log?): missing {', '.join(missing)}"
        )
    table_ap = {cls: row["AP"] for cls, row in block.table.items()} if block else None
    return evaluation_from_flat(flat, epoch, origin, table_ap)


def _line_evaluation(
    values: dict[str, float],
    pending: list[_Block],
    epoch: int | None,
    origin: dict[str, object],
    path: Path,
) -> list[Evaluation]:
    """A validation line or printed result dict, merged with the block printed before it;
    none when it carries no nuScenes result and no block preceded it."""
    results = _by_result(values)
    name = PREFERRED_RESULT if PREFERRED_RESULT in results else next(iter(results), None)
    block = _pick_block(pending, name)
    if name is None and block is None:
        return []
    return [_merge(results.get(name or "", {}), block, epoch, origin, path)]


def _standalone(block: _Block, path: Path) -> Evaluation:
    """A block no validation line follows: an evaluation of its own (e.g. tools/test.py)."""
    return _merge({}, block, None, {"from": "eval block", "line": block.line}, path)


def _train_line(match: re.Match[str]) -> dict[str, Any]:
    """mmcv's per-epoch counters → mmengine's shape (`step` = global iteration)."""
    epoch, inner, total = int(match["epoch"]), int(match["iter"]), int(match["total"])
    step = (epoch - 1) * total + inner
    return {**_pairs(match["rest"]), "epoch": epoch, "iter": step, "step": step}


def _no_evaluation_error(path: Path, lines: list[str], train_lines: int) -> AqrError:
    if any(_MMENGINE_ERA.search(line) for line in lines):
        return AqrError(
            f"{path}: this is an mmengine-era (mmdet3d ≥ 1.1) log, not an mmdet3d ≤ 1.0 one: "
            "run `aqr-exp collect` on its work dir instead"
        )
    if not train_lines:
        return AqrError(
            f"{path}: not an mmdet3d ≤ 1.0 / mmcv 1.x log: found no training line "
            "('Epoch [e][i/n]'), no 'Epoch(val)' line and no nuScenes evaluation block"
        )
    return AqrError(
        f"{path}: no nuScenes evaluation in {train_lines} training lines: no 'Epoch(val)' line "
        "with *_NuScenes/ metrics and no devkit 'mAP: …' block (never validated, or truncated)"
    )


def parse_legacy_log(path: Path) -> LegacyLog:
    """Training lines and evaluations of a legacy log, in file order."""
    check_input_file(path, "log", "an mmdet3d ≤ 1.0 / mmcv 1.x text log file")
    raw = path.read_text(encoding="utf-8", errors="replace").splitlines()
    lines = [_LOGGER_PREFIX.sub("", line).strip() for line in raw]
    train: list[dict[str, Any]] = []
    evaluations: list[Evaluation] = []
    pending: list[_Block] = []  # blocks printed since the last validation/training line
    result_name: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("mAP: "):
            block, i = _read_block(lines, i, path, result_name)
            pending.append(block)
            continue
        origin: dict[str, object] = {"line": i + 1}
        if match := _EVALUATING.search(line):
            result_name = match[1]
        elif match := _VAL.search(line):
            values = _pairs(match["rest"])
            epoch = int(match["epoch"])
            evaluations += _line_evaluation(values, pending, epoch, {"from": "val", **origin}, path)
            pending = []
        elif line.startswith("{") and (items := _DICT_ITEM.findall(line)):
            values = {key: v for key, text in items if (v := _number(text)) is not None}
            evaluations += _line_evaluation(values, pending, None, {"from": "test", **origin}, path)
            pending = []
        elif match := _TRAIN.search(line):
            evaluations += [_standalone(block, path) for block in pending]
            pending = []
            train.append(_train_line(match))
        i += 1
    evaluations += [_standalone(block, path) for block in pending]
    if not evaluations:
        raise _no_evaluation_error(path, lines, len(train))
    return LegacyLog(train=train, evaluations=evaluations)


def legacy_metrics(path: Path, run_identity: dict[str, Any]) -> dict[str, Any]:
    """metrics.json content from a legacy log: the numbers of its last evaluation."""
    parsed = parse_legacy_log(path)
    data = path.read_bytes()
    source = {
        "log": str(path.resolve()),
        "sha256": hashlib.sha256(data).hexdigest(),
        "step_unit": "epoch",
    }
    return metrics_payload(
        run_identity, parsed.evaluations, parsed.evaluations[-1], parsed.train, source
    )


def import_log(
    path: Path,
    name: str,
    study: str,
    results_root: Path,
    variant: str | None = None,
    seed: int | None = None,
    force: bool = False,
) -> Path:
    """Create `<study>/runs/<name>/` (run.yaml status done + metrics.json) from a legacy log.
    run.yaml keeps to the registry's fields: `command` says where the numbers were
    imported from. The log is parsed first, so a bad log never leaves a run dir behind."""
    run_dir = runs_dir(results_root, check_name(study, "study name")) / check_name(name, "run name")
    if (run_dir / RUN_FILE).is_file():
        previous = read_run_record(run_dir)
        if not force:
            raise AqrError(f"{run_dir} exists: pass --force to replace it")
        if not is_imported(previous):
            raise AqrError(f"{run_dir} is a run of this tool, not an import: not replacing it")
    record = {
        "run_id": name,
        "study": study,
        "variant": variant or name,
        "sweep": None,
        "overrides": {},
        "seed": seed,
        "config": None,
        "work_dir": None,
        "status": "done",
        "reason": None,
        "exit_code": None,
        "signal": None,
        "log_tail": None,
        "command": f"imported from {path.resolve()}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "started": None,
        "finished": None,
        "launcher": {"type": IMPORTED, "host": None, "pid": None, "job_id": None},
        "git_commit": None,
        "data_root": None,
    }
    payload = legacy_metrics(path, identity(record))
    write_json_atomic(run_dir / METRICS_FILE, payload)
    write_run_record(run_dir, record)
    return run_dir
