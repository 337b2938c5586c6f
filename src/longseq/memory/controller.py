"""The SCM memory controller: what the model decides about its own memory.

Wang, Liang et al., "SCM: Enhancing Large Language Model with Self-Controlled Memory Framework"
(arXiv 2304.13343), and its public code (wbbeyourself/SCM4LLMs, ``core/chat.py``), which longseq follows by
default (:data:`POLICIES`):

``code`` (default, the public code's ``get_related_turn``)
    When the retrieved memories plus flash memory exceed a budget of 2,500 tokens, every retrieved memory but
    the most similar one is asked about twice: can the question be answered from its full text (no: **drop**
    it), and from its summary (yes: use the **summary**, no: keep the **full** text). While still over the
    budget, the remaining full texts switch to summaries one at a time, least similar first. No "does this
    input need memory" question is asked.
``paper``
    The paper's decision 1 (does the input need memory at all?) and decision 2 (is the summary enough?), the
    latter only when activation memory exceeds 2,000 tokens and only for memories over 800; never a drop.

The memory and flash budgets are the reference's at its 4,096-token window and scale linearly with the model's
window (:meth:`ControllerConfig.scaled`; exact at 4,096), as do the paper's thresholds. The summarization
threshold (a turn is summarized only when its summarization prompt is over 300 tokens) is a fixed constant in the
reference and stays one: it bounds the prompt, not a share of the window. Flash memory is the previous turn, as
its full text below 500 tokens, else its summary (:meth:`MemoryController.flash_form`). Answers are parsed with the reference's
rule by default (only "(B)" means no: :func:`parse_reference`); :func:`parse_choice` is a lenient parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from longseq.core.errors import unknown_choice
from longseq.memory.llm import ChatLLM
from longseq.memory.store import MemoryItem

REFERENCE_WINDOW = 4096  # the reference's text-davinci-003 window; thresholds below are stated at it
FORMS = ("drop", "summary", "full")

# The reference's answerability question (prompts/dialogue.py, judge_answerable_prompt; Chinese only there and
# sent for English dialogues too): the same structure and answer format, in English.
ANSWERABLE_PROMPT = """Given the [conversation content] and the [user question], answer the instruction question.

[conversation content]:
```
{content}
```

[user question]:
```
{query}
```

Instruction question: 
```
Can the [user question] be answered from the [conversation content]? If it can, answer `(A) Yes`, otherwise answer `(B) No`.
```

Now answer. The output must strictly follow this format:

[Answer]: The final answer is: (A) Yes / (B) No
"""

# The paper's decision 1 (the reference code has no prompt for it and never asks it).
GATE_PROMPT = """You decide whether a chat assistant must look back at earlier conversation.
User message: "{input}"
Does answering this message need information from earlier in the conversation (facts the user told before, earlier plans or topics)?
(A) Yes, it needs earlier conversation.
(B) No, it can be answered without it.
Reply with (A) or (B)."""

ANSWER_TOKENS = 32  # room for "[Answer]: The final answer is: (B) No" (the reference allows up to 1,024)


@dataclass
class Choice:
    """A parsed (A)/(B) answer: ``value`` True for (A)/yes, False for (B)/no, None if nothing was found."""

    value: bool | None
    rule: str
    raw: str


def parse_reference(text: str) -> Choice:
    """The reference's rule (``core/chat.py``, ``get_binary_answer``): no if "(B)" occurs anywhere, else yes.

    Case-sensitive and literal: "B", "No", "Answer: B" and "(b)" all count as yes; so does an empty answer.
    """
    return Choice("(B)" not in text, "(B)" if "(B)" in text else "no (B)", text)


_YES = r"yes|yeah|yep|true|correct|needed|needs|enough|sufficient"
_NO = r"no|nope|false|incorrect|not needed|not enough|insufficient|unnecessary|doesn'?t|does not|cannot|can'?t"
_CHOICE_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("paren", re.compile(r"[(\[]\s*([ab])\s*[)\]]", re.I)),
    ("labelled", re.compile(r"(?:answer|option|choice|reply)\s*(?:is|:|=|-)?\s*[*\"'`]*\s*([ab])\b", re.I)),
    ("bare", re.compile(r"^[\s*\"'`>#-]*([ab])(?:[\s.):*\"'`,]|$)", re.I)),
    ("word", re.compile(rf"\b({_NO}|{_YES})\b", re.I)),
]


def parse_choice(text: str) -> Choice:
    """A lenient parser for messy model output (not the reference's; opt in with ``parser="lenient"``).

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


PARSERS: dict[str, Callable[[str], Choice]] = {"reference": parse_reference, "lenient": parse_choice}


@dataclass(frozen=True)
class ControllerConfig:
    """Policy, answer parser and thresholds in tokens.

    ``memory_tokens`` and ``flash_tokens`` are the public code's (2,500 / 500 at its 4,096-token window),
    ``item_tokens`` and ``total_tokens`` the paper's (800 / 2,000 at the same window); ``summarize_tokens`` is the
    code's fixed bound on the summarization prompt (300), never scaled.
    """

    policy: str = "code"
    gate: bool = False
    parser: str = "reference"
    memory_tokens: int = 2500
    flash_tokens: int = 500
    summarize_tokens: int = 300
    item_tokens: int = 800
    total_tokens: int = 2000
    default_gate: bool = True         # lenient parser, unparseable answer to decision 1: use memory
    default_sufficient: bool = False  # lenient parser, unparseable answer about a summary: keep the full text

    def __post_init__(self) -> None:
        if self.policy not in FORM_POLICIES:
            raise unknown_choice("controller policy", self.policy, FORM_POLICIES)
        if self.parser not in PARSERS:
            raise unknown_choice("answer parser", self.parser, PARSERS)

    def scaled(self, context_length: int) -> "ControllerConfig":
        """The window-relative thresholds scaled from the reference's 4,096-token window to ``context_length``
        (``summarize_tokens`` is a fixed constant in the reference and is kept)."""
        f = context_length / REFERENCE_WINDOW
        return replace(self, memory_tokens=max(64, round(self.memory_tokens * f)),
                       flash_tokens=max(16, round(self.flash_tokens * f)),
                       item_tokens=max(32, round(self.item_tokens * f)),
                       total_tokens=max(64, round(self.total_tokens * f)))


@dataclass
class Decision:
    """One logged controller question: ``kind`` is needs_memory, answerable (full text) or summary_enough."""

    kind: str
    item: int | None
    value: bool
    parsed: str
    raw: str


Summarize = Callable[[MemoryItem], MemoryItem]


class MemoryController:
    """Asks the LLM the SCM questions, decides a form per memory and logs every decision.

    Args:
        llm: the model asked (the agent's own model, as in the reference).
        config: policy and thresholds; default: the public code's, scaled to ``llm.context_length``.
    """

    def __init__(self, llm: ChatLLM, config: ControllerConfig | None = None) -> None:
        self.llm = llm
        self.config = config or ControllerConfig().scaled(llm.context_length)
        self.parse = PARSERS[self.config.parser]
        self.log: list[Decision] = []

    def _ask(self, kind: str, item: int | None, prompt: str, default: bool) -> bool:
        msgs = [{"role": "user", "content": prompt}]
        room = self.llm.context_length - ANSWER_TOKENS
        if self.llm.count_messages(msgs) > room:  # keep the question answerable: shorten the quoted content
            over = self.llm.count_messages(msgs) - room
            prompt = self.llm.truncate(prompt, self.llm.count(prompt) - over - 8, keep="end")
            msgs = [{"role": "user", "content": prompt}]
        c = self.parse(self.llm.complete(msgs, max_new_tokens=ANSWER_TOKENS))
        value = default if c.value is None else c.value
        self.log.append(Decision(kind, item, value, c.rule, c.raw))
        return value

    def needs_memory(self, user_input: str) -> bool:
        """Decision 1 of the paper: does this input need memory? (Always yes when ``gate`` is off.)"""
        if not self.config.gate:
            return True
        return self._ask("needs_memory", None, GATE_PROMPT.format(input=user_input), self.config.default_gate)

    def answerable(self, kind: str, item: MemoryItem, content: str, user_input: str) -> bool:
        """Can ``user_input`` be answered from ``content`` (an item's full text or summary)?"""
        return self._ask(kind, item.id, ANSWERABLE_PROMPT.format(content=content, query=user_input),
                         self.config.default_sufficient)

    def flash_form(self, item: MemoryItem) -> str:
        """Flash memory's form (reference ``get_turn_for_previous``): full text under the threshold, else summary."""
        return "full" if item.text_tokens < self.config.flash_tokens else "summary"

    def choose_forms(self, items: Sequence[MemoryItem], user_input: str, summarize: Summarize,
                     flash: MemoryItem | None = None) -> dict[int, str]:
        """A form (drop, summary or full) per retrieved item, ``items`` best first."""
        return FORM_POLICIES[self.config.policy](self, list(items), user_input, summarize, flash)


def _flash_budget_tokens(ctrl: MemoryController, flash: MemoryItem | None, summarize: Summarize) -> int:
    """Flash memory's share of the budget (reference ``_is_concat_history_too_long``: the summary only past
    the threshold, compared with ``>`` where the flash form uses ``<``, as there)."""
    if flash is None:
        return 0
    if flash.text_tokens > ctrl.config.flash_tokens:
        return summarize(flash).summary_tokens or flash.text_tokens
    return flash.text_tokens


def _code_forms(ctrl: MemoryController, items: list[MemoryItem], user_input: str, summarize: Summarize,
                flash: MemoryItem | None) -> dict[int, str]:
    """The public code's controller (``get_related_turn`` and ``judge_drop_or_summary``)."""
    order = list(reversed(items))  # the reference walks from the least similar; the most similar comes last
    form = {it.id: "full" for it in order}
    length = {it.id: it.text_tokens for it in order}
    fixed = _flash_budget_tokens(ctrl, flash, summarize)

    def over() -> bool:
        return sum(length.values()) + fixed > ctrl.config.memory_tokens

    def set_form(it: MemoryItem, f: str) -> None:
        form[it.id] = f
        length[it.id] = {"drop": 0, "summary": summarize(it).summary_tokens or 0, "full": it.text_tokens}[f]

    if not over():
        return form
    for it in order[:-1]:  # first round: two questions per memory, the most similar stays full
        if not ctrl.answerable("answerable", it, it.text, user_input):
            set_form(it, "drop")
            continue
        summary = summarize(it).summary or it.text
        set_form(it, "summary" if ctrl.answerable("summary_enough", it, summary, user_input) else "full")
    while over():  # later rounds: full texts become summaries one at a time until the memories fit
        switched = False
        for it in order:
            if form[it.id] == "full":
                set_form(it, "summary")
                switched = True
                if not over():
                    break
        if not switched:  # everything is a summary or dropped (the reference would loop forever here)
            break
    return form


def _paper_forms(ctrl: MemoryController, items: list[MemoryItem], user_input: str, summarize: Summarize,
                 flash: MemoryItem | None) -> dict[int, str]:
    """The paper's decision 2: summary or full text, asked only past the 2,000 / 800 token thresholds."""
    form = {it.id: "full" for it in items}
    if sum(it.text_tokens for it in items) <= ctrl.config.total_tokens:
        return form
    for it in items:
        if it.text_tokens > ctrl.config.item_tokens:
            it2 = summarize(it)
            if it2.summary and it2.summary != it2.text and \
                    ctrl.answerable("summary_enough", it2, it2.summary, user_input):
                form[it.id] = "summary"
    return form


def naive_forms(config: ControllerConfig, items: Sequence[MemoryItem]) -> dict[int, str]:
    """The "without controller" ablation (reference ``get_related_turn_naive``): full texts in similarity order
    while their total stays under the memory budget, stopping at the first that does not fit; the most
    similar is always kept (the reference cuts it to 2,000 characters when it alone is too long)."""
    form = {it.id: "drop" for it in items}
    total = 0
    for i, it in enumerate(items):
        if i and total + it.text_tokens >= config.memory_tokens:
            break
        form[it.id] = "full"
        total += it.text_tokens
    return form


FORM_POLICIES: dict[str, Callable[..., dict[int, str]]] = {"code": _code_forms, "paper": _paper_forms}
POLICIES: dict[str, ControllerConfig] = {"code": ControllerConfig(),
                                         "paper": ControllerConfig(policy="paper", gate=True)}
