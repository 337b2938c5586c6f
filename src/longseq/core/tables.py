"""Markdown and terminal tables, and token-length labels, shared by every report."""

from __future__ import annotations

from typing import Any, Sequence


def fmt_len(n: int) -> str:
    """``4096`` -> ``4k``; lengths that are not whole multiples of 1024 stay as numbers."""
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def md_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub/CommonMark pipe table (no trailing newline)."""
    lines = ["| " + " | ".join(str(x) for x in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], indent: str = "  ") -> str:
    """Aligned plain-text columns for the terminal: first column left-aligned, the others right-aligned."""
    cells = [[str(x) for x in header]] + [[str(x) for x in row] for row in rows]
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(cells[0]))]
    return "\n".join(indent + "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths)))
                     for r in cells)
