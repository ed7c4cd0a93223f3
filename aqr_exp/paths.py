"""Where the project's own files live (the package is installed editable)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO_ROOT / "constraints.txt"
PLUGIN_CONFIGS = REPO_ROOT / "plugin" / "configs"
EXPERIMENTS = REPO_ROOT / "experiments"
RESULTS = REPO_ROOT / "results"
DEFAULT_DATA_ROOT = REPO_ROOT / "data" / "synth-nus"
WORK_ROOT = REPO_ROOT / "work_dirs"  # mmengine work dirs: checkpoints and logs


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
