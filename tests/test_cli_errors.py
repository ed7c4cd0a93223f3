"""Hostile and broken input on the command line (issue 24, item 9): each is one line on
stderr (`error: ...` naming what was wrong), exit status 2, no traceback, and nothing
created or changed. Run through the real entry point, in a subprocess, as a user would."""

from __future__ import annotations

import os
import pickle
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aqr_exp import paths
from aqr_exp.paths import PLUGIN_CONFIGS

NEW_AQR = PLUGIN_CONFIGS / "cmt-aqr-new_lc_pillar100_r18_128x64_1xb2-demo_synth-nus.py"


class _RunsCommand:
    """Unpickles as os.system(command): a checkpoint that would run code when loaded."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder`, with its size and modification time."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


def _error(cwd: Path, *args: object) -> str:
    """Run `aqr-exp ARGS` in `cwd` (the project root): the one error line it must print,
    having changed nothing there."""
    before = _snapshot(cwd)
    env = {key: value for key, value in os.environ.items() if key != paths.ROOT_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "aqr_exp.cli.main", *(str(arg) for arg in args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert _snapshot(cwd) == before
    return lines[0]


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


# ------------------------------------------------ 1. viz --checkpoint: garbage, malicious, missing


def _random_bytes(path: Path, marker: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _malicious_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(
        pickle.dumps({"state_dict": _RunsCommand(f"touch {shlex.quote(str(marker))}")})
    )


def _malicious_torch_file(path: Path, marker: Path) -> None:
    payload = _RunsCommand(f"touch {shlex.quote(str(marker))}")
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": payload}, path)


def _missing(path: Path, marker: Path) -> None:
    pass


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_random_bytes, "not a loadable checkpoint: it is not a file written by torch.save"),
        (_malicious_pickle, "not a loadable checkpoint: it is not a file written by torch.save"),
        (_malicious_torch_file, "PyTorch's safe weights-only loading refused it"),
        (_missing, "does not exist; expected a .pth checkpoint"),
    ],
)
def test_a_bad_checkpoint_is_refused_without_running_it(
    make: object, expected: str, cwd: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "code-ran"
    checkpoint = cwd / "epoch_1.pth"
    make(checkpoint, marker)  # type: ignore[operator]
    error = _error(cwd, "viz", "bias", "-c", NEW_AQR, "-k", checkpoint.name)
    assert error.startswith(f"error: checkpoint {checkpoint.name}")
    assert expected in error
    assert "weights_only" not in error
    assert not marker.exists()


def test_the_malicious_payload_would_run_if_unpickled(tmp_path: Path) -> None:
    """The control for the test above: its checkpoints really do run code when loaded."""
    marker = tmp_path / "code-ran"
    pickle.loads(pickle.dumps(_RunsCommand(f"touch {shlex.quote(str(marker))}")))
    assert marker.exists()


# ------------------------------------------------ 2. train: a missing or broken config, checkpoint


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["missing.py"], "config missing.py does not exist; expected an mmengine config file"),
        (["broken.py"], "config broken.py: not a valid mmengine config: Python syntax error"),
        (
            ["ok.py", "--resume", "random.pth"],
            "resume checkpoint random.pth: not a loadable checkpoint",
        ),
        (
            ["ok.py", "--cfg-options", "max_epochs"],
            "aqr-exp train: argument --cfg-options: 'max_epochs' is not KEY=VALUE",
        ),
        (["ok.py", "--launcher", "lsf"], "aqr-exp train: argument --launcher: invalid choice"),
    ],
)
def test_train_names_the_file_it_cannot_use(args: list[str], expected: str, cwd: Path) -> None:
    (cwd / "broken.py").write_text("model = dict(type='X'\n")
    (cwd / "ok.py").write_text("model = dict(type='X')\n")
    (cwd / "random.pth").write_bytes(os.urandom(1024))
    error = _error(cwd, "train", *args, "--work-dir", "work")
    assert expected in error


# ------------------------------------------------ 3. import-log of a directory


def test_import_log_of_a_directory_says_it_is_one(cwd: Path) -> None:
    (cwd / "logs").mkdir()
    error = _error(cwd, "import-log", "logs", "--name", "old")
    assert error == (
        "error: log logs is a directory; expected an mmdet3d ≤ 1.0 / mmcv 1.x text log file"
    )


# ------------------------------------------------ 4. a bad --study is called a study name


@pytest.mark.parametrize(
    "args",
    [
        ["import-log", "train.log", "--name", "old", "--study", "../elsewhere"],
        ["status", "--study", "../elsewhere"],
        ["cancel", "--all", "--study", "../elsewhere"],
    ],
)
def test_a_bad_study_name_is_called_a_study_name(args: list[str], cwd: Path) -> None:
    (cwd / "train.log").write_text("not parsed: the name is checked first\n")
    error = _error(cwd, *args)
    assert error.startswith("error: study name '../elsewhere' is not usable as a directory name")


def test_a_bad_run_name_is_still_called_a_run_name(cwd: Path) -> None:
    (cwd / "train.log").write_text("not parsed: the name is checked first\n")
    error = _error(cwd, "import-log", "train.log", "--name", "a/b")
    assert error.startswith("error: run name 'a/b' is not usable as a directory name")


# ------------------------------------------------ 5. --values that are not a YAML list


@pytest.mark.parametrize(
    ("command", "values", "expected"),
    [
        (
            ["sweep", "model.pts_bbox_head.aqr.window_size", "--dry-run"],
            "[1,2",
            "error: --values '[1,2': not a YAML list (expected e.g. 2,4,8 or [2, 4, 8]): "
            "expected ',' or ']', but got '<stream end>' at column 5",
        ),
        (
            ["plan", "--sweep", "window_size"],
            "5,{a: [1}",
            "error: --values '5,{a: [1}': not a YAML list (expected e.g. 2,4,8 or [2, 4, 8]): "
            "'{a: [1}': expected ',' or ']', but got '}' at column 7",
        ),
        (
            ["sweep", "window_size", "--dry-run"],
            "5,,8",
            "error: --values '5,,8': an empty value (expected e.g. 2,4,8 or [2, 4, 8])",
        ),
    ],
)
def test_bad_values_are_one_line_naming_the_option(
    command: list[str], values: str, expected: str, cwd: Path
) -> None:
    assert _error(cwd, *command, "--values", values) == expected


# ------------------------------------------------ other file arguments


def test_a_spec_that_is_a_directory_says_so(cwd: Path) -> None:
    (cwd / "specs").mkdir()
    error = _error(cwd, "plan", "--spec", "specs")
    assert error == (
        f"error: spec {(cwd / 'specs').resolve()} is a directory; "
        "expected an experiment spec file (.yaml)"
    )


def test_variants_write_to_a_file_says_so(cwd: Path) -> None:
    (cwd / "configs.txt").write_text("")
    error = _error(cwd, "variants", "--write", "configs.txt")
    assert error == "error: --write configs.txt is a file; expected a folder for the configs"
