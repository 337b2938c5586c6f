"""Text sources of the generated prompts: shipped prose, word lists, topic conversations and filler.

Needle placement: :func:`insert_at_token_depth` follows Kamradt's needle in a haystack (2023), a relative
position in tokens moved back to the previous period token; :func:`insert_at_sentences` follows RULER
(Hsieh et al. 2024), needles between sentences at sampled depth percents.
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


@functools.lru_cache(maxsize=None)
def haystack_word_list() -> tuple[str, ...]:
    """The haystack split on single spaces after collapsing whitespace (RULER's ``essay`` word list)."""
    return tuple(re.sub(r"\s+", " ", haystack_text()).strip().split(" "))


def haystack_words(n_words: int) -> str:
    """The first ``n_words`` words of the haystack, repeated as needed (RULER's ``num_haystack`` words)."""
    words_ = haystack_word_list()
    reps = n_words // len(words_) + 1
    return " ".join((words_ * reps)[:max(n_words, 0)])


_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+")


def sentences(text: str) -> list[str]:
    """``text`` split into sentences at the spaces after ``.``, ``!`` or ``?`` (or those plus a closing quote
    or bracket). RULER uses NLTK's punkt model; this rule needs no downloaded data and differs from it
    only after abbreviations (docs/fidelity.md)."""
    return [x for x in _SENTENCE_BREAK.split(text.strip()) if x]


RULER_DEPTHS = [round(100 * i / 39) for i in range(40)]
"""RULER's 40 needle depth percents, ``np.round(np.linspace(0, 100, 40))``."""


def insert_at_sentences(rng: random.Random, text: str, needles: list[str]) -> tuple[str, list[float]]:
    """RULER's essay insertion: each needle goes between sentences at a depth percent drawn without
    replacement from :data:`RULER_DEPTHS` (sorted, the needles in their given order); chunks and needles
    are joined with single spaces. Returns the text and the needles' depths in [0, 1]."""
    sents = sentences(text)
    depths = sorted(rng.sample(RULER_DEPTHS, len(needles)))
    cuts = [0] + [int(len(sents) * d / 100) for d in depths] + [len(sents)]
    parts: list[str] = []
    for i in range(1, len(cuts)):
        parts.append(" ".join(sents[cuts[i - 1]:cuts[i]]))
        if i - 1 < len(needles):
            parts.append(needles[i - 1])
    return " ".join(parts), [d / 100 for d in depths]


@functools.lru_cache(maxsize=8)
def _haystack_ids(tokenizer: Any) -> tuple[int, ...]:
    return tuple(tokenizer(haystack_text(), add_special_tokens=False)["input_ids"])


def insert_at_token_depth(tokenizer: Any, n_tokens: int, needle: str, depth: float) -> tuple[str, int, int]:
    """Kamradt's NIAH context: ``n_tokens`` tokens of haystack and needle, the needle at ``depth`` in tokens.

    The haystack is cut to ``n_tokens - len(needle tokens)``; depth 1 appends; otherwise the insertion
    point ``int(len * depth)`` moves back until the token before it is a period token (the tokens of
    ``"."``), as ``insert_needle`` in LLMTest_NeedleInAHaystack. Returns the decoded context, the token
    offset of the needle and the haystack token count.
    """
    needle_ids = tokenizer(needle, add_special_tokens=False)["input_ids"]
    base = _haystack_ids(tokenizer)
    keep = max(n_tokens - len(needle_ids), 0)
    ids = list((base * (keep // max(len(base), 1) + 1))[:keep])
    if depth >= 1.0:
        point = len(ids)
    else:
        period = set(tokenizer(".", add_special_tokens=False)["input_ids"])
        point = int(len(ids) * depth)
        while point > 0 and ids[point - 1] not in period:
            point -= 1
    text = tokenizer.decode(ids[:point] + needle_ids + ids[point:])
    return text, point, len(ids)


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

