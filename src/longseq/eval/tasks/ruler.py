"""RULER (Hsieh et al. 2024, arXiv 2404.06654) as one task: seven subtasks, all-match recall.

Each (method, length) cell runs every subtask ``--samples`` times; the cell's score is the mean of the
subtask means, as RULER averages its tasks.
"""

from __future__ import annotations

import bisect
import random
import re
import string
from typing import Any

from longseq.core.errors import unknown_choice
from longseq.core.tables import fmt_len, md_table
from longseq.eval.tasks.generate import GenerationTask, Prompt, register
from longseq.eval.tasks.hook import EvalTask, PlannedSample, RunContext, Settings
from longseq.eval.tasks.scoring import score_recall, score_recall_words
from longseq.eval.tasks.text import garbage, haystack, insert_at_depth, unique_keys, vocabulary

RULER_SUBTASKS: dict[str, GenerationTask] = {}

RULER_NIAH = ("Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
              "I will quiz you about the {kind} afterwards.\n{context}\n"
              "What are all the special magic {kind} for {query} mentioned in the provided text?")
RULER_NIAH_PREFIX = "The special magic {kind} for {query} mentioned in the provided text are"


def _magic_number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _ruler_niah(rng: random.Random, n: int, n_keys: int, n_values: int, n_queries: int) -> Prompt:
    """RULER NIAH family on the essay haystack: ``n_keys`` keys with ``n_values`` numbers each at random
    sentence-boundary depths; ``n_queries`` keys are asked for, all their values must be returned."""
    keys = unique_keys(rng, n_keys)
    values = {k: [_magic_number(rng) for _ in range(n_values)] for k in keys}
    needles = [(k, v) for k in keys for v in values[k]]
    depths = sorted(rng.random() for _ in needles)
    rng.shuffle(needles)
    text = haystack(n)
    # Insert from the deepest needle to the shallowest so earlier offsets stay valid.
    for (k, v), d in sorted(zip(needles, depths), key=lambda x: -x[1]):
        text, _ = insert_at_depth(text, f"One of the special magic numbers for {k} is: {v}.", d)
    queried = keys[:n_queries]
    query = ", ".join(queried[:-1]) + (" and " if len(queried) > 1 else "") + queried[-1]
    expected = [v for k in queried for v in values[k]]
    return Prompt(RULER_NIAH.format(kind="numbers", context=text, query=query),
                  RULER_NIAH_PREFIX.format(kind="numbers", query=query), expected, depth=depths[0],
                  meta={"keys": keys, "queried": queried})


@register("niah_single", score_recall, 128, 4.5, RULER_SUBTASKS)
def gen_niah_single(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """RULER niah_single_2: one word key -> 7-digit number in an essay haystack."""
    return _ruler_niah(rng, n, 1, 1, 1)


@register("niah_multikey", score_recall, 128, 4.5, RULER_SUBTASKS)
def gen_niah_multikey(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """RULER niah_multikey_1: 4 keys (3 distractors), one queried."""
    return _ruler_niah(rng, n, 4, 1, 1)


@register("niah_multivalue", score_recall, 128, 4.5, RULER_SUBTASKS)
def gen_niah_multivalue(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """RULER niah_multivalue: one key with 4 values, all must be returned."""
    return _ruler_niah(rng, n, 1, 4, 1)


@register("niah_multiquery", score_recall, 128, 4.5, RULER_SUBTASKS)
def gen_niah_multiquery(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """RULER niah_multiquery: 4 keys queried at once, all values returned."""
    return _ruler_niah(rng, n, 4, 1, 4)


def _var_name(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(5))


@register("vt", score_recall_words, 30, 4.5, RULER_SUBTASKS)
def gen_vt(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """RULER variable tracking: VAR X1 = v, then 4 hops VAR Xi = VAR Xi-1 in passkey noise; find all Xi."""
    names: list[str] = []
    while len(names) < 5:
        name = _var_name(rng)
        if name not in names:
            names.append(name)
    value = str(rng.randint(10000, 99999))
    statements = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, 5)]
    depths = sorted(rng.random() for _ in statements)
    noise = garbage(n)
    ends = [0] + [m.end() for m in re.finditer(r"\. ", noise)]
    cuts = [max(e for e in ends if e <= d * len(noise)) for d in depths] + [len(noise)]
    pieces = [noise[: cuts[0]].strip()]
    for i, stmt in enumerate(statements):
        pieces += [stmt, noise[cuts[i]: cuts[i + 1]].strip()]
    context = " ".join(p for p in pieces if p)
    body = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
            f"{context}\nQuestion: Find all variables that are assigned the value {value} in the text above.")
    prefix = (f"Answer: According to the chain(s) of variable assignment in the text above, 5 variables are "
              f"assigned the value {value}, they are:")
    return Prompt(body, prefix, names, depth=depths[0], meta={"value": value})


@register("cwe", score_recall_words, 120, 1 / 3.2, RULER_SUBTASKS)
def gen_cwe(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """RULER common words extraction: 10 words x 30 and n other words x 3 (x6 / x1 below 4k) in a
    numbered list; return the 10 most common."""
    few = int(opts.get("length", 4096)) < 4096
    common_freq, rare_freq = (6, 1) if few else (30, 3)
    vocab = list(vocabulary())
    rng.shuffle(vocab)
    n_rare = max(n, 0)
    while len(vocab) < 10 + n_rare:  # the haystack has ~3k distinct words; invent pronounceable ones beyond
        vocab.append("".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(4)))
    common, rare = vocab[:10], vocab[10:10 + n_rare]
    items = common * common_freq + rare * rare_freq
    rng.shuffle(items)
    listing = " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))
    body = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
            f"ones that appear most often.\n{listing}\nQuestion: What are the 10 most common words in the above list?")
    return Prompt(body, "Answer: The top 10 words that appear most often in the list are:", common)


@register("fwe", score_recall_words, 50, 1 / 2.6, RULER_SUBTASKS)
def gen_fwe(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """RULER frequent words extraction: n coded words drawn from Zipf(alpha=2); the most frequent one is
    replaced by '...' noise; return the next three most frequent."""
    vocab_size, alpha = 200, 2.0
    coded: list[str] = []
    while len(coded) < vocab_size:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(6))
        if w not in coded:
            coded.append(w)
    weights = [1 / (k + 1) ** alpha for k in range(vocab_size)]
    cum, acc = [], 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    draws = [min(bisect.bisect_left(cum, rng.random() * acc), vocab_size - 1) for _ in range(max(n, 0))]
    counts: dict[int, int] = {}
    for d in draws:
        counts[d] = counts.get(d, 0) + 1
    ranked = sorted((i for i in counts if i != 0), key=lambda i: (-counts[i], i))
    expected = [coded[i] for i in ranked[:3]]
    text = " ".join("...." if d == 0 else coded[d] for d in draws)
    body = ("Read the following coded text and track the frequency of each coded word. Find the three most "
            f"frequently appeared coded words.\n{text}\nQuestion: Do not provide any explanation. Please ignore the "
            "dots '....'. What are the three most frequently appeared words in the above coded text?")
    return Prompt(body, "Answer: According to the coded text above, the three most frequently appeared words are:",
                  expected, meta={"counts": [counts[i] for i in ranked[:4]]})


class RulerTask(EvalTask):
    """The RULER family: each sample belongs to one subtask, which generates, answers and scores it."""

    name = "ruler"

    def __init__(self, subtasks: dict[str, GenerationTask]):
        self.subtasks = subtasks
        self.description = "RULER subtasks: " + ", ".join(subtasks)

    def subtask(self, name: str) -> GenerationTask:
        if name not in self.subtasks:
            raise unknown_choice("RULER subtask", str(name), self.subtasks)
        return self.subtasks[name]

    def plan(self, settings: Settings, method: str, length: int) -> list[PlannedSample]:
        return [PlannedSample(method, self.name, sub, length, i)
                for sub in self.subtasks for i in range(settings.samples)]

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
        subs = list(rows[0]["subtasks"])
        table = [[r["method"], fmt_len(r["length"])] + [f"{r['subtasks'].get(s, float('nan')):.2f}" for s in subs]
                 for r in rows]
        return ["## RULER subtasks", "", md_table(["method", "length"] + subs, table), ""]


RULER = RulerTask(RULER_SUBTASKS)
