"""Stage 1 of the lab: the training corpora, the held-out text and the initial random model.

The pre-training corpus is the shipped prose + Python's own docstrings + synthetic retrieval documents
(passkey and LongEval lines, built by the eval task generators); the shipped prose's tail is held out for
perplexity. The initial model is a tiny random Llama that uses the embedded model's tokenizer.
"""

from __future__ import annotations

import ast
import json
import random
import sysconfig
from pathlib import Path

from longseq.core.fsutil import atomic_dir
from longseq.eval.tasks import EVAL_TASKS, haystack_text
from longseq.lab.presets import FT_FACTOR, LabSize
from longseq.models.loading import DEFAULT_MODEL, load_tokenizer


def docstring_prose(max_chars: int) -> list[str]:
    """English prose from the docstrings of Python's standard library, read with ``ast`` (nothing imported).

    Deterministic for a given Python version; every machine has it, so the lab needs no download.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    total = 0
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if any(part in ("test", "tests", "idlelib", "site-packages", "lib2to3") for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200 and doc.count(" ") > len(doc) / 12:
                    docs.append(" ".join(doc.split()))
                    total += len(docs[-1])
                    if total >= max_chars:
                        return docs
    return docs


def _chunks(text: str, size: int) -> list[str]:
    """``text`` cut into ``size``-character pieces; a last piece under a quarter of ``size`` is dropped."""
    return [text[i:i + size] for i in range(0, len(text), size) if len(text[i:i + size]) > size // 4]


def synthetic_docs(n: int, max_tokens: int, seed: int) -> list[str]:
    """Passkey and LongEval-lines documents (prompt + answer) of at most ~``max_tokens`` tokens.

    Built with the eval task generators, so the model learns the very formats ``longseq eval`` asks.
    """
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        if i % 2 == 0:  # passkey: ~80 tokens of fixed text, filler at ~4.5 characters per token
            task, size = EVAL_TASKS["passkey"], rng.randint(20, max(int((max_tokens - 80) * 4), 21))
        else:  # lines: ~180 tokens of fixed text, ~16 tokens per line
            task, size = EVAL_TASKS["lines"], rng.randint(1, max((max_tokens - 180) // 16, 1))
        p = task.generate(rng, size, {})
        docs.append(f"{p.body}{p.sep}{p.answer_prefix} {p.expected}.")
    return docs


def build_data(out: Path, size: LabSize, seed: int) -> dict[str, str]:
    """Write ``data/pretrain.jsonl``, ``data/finetune.jsonl`` and the held-out ``data/heldout.txt``."""
    data = out / "data"
    paths = {k: str(data / f) for k, f in (("pretrain", "pretrain.jsonl"), ("finetune", "finetune.jsonl"),
                                           ("heldout", "heldout.txt"))}
    if (data / "done.json").is_file():
        return paths
    shipped = haystack_text()
    cut = int(len(shipped) * 0.75)  # the tail is never trained on: perplexity is measured there
    prose = _chunks(shipped[:cut], 1500) + [c for d in docstring_prose(size.prose_chars) for c in _chunks(d, 1500)]
    rng = random.Random(seed)
    with atomic_dir(data, overwrite=True) as tmp:
        for name, max_tokens in (("pretrain", size.native), ("finetune", size.native * FT_FACTOR)):
            docs = prose + synthetic_docs(size.synthetic_docs, max_tokens, seed + max_tokens)
            rng.shuffle(docs)
            (tmp / f"{name}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        (tmp / "heldout.txt").write_text(shipped[cut:])
        (tmp / "done.json").write_text(json.dumps({"prose_docs": len(prose), "synthetic": size.synthetic_docs}))
    return paths


def build_init(out: Path, size: LabSize, seed: int) -> str:
    """A random Llama at the native context with the embedded model's tokenizer, saved to ``init/``."""
    target = out / "init"
    if (target / "config.json").is_file():
        return str(target)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(DEFAULT_MODEL)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
        max_position_embeddings=size.native, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with atomic_dir(target, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return str(target)
