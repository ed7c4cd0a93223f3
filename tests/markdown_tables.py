"""Read markdown tables the way a CommonMark + GFM renderer does, for tests."""

from __future__ import annotations

from markdown_it import MarkdownIt


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every table in `text` as rows of cell texts (header row first)."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    found: list[list[list[str]]] = []
    row: list[str] | None = None
    for token in tokens:
        if token.type == "table_open":
            found.append([])
        elif token.type == "tr_open":
            row = []
        elif token.type == "inline" and row is not None:
            row.append(token.content)
        elif token.type == "tr_close" and row is not None:
            found[-1].append(row)
            row = None
    return found
