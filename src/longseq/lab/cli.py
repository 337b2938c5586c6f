"""``longseq lab``."""

from __future__ import annotations

from typing import Any

from longseq.lab import run


def add_cli(sub: Any) -> None:
    run.add_cli(sub)
