"""Where researchers watch training: TensorBoard, MLflow, W&B through mmengine's own
visualization backends.

Each run logs what mmengine's LoggerHook logs (losses, learning rate, the `aqr/...`
scalars, the validation metrics) to every tracker of its plan. Runs of one study share
one place per tracker, so a sweep's curves sit side by side while it trains: TensorBoard
reads `<work root>/<study>/tensorboard/` (one folder per run id), MLflow the SQLite
store `<work root>/<study>/mlflow.db` with artifacts in `mlruns/` beside it (experiment =
study, run name = run id; MLflow 3 refuses plain file stores), W&B
`<work root>/<study>/wandb` (project = study, group = variant and sweep value), offline
unless the user configured W&B. Trackers say where a run logs, not what it trains: they
never enter a run id.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aqr_exp.errors import AqrError

DEFAULT = ("tensorboard",)
NONE = "none"  # `--tracker none`: the text and JSON logs only


@dataclass(frozen=True)
class Tracker:
    name: str
    modules: tuple[str, ...]  # what must be importable
    extra: str  # pyproject extra that installs it
    backend: str  # mmengine vis backend


TRACKERS = {
    tracker.name: tracker
    for tracker in (
        Tracker("tensorboard", ("tensorboard",), "tensorboard", "TensorboardVisBackend"),
        Tracker("mlflow", ("mlflow", "sqlalchemy", "alembic"), "mlflow", "MLflowVisBackend"),
        Tracker("wandb", ("wandb",), "wandb", "WandbVisBackend"),
    )
}


def names_problem(names: Sequence[str]) -> str | None:
    """What is wrong with a list of tracker names, or None."""
    known = ", ".join([*TRACKERS, NONE])
    for name in names:
        if name not in TRACKERS and name != NONE:
            return f"unknown tracker {name!r} (known: {known})"
    if NONE in names and len(names) > 1:
        return f"{NONE!r} means no tracker and stands alone, got {list(names)}"
    return None


def normalized(names: Sequence[str]) -> tuple[str, ...]:
    """Checked names without repeats; `none` is the empty tuple."""
    problem = names_problem(names)
    if problem is not None:
        raise AqrError(problem)
    return tuple(name for name in dict.fromkeys(names) if name != NONE)


def check_installed(names: Sequence[str]) -> None:
    """A tracker whose package is missing fails at plan time, naming the extra."""
    for name in names:
        tracker = TRACKERS[name]
        missing = [m for m in tracker.modules if importlib.util.find_spec(m) is None]
        if missing:
            raise AqrError(
                f"tracker {name!r} needs {', '.join(missing)}, not installed here: "
                f"pip install -e '.[{tracker.extra}]' in the aqr-exp checkout"
            )


def study_dir(work_root: Path, study: str, name: str) -> Path:
    """The one place of a study's runs for tracker `name`."""
    folder = {"tensorboard": "tensorboard", "mlflow": "mlflow.db", "wandb": "wandb"}[name]
    return work_root / study / folder


def study_places(names: Sequence[str], work_root: Path, study: str) -> dict[str, str]:
    """Tracker → the study's place in it (recorded with each run, shown by status)."""
    return {name: str(study_dir(work_root, study, name)) for name in names}


def wandb_configured() -> bool:
    """The user chose a W&B mode or logged in (API key or `wandb login`'s netrc entry)."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def vis_backends(
    names: Sequence[str],
    work_root: Path,
    study: str,
    run_id: str,
    group: str,
    tags: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """mmengine vis backend configs of one run, named by study / variant / value / seed."""
    backends: list[dict[str, Any]] = []
    for name in names:
        place = study_dir(work_root, study, name)
        if name == "tensorboard":
            backends.append(dict(type="TensorboardVisBackend", save_dir=str(place / run_id)))
        elif name == "mlflow":
            artifacts = str(place.with_name("mlruns"))
            backends.append(
                dict(
                    type="MLflowVisBackend",
                    save_dir=artifacts,
                    tracking_uri=f"sqlite:///{place}",
                    artifact_location=artifacts,
                    exp_name=study,
                    run_name=run_id,
                    tags={key: str(value) for key, value in tags.items()},
                )
            )
        else:
            init = dict(project=study, group=group, name=run_id, id=run_id, resume="allow",
                        tags=[f"{key}={value}" for key, value in tags.items()])  # fmt: skip
            if not wandb_configured():
                init["mode"] = "offline"
            # wandb writes into <dir>/wandb/: the study's folder is its dir.
            backends.append(
                dict(type="WandbVisBackend", save_dir=str(place.parent), init_kwargs=init)
            )
    return backends


def run_location(name: str, place: str, run_id: str) -> str:
    """Where one run's curves are, for the report."""
    if name == "tensorboard":
        return f"{place}/{run_id}"
    if name == "mlflow":
        return f"sqlite:///{place}, run {run_id}"
    return f"{place}/*-{run_id}"


def where_to_look(name: str, place: str) -> str:
    """The command (or folder) that shows a study's runs in tracker `name`."""
    if name == "tensorboard":
        return f"tensorboard --logdir {place}"
    if name == "mlflow":
        return f"mlflow ui --backend-store-uri sqlite:///{place}"
    return f"{place} (offline runs: wandb sync {place}/offline-run-*)"


def where_to_look_all(recorded: Iterable[Mapping[str, str] | None]) -> list[str]:
    """One line per tracker place among runs' records, in the order first seen."""
    places = dict.fromkeys((name, place) for r in recorded for name, place in (r or {}).items())
    return [f"{name}: {where_to_look(name, place)}" for name, place in places]
