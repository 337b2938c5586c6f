"""Scorers of the generated tasks: ``(model output, expected) -> score in [0, 1]``.

Parsing follows each task's reference harness: landmark-attention's first integer (passkey), LongChat's
last integer (LongEval lines), RULER's ``string_match_all`` / ``string_match_part`` substring scores
(Hsieh et al. 2024, arXiv 2404.06654, scripts/eval/synthetic/constants.py).
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


def _ruler_pred(output: str) -> str:
    """RULER's ``postprocess_pred``: strip, control characters to newlines, lowercased for matching."""
    return re.sub(r"[\x00-\x1f]", "\n", (output or "").strip()).strip().lower()


def string_match_all(output: str, references: Sequence[str]) -> float:
    """RULER's ``string_match_all`` for one prediction: the fraction of references that occur in the
    output as case-insensitive substrings (niah, vt, cwe, fwe)."""
    if not references:
        return 0.0
    pred = _ruler_pred(output)
    return sum(ref.lower() in pred for ref in references) / len(references)


def string_match_part(output: str, references: Sequence[str]) -> float:
    """RULER's ``string_match_part`` for one prediction: 1 if any reference occurs in the output as a
    case-insensitive substring (qa)."""
    pred = _ruler_pred(output)
    return float(any(ref.lower() in pred for ref in references))


def score_recall(output: str, expected: Sequence[str]) -> float:
    """All-match recall of the expected strings (RULER's ``string_match_all``; NIAH's key facts)."""
    return string_match_all(output, expected)
