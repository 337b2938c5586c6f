"""longseq: how long can a model truly use its context, and how do you make it longer?

The top-level names are imported lazily so that ``import longseq`` (and ``longseq --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "UserError": "longseq.errors",
    "load_model": "longseq.models",
    "load_config": "longseq.models",
    "model_info": "longseq.models",
    "METHODS": "longseq.rope",
    "extend_config": "longseq.rope",
    "apply_rope": "longseq.rope",
    "extend_checkpoint": "longseq.rope",
    "native_context_length": "longseq.rope",
    "sample_positions": "longseq.positions",
    "EvalConfig": "longseq.evaluate",
    "run_eval": "longseq.evaluate",
    "effective_length": "longseq.evaluate",
    "TASKS": "longseq.tasks",
    "HFEngine": "longseq.engine",
    "shifted_sparse_attention": "longseq.s2attn",
    "TrainConfig": "longseq.train",
    "train_model": "longseq.train",
    "TASKS": "longseq.chomsky",
    "sample_batch": "longseq.chomsky",
    "Encoder": "longseq.randpe",
    "PES": "longseq.randpe",
    "run_benchmark": "longseq.lengthgen",
    "make_protocol": "longseq.lengthgen",
    "MemoryStream": "longseq.memory",
    "load_embedder": "longseq.memory",
    "MemoryController": "longseq.scm",
    "SCMAgent": "longseq.scm",
    "TransformersChat": "longseq.scm",
    "OpenAIChat": "longseq.scm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'longseq' has no attribute {name!r}")
