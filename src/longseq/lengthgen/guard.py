"""Checks a length-generalization run passes before it writes anything: memory and the records of an
earlier run in its folder (the folder itself is checked by :func:`longseq.models.loading.check_output_path`).

* :func:`check_memory` refuses protocols whose largest training step or test forward cannot fit (e.g.
  ``--test-lengths 1000000``), with the estimate in the message, instead of running until the system kills
  the process. The estimate is an upper bound: it counts the attention scores as materialized even where
  PyTorch's fused kernel avoids them (``tests/test_lengthgen_train.py`` checks it against measured peaks).
* :func:`load_records` reads ``runs.jsonl`` and refuses, naming ``file:line``, any record with missing
  fields or wrong types; a torn line (a killed writer) is skipped and redone, duplicates count once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from longseq.core.errors import UserError
from longseq.core.fsutil import read_jsonl
from longseq.lengthgen.chomsky import get_task
from longseq.lengthgen.protocol import Protocol, run_key, split_pe
from longseq.models.generation import available_memory_bytes

FLOAT = 4  # bytes per float32 value
EVAL_SCORE_BUDGET = 2**27  # attention-score floats of one evaluation forward (the chunking in run.py)


def eval_chunk(p: Protocol, tape: int) -> int:
    """Sequences per evaluation forward at tape length ``tape``: at most ``eval_batch``, fewer on long tapes so
    that one forward's attention scores stay near :data:`EVAL_SCORE_BUDGET` floats (0.5 GiB)."""
    return max(1, min(p.eval_batch, EVAL_SCORE_BUDGET // (p.n_heads * tape * tape)))


def forward_bytes(p: Protocol, batch: int, tape: int, training: bool) -> int:
    """Upper bound on the memory of one forward (plus backward when ``training``) of the encoder.

    Per layer: the attention logits, their softmax and an additive bias/mask, each ``(B, H, T, T)`` floats
    (x2 with their gradients when training), and ``(B, T, 12 D + 2 F)`` floats of projections, residuals,
    norms and FFN hidden units. Training keeps every layer's tensors for the backward pass; evaluation holds
    about one layer at a time (two for safety).
    """
    scores = batch * p.n_heads * tape * tape * FLOAT
    acts = batch * tape * (12 * p.d_model + 2 * p.d_ff) * FLOAT
    per_layer = (6 if training else 3) * scores + (2 if training else 1) * acts
    return per_layer * (p.n_layers if training else 2) + 4 * batch * tape * 8  # + token ids and targets


def fixed_bytes(p: Protocol) -> int:
    """Memory that does not grow with the tape: a learned position table with its Adam state and gradient
    (4 copies of ``max_len x D``) and the permutation of ``[0, max_len)`` behind randomized positions."""
    learned = any(split_pe(pe)[0] == "learned" for pe in p.pes)
    randomized = any(split_pe(pe)[1] for pe in p.pes)
    return (4 * p.max_len * p.d_model * FLOAT if learned else 0) + (3 * p.max_len * 8 if randomized else 0)


def peak_estimate(p: Protocol) -> tuple[int, str, str]:
    """The largest memory need of the protocol in bytes, what needs it and the fix (for the error message)."""
    worst: tuple[int, str, str] = (0, "", "")
    for name in p.tasks:
        task = get_task(name)
        n_train = max(p.train_lengths, key=task.tape_length)
        tape = task.tape_length(n_train)
        worst = max(worst, (forward_bytes(p, p.batch_size, tape, training=True),
                            f"a training step of {name} at length {n_train:,} (batch {p.batch_size}, tape of "
                            f"{tape:,} positions)", "lower --batch-size or shorten --train-lengths"))
        n_test = max(p.test_lengths, key=task.tape_length)
        tape = task.tape_length(n_test)
        worst = max(worst, (forward_bytes(p, eval_chunk(p, tape), tape, training=False),
                            f"testing {name} at length {n_test:,} (tape of {tape:,} positions)",
                            "shorten --test-lengths"))
    return worst[0] + fixed_bytes(p), worst[1], worst[2]


def available_bytes(device: str) -> int:
    """Free memory of ``device``: the GPU's free memory for CUDA, else the host's available memory."""
    if device.startswith("cuda"):
        import torch  # heavy: only when a CUDA device was chosen

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    return available_memory_bytes()


def check_memory(p: Protocol, device: str) -> None:
    """Refuse a protocol whose estimated peak exceeds 90% of the free memory of ``device`` (one line)."""
    need, what, fix = peak_estimate(p)
    have = available_bytes(device)
    if need > 0.9 * have:
        raise UserError(f"{what} needs about {need / 2**30:,.1f} GiB but {have / 2**30:,.1f} GiB is available "
                        f"on {device}; {fix}")


# ------------------------------------------------------------------------------------------ records

# Fields of every record, and the extra ones of records written by this version (matched by fingerprint).
_NUMBER = (int, float)
FIELDS: dict[str, tuple[type, ...]] = {
    "key": (str,), "fingerprint": (str,), "task": (str,), "pe": (str,), "seed": (int,), "lr": _NUMBER,
    "accuracy": _NUMBER, "per_length": (dict,), "train_accuracy": _NUMBER,
}
CURRENT_FIELDS: dict[str, tuple[type, ...]] = {"sequence_accuracy": _NUMBER, "per_length_sequence": (dict,)}


_TYPE_NAMES = {(str,): "a string", (int,): "an integer", _NUMBER: "a number", (dict,): "an object"}


def _check_fields(record: dict[str, Any], fields: dict[str, tuple[type, ...]]) -> None:
    """Raise ``KeyError(name)`` for a missing field, ``TypeError`` for a value of the wrong type."""
    for name, types in fields.items():
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise TypeError(f"field '{name}' is {json.dumps(value)[:40]}, not {_TYPE_NAMES[types]}")
        if types is _NUMBER and not math.isfinite(value):
            raise ValueError(f"field '{name}' is not a finite number")


def record_check(p: Protocol) -> Callable[[dict[str, Any]], None]:
    """The check of one ``runs.jsonl`` record for :func:`longseq.core.fsutil.read_jsonl` (which names
    ``file:line`` in the one-line error): the fields and types of every record; for records of protocol
    ``p`` also the newer fields, a key matching the run, and a number for every test length."""
    fingerprint = p.fingerprint()

    def check(record: dict[str, Any]) -> None:
        _check_fields(record, FIELDS)
        if record["fingerprint"] != fingerprint:
            return  # another protocol or an older longseq: kept in the file, never summarized
        _check_fields(record, CURRENT_FIELDS)
        if record["key"] != run_key(record["task"], record["pe"], record["seed"], record["lr"], p):
            raise ValueError("the record's key does not match its task, pe, seed and lr")
        for name in ("per_length", "per_length_sequence"):
            for n in p.test_lengths:
                value = record[name].get(str(n))
                if isinstance(value, bool) or not isinstance(value, _NUMBER):
                    raise ValueError(f"field '{name}' has no accuracy for test length {n}")

    return check


def load_records(path: Path, p: Protocol) -> list[dict[str, Any]]:
    """The finished runs in ``runs.jsonl`` (none if absent), each key once (a duplicated line, e.g. from two
    concurrent runs, counts once); a record with wrong fields is a one-line error naming ``file:line``."""
    records: dict[str, dict[str, Any]] = {}
    for record in read_jsonl(path, record_check(p)):
        records.setdefault(record["key"], record)
    return list(records.values())
