"""Training data for ``longseq train``: packed long text and instruction data (LongAlpaca format).

Sources (``--data``):
  * a text file or a folder of text files (``.txt``/``.md``/any non-JSON file, recursively, sorted);
  * a ``.jsonl`` file, or ``.json`` list, of ``{"text": ...}`` records -> packed like text;
  * a ``.jsonl``/``.json`` of ``{"instruction": ..., "output": ...}`` records (LongAlpaca, Chen et al. 2023)
    -> one example per record, chat template applied to the instruction, loss on the output only;
  * otherwise a ``datasets`` name (``load_dataset(name, split=...)`` with a ``text`` field).

Packing (as LongLoRA's ``fine-tune.py`` and Llama 2 Long): documents are tokenized, joined with EOS
between them and cut into ``seq_len``-token rows across document boundaries; the tail is dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from longseq.core.errors import UserError, one_line

IGNORE_INDEX = -100
TEXT_SUFFIXES_SKIP = {".json", ".jsonl", ".gz", ".zip", ".bin", ".safetensors", ".pt", ".parquet"}


@dataclass
class TrainData:
    """Fixed-length examples, all tensors (E, seq_len): input ids, labels (-100 = no loss), attention mask."""

    input_ids: Any
    labels: Any
    attention_mask: Any
    kind: str  # "packed" or "instruction"
    tokens: int  # real (non-padding) tokens

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def _read_records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); fix the file") from None
        if not isinstance(data, list):
            raise UserError(f"{path} must hold a JSON list of records; got {type(data).__name__}")
        return data
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{i} is not a JSON line ({err.msg}); fix or remove that line") from None
    return records


def _text_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix not in TEXT_SUFFIXES_SKIP
                   and not p.name.startswith("."))
    if not files:
        raise UserError(f"folder {path} holds no text files; put .txt files there or pass a .jsonl file")
    return files


def load_documents(spec: str, split: str = "train", text_field: str = "text") -> tuple[str, list[Any]]:
    """Resolve ``--data`` to ``("text", [str, ...])`` or ``("instruction", [{"instruction", "output"}, ...])``."""
    path = Path(spec).expanduser()
    if path.suffix in (".jsonl", ".json") and path.is_file():
        records = _read_records(path)
        if not records:
            raise UserError(f"{path} is empty; give it at least one record")
        first = records[0]
        if not isinstance(first, dict):
            raise UserError(f"{path}: records must be JSON objects")
        if "instruction" in first and "output" in first:
            bad = [i for i, r in enumerate(records) if not (isinstance(r.get("instruction"), str) and isinstance(r.get("output"), str))]
            if bad:
                raise UserError(f"{path}: record {bad[0] + 1} lacks a string 'instruction' or 'output'")
            return "instruction", records
        if text_field in first:
            return "text", [str(r.get(text_field) or "") for r in records]
        raise UserError(f"{path}: records need a '{text_field}' field (text) or 'instruction' and 'output' "
                        f"(instruction data); the first record has {sorted(first)}")
    if path.exists():
        return "text", [p.read_text(encoding="utf-8", errors="replace") for p in _text_files(path)]
    if spec.startswith((".", "/", "~")) or spec.endswith((".txt", ".jsonl", ".json")):
        raise UserError(f"data path {spec} does not exist")
    try:
        import datasets
    except ImportError:
        raise UserError("--data names a dataset but the 'datasets' package is missing; pip install 'longseq[data]'") from None
    try:
        ds = datasets.load_dataset(spec, split=split)
    except Exception as err:
        raise UserError(f"cannot load dataset '{spec}' (split {split}): {one_line(err, 200)}; "
                        "offline, pass a local text file, folder or .jsonl instead") from None
    if "instruction" in ds.column_names and "output" in ds.column_names:
        return "instruction", [{"instruction": r["instruction"], "output": r["output"]} for r in ds]
    if text_field not in ds.column_names:
        raise UserError(f"dataset '{spec}' has no '{text_field}' column (columns: {ds.column_names}); pass --text-field")
    return "text", [str(t or "") for t in ds[text_field]]


def pack_documents(docs: Iterable[str], tokenizer: Any, seq_len: int) -> TrainData:
    """Tokenize, join with EOS and cut into rows of ``seq_len`` tokens (the incomplete tail is dropped)."""
    import torch

    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("the tokenizer has no EOS token, which packing puts between documents")
    stream: list[int] = []
    for doc in docs:
        if not doc.strip():
            continue
        stream.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        stream.append(eos)
    if not stream:
        raise UserError("the training data is empty (no text found); point --data at non-empty text")
    rows = len(stream) // seq_len
    if rows == 0:
        raise UserError(f"the data has only {len(stream)} tokens, fewer than --seq-len {seq_len}; "
                        f"lower --seq-len to at most {len(stream)} or add data")
    ids = torch.tensor(stream[: rows * seq_len], dtype=torch.long).view(rows, seq_len)
    return TrainData(ids, ids.clone(), torch.ones_like(ids), "packed", rows * seq_len)


def _prompt_ids(tokenizer: Any, instruction: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True,
                                            tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)
    # No chat template: the Alpaca-style plain prompt.
    return tokenizer(f"### Instruction:\n{instruction}\n\n### Response:\n", add_special_tokens=True)["input_ids"]


def instruction_examples(records: list[dict[str, Any]], tokenizer: Any, seq_len: int) -> TrainData:
    """Chat-template each instruction; labels are -100 on the prompt and padding, loss on output + EOS.

    Examples longer than ``seq_len`` are truncated at the end; those whose prompt alone fills
    ``seq_len`` are skipped (no output token would be trained).
    """
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids_rows, label_rows, mask_rows = [], [], []
    real = 0
    for rec in records:
        prompt = _prompt_ids(tokenizer, rec["instruction"])
        answer = tokenizer(rec["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(prompt) >= seq_len:
            continue
        ids = (prompt + answer)[:seq_len]
        labels = ([IGNORE_INDEX] * len(prompt) + answer)[:seq_len]
        n = len(ids)
        real += n
        ids_rows.append(ids + [pad] * (seq_len - n))
        label_rows.append(labels + [IGNORE_INDEX] * (seq_len - n))
        mask_rows.append([1] * n + [0] * (seq_len - n))
    if not ids_rows:
        raise UserError(f"every instruction is longer than --seq-len {seq_len} tokens; raise --seq-len")
    t = lambda rows: torch.tensor(rows, dtype=torch.long)  # noqa: E731
    return TrainData(t(ids_rows), t(label_rows), t(mask_rows), "instruction", real)


def load_train_data(spec: str, tokenizer: Any, seq_len: int, split: str = "train", text_field: str = "text") -> TrainData:
    """``--data`` -> :class:`TrainData` with rows of exactly ``seq_len`` tokens."""
    kind, docs = load_documents(spec, split, text_field)
    if kind == "instruction":
        return instruction_examples(docs, tokenizer, seq_len)
    return pack_documents(docs, tokenizer, seq_len)
