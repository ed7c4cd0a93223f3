"""The project's user-facing error type."""

from __future__ import annotations


class AqrError(Exception):
    """A user-facing error: one clear message; the CLI prints it and exits 2."""
