"""``longseq memory``, ``chat``, ``summarize`` and ``ask``."""

from __future__ import annotations

from typing import Any

from longseq.memory import scm, stream


def add_cli(sub: Any) -> None:
    stream.add_cli(sub)
    scm.add_cli(sub)
