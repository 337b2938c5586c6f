"""Retrieval tasks: passkey, LongEval lines and topics, needle in a haystack.

  * ``passkey``  Landmark Attention (Mohtashami & Jaggi 2023), strings copied from epfml/landmark-attention.
  * ``lines``    LongChat LongEval line retrieval (LMSYS 2023); last integer of the answer must match.
  * ``topics``   LongEval coarse retrieval: which topic was discussed first; topic-name match.
  * ``niah``     Needle in a haystack (Kamradt 2023) at a given depth; substring recall of the key fact.

Construction and scoring: docs/eval.md (tasks table).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longseq.core.plots import pyplot, save
from longseq.core.tables import fmt_len
from longseq.eval.tasks.generate import GenerationTask, Prompt, register
from longseq.eval.tasks.hook import PlannedSample, Settings
from longseq.eval.tasks.scoring import score_contains, score_exact_int, score_last_int, score_recall
from longseq.eval.tasks.text import (PASSKEY_GARBAGE, PASSKEY_TASK, garbage, haystack, insert_at_depth, topic_bank,
                                     unique_keys)

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

LINES_HEADER = ("Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and "
                "contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. For each line index, "
                "memorize its corresponding <REGISTER_CONTENT>. At the end of the record, I will ask you to "
                "retrieve the corresponding <REGISTER_CONTENT> of a certain line index. Now the record start:\n\n")


@register("lines", registry=RETRIEVAL_TASKS, score=score_last_int, max_new_tokens=16, units_per_token=4 / 21)
def gen_lines(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """LongEval lines: n // 4 lines 'line <adj>-<noun>: REGISTER_CONTENT is <v>', ask for one of them.

    One line is ~21 tokens, more than 2% of a 1k prompt, so the knob's low two bits add 0-3 of the
    passkey's irrelevant sentences after the record to reach the length within tolerance.
    """
    lines, pad = max(n // 4, 1), n % 4
    frac = rng.random()
    keys = unique_keys(rng, lines)
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


@register("topics", registry=RETRIEVAL_TASKS, score=score_contains, max_new_tokens=16, units_per_token=4.3)
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


@register("niah", registry=RETRIEVAL_TASKS, kind=NiahTask, score=score_recall, max_new_tokens=24,
          units_per_token=4.5)
def gen_niah(rng: random.Random, n: int, opts: dict[str, Any]) -> Prompt:
    """Needle in a haystack: the Dolores Park needle at depth ``opts['depth']`` of n characters of prose."""
    depth = float(opts.get("depth", 0.5))
    text, offset = insert_at_depth(haystack(n), NIAH_NEEDLE, depth)
    body = ("You are a helpful AI bot that answers questions for a user. Keep your response short and direct.\n"
            f"{text}\n{NIAH_QUESTION}")
    return Prompt(body, "The best thing to do in San Francisco is", NIAH_FACTS, depth=depth,
                  meta={"needle_char": offset, "context_chars": len(text)})
