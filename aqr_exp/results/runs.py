"""The results side's view of the run registry: find run dirs, read and write run.yaml.

Layout (docs/architecture.md): `<results_root>/<study>/runs/<run_id>/` holds `run.yaml`,
`config.py` and `metrics.json`. Reading goes through `read_run_record` only, so it can
later be swapped for `aqr_exp.registry` without touching collect/compare/report.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from aqr_exp.errors import AqrError
from aqr_exp.files import write_atomic

RUN_FILE = "run.yaml"
IMPORTED = "imported"  # launcher.type of runs made by `aqr-exp import-log`
CONFIG_FILE = "config.py"
METRICS_FILE = "metrics.json"
BASELINE_VARIANT = "baseline"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def runs_dir(results_root: Path, study: str) -> Path:
    return results_root / study / "runs"


def read_run_record(run_dir: Path) -> dict[str, Any]:
    """run.yaml as a dict (the single reader of the registry's record)."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise AqrError(f"{run_dir}: not a run directory (no {RUN_FILE})")
    record = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(record, dict):
        raise AqrError(f"{path}: expected a mapping of run fields, got {type(record).__name__}")
    return record


def is_imported(record: dict[str, Any]) -> bool:
    return (record.get("launcher") or {}).get("type") == IMPORTED


def write_run_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Write run.yaml atomically (used for imported runs, which have no launcher)."""
    write_atomic(run_dir / RUN_FILE, yaml.safe_dump(record, sort_keys=False))


def read_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise AqrError(f"{run_dir}: no {METRICS_FILE} (run `aqr-exp collect` first)")
    return json.loads(path.read_text(encoding="utf-8"))


def check_run_id(run_id: str) -> str:
    """Run ids become directory names: keep them to a safe character set."""
    if not _RUN_ID.match(run_id):
        raise AqrError(
            f"run name {run_id!r} is not usable as a directory name "
            "(letters, digits, '.', '_', '-'; not starting with '.', '_' or '-')"
        )
    return run_id


def list_studies(results_root: Path) -> list[str]:
    if not results_root.is_dir():
        return []
    return sorted(p.parent.name for p in results_root.glob("*/runs") if p.is_dir())


def study_run_dirs(results_root: Path, study: str) -> list[Path]:
    """Run dirs of one study, sorted by run id."""
    root = runs_dir(results_root, study)
    if not root.is_dir():
        known = ", ".join(list_studies(results_root)) or "none"
        raise AqrError(f"no study {study!r} under {results_root} (studies found: {known})")
    return sorted(p for p in root.iterdir() if (p / RUN_FILE).is_file())


def resolve_run_ref(results_root: Path, ref: str, study: str | None) -> Path:
    """A RUN argument: a path to a run dir, or a run id looked up in the registry."""
    as_path = Path(ref)
    if (as_path / RUN_FILE).is_file() or (as_path / METRICS_FILE).is_file():
        return as_path
    studies = [study] if study else list_studies(results_root)
    hits = [
        runs_dir(results_root, s) / ref
        for s in studies
        if (runs_dir(results_root, s) / ref).is_dir()
    ]
    if not hits:
        raise AqrError(f"run {ref!r}: not a run directory and not a run id under {results_root}")
    if len(hits) > 1:
        found = ", ".join(str(h) for h in hits)
        raise AqrError(f"run id {ref!r} is in several studies ({found}): pass --study")
    return hits[0]


def default_study(results_root: Path) -> str:
    """The only study in the registry; an error naming the choices otherwise."""
    studies = list_studies(results_root)
    if len(studies) == 1:
        return studies[0]
    if not studies:
        raise AqrError(f"no studies under {results_root}")
    raise AqrError(f"several studies under {results_root}: pass --study ({', '.join(studies)})")
