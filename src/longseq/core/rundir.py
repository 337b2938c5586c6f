"""The run-folder guard: one folder holds one run, and a resume must repeat its settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from longseq.core.errors import UserError
from longseq.core.fsutil import atomic_write_text


def claim_run_folder(out: str | Path, marker: str, ident: dict[str, Any],
                     normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                     what: str = "a run") -> None:
    """Record ``ident`` in ``out/marker``, or refuse when the folder already holds other settings.

    Only keys present on both sides are compared (older markers may lack newer keys); ``normalize`` maps
    a stored marker to comparable values (e.g. a model path recorded in another form). An unreadable
    marker counts as empty. Raises :class:`UserError` naming the differing settings and the fix.
    """
    path = Path(out) / marker
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        if not isinstance(old, dict):
            old = {}
        if normalize:
            old = normalize(old)
        diff = [k for k in ident if k in old and old[k] != ident[k]]
        if diff:
            raise UserError(f"{out} holds {what} with a different {', '.join(diff)} "
                            f"({', '.join(f'{k}={_show(old[k])}' for k in diff)}); "
                            "choose another --out or repeat the original settings")
    atomic_write_text(path, json.dumps(ident, indent=2) + "\n")


def _show(value: Any, limit: int = 60) -> str:
    """A recorded setting for the one-line message: scalars as they are, containers as short JSON."""
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."
