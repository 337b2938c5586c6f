"""RULER (Hsieh et al. 2024, arXiv 2404.06654) as one task: its synthetic subtasks and, given the data
files, its two QA subtasks (:mod:`.ruler_qa`).

Each subtask follows NVIDIA/RULER ``scripts/data/synthetic/`` (templates of ``constants.py``, task
arguments of ``scripts/synthetic.yaml``): the answer prefix starts with a space and is appended to the
input, the prompt plus the tokens to generate fit the length, and outputs are scored by substring
(``string_match_all``, ``scripts/eval/synthetic/constants.py``). A (method, length) cell runs every
subtask ``--samples`` times; its score is the mean of the subtask means, as RULER averages its tasks.
Remaining differences: docs/fidelity.md.
"""

from __future__ import annotations

import functools
import math
import random
import string
from typing import Any

from longseq.core.errors import UserError, unknown_choice
from longseq.core.tables import fmt_len, md_table
from longseq.eval.tasks.generate import GenerationTask, Prompt, register
from longseq.eval.tasks.hook import EvalTask, PlannedSample, RunContext, Settings
from longseq.eval.tasks.ruler_qa import RULER_QA_SUBTASKS, qa_subtasks
from longseq.eval.tasks.scoring import score_recall
from longseq.eval.tasks.text import PASSKEY_GARBAGE, haystack_words, insert_at_sentences, unique_keys, vocabulary

RULER_SUBTASKS: dict[str, GenerationTask] = {}
"""The synthetic subtasks every ``ruler`` cell runs (qa_1 / qa_2 join them when their data is given)."""

_RULER_OPTS: dict[str, Any] = dict(stop=(), fit_answer=True)  # no stop; input + tokens to generate <= length

# --------------------------------------------------------------------------------------------------- niah

NIAH_TEMPLATE = ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {type_v} afterwards.\n{context}\n"
                 "What are all the special magic {type_v} for {query} mentioned in the provided text?")
NIAH_PREFIX = " The special magic {type_v} for {query} mentioned in the provided text are"
NIAH_NEEDLE = "One of the special magic {type_v} for {key} is: {value}."


def singular(template: str) -> str:
    """RULER's wording when one key and one value are asked (niah.py): 'Some' -> 'A', 'are all' -> 'is',
    'are' -> 'is', 'answers' -> 'answer', applied to the template before it is filled."""
    for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        template = template.replace(old, new)
    return template


def join_queries(keys: list[str]) -> str:
    """RULER's query list: 'a, b, c, and d' (one key: itself)."""
    return ", ".join(keys[:-1]) + ", and " + keys[-1] if len(keys) > 1 else keys[0]


def _magic_number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))  # generate_random_number(num_digits=7)


def _ruler_niah(rng: random.Random, n_words: int, n_keys: int, n_values: int, n_queries: int) -> Prompt:
    """RULER's niah on the essay haystack: ``n_keys`` word keys with ``n_values`` 7-digit numbers each,
    the needles shuffled and put between sentences of ``n_words`` haystack words at depths drawn from
    RULER's 40 depth percents; ``n_queries`` of the keys are asked, all their values are the answer."""
    keys = unique_keys(rng, n_keys)
    values = {k: [_magic_number(rng) for _ in range(n_values)] for k in keys}
    needles = [NIAH_NEEDLE.format(type_v="numbers", key=k, value=v) for k in keys for v in values[k]]
    rng.shuffle(needles)
    context, depths = insert_at_sentences(rng, haystack_words(max(n_words, 1)), needles)
    queried = [keys[i] for i in rng.sample(range(n_keys), n_queries)]
    template, prefix, type_v = NIAH_TEMPLATE, NIAH_PREFIX, "numbers"
    if n_queries * n_values == 1:
        template, prefix, type_v = singular(template), singular(prefix), "number"
    query = join_queries(queried)
    return Prompt(template.format(type_v=type_v, context=context, query=query),
                  prefix.format(type_v=type_v, query=query), [v for k in queried for v in values[k]],
                  depth=min(depths), sep="", meta={"keys": keys, "queried": queried})


@register("niah_single", score_recall, 128, 0.7, RULER_SUBTASKS, **_RULER_OPTS)
def gen_niah_single(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """RULER niah_single_2: one word key -> one 7-digit number in the essay haystack."""
    return _ruler_niah(rng, n, 1, 1, 1)


@register("niah_multikey", score_recall, 128, 0.7, RULER_SUBTASKS, **_RULER_OPTS)
def gen_niah_multikey(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """RULER niah_multikey_1: 4 keys (3 distractors), one queried."""
    return _ruler_niah(rng, n, 4, 1, 1)


@register("niah_multivalue", score_recall, 128, 0.7, RULER_SUBTASKS, **_RULER_OPTS)
def gen_niah_multivalue(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """RULER niah_multivalue: one key with 4 values, all must be returned."""
    return _ruler_niah(rng, n, 1, 4, 1)


@register("niah_multiquery", score_recall, 128, 0.7, RULER_SUBTASKS, **_RULER_OPTS)
def gen_niah_multiquery(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """RULER niah_multiquery: 4 keys queried at once, all values returned."""
    return _ruler_niah(rng, n, 4, 1, 4)


# ----------------------------------------------------------------------------------------------------- vt

VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
               "Question: Find all variables that are assigned the value {query} in the text above.")
VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
             "assigned the value {query}, they are: ")
VT_HOPS = 4
VT_EXAMPLE_TOKENS = 500  # RULER sizes its one-shot example with max_seq_length=500


def _vt_chain(rng: random.Random, name_len: int) -> tuple[list[str], list[str], str]:
    """One chain of ``VT_HOPS`` hops (variable_tracking.py ``generate_chains``): distinct upper-case names,
    a 5-digit value, statements ``VAR A = v`` then ``VAR B = VAR A `` (RULER's trailing space kept)."""
    names: list[str] = []
    while len(names) < VT_HOPS + 1:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(name_len))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10000, 99998))  # np.random.randint(10000, 99999)
    statements = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(VT_HOPS)]
    return names, statements, value


def _vt_noise(rng: random.Random, n_noise: int, statements: list[str]) -> str:
    """RULER's noise haystack: ``n_noise`` copies of the grass/sky/sun paragraph, one per line, each
    statement on its own line at sorted random paragraph positions."""
    lines = [PASSKEY_GARBAGE] * n_noise
    for j, pos in enumerate(sorted(rng.sample(range(n_noise), len(statements)))):
        lines.insert(pos + j, statements[j])
    return "\n".join(lines).replace(". \n", ".\n")


def _vt_text(rng: random.Random, n_noise: int, name_len: int) -> tuple[str, str, list[str], str]:
    """(filled template, filled answer prefix, the chain's names, value) of one vt question."""
    names, statements, value = _vt_chain(rng, name_len)
    context = _vt_noise(rng, max(n_noise, len(statements)), statements)
    return (VT_TEMPLATE.format(context=context, query=value), VT_PREFIX.format(num_v=VT_HOPS + 1, query=value),
            names, value)


def _vt_example(rng: random.Random, n_noise: int) -> str:
    """RULER's one-shot vt example: a 3-letter-name chain in ``n_noise`` paragraphs, its question, answer
    prefix and answer (``input + " " + outputs + "\\n"``)."""
    question, prefix, names, _ = _vt_text(rng, n_noise, 3)
    return f"{question}{prefix} {' '.join(names)}\n"


def _tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@functools.lru_cache(maxsize=64)
def _vt_example_noise(tokenizer: Any, max_tokens: int) -> int | None:
    """Most noise paragraphs (at least 5, as RULER's search starts) whose example stays within
    ``max_tokens``; None when even 5 do not fit."""
    def tokens(n: int) -> int:
        return _tokens(tokenizer, _vt_example(random.Random("vt-example"), n))

    lo, hi = 5, 6
    if tokens(lo) > max_tokens:
        return None
    while tokens(hi) <= max_tokens:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if tokens(mid) <= max_tokens else (lo, mid)
    return lo


@functools.lru_cache(maxsize=64)
def _vt_smallest_question(tokenizer: Any) -> int:
    """Tokens of a vt question with RULER's fewest (5) noise paragraphs, answer prefix included."""
    question, prefix, _, _ = _vt_text(random.Random("vt-question"), 5, 5)
    return _tokens(tokenizer, question + prefix)


@register("vt", score_recall, 30, 1 / 22, RULER_SUBTASKS, tolerance=None, optional_example=True, **_RULER_OPTS)
def gen_vt(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """RULER variable tracking: one 4-hop chain VAR X1 = v ... in n noise paragraphs after a one-shot
    example; find all five variables.

    The example takes up to RULER's 500 tokens; when the length cannot hold it next to the smallest
    question (below ~1k tokens, where RULER itself cannot build vt) it is shortened, then left out.
    """
    tokenizer = opts["tokenizer"]
    room = int(opts["length"]) - 30 - _vt_smallest_question(tokenizer)
    noise = _vt_example_noise(tokenizer, min(VT_EXAMPLE_TOKENS, room)) if opts.get("example", True) else None
    example = _vt_example(rng, noise) + "\n" if noise else ""
    question, prefix, names, value = _vt_text(rng, n, 5)
    return Prompt(example + question, prefix, names, sep="", meta={"value": value, "example": bool(noise)})


# ---------------------------------------------------------------------------------------------------- cwe

CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
                "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above "
                "list?")
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
CWE_COMMON = 10


@functools.lru_cache(maxsize=None)
def cwe_extended_vocabulary() -> tuple[str, ...]:
    """The haystack's words followed by invented pronounceable ones, 40k distinct words: the larger list
    that cwe draws from when a list needs more distinct words than the haystack has (RULER moves from
    wonderwords to its English word list the same way)."""
    words = list(vocabulary())
    seen = set(words)
    rng = random.Random("cwe-vocabulary")
    while len(words) < 40000:
        w = "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(3, 4)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return tuple(words)


def _cwe_list(rng: random.Random, num_words: int, common_reps: int, other_reps: int) -> tuple[str, list[str]]:
    """``get_example``: ``num_words`` distinct words, the first 10 repeated ``common_reps`` times and the
    rest ``other_reps`` times, shuffled into a list numbered '1. w 2. w ...'."""
    base = vocabulary()
    chosen = rng.sample(base if num_words <= len(base) else cwe_extended_vocabulary(), num_words)
    common = chosen[:CWE_COMMON]
    items = common * common_reps + chosen[CWE_COMMON:] * other_reps
    rng.shuffle(items)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(items)), common


def _cwe_reps(length: int) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """(example words, example repeats, question repeats): (20, 3/1, 6/1) below 4k, else (40, 10/3, 30/3)."""
    return (20, (3, 1), (6, 1)) if length < 4096 else (40, (10, 3), (30, 3))


def _cwe_example(rng: random.Random, length: int) -> str:
    """RULER's one-shot cwe example: a list, its question, the answer prefix and the numbered answer."""
    words, reps, _ = _cwe_reps(length)
    listing, answer = _cwe_list(rng, words, *reps)
    return (CWE_TEMPLATE.format(context=listing) + CWE_PREFIX + " "
            + " ".join(f"{i + 1}. {w}" for i, w in enumerate(answer)))


@register("cwe", score_recall, 120, 1 / 8, RULER_SUBTASKS, optional_example=True, **_RULER_OPTS)
def gen_cwe(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """RULER common words extraction: n distinct words in a numbered list, 10 of them x30 and the others
    x3 (x6 / x1 below 4k) after a one-shot example; return the 10 most common.

    When the example and the smallest list (11 words) do not fit together, a length where RULER itself
    cannot build cwe, the example is left out (``opts['example']`` False).
    """
    length = int(opts.get("length", 4096))
    shot = _cwe_example(rng, length) + "\n" if opts.get("example", True) else ""
    listing, common = _cwe_list(rng, max(n, CWE_COMMON + 1), *_cwe_reps(length)[2])
    return Prompt(shot + CWE_TEMPLATE.format(context=listing), CWE_PREFIX, common, sep="", meta={"example": bool(shot)})


# ---------------------------------------------------------------------------------------------------- fwe

FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
                "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
                "the dots '....'. What are the three most frequently appeared words in the above coded text?")
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
FWE_ALPHA, FWE_ZETA = 2.0, math.pi ** 2 / 6  # zeta(2)
FWE_NOISE = "..."  # vocab[0], the most frequent word, is noise
FWE_MIN_WORDS = math.ceil(FWE_ZETA / (4 ** -FWE_ALPHA - 5 ** -FWE_ALPHA))
"""From this many words on, the 3rd answer word's count strictly exceeds the 4th's (no tie)."""


def fwe_counts(num_words: int, vocab_size: int) -> list[int]:
    """RULER's deterministic Zipf counts: ``int(num_words * k**-alpha / zeta(alpha))`` for k = 1..vocab_size."""
    return [int(num_words * k ** -FWE_ALPHA / FWE_ZETA) for k in range(1, vocab_size + 1)]


def fwe_vocab_size(length: int) -> int:
    """``(max_seq_length - tokens_to_generate) // 50`` coded words."""
    return (length - 50) // 50


@register("fwe", score_recall, 50, 1 / 2, RULER_SUBTASKS, **_RULER_OPTS)
def gen_fwe(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """RULER frequent words extraction: n coded words with Zipf(2) counts over a vocabulary of
    (length - 50) // 50 six-letter words, the most frequent one being '...' noise; return the next three."""
    length = int(opts.get("length", 4096))
    size = fwe_vocab_size(length)
    if size < 5:
        raise UserError(f"length {length} is too short for RULER fwe (its vocabulary of (length - 50) // 50 words "
                        "needs 5); use longer --lengths")
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(string.ascii_lowercase) for _ in range(6)))
    vocab = sorted(words)
    rng.shuffle(vocab)
    vocab[0] = FWE_NOISE
    counts = fwe_counts(max(n, FWE_MIN_WORDS), size)
    items = [w for w, c in zip(vocab, counts) for _ in range(c)]
    rng.shuffle(items)
    return Prompt(FWE_TEMPLATE.format(context=" ".join(items)), FWE_PREFIX, vocab[1:4], sep="",
                  meta={"counts": counts[:5]})


# ------------------------------------------------------------------------------------------------ the task


class RulerTask(EvalTask):
    """The RULER family: each sample belongs to one subtask, which generates, answers and scores it."""

    name = "ruler"

    def __init__(self, subtasks: dict[str, GenerationTask]):
        self.subtasks = subtasks
        self.description = "RULER subtasks: " + ", ".join(subtasks) + " (+ qa_1, qa_2 with their data files)"

    def subtask(self, name: str) -> GenerationTask:
        every = {**self.subtasks, **RULER_QA_SUBTASKS}
        if name not in every:
            raise unknown_choice("RULER subtask", str(name), every)
        return every[name]

    def plan(self, settings: Settings, method: str, length: int) -> list[PlannedSample]:
        names = list(self.subtasks) + qa_subtasks(settings)
        return [PlannedSample(method, self.name, sub, length, i) for sub in names for i in range(settings.samples)]

    def prepare(self, ctx: RunContext, sample: PlannedSample) -> None:
        self.subtask(sample.subtask).prepare(ctx, sample)

    def run(self, ctx: RunContext, engine: Any, sample: PlannedSample) -> dict[str, Any]:
        return self.subtask(sample.subtask).run(ctx, engine, sample)

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        subs: dict[str, list[float]] = {}
        for r in records:
            subs.setdefault(r["subtask"], []).append(r["score"])
        means = {k: sum(v) / len(v) for k, v in subs.items()}
        return {"subtasks": means, "score": sum(means.values()) / len(means)}

    def report_section(self, rows: list[dict[str, Any]]) -> list[str]:
        """A method x length table of the subtask scores."""
        subs = list(dict.fromkeys(s for r in rows for s in r["subtasks"]))
        table = [[r["method"], fmt_len(r["length"])] + [f"{r['subtasks'].get(s, float('nan')):.2f}" for s in subs]
                 for r in rows]
        return ["## RULER subtasks", "", md_table(["method", "length"] + subs, table), ""]


RULER = RulerTask(RULER_SUBTASKS)
