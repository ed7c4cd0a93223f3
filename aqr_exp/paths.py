"""Where things live: the package's own files, and the project a user works in.

The bundled plugin, its configs and the example spec ship with the package (installed
editable from its checkout). Everything a study writes (results, work dirs, generated
data) goes under the project root: the current directory, or `aqr-exp --root DIR`
($AQR_EXP_ROOT), the way mmdet3d's tools write `./work_dirs`.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = PACKAGE_ROOT / "constraints.txt"
PLUGIN_CONFIGS = PACKAGE_ROOT / "plugin" / "configs"
BUNDLED_SPEC = PACKAGE_ROOT / "experiments" / "aqr_cmt.yaml"
ROOT_ENV = "AQR_EXP_ROOT"
SPEC_NAME = Path("experiments") / BUNDLED_SPEC.name


def project_root() -> Path:
    """$AQR_EXP_ROOT when set (subprocesses inherit it), else the current directory."""
    return Path(os.environ.get(ROOT_ENV) or os.getcwd()).resolve()


def results_root() -> Path:
    return project_root() / "results"


def work_root() -> Path:
    """mmengine work dirs: checkpoints and logs."""
    return project_root() / "work_dirs"


def default_data_root() -> Path:
    """Where a synthetic profile's data is generated when its spec names none."""
    return project_root() / "data" / "synth-nus"


def default_spec() -> Path:
    """The project's experiments/aqr_cmt.yaml (`aqr-exp init` writes one), else the bundled."""
    own = project_root() / SPEC_NAME
    return own if own.is_file() else BUNDLED_SPEC


def pinned_versions(path: Path = CONSTRAINTS) -> dict[str, str]:
    """Read `name==version` pins from constraints.txt (the one place they live)."""
    pins: dict[str, str] = {}
    if not path.exists():
        return pins
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins
