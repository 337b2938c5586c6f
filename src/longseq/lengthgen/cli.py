"""``longseq lengthgen``."""

from __future__ import annotations

from typing import Any

from longseq.lengthgen import run


def add_cli(sub: Any) -> None:
    run.add_cli(sub)
