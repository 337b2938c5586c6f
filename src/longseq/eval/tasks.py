"""Synthetic long-context tasks: prompt generators sized in the evaluated model's tokens, and their scoring.

Every generated prompt is a pure function of ``(task, length, seed, index)`` and the tokenizer: the
random state is ``random.Random(f"{task}|{length}|{seed}|{index}")`` (string seeds are hashed with
SHA-512, so they do not depend on ``PYTHONHASHSEED``). A generator maps a size knob ``n`` (filler
characters, number of lines, number of words...) to a prompt; :func:`size_prompt` binary-searches the
largest ``n`` whose rendered prompt has at most ``length`` tokens and checks that it has at least
``(1 - LENGTH_TOLERANCE) * length``, as RULER sizes its haystacks with the evaluated tokenizer.

Tasks (construction and scoring follow ../shared/reference/evaluation.md):
  * ``passkey``  Landmark Attention (Mohtashami & Jaggi 2023), strings copied from epfml/landmark-attention.
  * ``lines``    LongChat LongEval line retrieval (LMSYS 2023); last integer of the answer must match.
  * ``topics``   LongEval coarse retrieval: which topic was discussed first; topic-name match.
  * ``niah``     Needle in a haystack (Kamradt 2023) at a given depth; substring recall of the key fact.
  * ``ruler``    RULER (Hsieh et al. 2024, arXiv 2404.06654) subtasks, all-match recall.
"""

from __future__ import annotations

import bisect
import functools
import json
import random
import re
import string
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, Sequence

from longseq.core.errors import UserError, unknown_choice

LENGTH_TOLERANCE = 0.02


# ------------------------------------------------------------------------------------------ text sources


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


# ---------------------------------------------------------------------------------------------- prompts


@dataclass
class Prompt:
    """One generated test case, before the prompt format (raw / chat) is applied.

    ``body`` is the user-facing text (instructions, context, question); ``answer_prefix`` the completion
    start appended after it (raw) or after the assistant header (chat). ``expected`` is what the scorer
    needs; ``depth`` the relative position of the (first) needle in the context, when there is one.
    """

    body: str
    answer_prefix: str
    expected: Any
    depth: float | None = None
    sep: str = "\n"
    meta: dict[str, Any] = field(default_factory=dict)


Generator = Callable[[random.Random, int, dict[str, Any]], Prompt]


@dataclass(frozen=True)
class Task:
    """A registered task: a generator ``(rng, n, opts) -> Prompt``, a scorer ``(output, expected) -> [0,1]``,
    the generation budget and a first guess of the size knob per token (for the binary search)."""

    name: str
    generate: Generator
    score: Callable[[str, Any], float]
    max_new_tokens: int
    units_per_token: float
    description: str


TASKS: dict[str, Task] = {}
RULER_SUBTASKS: dict[str, Task] = {}


def register(name: str, score: Callable[[str, Any], float], max_new_tokens: int, units_per_token: float,
             registry: dict[str, Task] | None = None) -> Callable[[Generator], Generator]:
    """Decorator adding a generator to :data:`TASKS` (or to :data:`RULER_SUBTASKS`)."""

    def deco(fn: Generator) -> Generator:
        (TASKS if registry is None else registry)[name] = Task(name, fn, score, max_new_tokens, units_per_token,
                                                               (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


# ---------------------------------------------------------------------------------------------- scoring

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


def score_any(output: str, expected: Sequence[str]) -> float:
    """RULER part-match: 1 if any reference appears."""
    return float(recall(output, expected) > 0)


# ---------------------------------------------------------------------------------------------- passkey

# Strings copied from epfml/landmark-attention llama/run_test.py (Apache-2.0) for exact comparability.
PASSKEY_TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                "I will quiz you about the important information there.")
PASSKEY_GARBAGE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def _garbage(n_chars: int) -> str:
    reps = n_chars // (len(PASSKEY_GARBAGE) + 1) + 1
    return " ".join([PASSKEY_GARBAGE] * reps)[:n_chars]


@register("passkey", score_exact_int, max_new_tokens=10, units_per_token=4.5)
def gen_passkey(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """Landmark-attention passkey: key in [1, 50000] hidden in n characters of grass/sky/sun filler."""
    frac = rng.random()
    key = rng.randint(1, 50000)
    prefix = int(round(frac * n))
    info = f"The pass key is {key}. Remember it. {key} is the pass key."
    body = "\n".join([PASSKEY_TASK, _garbage(prefix), info, _garbage(n - prefix), "What is the pass key?"])
    return Prompt(body, "The pass key is", key, depth=prefix / n if n else 0.0, sep=" ")


# ------------------------------------------------------------------------------------------------ lines

LINES_HEADER = ("Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and "
                "contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. For each line index, "
                "memorize its corresponding <REGISTER_CONTENT>. At the end of the record, I will ask you to "
                "retrieve the corresponding <REGISTER_CONTENT> of a certain line index. Now the record start:\n\n")


def _unique_keys(rng: random.Random, n: int) -> list[str]:
    """n distinct adjective-noun ids drawn sequentially (the first k are the same for every n >= k)."""
    adj, noun = words()["adjectives"], words()["nouns"]
    if n > len(adj) * len(noun):
        raise UserError(f"{n} distinct keys needed but only {len(adj) * len(noun)} exist; use a shorter length")
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen.setdefault(f"{rng.choice(adj)}-{rng.choice(noun)}", None)
    return list(seen)


@register("lines", score_last_int, max_new_tokens=16, units_per_token=4 / 21)
def gen_lines(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """LongEval lines: n // 4 lines 'line <adj>-<noun>: REGISTER_CONTENT is <v>', ask for one of them.

    One line is ~21 tokens, more than 2% of a 1k prompt, so the knob's low two bits add 0-3 of the
    passkey's irrelevant sentences after the record to reach the length within tolerance.
    """
    lines, pad = max(n // 4, 1), n % 4
    frac = rng.random()
    keys = _unique_keys(rng, lines)
    values = [rng.randint(1, 50000) for _ in range(lines)]
    target = min(int(frac * lines), lines - 1)
    record = "\n".join(f"line {k}: REGISTER_CONTENT is <{v}>" for k, v in zip(keys, values))
    padding = "".join("\n" + s.strip() for s in re.findall(r"[^.]+\.", PASSKEY_GARBAGE)[:pad])
    question = (f"{padding}\nNow the record is over. Tell me what is the <REGISTER_CONTENT> in line {keys[target]}? "
                "I need the number.")
    # LongChat's reference answer reads "The <REGISTER_CONTENT> in line X is <v>."; ending the prefix with "<"
    # lifted SmolLM2-135M from 0/4 to 1/4 at 1k.
    return Prompt(LINES_HEADER + record + question, f"The <REGISTER_CONTENT> in line {keys[target]} is <",
                  values[target], depth=target / lines, meta={"line": keys[target], "num_lines": lines})


# ----------------------------------------------------------------------------------------------- topics

TOPICS_HEADER = ("Below is a record of a long conversation between a user and another assistant on {k} different "
                 "topics. Pay attention to the topics they discuss. At the beginning of each topic, the USER will say "
                 "'I would like to discuss the topic of <TOPIC>'. You only need to memorize the word of this <TOPIC>. "
                 "At the end of the record, I will ask you to retrieve the first topic they discuss. Only give me the "
                 "topic they discuss, you don't need to summarize their conversation. Now the record start. ")


def _topic_section(entry: dict[str, Any]) -> str:
    parts = [f"USER: I would like to discuss the topic of {entry['topic']}."]
    for user, assistant in entry["turns"]:
        if user:
            parts.append(f"USER: {user}")
        parts.append(f"ASSISTANT: {assistant}")
    parts.append("USER: Thank you, that is all I wanted to know about this topic. Let us move on to the next one.")
    return "\n".join(parts)


@register("topics", score_contains, max_new_tokens=16, units_per_token=4.3)
def gen_topics(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """LongEval topics: conversations on several topics (n characters, last one cut), ask for the first topic.

    Topics are drawn without replacement from the shipped bank; when the bank is exhausted a new shuffled
    round starts that never repeats the first topic, so the label stays unambiguous.
    """
    bank = topic_bank()
    order = list(range(len(bank)))
    rng.shuffle(order)
    first = order[0]
    sections, total, k = [], 0, 0
    while total < n:
        if k >= len(order):
            rest = [i for i in range(len(bank)) if i != first]
            rng.shuffle(rest)
            order += rest
        sec = _topic_section(bank[order[k]])
        sections.append(sec)
        total += len(sec) + 1
        k += 1
    record = "\n".join(sections)[: max(n, 1)]
    if len(record) < total - 1 and " " in record:
        record = record.rsplit(" ", 1)[0]
    k_started = record.count("I would like to discuss the topic of")
    body = (TOPICS_HEADER.format(k=max(k_started, 1)) + record + "\nNow the record ends. What is the first topic "
            "they talk about? Remember only give me the topic name, you don't need to summarize.")
    return Prompt(body, "The first topic they talk about is", bank[first]["topic"],
                  meta={"topics": k_started})


# ------------------------------------------------------------------------------------------------- niah

NIAH_NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
NIAH_QUESTION = ("What is the best thing to do in San Francisco? Don't give information outside the document or "
                 "repeat your findings.")
NIAH_FACTS = ["sandwich", "dolores park"]


@register("niah", score_recall, max_new_tokens=24, units_per_token=4.5)
def gen_niah(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """Needle in a haystack: the Dolores Park needle at depth ``opts['depth']`` of n characters of prose."""
    depth = float(opts.get("depth", 0.5))
    text, offset = insert_at_depth(haystack(n), NIAH_NEEDLE, depth)
    body = ("You are a helpful AI bot that answers questions for a user. Keep your response short and direct.\n"
            f"{text}\n{NIAH_QUESTION}")
    return Prompt(body, "The best thing to do in San Francisco is", NIAH_FACTS, depth=depth,
                  meta={"needle_char": offset, "context_chars": len(text)})


# ------------------------------------------------------------------------------------------------ RULER

RULER_NIAH = ("Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
              "I will quiz you about the {kind} afterwards.\n{context}\n"
              "What are all the special magic {kind} for {query} mentioned in the provided text?")
RULER_NIAH_PREFIX = "The special magic {kind} for {query} mentioned in the provided text are"


def _magic_number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _ruler_niah(rng: random.Random, n: int, n_keys: int, n_values: int, n_queries: int) -> Prompt:
    """RULER NIAH family on the essay haystack: ``n_keys`` keys with ``n_values`` numbers each at random
    sentence-boundary depths; ``n_queries`` keys are asked for, all their values must be returned."""
    keys = _unique_keys(rng, n_keys)
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
    noise = _garbage(n)
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


def score_ruler(output: str, expected: Any) -> float:  # pragma: no cover - ruler samples use their subtask scorer
    raise RuntimeError("ruler samples are scored by their subtask")


# ``ruler`` is a task family: each sample belongs to one subtask (see :func:`task_for`).
TASKS["ruler"] = Task("ruler", gen_niah_single, score_ruler, 128, 4.5,
                      "RULER subtasks: " + ", ".join(RULER_SUBTASKS))


def task_for(name: str, subtask: str | None = None) -> Task:
    """The registered task (or RULER subtask) object."""
    if name == "ruler":
        if subtask not in RULER_SUBTASKS:
            raise unknown_choice("RULER subtask", str(subtask), RULER_SUBTASKS)
        return RULER_SUBTASKS[subtask]
    if name not in TASKS:
        raise unknown_choice("task", name, list(TASKS) + ["ppl"])
    return TASKS[name]


# ----------------------------------------------------------------------------------------------- sizing


def sample_rng(task: str, length: int, seed: int, index: int) -> random.Random:
    """Deterministic RNG for one sample: a function of (task, length, seed, index) only."""
    return random.Random(f"{task}|{length}|{seed}|{index}")


@dataclass
class SizedPrompt:
    """A prompt rendered and sized: the final ``text`` and its ``tokens`` count in the model's tokenizer."""

    prompt: Prompt
    text: str
    tokens: int
    units: int


def size_prompt(task: Task, length: int, seed: int, index: int, count: Callable[[Prompt], tuple[str, int]],
                opts: dict[str, Any] | None = None, key: str | None = None) -> SizedPrompt:
    """Build the prompt of ``task`` whose rendered token count is the largest <= ``length``.

    ``count(prompt) -> (rendered text, token count)`` applies the prompt format and the tokenizer. The
    size knob is binary-searched; the result must be within :data:`LENGTH_TOLERANCE` of ``length``.
    """
    opts = {**(opts or {}), "length": length}
    name = key or task.name

    def build(n: int) -> SizedPrompt:
        p = task.generate(sample_rng(name, length, seed, index), n, opts)
        text, tokens = count(p)
        return SizedPrompt(p, text, tokens, n)

    lo_p = build(0 if task.units_per_token > 0.5 else 1)
    if lo_p.tokens > length:
        raise UserError(f"length {length} is too short for task '{name}' (its fixed text alone is {lo_p.tokens} "
                        "tokens); use longer --lengths")
    lo, hi = lo_p.units, max(lo_p.units + 1, int((length - lo_p.tokens) * task.units_per_token * 1.05))
    best, hi_p = lo_p, build(hi)
    while hi_p.tokens <= length:  # grow until the upper bound overshoots
        best, lo = hi_p, hi
        hi = int(hi * 1.5) + 1
        hi_p = build(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        mid_p = build(mid)
        if mid_p.tokens <= length:
            best, lo = mid_p, mid
        else:
            hi = mid
    if best.tokens < (1 - LENGTH_TOLERANCE) * length:
        raise UserError(f"cannot size task '{name}' to {length} tokens (got {best.tokens}); the tokenizer packs its "
                        "text too coarsely at this length, try a longer length")
    return best


def task_names() -> list[str]:
    """All task names accepted by ``--tasks``."""
    return list(TASKS) + ["ppl"]
