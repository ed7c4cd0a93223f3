"""The project's user-facing error type, and the one way to name an unknown name."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class AqrError(Exception):
    """A user-facing error: one clear message; the CLI prints it and exits 2."""


def one_line(text: str, limit: int = 200) -> str:
    """The first line of a library's message, cut to `limit`: AqrError messages stay one
    line even when the library's own message spans many (PyYAML, torch, mmengine)."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first if len(first) <= limit else first[: limit - 1] + "…"


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The most similar choice, comparing full (dotted) names and then last components."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if match:
        return match[0]
    tail = word.rsplit(".", 1)[-1]
    by_tail: dict[str, str] = {}
    for choice in choices:
        by_tail.setdefault(choice.rsplit(".", 1)[-1], choice)
    match = difflib.get_close_matches(tail, list(by_tail), n=1, cutoff=0.75)
    return by_tail[match[0]] if match else None


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """The hint before a list of choices: "did you mean 'x'? " (the closest, with a
    trailing space), or "" when none is close."""
    suggestion = closest(word, choices)
    return f"did you mean {suggestion!r}? " if suggestion else ""


def unknown(kind: str, name: str, known: Sequence[str], where: str | None = None) -> AqrError:
    """`unknown variant 'x' (spec.yaml): did you mean 'y'? known: a, b`."""
    place = f" ({where})" if where else ""
    hint = did_you_mean(name, known)
    listed = ", ".join(known) or "none"
    return AqrError(f"unknown {kind} {name!r}{place}: {hint}known: {listed}")
