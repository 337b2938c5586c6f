"""``longseq eval`` and ``longseq serve``."""

from __future__ import annotations

from typing import Any

from longseq.eval import run, serve


def add_cli(sub: Any) -> None:
    run.add_cli(sub)
    serve.add_cli(sub)
