"""A run's files read without trusting them: one corrupt file costs one warning.

run.yaml and metrics.json are written atomically, yet a file can still be
broken: an older version crashed mid-write, a disk filled up, a hand edit went
wrong, half a study was copied. Their readers (`registry.read_fields`,
`registry.read_metrics`) raise `CorruptRecord`, which names the file, what
is wrong with it and how to fix it. A command about one named run shows it as
its error (exit 2); a command over a whole study warns once per file
(`readable`) and carries on with the other runs. Nothing here writes: a corrupt
file stays exactly as it is until the user repairs or deletes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from aqr_exp.errors import AqrError

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Value = TypeVar("Value")

_reported: set[Path] = set()


class CorruptRecord(AqrError):
    """A run's file that cannot be used as it is: where, what is wrong, how to fix it."""

    def __init__(self, path: Path, problem: str, fix: str, where: str = "") -> None:
        self.path = path
        self.problem = problem
        self.fix = fix
        super().__init__(f"{path}{where}: {problem}; {fix}")


def readable(
    items: Iterable[Item],
    read: Callable[[Item], Value],
    skipped: list[CorruptRecord] | None = None,
) -> Iterator[tuple[Item, Value]]:
    """(item, read(item)) for each item whose files are sound; a corrupt one is named in
    a warning (and added to `skipped`) and left out, so one broken run does not take its
    whole study down."""
    for item in items:
        try:
            value = read(item)
        except CorruptRecord as err:
            report(err)
            if skipped is not None:
                skipped.append(err)
            continue
        yield item, value


def report(err: CorruptRecord) -> None:
    """Warn about a corrupt file once per command (several readers may meet it)."""
    if err.path in _reported:
        return
    _reported.add(err.path)
    logger.warning("left out: %s", err)


def new_command() -> None:
    """Forget which files were reported: each command names them again."""
    _reported.clear()
