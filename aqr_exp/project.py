"""A project folder of one's own: `aqr-exp init` gives it a starter spec.

Everything else in a project (results/, work_dirs/, data/) is created by the runs
themselves; the spec is the one file a researcher edits.
"""

from __future__ import annotations

from pathlib import Path

from aqr_exp import paths
from aqr_exp.errors import AqrError
from aqr_exp.files import write_atomic


def use_root(root: Path) -> Path:
    """Check a --root folder before anything is planned or written under it."""
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise AqrError(f"--root {root}: {what} (give an existing project folder)")
    return root.resolve()


def init_project(root: Path, force: bool = False) -> Path:
    """Write experiments/aqr_cmt.yaml (the bundled example spec) under `root`.

    The copy names the bundled configs (no config_dir), so it runs as it is; an
    existing spec is kept unless `force`."""
    spec = use_root(root) / paths.SPEC_NAME
    if spec.exists() and not force:
        raise AqrError(f"{spec} already exists (edit it, or pass --force to replace it)")
    write_atomic(spec, paths.BUNDLED_SPEC.read_text(encoding="utf-8"))
    return spec
