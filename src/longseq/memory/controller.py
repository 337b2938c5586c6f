"""The SCM memory controller: the two yes/no questions the model answers about its own memory.

Wang, Liang et al., "SCM: Enhancing Large Language Model with Self-Controlled Memory Framework"
(arXiv 2304.13343). Decision 1 (the paper's "activation" prompt; the public code never calls it): does this
input need memory at all? Decision 2: for a long activated memory, is its summary enough? The paper asks the
second only when the activation memory is over 2,000 tokens, and only for items over 800 (at a 4k window);
:class:`ControllerConfig` scales both to the model's window. Answers are parsed from messy model output by
:func:`parse_choice`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from longseq.memory.llm import ChatLLM
from longseq.memory.store import MemoryItem

GATE_PROMPT = """You decide whether a chat assistant must look back at earlier conversation.
User message: "{input}"
Does answering this message need information from earlier in the conversation (facts the user told before, earlier plans or topics)?
(A) Yes, it needs earlier conversation.
(B) No, it can be answered without it.
Reply with (A) or (B)."""

SUFFICIENT_PROMPT = """Note from earlier in the conversation:
{summary}

User message: "{input}"
Does the note alone contain everything needed to answer the user message?
(A) Yes, the note is enough.
(B) No, more detail is needed.
Reply with (A) or (B)."""

_YES = r"yes|yeah|yep|true|correct|needed|needs|enough|sufficient"
_NO = r"no|nope|false|incorrect|not needed|not enough|insufficient|unnecessary|doesn'?t|does not|cannot|can'?t"
_CHOICE_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("paren", re.compile(r"[(\[]\s*([ab])\s*[)\]]", re.I)),
    ("labelled", re.compile(r"(?:answer|option|choice|reply)\s*(?:is|:|=|-)?\s*[*\"'`]*\s*([ab])\b", re.I)),
    ("bare", re.compile(r"^[\s*\"'`>#-]*([ab])(?:[\s.):*\"'`,]|$)", re.I)),
    ("word", re.compile(rf"\b({_NO}|{_YES})\b", re.I)),
]


@dataclass
class Choice:
    """A parsed (A)/(B) answer: ``value`` True for (A)/yes, False for (B)/no, None if nothing was found."""

    value: bool | None
    rule: str
    raw: str


def parse_choice(text: str) -> Choice:
    """Parse a yes (A) / no (B) answer from messy model output.

    Rules in order of trust: a letter in brackets ("(B)", "[a]"), a labelled letter ("Answer: B"), a bare
    leading letter ("B." / "**A**"), then the first yes/no word ("No, it does not"). Within a rule the first
    match wins; later rules are only tried if earlier ones find nothing.
    """
    clean = text.strip()
    for name, pattern in _CHOICE_RULES:
        m = pattern.search(clean)
        if not m:
            continue
        tok = m.group(1).lower()
        if name == "word":
            return Choice(not re.fullmatch(_NO, tok, re.I), name, text)
        return Choice(tok == "a", name, text)
    return Choice(None, "none", text)


@dataclass(frozen=True)
class ControllerConfig:
    """Switches and thresholds of the two controller decisions (paper: 800 / 2,000 tokens at a 4k window)."""

    gate: bool = True
    summary_check: bool = True
    item_tokens: int = 800
    total_tokens: int = 2000
    default_gate: bool = True       # unparseable answer to decision 1: use memory
    default_sufficient: bool = False  # unparseable answer to decision 2: keep the full text

    def scaled(self, context_length: int) -> "ControllerConfig":
        """The paper's thresholds scaled from its 4,096-token window to ``context_length``."""
        f = context_length / 4096
        return replace(self, item_tokens=max(32, int(self.item_tokens * f)),
                       total_tokens=max(64, int(self.total_tokens * f)))


@dataclass
class Decision:
    """One logged controller decision."""

    kind: str
    item: int | None
    value: bool
    parsed: str
    raw: str


class MemoryController:
    """Asks the LLM the two SCM questions and logs every decision."""

    def __init__(self, llm: ChatLLM, config: ControllerConfig | None = None) -> None:
        self.llm = llm
        self.config = config or ControllerConfig().scaled(llm.context_length)
        self.log: list[Decision] = []

    def _ask(self, prompt: str) -> Choice:
        msgs = [{"role": "user", "content": prompt}]
        room = self.llm.context_length - 16
        if self.llm.count_messages(msgs) > room:  # keep the question answerable: shorten the quoted content
            over = self.llm.count_messages(msgs) - room
            prompt = self.llm.truncate(prompt, self.llm.count(prompt) - over - 8, keep="end")
            msgs = [{"role": "user", "content": prompt}]
        return parse_choice(self.llm.complete(msgs, max_new_tokens=6))  # "(A) Yes" fits in 6 tokens

    def needs_memory(self, user_input: str) -> bool:
        """Decision 1: does this input need memory?"""
        if not self.config.gate:
            return True
        c = self._ask(GATE_PROMPT.format(input=user_input))
        value = self.config.default_gate if c.value is None else c.value
        self.log.append(Decision("needs_memory", None, value, c.rule, c.raw))
        return value

    def summary_enough(self, item: MemoryItem, user_input: str) -> bool:
        """Decision 2: can the input be answered from the item's summary alone?"""
        c = self._ask(SUFFICIENT_PROMPT.format(summary=item.summary or item.text, input=user_input))
        value = self.config.default_sufficient if c.value is None else c.value
        self.log.append(Decision("summary_enough", item.id, value, c.rule, c.raw))
        return value

    def choose_forms(self, items: Sequence[MemoryItem], user_input: str,
                     summarize: Callable[[MemoryItem], MemoryItem]) -> dict[int, bool]:
        """Per activated item, True to use its summary. Only checked past the thresholds (paper)."""
        use_summary = {it.id: False for it in items}
        total = sum(it.text_tokens for it in items)
        if not self.config.summary_check or total <= self.config.total_tokens:
            return use_summary
        for it in items:
            if it.text_tokens > self.config.item_tokens:
                it2 = summarize(it)
                use_summary[it.id] = bool(it2.summary) and self.summary_enough(it2, user_input)
        return use_summary
