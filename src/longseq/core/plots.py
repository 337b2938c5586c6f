"""One matplotlib pipeline for every report: headless (Agg) figures saved and closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longseq.core.tables import fmt_len


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed); imported lazily, it is slow to load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | Path, dpi: int = 100) -> str:
    """Write ``fig`` to ``path``, free it, and return the file name (for report links)."""
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return Path(path).name


def length_axis(ax: Any, lengths: list[int], label: str = "prompt length (tokens)") -> None:
    """A log2 x axis with one tick per tested length, labelled 1k, 2k, ..."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [fmt_len(L) for L in lengths])
    ax.minorticks_off()
    ax.set_xlabel(label)
