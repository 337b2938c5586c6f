"""The length-generalization protocol: what a benchmark run trains and tests, its presets and validation.

Protocol of Ruoss et al., "Randomized Positional Encodings Boost Length Generalization of Transformers"
(ACL 2023, arXiv 2305.16843); reference: google-deepmind/randomized_positional_encodings
(``experiments/``). This module needs no torch, so ``longseq --help`` and input validation stay fast: the
positional-encoding names live here and :mod:`longseq.lengthgen.randpe` (the torch model) imports them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from longseq.core.errors import UserError, unknown_choice
from longseq.core.parsing import parse_csv
from longseq.lengthgen.chomsky import CHOMSKY_TASKS, get_task

# ------------------------------------------------------------------------- positional encodings

BASE_PES = ("none", "sin_cos", "learned", "rope", "relative", "alibi")
PES = BASE_PES + tuple(f"randomized_{p}" for p in BASE_PES if p != "none")
ABSOLUTE = ("sin_cos", "learned")  # added to the embeddings; the others act inside attention

# Training losses: "full" is the reference's (token cross-entropy over every output slot, the 0-padding
# after an end token included); "masked" ignores the slots after the end token.
LOSSES = ("full", "masked")

# Bumped whenever the generators, the loss or the metrics change what a run measures, so that records of an
# older longseq in a run folder are never mixed with new ones (it is part of every run key).
PROTOCOL_VERSION = 2


def split_pe(pe: str) -> tuple[str, bool]:
    """``"randomized_rope"`` -> ``("rope", True)``; unknown names raise a one-line error."""
    if pe not in PES:
        raise unknown_choice("positional encoding", pe, PES)
    if pe.startswith("randomized_"):
        return pe[len("randomized_"):], True
    return pe, False


# ------------------------------------------------------------------------------------ protocol


@dataclass
class Protocol:
    """Everything that decides a run's result (hashed into its cache key), plus what to run."""

    tasks: list[str] = field(default_factory=lambda: ["parity_check"])
    pes: list[str] = field(default_factory=lambda: ["rope", "randomized_rope"])
    train_lengths: list[int] = field(default_factory=lambda: list(range(1, 41)))
    test_lengths: list[int] = field(default_factory=lambda: list(range(41, 501)))
    steps: int = 10_000
    seeds: int = 1
    lrs: list[float] = field(default_factory=lambda: [1e-3])
    batch_size: int = 128
    eval_samples: int = 512
    eval_batch: int = 64
    max_len: int = 2048
    d_model: int = 64
    n_layers: int = 5
    n_heads: int = 8
    d_ff: int = 256
    dropout: float = 0.1
    clip: float = 1.0
    loss: str = "full"

    def fingerprint(self) -> str:
        """Hash of the fields that change a run's result (not the task/PE/seed/lr selection)."""
        keep = {k: v for k, v in asdict(self).items() if k not in ("tasks", "pes", "seeds", "lrs")}
        keep["version"] = PROTOCOL_VERSION
        return hashlib.sha1(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:10]


def run_key(task: str, pe: str, seed: int, lr: float, p: Protocol) -> str:
    """The cache key of one (task, PE, seed, lr) run under protocol ``p`` (``runs.jsonl`` field ``key``)."""
    return f"{task}|{pe}|seed={seed}|lr={lr:g}|{p.fingerprint()}"


# Presets. "default" is the reference example script (batch 128, lr 1e-3, 10k steps, L = 2048).
# "paper" is the protocol of the paper as far as the reference notes can confirm it: N = 40, test 41..500,
# 512 test samples per length, 10 seeds x lr {1e-4, 3e-4, 5e-4}; the step count (1M) is unverified.
# "quick" is sized for this shared 2-core CPU (< 30 min, measured in README): Even Pairs (the answer needs
# the first and the last token, so position handling decides it), RoPE and relative each plain vs
# randomized, train 1-15, test 16-96 (up to 6x longer). Missing Duplicate did not learn in this budget.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "quick": dict(
        tasks=["even_pairs"],
        pes=["rope", "randomized_rope", "relative", "randomized_relative"],
        train_lengths=list(range(1, 16)),
        test_lengths=list(range(16, 97, 8)),
        steps=1500,
        seeds=2,
        lrs=[1e-3],
        batch_size=64,
        eval_samples=128,
        eval_batch=64,
        max_len=256,
    ),
    "paper": dict(
        tasks=list(CHOMSKY_TASKS),
        pes=["all"],  # every PE of PES
        train_lengths=list(range(1, 41)),
        test_lengths=list(range(41, 501)),
        steps=1_000_000,
        seeds=10,
        lrs=[1e-4, 3e-4, 5e-4],
        batch_size=128,
        eval_samples=512,
        eval_batch=64,
        max_len=2048,
    ),
}

_RANGE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


def parse_length_spec(text: str, flag: str = "--test-lengths") -> list[int]:
    """``"41-500"`` -> 41..500, ``"41-500:10"`` -> 41, 51, ..., ``"5,8-10"`` -> 5, 8, 9, 10 (sorted, unique)."""
    values: set[int] = set()
    for part in parse_csv(text):
        m = _RANGE.match(part.replace(" ", ""))
        if not m:
            raise UserError(f"{flag}: '{part}' is not a length range; write e.g. 1-40, 41-500:10 or 50,100")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        step = int(m.group(3) or 1)
        if lo < 1 or hi < lo or step < 1:
            raise UserError(f"{flag}: '{part}' must be an increasing range of lengths >= 1")
        values.update(range(lo, hi + 1, step))
    if not values:
        raise UserError(f"{flag}: no lengths given; write e.g. 1-40")
    return sorted(values)


def make_protocol(preset: str | None = None, **overrides: Any) -> Protocol:
    """A :class:`Protocol` from a preset plus explicit overrides (``None`` overrides are ignored); validated."""
    name = preset or "default"
    if name not in PRESETS:
        raise unknown_choice("preset", name, PRESETS)
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    if values.get("pes") == ["all"]:
        values["pes"] = list(PES)
    unknown = set(values) - set(Protocol.__dataclass_fields__)
    if unknown:
        raise UserError(f"unknown protocol option(s) {sorted(unknown)}; "
                        "see help(longseq.lengthgen.protocol.Protocol)")
    proto = Protocol(**values)
    validate(proto)
    return proto


def _no_duplicates(flag: str, values: list[Any]) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise UserError(f"{flag} lists {v:g} twice; give each value once" if isinstance(v, float)
                            else f"{flag} lists {v} twice; give each value once")
        seen.add(v)


def _check_numbers(p: Protocol) -> None:
    """Sizes are integers >= 1, rates finite and in range (NaN and infinities are refused)."""
    for name, value in (("--steps", p.steps), ("--seeds", p.seeds), ("--batch-size", p.batch_size),
                        ("--eval-samples", p.eval_samples), ("eval_batch", p.eval_batch),
                        ("--max-len", p.max_len), ("d_model", p.d_model), ("n_layers", p.n_layers),
                        ("n_heads", p.n_heads), ("d_ff", p.d_ff)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be an integer >= 1, got {value!r}")
    if not p.lrs:
        raise UserError("--lr: no learning rate given; write e.g. 1e-3 or 1e-4,3e-4")
    for lr in p.lrs:
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or not 0 < lr <= 1:
            raise UserError(f"--lr must be a finite number in (0, 1], got {lr!r}; write e.g. 1e-3")
    if not isinstance(p.dropout, (int, float)) or not 0 <= p.dropout < 1:
        raise UserError(f"dropout must be in [0, 1), got {p.dropout!r}")
    if not isinstance(p.clip, (int, float)) or not (math.isfinite(p.clip) and p.clip > 0):
        raise UserError(f"clip (the gradient-norm bound) must be a finite number > 0, got {p.clip!r}")
    if p.d_model % p.n_heads or (p.d_model // p.n_heads) % 2:
        raise UserError(f"d_model={p.d_model} must split into {p.n_heads} heads of even width")


def validate(p: Protocol) -> None:
    """Reject bad settings before any training starts (names, numbers, duplicates, tapes longer than the
    position range). The memory check needs torch and lives in :mod:`longseq.lengthgen.guard`."""
    if not p.tasks or not p.pes:
        raise UserError("no tasks or no PEs selected; pass e.g. --tasks parity_check --pe rope,randomized_rope")
    for t in p.tasks:
        get_task(t)
    for pe in p.pes:
        split_pe(pe)
    if p.loss not in LOSSES:
        raise unknown_choice("loss", p.loss, LOSSES)
    _check_numbers(p)
    for flag, values in (("--tasks", p.tasks), ("--pe", p.pes), ("--lr", p.lrs)):
        _no_duplicates(flag, values)
    if not p.train_lengths or not p.test_lengths:
        raise UserError("--train-lengths and --test-lengths need at least one length each; write e.g. 1-40")
    for flag, lengths in (("--train-lengths", p.train_lengths), ("--test-lengths", p.test_lengths)):
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
            raise UserError(f"{flag}: lengths must be integers >= 1; write e.g. 1-40")
    longest = max(p.train_lengths + p.test_lengths)
    # Randomized PEs draw from [0, L) and the learned table has L rows: both need every tape to fit in L.
    needs_table = any(split_pe(pe)[1] or split_pe(pe)[0] == "learned" for pe in p.pes)
    for t in p.tasks:
        tape = get_task(t).tape_length(longest)
        if needs_table and tape > p.max_len:
            raise UserError(
                f"{t} at length {longest} needs a tape of {tape} positions but --max-len is {p.max_len}; "
                f"raise --max-len to at least {tape} or shorten --test-lengths"
            )
