"""Atomic file writes: a reader (or a crash) never sees a half-written file
(run records, metrics, reports, figures, benchmark results); and the check of a
file a user names before it is read."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from aqr_exp.errors import AqrError


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` to a temp file beside `path`, then os.replace it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        if isinstance(data, bytes):
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    """JSON with NaN kept as NaN (undefined nuScenes errors), as mmengine writes it."""
    write_atomic(path, json.dumps(payload, indent=2, allow_nan=True) + "\n")


def write_bench_results(stem: Path, payload: Any, text: str) -> None:
    """A benchmark's results: the data as <stem>.json, the table as <stem>.md (and logged)."""
    write_json_atomic(stem.with_suffix(".json"), payload)
    write_atomic(stem.with_suffix(".md"), text)
    logging.getLogger("bench").info("%s", text)


def check_input_file(path: Path, what: str, expected: str) -> Path:
    """`path` is a regular file, or one line saying what it is instead and what was expected
    (a directory is not "missing": the user named something that exists)."""
    if path.is_file():
        return path
    if path.is_dir():
        raise AqrError(f"{what} {path} is a directory; expected {expected}")
    if path.exists():
        raise AqrError(f"{what} {path} is not a regular file; expected {expected}")
    raise AqrError(f"{what} {path} does not exist; expected {expected}")
