"""Scorers of the generated tasks: ``(model output, expected) -> score in [0, 1]``.

Parsing follows each task's reference harness: landmark-attention's first integer (passkey), LongChat's
last integer (LongEval lines), RULER's all-match recall (Hsieh et al. 2024, arXiv 2404.06654).
"""

from __future__ import annotations

import re
import string
from typing import Sequence

_INT = re.compile(r"-?\d+")


def first_int(text: str) -> int | None:
    """First integer in ``text`` (passkey parsing, as landmark-attention's ``re.search(r'\\d+')``)."""
    m = _INT.search(text or "")
    return abs(int(m.group())) if m else None


def last_int(text: str) -> int | None:
    """Last integer in ``text`` (LongEval lines parsing; LongChat uses -1 when there is none)."""
    found = _INT.findall(text or "")
    return abs(int(found[-1])) if found else None


def score_exact_int(output: str, expected: int) -> float:
    """Passkey: 1 if the first integer in the output equals the key."""
    return float(first_int(output) == int(expected))


def score_last_int(output: str, expected: int) -> float:
    """LongEval lines: 1 if the last integer in the output equals the register content."""
    return float(last_int(output) == int(expected))


def _norm(text: str) -> str:
    text = (text or "").lower()
    text = text.translate(str.maketrans({c: " " for c in string.punctuation}))
    return " ".join(text.split())


def score_contains(output: str, expected: str) -> float:
    """1 if ``expected`` appears in the output, ignoring case, punctuation and spacing (topic names)."""
    return float(bool(_norm(expected)) and f" {_norm(expected)} " in f" {_norm(output)} ")


def recall(output: str, references: Sequence[str], whole_word: bool = False) -> float:
    """RULER all-match: fraction of references found (case-insensitive) in the output.

    ``whole_word`` requires word boundaries (used for single-word answers, where a plain substring test
    would credit "class" inside "classes").
    """
    out = (output or "").lower()
    if not references:
        return 0.0
    hits = 0
    for ref in references:
        ref = ref.lower()
        hits += bool(re.search(rf"(?<![a-z0-9]){re.escape(ref)}(?![a-z0-9])", out)) if whole_word else ref in out
    return hits / len(references)


def score_recall(output: str, expected: Sequence[str]) -> float:
    """RULER all-match over the expected strings (substring)."""
    return recall(output, expected)


def score_recall_words(output: str, expected: Sequence[str]) -> float:
    """RULER all-match over expected words (whole-word matches)."""
    return recall(output, expected, whole_word=True)
