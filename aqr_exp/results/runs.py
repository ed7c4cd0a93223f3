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
from aqr_exp.records import CorruptRecord

RUN_FILE = "run.yaml"
IMPORTED = "imported"  # launcher.type of runs made by `aqr-exp import-log`
CONFIG_FILE = "config.py"
METRICS_FILE = "metrics.json"
BASELINE_VARIANT = "baseline"
# metrics.json sections read as objects, and those of them that hold only numbers.
_METRICS_MAPPINGS = (
    "sweep", "source", "metrics", "per_class_ap", "per_class", "cost", "aqr", "predictions",
)  # fmt: skip
_METRICS_NUMBERS = ("metrics", "per_class_ap", "cost", "aqr")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # fullmatch: no trailing newline


def runs_dir(results_root: Path, study: str) -> Path:
    return results_root / study / "runs"


def read_run_record(run_dir: Path) -> dict[str, Any]:
    """run.yaml as a dict, checked by the registry's reader (CorruptRecord when broken).

    The results side needs a run's status; the other fields may be missing (hand-made
    or imported runs), but those present must have the registry's types."""
    # Imported here: the registry imports this module.
    from aqr_exp.registry import read_fields

    record = read_fields(run_dir, required=("status",))
    if record is None:
        raise AqrError(f"{run_dir}: not a run directory (no {RUN_FILE})")
    return record


def is_imported(record: dict[str, Any]) -> bool:
    return (record.get("launcher") or {}).get("type") == IMPORTED


def write_run_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Write run.yaml atomically (used for imported runs, which have no launcher)."""
    write_atomic(run_dir / RUN_FILE, yaml.safe_dump(record, sort_keys=False))


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """metrics.json, checked: the one reader of it (CorruptRecord when it is broken,
    e.g. half-written by a tool that does not write atomically)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise AqrError(f"{run_dir}: no {METRICS_FILE} (run `aqr-exp collect` first)")
    fix = "run `aqr-exp collect` to write it again (or `aqr-exp import-log --force`), or delete it"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        where = f":{err.lineno}:{err.colno}"
        raise CorruptRecord(path, f"not valid JSON: {err.msg}", fix, where) from None
    except UnicodeDecodeError as err:
        problem = f"not a text file ({err.reason} at byte {err.start})"
        raise CorruptRecord(path, problem, fix) from None
    except OSError as err:
        raise CorruptRecord(path, f"cannot be read ({err.strerror or err})", fix) from None
    problem = _metrics_problem(metrics)
    if problem is not None:
        raise CorruptRecord(path, problem, fix)
    return metrics


def _metrics_problem(metrics: Any) -> str | None:
    """What makes `metrics` unusable for compare and report; None when nothing does."""
    if not isinstance(metrics, dict):
        return f"expected a JSON object of metrics, got {type(metrics).__name__}"
    for section in _METRICS_MAPPINGS:
        value = metrics.get(section)
        if value is not None and not isinstance(value, dict):
            return f"{section} is {type(value).__name__}, expected an object"
    for section in _METRICS_NUMBERS:
        for name, value in (metrics.get(section) or {}).items():
            if value is not None and not _is_number(value):
                return f"{section}.{name} is {value!r}, expected a number"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_name(name: str, kind: str) -> str:
    """Run ids and study names become directory names (and glob patterns): keep them to a
    safe character set. `kind` ("run name", "study name") says in the error which it is."""
    if not _RUN_ID.fullmatch(name):
        raise AqrError(
            f"{kind} {name!r} is not usable as a directory name "
            "(letters, digits, '.', '_', '-'; not starting with '.', '_' or '-')"
        )
    return name


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
