"""The SCM agent: token-budgeted prompt assembly and the chat loop over a memory stream.

Wang, Liang et al., "SCM: Enhancing Large Language Model with Self-Controlled Memory Framework"
(arXiv 2304.13343), following its public code (wbbeyourself/SCM4LLMs: ``dialogue_demo.py``, ``core/chat.py``,
``prompts/dialogue.py``). Per user input the agent
  1. (``paper`` policy only) asks the controller whether the input needs memory at all;
  2. retrieves activation memory: top-k of the :class:`~longseq.memory.store.MemoryStream` (cosine, plus an
     optional recency term), the previous turn excluded;
  3. lets the controller give each memory a form: dropped, its summary or its full text
     (:mod:`longseq.memory.controller`);
  4. fuses activation memory (chronological), flash memory (the previous turn: its full text, or its summary
     when long) and the input with the reference's prompt, sent as one user message; the prompt, counted with
     the model's own chat template, never exceeds ``context_length - max_new_tokens``;
  5. answers and writes the new (observation, response) turn to the stream.

LLM backends sit behind :class:`~longseq.memory.llm.ChatLLM`: a local transformers model
(:class:`~longseq.memory.llm.TransformersChat`) and any OpenAI-compatible chat-completions endpoint
(:class:`~longseq.memory.llm.OpenAIChat`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Callable, Sequence

from longseq.core.errors import UserError, unknown_choice
from longseq.memory.controller import Decision, MemoryController, naive_forms
from longseq.memory.llm import ChatLLM, Message
from longseq.memory.store import MemoryItem, MemoryStream, Ranking

# The reference's English agent prompts (prompts/dialogue.py: en_history_agent_prompt, en_no_history_agent_prompt).
_HEAD = ("The following is a conversation between a user and an AI assistant. Please answer the current question "
         "based on the history of the conversation:\n\n")
HISTORY_PROMPT = (_HEAD + "Related conversation history:\n\n{history}\n\nPrevious conversation:\n\n{previous}\n\n"
                  "###\n\nUser: {input}\n\nAssistant: ")
NO_HISTORY_PROMPT = _HEAD + "Previous conversation:\n\n{previous}\n\n###\n\nUser: {input}\n\nAssistant: "

# The reference's turn summarization prompt (prompts/dialogue.py, en_turn_summarization_prompt).
SUMMARY_PROMPT = ("Below is a conversation between a user and an AI assistant. Please write a summary for each of "
                  "them in one sentence and list them in separate paragraphs, while trying to preserve the key "
                  "information of the user\u2019s question and the assistant\u2019s answer as much as possible.\n\n"
                  "conversation content: \n\n{input}\n\nSummary:\n")
SUMMARY_TOKENS = 96  # new tokens for a summary (two sentences)

MODES = ("scm", "no-controller", "no-memory", "full-history")

Part = tuple[MemoryItem, str]  # a memory and the text of it that goes into the prompt
Renderer = Callable[[Sequence[Part], "Part | None", str], list[Message]]


@dataclass
class AgentPrompt:
    """An assembled prompt and what went into it.

    ``forms`` is the form the controller (or the mode's rule) gave each retrieved memory (drop, summary or
    full); ``activation`` and ``summarized`` are what fitted in the window.
    """

    messages: list[Message]
    tokens: int
    budget: int
    activation: list[int] = field(default_factory=list)
    summarized: list[int] = field(default_factory=list)
    flash: int | None = None
    used_memory: bool = True
    forms: dict[int, str] = field(default_factory=dict)


def _label(it: MemoryItem) -> str:
    return f"[{'Turn' if it.kind == 'turn' else 'Part'} {it.id}]"


def memory_text(it: MemoryItem, form: str) -> str:
    """What a memory contributes to the prompt: ``[Turn N]`` and its text, or its summary (a turn too short to
    summarize is its own summary, as in the reference)."""
    if form == "summary" and it.summary and it.summary != it.text:
        return it.summary
    return f"{_label(it)}\n\n{it.text}"


def render_agent_prompt(activation: Sequence[Part], flash: Part | None, user_input: str) -> list[Message]:
    """The reference's input-fusion prompt as one user message (the reference sends gpt-3.5-turbo one message).

    With activation memory: the history prompt (memories in chronological order, each followed by a blank
    line); with flash memory only: the no-history prompt; on the very first turn: the input alone.
    """
    if activation:
        history = "".join(f"{text}\n\n" for _, text in sorted(activation, key=lambda p: p[0].id))
        content = HISTORY_PROMPT.format(history=history, previous=flash[1] if flash else "", input=user_input)
    elif flash:
        content = NO_HISTORY_PROMPT.format(previous=flash[1], input=user_input)
    else:
        content = user_input
    return [{"role": "user", "content": content}]


SYSTEM_INSTRUCTION = ("You are a helpful assistant with a long-term memory. Answer the user's current message. "
                      "Use the memory of earlier conversation below when it is relevant; later statements override "
                      "earlier ones.")


def render_system_prompt(activation: Sequence[Part], flash: Part | None, user_input: str) -> list[Message]:
    """longseq's own layout (``prompt_style="system"``, not the reference's): an instruction with the memories
    (chronological) and the previous turn as a system message, then the input as the user message."""
    parts = [SYSTEM_INSTRUCTION]
    if activation:
        parts.append("### Memory from earlier in the conversation\n"
                     + "\n".join(text for _, text in sorted(activation, key=lambda p: p[0].id)))
    if flash:
        parts.append("### Previous turn\n" + flash[1])
    return [{"role": "system", "content": "\n\n".join(parts)}, {"role": "user", "content": user_input}]


PROMPT_STYLES: dict[str, Renderer] = {"reference": render_agent_prompt, "system": render_system_prompt}


def _fit_input(llm: ChatLLM, budget: int, render: Renderer, user_input: str) -> str:
    """The input, cut from its start if the bare prompt with it would not fit ``budget`` (the question is at
    the end)."""
    def tokens(text: str) -> int:
        return llm.count_messages(render([], None, text))

    if tokens(user_input) <= budget:
        return user_input
    if tokens("") > budget:
        raise UserError(f"a token budget of {budget} cannot hold even an empty prompt; "
                        "raise --context-length or lower --max-new-tokens")
    user_input = llm.truncate(user_input, max(0, budget - tokens("") - 2), keep="end")
    while user_input and tokens(user_input) > budget:
        user_input = llm.truncate(user_input, llm.count(user_input) - 4, keep="end")
    return user_input


def assemble(llm: ChatLLM, budget: int, user_input: str, ranked: Sequence[MemoryItem], forms: dict[int, str],
             flash: Part | None, render: Renderer = render_agent_prompt) -> AgentPrompt:
    """Fit input + flash memory + retrieved memories (best first, in their ``forms``) into ``budget`` tokens.

    Each addition is kept only if the whole rendered prompt, counted with the model's own template, still
    fits, so the result never exceeds ``budget``: a memory that does not fit in its form falls back to its
    summary (if it has one), else is left out; flash memory that does not fit keeps the end of its text.
    """
    user_input = _fit_input(llm, budget, render, user_input)

    def fits(act: Sequence[Part], fl: Part | None) -> bool:
        return llm.count_messages(render(act, fl, user_input)) <= budget

    if flash is not None and not fits([], flash):
        room = budget - llm.count_messages(render([], (flash[0], ""), user_input)) - 2
        cut = (flash[0], llm.truncate(flash[1], room, keep="end")) if room > 16 else None
        flash = cut if cut and fits([], cut) else None
    chosen: list[Part] = []
    summarized: list[int] = []
    for it in ranked:
        form = forms.get(it.id, "full")
        if form == "drop":
            continue
        for f in dict.fromkeys([form, "summary"]):
            text = memory_text(it, f)
            if fits(chosen + [(it, text)], flash):
                chosen.append((it, text))
                if f == "summary" and text == it.summary:
                    summarized.append(it.id)
                break
    messages = render(chosen, flash, user_input)
    n = llm.count_messages(messages)
    assert n <= budget, (n, budget)
    return AgentPrompt(messages, n, budget, [it.id for it, _ in chosen], summarized,
                       flash[0].id if flash else None, forms=dict(forms))


@dataclass
class Reply:
    """The answer to one input, with the prompt that produced it and the controller's decisions."""

    text: str
    prompt: AgentPrompt
    decisions: list[Decision]
    item_id: int | None = None


class SCMAgent:
    """The SCM agent over a :class:`MemoryStream`.

    Args:
        llm: the backend (also used as the controller and the summarizer, as in the reference).
        stream: where turns are stored and retrieved from.
        k: activation memories to retrieve (reference: 4 in its demo, 6 in its test script).
        mode: ``scm`` (controller on), ``no-controller`` (the reference's ablation: full texts in similarity
            order up to the memory budget), ``no-memory`` (flash memory only) or ``full-history`` (as many
            latest turns as fit, i.e. plain truncation).
        max_new_tokens: reserved for the answer; the prompt budget is ``context_length - max_new_tokens``.
        controller: a custom :class:`MemoryController` (default: the public code's policy scaled to the window).
        ranking: retrieval ranking (default: the stream's).
        prompt_style: ``reference`` (the SCM code's prompt, one user message) or ``system`` (longseq's layout:
            memories in a system message; small chat models use it better, see docs/memory.md).
    """

    def __init__(self, llm: ChatLLM, stream: MemoryStream, k: int = 4, mode: str = "scm",
                 max_new_tokens: int = 128, controller: MemoryController | None = None,
                 ranking: Ranking | None = None, prompt_style: str = "reference") -> None:
        if mode not in MODES:
            raise unknown_choice("memory mode", mode, MODES)
        if prompt_style not in PROMPT_STYLES:
            raise unknown_choice("prompt style", prompt_style, PROMPT_STYLES)
        self.render = PROMPT_STYLES[prompt_style]
        if k <= 0:
            raise UserError(f"-k must be a positive number of memories, got {k}")
        self.llm, self.stream, self.k, self.mode = llm, stream, k, mode
        self.max_new_tokens = max_new_tokens
        self.budget = llm.context_length - max_new_tokens
        if max_new_tokens <= 0 or self.budget <= 0:
            raise UserError(f"--max-new-tokens {max_new_tokens} must be positive and leave room in a "
                            f"{llm.context_length}-token window")
        self.controller = controller or MemoryController(llm)
        self.ranking = ranking
        self.touch = True  # activation restarts an item's recency (paper: "accessed recently")

    def summarize_item(self, item: MemoryItem) -> MemoryItem:
        """The item with a summary, generated once and stored.

        As in the reference, a turn is summarized only when its summarization prompt is over the controller's
        ``summarize_tokens`` (300 at a 4k window); a shorter turn is its own summary.
        """
        if item.summary:
            return item
        prompt = SUMMARY_PROMPT.format(input=item.text)
        new_tokens = min(SUMMARY_TOKENS, self.llm.context_length // 4)
        room = self.llm.context_length - new_tokens  # for the whole summarization prompt
        bare = self.llm.count_messages([{"role": "user", "content": SUMMARY_PROMPT.format(input="")}])
        if self.llm.count(prompt) <= self.controller.config.summarize_tokens or bare + 16 > room:
            summary = item.text  # short: its own summary (or a window too small to ask for one)
        else:
            if self.llm.count_messages([{"role": "user", "content": prompt}]) > room:  # the turn's start
                prompt = SUMMARY_PROMPT.format(input=self.llm.truncate(item.text, room - bare - 8, keep="start"))
            summary = self.llm.complete([{"role": "user", "content": prompt}], max_new_tokens=new_tokens) \
                or item.text
        n = self.llm.count(summary)
        self.stream.set_summary(item.id, summary, n)
        item.summary, item.summary_tokens = summary, n
        return item

    def _flash(self, item: MemoryItem | None) -> Part | None:
        if item is None:
            return None
        form = self.controller.flash_form(item)
        if form == "summary":
            item = self.summarize_item(item)
        return item, memory_text(item, form)

    def _retrieve(self, user_input: str, flash: MemoryItem | None) -> tuple[list[MemoryItem], dict[int, str], bool]:
        """Ranked memories (best first), their forms, and whether memory was used, per :attr:`mode`."""
        if self.mode == "no-memory":
            return [], {}, False
        if self.mode == "full-history":
            recent = [it for it in reversed(self.stream.last(64)) if flash is None or it.id != flash.id]
            return recent, {}, True  # no retrieval: every latest turn in full, as far as the window goes
        if self.mode == "scm" and not self.controller.needs_memory(user_input):
            return [], {}, False
        hits = self.stream.search(user_input, k=self.k, exclude=[flash.id] if flash else [], ranking=self.ranking)
        ranked = [h.item for h in hits]
        if self.mode == "no-controller":
            return ranked, naive_forms(self.controller.config, ranked), True
        return ranked, self.controller.choose_forms(ranked, user_input, self.summarize_item, flash), True

    def build_prompt(self, user_input: str) -> tuple[AgentPrompt, list[Decision]]:
        """Steps 1 to 4 of SCM for one input (no generation, nothing stored)."""
        start = len(self.controller.log)
        flash_items = self.stream.last(1)
        flash = flash_items[0] if flash_items else None
        ranked, forms, used_memory = self._retrieve(user_input, flash)
        prompt = assemble(self.llm, self.budget, user_input, ranked, forms, self._flash(flash), self.render)
        prompt.used_memory = used_memory
        if prompt.activation and self.touch and self.mode != "full-history":
            self.stream.touch(prompt.activation)
        return prompt, self.controller.log[start:]

    def respond(self, user_input: str, store: bool = True) -> Reply:
        """Answer one input (SCM's six steps); with ``store`` the turn is written to the stream."""
        if not user_input.strip():
            raise UserError("empty message; type something")
        prompt, decisions = self.build_prompt(user_input)
        text = self.llm.complete(prompt.messages, max_new_tokens=self.max_new_tokens)
        item_id = None
        if store:
            turn = f"User: {user_input.strip()}\n\nAssistant: {text.strip()}"
            item_id = self.stream.add([turn], [f"turn:{uuid.uuid4().hex}"], [self.llm.count(turn)], kind="turn")[0]
        return Reply(text, prompt, decisions, item_id)
