"""longseq: how long can a model truly use its context, and how do you make it longer?

The top-level names are imported lazily so that ``import longseq`` (and ``longseq --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "UserError": "longseq.core.errors",
    "load_model": "longseq.models.loading",
    "load_config": "longseq.models.loading",
    "load_tokenizer": "longseq.models.loading",
    "model_info": "longseq.models.info",
    "ROPE_METHODS": "longseq.models.rope:METHODS",
    "extend_config": "longseq.models.rope",
    "apply_rope": "longseq.models.rope",
    "extend_checkpoint": "longseq.models.rope",
    "native_context_length": "longseq.models.rope",
    "sample_positions": "longseq.models.positions",
    "EvalConfig": "longseq.eval.plan",
    "run_eval": "longseq.eval.run",
    "effective_length": "longseq.eval.summary",
    "EVAL_TASKS": "longseq.eval.tasks",
    "HFEngine": "longseq.eval.engine",
    "LocalLM": "longseq.models.generation",
    "OpenAIClient": "longseq.models.openai_client",
    "shifted_sparse_attention": "longseq.train.s2attn",
    "TrainConfig": "longseq.train.config",
    "train_model": "longseq.train.trainer:train",
    "CHOMSKY_TASKS": "longseq.lengthgen.chomsky",
    "sample_batch": "longseq.lengthgen.chomsky",
    "Encoder": "longseq.lengthgen.randpe",
    "PES": "longseq.lengthgen.protocol",
    "run_benchmark": "longseq.lengthgen.run",
    "make_protocol": "longseq.lengthgen.protocol",
    "MemoryStream": "longseq.memory.store",
    "load_embedder": "longseq.memory.embedders",
    "MemoryController": "longseq.memory.controller",
    "SCMAgent": "longseq.memory.agent",
    "ControllerConfig": "longseq.memory.controller",
    "TuneConfig": "longseq.tune.run",
    "tune_rope": "longseq.tune.run",
    "TransformersChat": "longseq.memory.llm",
    "OpenAIChat": "longseq.memory.llm",
    "run_lab": "longseq.lab.run",
}
"""Public name -> ``module`` (same attribute name) or ``module:attribute``."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, _, attr = _EXPORTS[name].partition(":")
        return getattr(importlib.import_module(module), attr or name)
    raise AttributeError(f"module 'longseq' has no attribute {name!r}")
