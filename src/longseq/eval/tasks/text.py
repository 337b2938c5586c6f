"""Text sources of the generated prompts: shipped prose, word lists, topic conversations and filler.

Depth placement follows Kamradt's needle in a haystack (2023): a needle goes at a relative position of
the text, moved back to the previous sentence end.
"""

from __future__ import annotations

import functools
import json
import random
import re
from importlib import resources
from typing import Any

from longseq.core.errors import UserError


@functools.lru_cache(maxsize=None)
def _data_text(name: str) -> str:
    return resources.files("longseq").joinpath("data", name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def haystack_text() -> str:
    """Shipped filler prose: Python's documentation (``pydoc_data.topics``), prose paragraphs only.

    ~113k characters (~25k SmolLM2 tokens); longer haystacks repeat it, as NIAH repeats its essays.
    Regenerate with ``scripts/make_haystack.py``.
    """
    return _data_text("haystack.txt").replace("\n", " ")


@functools.lru_cache(maxsize=None)
def words() -> dict[str, list[str]]:
    """Self-written adjective and noun lists (keys of lines/RULER needles)."""
    return json.loads(_data_text("words.json"))


@functools.lru_cache(maxsize=None)
def topic_bank() -> list[dict[str, Any]]:
    """Self-written topic conversations: ``[{"topic": str, "turns": [[user, assistant], ...]}, ...]``."""
    return json.loads(_data_text("topics.json"))


@functools.lru_cache(maxsize=None)
def vocabulary() -> list[str]:
    """Distinct lowercase words (4-10 letters) of the haystack, in first-seen order (for RULER cwe)."""
    seen: dict[str, None] = {}
    for w in re.findall(r"[A-Za-z]+", haystack_text()):
        if 4 <= len(w) <= 10:
            seen.setdefault(w.lower(), None)
    return list(seen)


def haystack(n_chars: int) -> str:
    """``n_chars`` characters of shipped prose, cut back to a word boundary."""
    base = haystack_text()
    text = base
    while len(text) < n_chars:
        text = text + " " + base
    cut = text[:n_chars]
    if n_chars < len(text) and not text[n_chars].isspace():
        cut = cut.rsplit(" ", 1)[0] if " " in cut else cut
    return cut.rstrip()


_SENTENCE_END = re.compile(r"[.!?]\"?\s")


def insert_at_depth(text: str, needle: str, depth: float) -> tuple[str, int]:
    """Insert ``needle`` into ``text`` at relative ``depth`` in [0, 1], moved back to the previous sentence end.

    As in Kamradt's NIAH: the insertion point is ``int(len * depth)`` moved back to the end of the
    previous sentence; depth 1 appends. Returns the new text and the character offset of the needle.
    """
    if depth >= 1.0:
        pos = len(text)
    else:
        pos = int(len(text) * depth)
        ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, pos)]
        pos = ends[-1] if ends else 0
    before, after = text[:pos].rstrip(), text[pos:].lstrip()
    joined = (before + " " if before else "") + needle
    offset = len(joined) - len(needle)
    return joined + (" " + after if after else ""), offset


def unique_keys(rng: random.Random, n: int) -> list[str]:
    """n distinct adjective-noun ids drawn sequentially (the first k are the same for every n >= k)."""
    adj, noun = words()["adjectives"], words()["nouns"]
    if n > len(adj) * len(noun):
        raise UserError(f"{n} distinct keys needed but only {len(adj) * len(noun)} exist; use a shorter length")
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen.setdefault(f"{rng.choice(adj)}-{rng.choice(noun)}", None)
    return list(seen)


# Strings copied from epfml/landmark-attention llama/run_test.py (Apache-2.0) for exact comparability.
PASSKEY_TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                "I will quiz you about the important information there.")
PASSKEY_GARBAGE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def garbage(n_chars: int) -> str:
    """``n_chars`` characters of the passkey's grass/sky/sun filler, repeated and cut."""
    reps = n_chars // (len(PASSKEY_GARBAGE) + 1) + 1
    return " ".join([PASSKEY_GARBAGE] * reps)[:n_chars]

