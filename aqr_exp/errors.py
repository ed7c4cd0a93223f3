"""The project's user-facing error type."""

from __future__ import annotations


class AqrError(Exception):
    """A user-facing error: one clear message; the CLI prints it and exits 2."""


def one_line(text: str, limit: int = 200) -> str:
    """The first line of a library's message, cut to `limit`: AqrError messages stay one
    line even when the library's own message spans many (PyYAML, torch, mmengine)."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first if len(first) <= limit else first[: limit - 1] + "…"
