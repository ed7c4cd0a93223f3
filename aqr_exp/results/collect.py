"""Collect: an mmengine work dir → the run's metrics.json.

mmengine writes one `<YYYYmmdd_HHMMSS>/` folder per start of a runner: training and
validation lines go to `<ts>/vis_data/scalars.json`, a test run writes `<ts>/<ts>.json`.
A resumed run adds a folder, so folders are merged in time order and a later folder's
line replaces an earlier one for the same step.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aqr_exp.configs import PREDICTIONS_DIR
from aqr_exp.errors import AqrError
from aqr_exp.files import write_json_atomic
from aqr_exp.records import readable
from aqr_exp.registry import (
    CONFIG_FILE,
    METRICS_FILE,
    is_imported,
    list_studies,
    read_run_record,
    study_run_dirs,
)
from aqr_exp.results import matching
from aqr_exp.results.bootstrap import evaluate
from aqr_exp.results.nuscenes import Evaluation, evaluation_from_flat
from aqr_exp.results.record import identity, metrics_payload

logger = logging.getLogger(__name__)

METRIC_PREFIX = "NuScenes metric/pred_instances_3d_NuScenes/"
_TIMESTAMP = re.compile(r"^\d{8}_\d{6}$")
_LOADED_CHECKPOINT = re.compile(r"Load checkpoint from (\S+)")
_EPOCH_CHECKPOINT = re.compile(r"epoch_(\d+)\.pth$")


@dataclass(frozen=True)
class Outcome:
    """What collect did for one run: `collected`, `skipped` (nothing to read yet) or `error`."""

    run_dir: Path
    state: str
    detail: str


@dataclass(frozen=True)
class WorkDirLogs:
    """The merged logs of one work dir."""

    folders: list[str]
    train: list[dict[str, Any]]
    val: list[tuple[str, dict[str, Any]]]


def timestamp_folders(work_dir: Path) -> list[Path]:
    """mmengine's per-start folders, oldest first (the names sort by time)."""
    if not work_dir.is_dir():
        return []
    return sorted(p for p in work_dir.iterdir() if p.is_dir() and _TIMESTAMP.match(p.name))


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """JSON Lines; NaN/Infinity are read as floats. A partial last line (a run killed
    while writing) is dropped with a warning; a bad line elsewhere is an error."""
    texts = path.read_text(encoding="utf-8").splitlines()
    lines = []
    for number, text in enumerate(texts, 1):
        if not text.strip():
            continue
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError as err:
            if number == len(texts):
                logger.warning("%s:%d: dropped a partial last line", path, number)
                continue
            raise AqrError(f"{path}:{number}: not a JSON line ({err.msg})") from err
    return lines


def read_work_dir(work_dir: Path) -> WorkDirLogs:
    """Merge the scalars.json of all timestamp folders (later folders win per step)."""
    folders = timestamp_folders(work_dir)
    train: dict[int, dict[str, Any]] = {}
    val: dict[int, tuple[str, dict[str, Any]]] = {}
    for folder in folders:
        path = folder / "vis_data" / "scalars.json"
        if not path.is_file():
            continue
        for line in read_json_lines(path):
            if "step" not in line:
                raise AqrError(f"{path}: a line without 'step' ({sorted(line)[:5]}...)")
            if "iter" in line:
                train[line["step"]] = line
            else:
                val[line["step"]] = (folder.name, line)
    return WorkDirLogs(
        folders=[f.name for f in folders],
        train=[train[s] for s in sorted(train)],
        val=[val[s] for s in sorted(val)],
    )


def _nuscenes_values(line: dict[str, Any]) -> dict[str, float]:
    return {k[len(METRIC_PREFIX) :]: v for k, v in line.items() if k.startswith(METRIC_PREFIX)}


def validation_evaluations(logs: WorkDirLogs) -> list[Evaluation]:
    """One Evaluation per validation step that holds NuScenesMetric keys."""
    evaluations = []
    for folder, line in logs.val:
        values = _nuscenes_values(line)
        if values:
            origin = {"from": "val", "file": f"{folder}/vis_data/scalars.json"}
            evaluations.append(evaluation_from_flat(values, line["step"], origin))
    return evaluations


def _loaded_checkpoint(log_path: Path) -> str | None:
    """The checkpoint a test run loaded, from its text log."""
    if not log_path.is_file():
        return None
    found = _LOADED_CHECKPOINT.findall(log_path.read_text(encoding="utf-8", errors="replace"))
    return found[-1] if found else None


def latest_test_evaluation(work_dir: Path) -> Evaluation | None:
    """The newest test run's metrics (`<ts>/<ts>.json`), with the checkpoint it loaded."""
    for folder in reversed(timestamp_folders(work_dir)):
        path = folder / f"{folder.name}.json"
        if not path.is_file():
            continue
        values = _nuscenes_values(json.loads(path.read_text(encoding="utf-8")))
        if not values:
            continue
        checkpoint = _loaded_checkpoint(folder / f"{folder.name}.log")
        epoch_match = _EPOCH_CHECKPOINT.search(checkpoint or "")
        origin = {"from": "test", "file": f"{folder.name}/{folder.name}.json"}
        origin["checkpoint"] = checkpoint
        return evaluation_from_flat(values, int(epoch_match[1]) if epoch_match else None, origin)
    return None


def _last_checkpoint(work_dir: Path) -> str | None:
    path = work_dir / "last_checkpoint"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def collect_work_dir(work_dir: Path, run_identity: dict[str, Any]) -> dict[str, Any] | None:
    """metrics.json content for a work dir; None when it holds no evaluation yet.
    The reported numbers are the newest test run if any, else the last validation."""
    logs = read_work_dir(work_dir)
    evaluations = validation_evaluations(logs)
    test = latest_test_evaluation(work_dir)
    chosen = test or (evaluations[-1] if evaluations else None)
    if chosen is None:
        return None
    source = {
        "work_dir": str(work_dir),
        "folders": logs.folders,
        "step_unit": "epoch" if any("epoch" in line for line in logs.train) else "iter",
        "last_checkpoint": _last_checkpoint(work_dir),
    }
    return metrics_payload(run_identity, evaluations, chosen, logs.train, source)


def predictions_file(work_dir: Path, loop: str) -> Path:
    """Where NuScenesMetric left the predictions of a loop's (`val`, `test`) latest
    evaluation (`configs.keep_predictions`)."""
    return work_dir / PREDICTIONS_DIR / loop / "pred_instances_3d" / "results_nusc.json"


def evaluated_split(run_dir: Path, loop: str) -> tuple[Path, str]:
    """(data root, nuScenes version) the run's metric evaluated on, from its saved config."""
    from mmengine import load
    from mmengine.config import Config

    config = run_dir / CONFIG_FILE
    if not config.is_file():
        raise AqrError(f"{run_dir}: no {CONFIG_FILE}: cannot tell which split was evaluated")
    evaluator = Config.fromfile(str(config)).get(f"{loop}_evaluator") or {}
    if not isinstance(evaluator, dict) or "ann_file" not in evaluator:
        raise AqrError(f"{config}: {loop}_evaluator has no ann_file")
    version = load(evaluator["ann_file"])["metainfo"]["version"]
    return Path(evaluator["data_root"]), str(version)


def keep_matches(run_dir: Path, work_dir: Path, chosen: dict[str, Any]) -> dict[str, Any] | None:
    """Match the reported evaluation's predictions once (`matching.py`) and say where
    they are; None when the run kept none (older runs, imported logs), when its
    detector gave no box (nothing to resample), or when they are not the reported
    evaluation's."""
    loop = "test" if chosen["source"]["metrics"]["from"] == "test" else "val"
    results = predictions_file(work_dir, loop)
    if not results.is_file():
        return None
    path = results.with_name("matches.npz")
    if path.is_file() and path.stat().st_mtime >= results.stat().st_mtime:
        table = matching.load(path)
    else:
        if not any(json.loads(results.read_text(encoding="utf-8"))["results"].values()):
            return None
        data_root, version = evaluated_split(run_dir, loop)
        table = matching.match_predictions(results, data_root, version)
        problem = numbers_differ(table, chosen["metrics"], results)
        if problem:
            logger.warning("%s: kept without an interval", problem)
            return None
        matching.save(table, path)
    return {
        "file": str(results),
        "matches": str(path),
        "samples": len(table.samples),
        "scenes": len(table.scenes),
    }


def numbers_differ(table: matching.MatchTable, logged: dict[str, float], path: Path) -> str | None:
    """Why the kept predictions are not the reported evaluation's (they must reproduce
    its mAP/NDS), or None when they are."""
    recomputed = evaluate(table, np.ones(len(table.samples), dtype=np.int64))
    for name in ("mAP", "NDS"):
        if name in logged and abs(recomputed[name] - logged[name]) > 1e-4:
            return (
                f"{path}: its predictions score {name} {recomputed[name]:.4f}, the run logged "
                f"{logged[name]:.4f}: they are not the reported evaluation's"
            )
    return None


def resolve_work_dir(work_dir: str, results_root: Path) -> Path:
    """A relative work_dir is relative to the project root (the parent of results/)."""
    path = Path(work_dir).expanduser()
    return path if path.is_absolute() else results_root.parent / path


def collect_run(run_dir: Path, results_root: Path, record: dict[str, Any] | None = None) -> Outcome:
    """Write `<run_dir>/metrics.json` from the run's work dir (`record`: its run.yaml,
    when already read)."""
    record = read_run_record(run_dir) if record is None else record
    if not record.get("work_dir"):
        kept = " (imported run: its metrics.json is kept)" if is_imported(record) else ""
        return Outcome(run_dir, "skipped", f"no work_dir in run.yaml{kept}")
    work_dir = resolve_work_dir(str(record["work_dir"]), results_root)
    payload = collect_work_dir(work_dir, identity(record))
    if payload is None:
        return Outcome(
            run_dir,
            "skipped",
            f"no validation or test results yet in {work_dir} (status {record.get('status')})",
        )
    predictions = keep_matches(run_dir, work_dir, payload)
    if predictions is not None:
        payload["predictions"] = predictions
    write_json_atomic(run_dir / METRICS_FILE, payload)
    metrics = payload["metrics"]
    where = payload["source"]["metrics"]
    return Outcome(
        run_dir,
        "collected",
        f"mAP {metrics.get('mAP', float('nan')):.4f} NDS {metrics.get('NDS', float('nan')):.4f} "
        f"({where['from']} epoch {where['epoch']}, status {record.get('status')})",
    )


def collect(results_root: Path, study: str | None = None) -> list[Outcome]:
    """Collect every run of a study (all studies when None); a run whose logs cannot be
    read is reported as an `error` outcome, one with a corrupt run.yaml in a warning,
    and neither stops the others."""
    studies = [study] if study else list_studies(results_root)
    if not studies:
        raise AqrError(f"no studies under {results_root}")
    outcomes = []
    for name in studies:
        for run_dir, record in readable(study_run_dirs(results_root, name), read_run_record):
            try:
                outcomes.append(collect_run(run_dir, results_root, record))
            except AqrError as err:
                outcomes.append(Outcome(run_dir, "error", str(err)))
    return outcomes
