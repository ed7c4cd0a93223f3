"""The training entry (`python -m aqr_exp.train`, `aqr-exp train`) on the toy config:
resume under torch >= 2.6, NaN/inf stop, and the options mmdet3d's tools/train.py has."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.toy.helpers import TOY_DIR, make_toy_data, toy_importable

from aqr_exp import configs
from aqr_exp.launch.base import EXIT_NONFINITE
from aqr_exp.train import TrainOptions, allow_mmengine_checkpoints, build_config, parse_args


@pytest.fixture
def toy_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The toy config with its data root moved to a fresh data set."""
    toy_importable(monkeypatch)
    cfg = configs.load_config(TOY_DIR / "toy_config.py")
    configs.set_data_root(cfg, make_toy_data(tmp_path / "data"))
    path = tmp_path / "toy.py"
    configs.dump_config(cfg, path)
    return path


def _train(
    *args: object, entry: tuple[str, ...] = ("-m", "aqr_exp.train")
) -> subprocess.CompletedProcess:
    command = [sys.executable, *entry, *(str(arg) for arg in args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _train_lines(work_dir: Path) -> list[list[dict]]:
    """Training lines of scalars.json, per timestamp folder (one per attempt)."""
    folders = sorted(p for p in work_dir.iterdir() if (p / "vis_data" / "scalars.json").is_file())
    return [
        [json.loads(line) for line in (f / "vis_data" / "scalars.json").read_text().splitlines()]
        for f in folders
    ]


def test_resume_continues_the_iteration_count_under_torch_2_6(
    toy_config: Path, tmp_path: Path
) -> None:
    assert tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 6)  # the case that broke
    work = tmp_path / "work"
    first = _train(toy_config, "--work-dir", work, "--cfg-options", "train_cfg.max_epochs=2")
    assert first.returncode == 0, first.stderr[-2000:]
    second = _train(toy_config, "--work-dir", work, "--resume")
    assert second.returncode == 0, second.stderr[-2000:]
    log = second.stdout + second.stderr
    assert "--resume: continuing from" in log and "resumed epoch: 2, iter: 8" in log
    attempts = _train_lines(work)
    assert [line["iter"] for line in attempts[0] if "iter" in line] == list(range(1, 9))
    assert [line["iter"] for line in attempts[1] if "iter" in line] == [9, 10, 11, 12]


def test_the_cli_command_is_the_same_entry(toy_config: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = _train(
        "train", toy_config, "--work-dir", work, "--cfg-options", "train_cfg.max_epochs=1",
        "--seed", "7", "--checkpoint-interval", "1",
        entry=("-m", "aqr_exp.cli.main"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (work / "epoch_1.pth").is_file() and not (work / "epoch_2.pth").exists()
    assert "seed: 7" in result.stdout + result.stderr


def test_a_nan_loss_stops_training_with_a_clear_message(toy_config: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = _train(toy_config, "--work-dir", work, "--cfg-options", "model.nan_at_iter=3")
    assert result.returncode == EXIT_NONFINITE
    log = result.stdout + result.stderr
    assert "Non-finite loss at iteration 3 (epoch 1): loss=nan, loss_mse=nan" in log
    assert not list(work.glob("*.pth"))  # nothing saved after the NaN step


def test_auto_resume_without_checkpoint_keeps_load_from(toy_config: Path, tmp_path: Path) -> None:
    cfg = build_config(
        TrainOptions(
            config=toy_config,
            work_dir=tmp_path / "empty",
            resume="auto",
            cfg_options={"load_from": "pretrained.pth"},
            seed=3,
            checkpoint_interval=2,
        )
    )
    assert cfg.resume is False and cfg.load_from == "pretrained.pth"
    assert cfg.randomness.seed == 3 and cfg.default_hooks.checkpoint.interval == 2


def test_argument_parsing_matches_tools_train() -> None:
    opts = parse_args(
        ["a.py", "--resume", "--amp", "--launcher", "pytorch", "--cfg-options", "x=1", "y=[1,2]"]
    )
    assert opts.resume == "auto" and opts.amp and opts.launcher == "pytorch"
    assert opts.cfg_options == {"x": 1, "y": [1, 2]}
    assert parse_args(["a.py", "--resume", "ck.pth"]).resume == "ck.pth"


class _Sneaky:
    """Pickles as getattr(np.ndarray, '__class__'): a getattr the allow-list must refuse."""

    def __reduce__(self) -> tuple:
        return (getattr, (np.ndarray, "__class__"))


def test_the_allow_list_keeps_weights_only_protection(tmp_path: Path) -> None:
    allow_mmengine_checkpoints()
    path = tmp_path / "sneaky.pth"
    torch.save({"x": _Sneaky()}, path)
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        torch.load(path, weights_only=True)
    torch.save({"x": subprocess.Popen}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_a_resumed_run_needs_no_pretrained_files(toy_config: Path, tmp_path: Path) -> None:
    """Every weight comes from the checkpoint: a pretrained init's file may be gone."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "last_checkpoint").write_text(str(work / "epoch_1.pth"))
    init = {"type": "Pretrained", "checkpoint": str(tmp_path / "gone.pth")}
    cfg = build_config(
        TrainOptions(config=toy_config, work_dir=work, resume="auto",
                     cfg_options={"model.init_cfg": init})
    )  # fmt: skip
    assert cfg.resume is True and cfg.load_from == str(work / "epoch_1.pth")
    assert cfg.model.init_cfg is None
    fresh = build_config(TrainOptions(config=toy_config, cfg_options={"model.init_cfg": init}))
    assert configs.pretrained_files(fresh) == [("model.init_cfg.checkpoint", init["checkpoint"])]
