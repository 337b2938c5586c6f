"""Retrieval tasks: passkey, LongEval lines and topics, needle in a haystack.

  * ``passkey``  Landmark Attention (Mohtashami & Jaggi 2023), strings copied from epfml/landmark-attention.
  * ``lines``    LongChat LongEval line retrieval (LMSYS 2023); last integer of the answer must match.
  * ``topics``   LongEval coarse retrieval: which topic was discussed first; topic-name match.
  * ``niah``     Needle in a haystack (Kamradt 2023) at a depth in tokens; substring recall of the key fact.

Prompts follow each reference's wording and structure (templates transcribed below); construction and
scoring: docs/eval.md (tasks table), remaining differences: docs/fidelity.md.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longseq.core.plots import pyplot, save
from longseq.core.tables import fmt_len
from longseq.eval.tasks.generate import GenerationTask, Prompt, register
from longseq.eval.tasks.hook import PlannedSample, Settings
from longseq.eval.tasks.scoring import score_contains, score_exact_int, score_last_int, score_recall
from longseq.eval.tasks.text import PASSKEY_TASK, garbage, insert_at_token_depth, topic_bank, unique_keys

RETRIEVAL_TASKS: dict[str, GenerationTask] = {}


@dataclass(frozen=True)
class NiahTask(GenerationTask):
    """Needle in a haystack: one sample per needle depth, a score per depth, a depth x length heatmap."""

    def depths(self, settings: Settings) -> list[float]:
        """``--depths`` or ``samples`` evenly spaced depths in [0, 1] (0.5 for one sample)."""
        if settings.depths:
            return list(settings.depths)
        n = settings.samples
        return [0.5] if n == 1 else [i / (n - 1) for i in range(n)]

    def plan(self, settings: Settings, method: str, length: int) -> list[PlannedSample]:
        return [PlannedSample(method, self.name, "", length, i, d) for i, d in enumerate(self.depths(settings))]

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        depth: dict[str, list[float]] = {}
        for r in records:
            depth.setdefault(f"{r['depth']:.3f}", []).append(r["score"])
        return {"depths": {k: sum(v) / len(v) for k, v in sorted(depth.items())}}

    def plots(self, rows: list[dict[str, Any]], out: Path) -> list[str]:
        """niah_heatmap.png: needle depth x context length, one panel per method."""
        plt = pyplot()
        methods = list(dict.fromkeys(r["method"] for r in rows))
        fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 3.6), squeeze=False)
        for ax, method in zip(axes[0], methods):
            mine = [r for r in rows if r["method"] == method]
            lengths = sorted({r["length"] for r in mine})
            depths = sorted({d for r in mine for d in r["depths"]}, key=float)
            grid = [[next((r["depths"].get(d, math.nan) for r in mine if r["length"] == L), math.nan) for L in lengths]
                    for d in depths]
            im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto", origin="upper")
            ax.set_xticks(range(len(lengths)), [fmt_len(L) for L in lengths])
            ax.set_yticks(range(len(depths)), [f"{float(d) * 100:.0f}%" for d in depths])
            ax.set_xlabel("context length")
            ax.set_ylabel("needle depth")
            ax.set_title(f"niah ({method})")
        fig.colorbar(im, ax=axes[0].tolist())
        return [save(fig, out / "niah_heatmap.png")]


# ---------------------------------------------------------------------------------------------- passkey


@register("passkey", registry=RETRIEVAL_TASKS, score=score_exact_int, max_new_tokens=10, units_per_token=4.5)
def gen_passkey(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """Landmark-attention passkey: key in [1, 50000] hidden in n characters of grass/sky/sun filler."""
    frac = rng.random()
    key = rng.randint(1, 50000)
    prefix = int(round(frac * n))
    info = f"The pass key is {key}. Remember it. {key} is the pass key."
    body = "\n".join([PASSKEY_TASK, garbage(prefix), info, garbage(n - prefix), "What is the pass key?"])
    return Prompt(body, "The pass key is", key, depth=prefix / n if n else 0.0, sep=" ")


# ------------------------------------------------------------------------------------------------ lines

# LongChat longeval/utils.py generate_lines_testcases (LRT-NL line indices), transcribed.
LINES_HEADER = ("Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and "
                "contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. For each line index, "
                "memorize its corresponding <REGISTER_CONTENT>. At the end of the record, I will ask you to "
                "retrieve the corresponding <REGISTER_CONTENT> of a certain line index. Now the record start:\n\n")
LINES_LINE = "line {key}: REGISTER_CONTENT is <{value}>\n"
LINES_QUESTION = "\nNow the record is over. Tell me what is the <REGISTER_CONTENT> in line {key}? I need the number."
LINES_PREFIX = "Line <{key}>: <REGISTER_CONTENT> is"  # LongChat's completion prefix, appended with no separator


@register("lines", registry=RETRIEVAL_TASKS, score=score_last_int, max_new_tokens=100, units_per_token=1 / 21,
          stop=(), fit_answer=True, tolerance=None)
def gen_lines(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """LongEval lines: n lines 'line <adj>-<noun>: REGISTER_CONTENT is <v>', ask for one of them.

    As LongChat's test cases: values in [1, 50000], the asked line uniform among the n, each line ending
    with a newline and a blank line before the question. The size knob is the number of lines (the most
    that fit the length with the 100 answer tokens).
    """
    lines = max(n, 1)
    keys = unique_keys(rng, lines)
    values = [rng.randint(1, 50000) for _ in range(lines)]
    target = rng.randint(0, lines - 1)
    record = "".join(LINES_LINE.format(key=k, value=v) for k, v in zip(keys, values))
    return Prompt(LINES_HEADER + record + LINES_QUESTION.format(key=keys[target]), LINES_PREFIX.format(key=keys[target]),
                  values[target], depth=target / lines, sep="", meta={"line": keys[target], "num_lines": lines})


# ----------------------------------------------------------------------------------------------- topics

# The prompt of LongChat's published topics test cases (longeval/evaluation/topics/testcases/*.jsonl, built
# by Prompt.assemble_prompt in longeval/utils.py), transcribed; the conversations are self-written.
TOPICS_HEADER = ("Below is a record of our previous conversation on {k} different topics. You are the ASSISTANT, and "
                 "I am the USER. At the beginning of each topic, the USER will say 'I would like to discuss the topic "
                 "of <TOPIC>'. Memorize each <TOPIC>. At the end of the record, I will ask you to retrieve the first "
                 "topic. Now the record start. ")
TOPICS_QUESTION = (" Now the record ends. What is the first topic we discussed? Only give me the topic name. Do not "
                   "summarize yourself.")
TOPICS_OPEN = "USER: I would like to discuss the topic of {topic}."
TOPICS_CLOSE = "USER: Great, this is the end of our discussion on the topic {Topic}, let's talk about the next topic."
TOPICS_TURN_SEP = " \n "
TOPICS_SEP, TOPICS_PREFIX = "\n ASSISTANT: ", "The first topic is"  # LongChat's completion: "\n ASSISTANT: The first topic is"


def topic_conversation(entry: dict[str, Any]) -> str:
    """One topic as in LongChat's conversations.jsonl: the opening line, the turns and the closing line
    joined by ' \\n ' (its most common closing sentence, the topic capitalized)."""
    topic = entry["topic"]
    parts = [TOPICS_OPEN.format(topic=topic)]
    for user, assistant in entry["turns"]:
        if user:
            parts.append(f"USER: {user}")
        parts.append(f"ASSISTANT: {assistant}")
    parts.append(TOPICS_CLOSE.format(Topic=topic[:1].upper() + topic[1:]))
    return TOPICS_TURN_SEP.join(parts)


@register("topics", registry=RETRIEVAL_TASKS, score=score_contains, max_new_tokens=50, units_per_token=1 / 250,
          stop=(), fit_answer=True, tolerance=None)
def gen_topics(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """LongEval topics: n whole conversations on distinct topics, ask for the first topic.

    Topics are drawn without replacement from the shipped bank; past its size a new shuffled round starts
    that never repeats the first topic, so the label stays unambiguous. The knob is the number of topics
    (the most whole conversations that fit the length with the 50 answer tokens).
    """
    bank = topic_bank()
    k = max(n, 1)
    order = list(range(len(bank)))
    rng.shuffle(order)
    while len(order) < k:
        rest = [i for i in range(len(bank)) if i != order[0]]
        rng.shuffle(rest)
        order += rest
    record = "".join(topic_conversation(bank[i]) for i in order[:k])
    return Prompt(TOPICS_HEADER.format(k=k) + record + TOPICS_QUESTION, TOPICS_PREFIX, bank[order[0]]["topic"],
                  sep=TOPICS_SEP, meta={"topics": k})


# ------------------------------------------------------------------------------------------------- niah

# LLMTest_NeedleInAHaystack run.py defaults and providers/openai.py messages, transcribed.
NIAH_NEEDLE = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
NIAH_SYSTEM = "You are a helpful AI bot that answers questions for a user. Keep your response short and direct"
NIAH_QUESTION = ("What is the best thing to do in San Francisco? Don't give information outside the document or "
                 "repeat your findings")
NIAH_PREFIX = "The best thing to do in San Francisco is"
NIAH_FACTS = ["sandwich", "dolores park"]
NIAH_BUFFER = 200  # final_context_length_buffer: tokens of the length left for instructions, question and answer


@register("niah", registry=RETRIEVAL_TASKS, kind=NiahTask, score=score_recall, max_new_tokens=300,
          units_per_token=1.0, stop=(), fixed_units=lambda length: length - NIAH_BUFFER)
def gen_niah(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """Needle in a haystack: the Dolores Park needle at depth ``opts['depth']`` (in tokens) of an n-token context."""
    depth = float(opts.get("depth", 0.5))
    text, offset, hay = insert_at_token_depth(opts["tokenizer"], n, NIAH_NEEDLE, depth)
    body = f"{NIAH_SYSTEM}\n{text}\n{NIAH_QUESTION}"
    return Prompt(body, NIAH_PREFIX, NIAH_FACTS, depth=depth,
                  meta={"needle_token": offset, "context_tokens": hay})
