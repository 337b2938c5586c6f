"""``longseq train``."""

from __future__ import annotations

from typing import Any

from longseq.train import trainer


def add_cli(sub: Any) -> None:
    trainer.add_cli(sub)
