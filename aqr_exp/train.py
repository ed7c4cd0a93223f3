"""The project's training entry: `python -m aqr_exp.train CONFIG` or `aqr-exp train CONFIG`.

The same options as mmdet3d's tools/train.py (work dir, resume, amp, launcher
none/pytorch/slurm, cfg-options; the configs also run unchanged with that
script), plus the project's fixes:

- resume works with torch >= 2.6, whose `torch.load(weights_only=True)`
  default refuses mmengine's checkpoints (they pickle the message hub's
  HistoryBuffer and numpy values): those globals are allow-listed;
- `--resume` without a path resumes from the work dir's last checkpoint when
  there is one, and otherwise trains from scratch *keeping* the config's
  `load_from` (tools/train.py drops it);
- `--seed`, `--checkpoint-interval` (preemption-safe runs);
- a missing or broken config, resume checkpoint or `--cfg-options` item is one
  line naming it (a checkpoint only ever read with weights_only=True);
- a NaN/inf loss stops the run with a clear message and exit code 3.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner, find_latest_checkpoint

from aqr_exp import configs
from aqr_exp.checkpoints import allow_mmengine_checkpoints, read_checkpoint
from aqr_exp.errors import AqrError
from aqr_exp.hooks import NonFiniteLossError, NonFiniteLossHook
from aqr_exp.launch.base import EXIT_NONFINITE

EXIT_USAGE = 2
LAUNCHERS = ("none", "pytorch", "slurm", "mpi")


@dataclass(frozen=True)
class TrainOptions:
    config: Path
    work_dir: Path | None = None
    resume: str | None = None  # 'auto' or a checkpoint path
    amp: bool = False
    auto_scale_lr: bool = False
    sync_bn: str = "none"
    launcher: str = "none"
    cfg_options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    deterministic: bool = False
    checkpoint_interval: int | None = None


def _work_dir(opts: TrainOptions, cfg: Config) -> str:
    """CLI > the config's work_dir > ./work_dirs/<config name>, as tools/train.py."""
    if opts.work_dir is not None:
        return str(opts.work_dir)
    if cfg.get("work_dir"):
        return str(cfg.work_dir)
    return str(Path("work_dirs") / opts.config.stem)


def _enable_amp(cfg: Config) -> None:
    wrapper = cfg.optim_wrapper.get("type", "OptimWrapper")
    if wrapper == "AmpOptimWrapper":
        print_log(
            "AMP training is already enabled in the config.",
            logger="current",
            level=logging.WARNING,
        )
        return
    if wrapper != "OptimWrapper":
        raise AqrError(f"--amp needs optim_wrapper.type OptimWrapper, the config has {wrapper}")
    cfg.optim_wrapper.type = "AmpOptimWrapper"
    cfg.optim_wrapper.loss_scale = "dynamic"


def _set_resume(cfg: Config, resume: str) -> None:
    if resume != "auto":
        # Read (memory-mapped) before the runner makes its work dir: a missing or broken
        # checkpoint is one line naming it, not a traceback after the setup.
        read_checkpoint(Path(resume), "resume checkpoint")
        cfg.resume, cfg.load_from = True, resume
        configs.drop_pretrained_inits(cfg)
        return
    latest = find_latest_checkpoint(cfg.work_dir)
    if latest is None:
        print_log(
            f"--resume: no checkpoint in {cfg.work_dir} yet, training from the start",
            logger="current",
        )
        cfg.resume = False
        return
    print_log(f"--resume: continuing from {latest}", logger="current")
    cfg.resume, cfg.load_from = True, latest
    configs.drop_pretrained_inits(cfg)


def build_config(opts: TrainOptions) -> Config:
    """The config as training will use it (pure: no runner, no files written)."""
    cfg = configs.read_config(opts.config)
    cfg.launcher = opts.launcher
    if opts.cfg_options:
        cfg.merge_from_dict(opts.cfg_options)
    cfg.work_dir = _work_dir(opts, cfg)
    if opts.amp:
        _enable_amp(cfg)
    if opts.sync_bn != "none":
        cfg.sync_bn = opts.sync_bn
    if opts.auto_scale_lr:
        scale = cfg.get("auto_scale_lr") or {}
        if "base_batch_size" not in scale:
            raise AqrError("--auto-scale-lr needs auto_scale_lr.base_batch_size in the config")
        cfg.auto_scale_lr.enable = True
    if opts.seed is not None:
        configs.set_seed(cfg, opts.seed)
    if opts.deterministic:
        cfg.randomness = {**(cfg.get("randomness") or {}), "deterministic": True}
    if opts.checkpoint_interval is not None:
        configs.set_checkpoint_interval(cfg, opts.checkpoint_interval)
    if opts.resume is not None:
        _set_resume(cfg, opts.resume)
    return cfg


def train(opts: TrainOptions) -> None:
    """Build the runner from the config and train; raises NonFiniteLossError on NaN/inf."""
    allow_mmengine_checkpoints()
    cfg = build_config(opts)
    runner = Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
    runner.register_hook(NonFiniteLossHook())
    runner.train()


def cfg_options_problem(items: Sequence[str]) -> str | None:
    """Why mmengine's DictAction would fail on these KEY=VALUE overrides (it raises a bare
    ValueError or AssertionError, a traceback), or None."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            return f"{item!r} is not KEY=VALUE (e.g. train_cfg.max_epochs=2)"
        if value.count("(") != value.count(")") or value.count("[") != value.count("]"):
            return f"{item!r}: unbalanced brackets in the value"
    return None


class _Overrides(DictAction):
    """mmengine's DictAction; a malformed override is a usage error, not a traceback."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Sequence[str],
        option_string: str | None = None,
    ) -> None:
        problem = cfg_options_problem(values)
        if problem is not None:
            raise argparse.ArgumentError(self, problem)
        super().__call__(parser, namespace, values, option_string)


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as AqrError: `aqr-exp train` shows them as its one `error:` line."""

    def error(self, message: str) -> NoReturn:
        raise AqrError(f"{self.prog}: {message}")


def parser(
    prog: str = "python -m aqr_exp.train", one_line_errors: bool = False
) -> argparse.ArgumentParser:
    parse = (_OneLineParser if one_line_errors else argparse.ArgumentParser)(
        prog=prog,
        description="Train a 3D detector from an mmengine config (mmdet3d tools/train.py + fixes).",
    )
    parse.add_argument("config", type=Path, help="train config file path")
    parse.add_argument("--work-dir", type=Path, help="the dir to save logs and checkpoints")
    parse.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="resume from this checkpoint; without a path, from the work dir's last "
        "checkpoint if there is one (otherwise train from the start)",
    )
    parse.add_argument("--amp", action="store_true", help="automatic mixed precision (GPU)")
    parse.add_argument(
        "--auto-scale-lr", action="store_true", help="scale the LR by the batch size"
    )
    parse.add_argument("--sync_bn", choices=["none", "torch", "mmcv"], default="none")
    parse.add_argument(
        "--cfg-options", nargs="+", action=_Overrides, default={}, help="key=value overrides"
    )
    parse.add_argument("--launcher", choices=LAUNCHERS, default="none", help="job launcher")
    parse.add_argument("--seed", type=int, help="random seed (sets randomness.seed)")
    parse.add_argument("--deterministic", action="store_true", help="deterministic cuDNN")
    parse.add_argument(
        "--checkpoint-interval",
        type=int,
        help="save a checkpoint every N epochs (iterations for iteration-based loops)",
    )
    parse.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return parse


def parse_args(
    argv: Sequence[str] | None = None,
    prog: str = "python -m aqr_exp.train",
    one_line_errors: bool = False,
) -> TrainOptions:
    args = parser(prog, one_line_errors).parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return TrainOptions(
        config=args.config,
        work_dir=args.work_dir,
        resume=args.resume,
        amp=args.amp,
        auto_scale_lr=args.auto_scale_lr,
        sync_bn=args.sync_bn,
        launcher=args.launcher,
        cfg_options=dict(args.cfg_options or {}),
        seed=args.seed,
        deterministic=args.deterministic,
        checkpoint_interval=args.checkpoint_interval,
    )


def run(opts: TrainOptions, *, log_usage_errors: bool = True) -> int:
    """Train; the exit code tells the launcher how it ended (0; 2 bad options; 3 NaN/inf).

    Bad options or files (AqrError) are logged with the training's other messages, or,
    without `log_usage_errors`, raised for the caller to report (`aqr-exp train` prints
    them as its one `error:` line on stderr)."""
    try:
        train(opts)
    except AqrError as err:
        if not log_usage_errors:
            raise
        print_log(f"Error: {err}", logger="current", level=logging.ERROR)
        return EXIT_USAGE
    except NonFiniteLossError as err:
        print_log(str(err), logger="current", level=logging.ERROR)
        return EXIT_NONFINITE
    return 0


def main(
    argv: Sequence[str] | None = None,
    *,
    log_usage_errors: bool = True,
    prog: str = "python -m aqr_exp.train",
) -> int:
    """Without `log_usage_errors` (`aqr-exp train`), bad options and files are raised as
    AqrError, for the caller's one error line."""
    opts = parse_args(argv, prog, one_line_errors=not log_usage_errors)
    return run(opts, log_usage_errors=log_usage_errors)


if __name__ == "__main__":
    sys.exit(main())
