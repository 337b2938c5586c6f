"""Tiny Llama fixture for the ``longseq train`` tests: random weights + the embedded model's tokenizer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = "the quick brown fox jumps over the lazy dog. " * 120


def make_tiny_llama(path: Path, tie: bool = True) -> Path:
    """Save a 2-layer Llama (hidden 32, 4 heads / 2 KV heads) with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from longseq.models.loading import local_dir

    tok = AutoTokenizer.from_pretrained(str(local_dir("smollm2-135m")))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=tie, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m longseq ARGS`` in a real subprocess with this checkout on the path."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "longseq", *args], capture_output=True, text=True, env=full_env,
                          timeout=600)


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl (a line being written by a live run is skipped)."""
    from longseq.core.fsutil import read_jsonl

    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")}
