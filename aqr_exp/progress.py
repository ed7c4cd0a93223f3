"""Progress of a training from mmengine's log lines (iteration, loss, ETA).

mmengine prints `Epoch(train) [2][ 10/50]  ... eta: 0:03:10 ... loss: 1.23`
(or `Iter(train) [ 10/1000]` for iteration-based loops). The line is in the
run's log as soon as it is written, on any backend, which is why progress is
read from there rather than from an in-process channel.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_TRAIN = re.compile(
    r"(?P<mode>Epoch|Iter)\(train\)\s*(?:\[\s*(?P<epoch>\d+)\])?\s*\[\s*(?P<i>\d+)/(?P<n>\d+)\]"
)
_ETA = re.compile(r"\beta: (\S+)")
_LOSS = re.compile(r"\bloss: (\S+)")


@dataclass(frozen=True)
class Progress:
    iteration: int  # over the whole training
    total: int | None
    epoch: int | None
    loss: float | None
    eta: str | None

    @property
    def fraction(self) -> float | None:
        return self.iteration / self.total if self.total else None


def parse_progress(
    lines: Iterable[str], train_len: tuple[str, int] | None = None
) -> Progress | None:
    """The progress of the last training line; train_len = ('epoch', max_epochs)
    or ('iter', max_iters) gives the total for epoch-based loops."""
    last = None
    for line in lines:
        match = _TRAIN.search(line)
        if match:
            last = (match, line)
    if last is None:
        return None
    match, line = last
    index, length = int(match["i"]), int(match["n"])
    loss = _LOSS.search(line)
    eta = _ETA.search(line)
    if match["mode"] == "Iter":
        iteration, total, epoch = index, length, None
    else:
        epoch = int(match["epoch"])
        iteration = (epoch - 1) * length + index
        total = train_len[1] * length if train_len and train_len[0] == "epoch" else None
    return Progress(
        iteration=iteration,
        total=total,
        epoch=epoch,
        loss=float(loss[1]) if loss else None,
        eta=eta[1] if eta else None,
    )


def tail_lines(path: Path, max_bytes: int = 64 * 1024) -> list[str]:
    """The lines in the last `max_bytes` of a (possibly growing) log file."""
    if not path.is_file():
        return []
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - max_bytes))
        text = handle.read().decode(errors="replace")
    return [line.rstrip() for line in text.splitlines()]


def read_progress(log_path: Path, train_len: tuple[str, int] | None = None) -> Progress | None:
    """Progress from the end of a log file (None before the first training line)."""
    return parse_progress(tail_lines(log_path), train_len)
