"""The SCM agent: token-budgeted prompt assembly and the chat loop over a memory stream.

Wang, Liang et al., "SCM: Enhancing Large Language Model with Self-Controlled Memory Framework"
(arXiv 2304.13343). Per user input the agent
  1. asks the controller whether the input needs memory at all (decision 1, :mod:`longseq.memory.controller`);
  2. retrieves activation memory: top-k of the :class:`~longseq.memory.store.MemoryStream` by relevance + recency;
  3. for long memories asks whether the summary is enough (decision 2; paper thresholds: only when the
     activation memory is over 2,000 tokens, only for items over 800, both scaled to the model's window);
  4. fuses instruction, activation memory, flash memory (the previous turn) and the input into a prompt whose
     token count, measured with the model's own chat template, never exceeds ``context_length - max_new_tokens``;
  5. answers and writes the new (observation, response) turn to the stream.

LLM backends sit behind :class:`~longseq.memory.llm.ChatLLM`: a local transformers model
(:class:`~longseq.memory.llm.TransformersChat`) and any OpenAI-compatible chat-completions endpoint
(:class:`~longseq.memory.llm.OpenAIChat`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Sequence

from longseq.core.errors import UserError, unknown_choice
from longseq.memory.controller import Decision, MemoryController
from longseq.memory.llm import ChatLLM, Message
from longseq.memory.store import MemoryItem, MemoryStream

INSTRUCTION = ("You are a helpful assistant with a long-term memory. Answer the user's current message. "
               "Use the memory of earlier conversation below when it is relevant; later statements override "
               "earlier ones.")


@dataclass
class AgentPrompt:
    """An assembled prompt and what went into it."""

    messages: list[Message]
    tokens: int
    budget: int
    activation: list[int] = field(default_factory=list)
    summarized: list[int] = field(default_factory=list)
    flash: int | None = None
    used_memory: bool = True


def _label(it: MemoryItem) -> str:
    return f"[{'Turn' if it.kind == 'turn' else 'Part'} {it.id}]"


def render_agent_prompt(instruction: str, activation: Sequence[tuple[MemoryItem, str]],
                        flash: tuple[MemoryItem, str] | None, user_input: str) -> list[Message]:
    """The input-fusion prompt: instruction, activation memory (chronological), flash memory, then the input."""
    parts = [instruction]
    if activation:
        mem = "\n".join(f"{_label(it)} {text}" for it, text in sorted(activation, key=lambda p: p[0].id))
        parts.append("### Memory from earlier in the conversation\n" + mem)
    if flash:
        parts.append("### Previous turn\n" + flash[1])
    return [{"role": "system", "content": "\n\n".join(parts)}, {"role": "user", "content": user_input}]


def _tokens(llm: ChatLLM, instruction: str, activation: Sequence[tuple[MemoryItem, str]],
            flash: tuple[MemoryItem, str] | None, user_input: str) -> int:
    """Prompt tokens of :func:`render_agent_prompt`, counted with the model's own template."""
    return llm.count_messages(render_agent_prompt(instruction, activation, flash, user_input))


def _fit_input(llm: ChatLLM, budget: int, instruction: str, user_input: str) -> tuple[str, str]:
    """Instruction and input within ``budget``: the input keeps its end, the instruction goes as a last resort."""
    if _tokens(llm, instruction, [], None, user_input) <= budget:
        return instruction, user_input
    fixed = _tokens(llm, instruction, [], None, "")
    user_input = llm.truncate(user_input, max(0, budget - fixed - 2), keep="end")
    while user_input and _tokens(llm, instruction, [], None, user_input) > budget:
        user_input = llm.truncate(user_input, llm.count(user_input) - 4, keep="end")
    if _tokens(llm, instruction, [], None, user_input) <= budget:
        return instruction, user_input
    user_input = llm.truncate(user_input, max(0, budget - _tokens(llm, "", [], None, "") - 2), keep="end")
    if _tokens(llm, "", [], None, user_input) > budget:
        raise UserError(f"a token budget of {budget} cannot hold even an empty chat prompt; "
                        "raise --context-length or lower --max-new-tokens")
    return "", user_input


def _fit_flash(llm: ChatLLM, budget: int, instruction: str, flash: MemoryItem,
               user_input: str) -> tuple[MemoryItem, str] | None:
    """Flash memory in the first form that fits: its full text, its summary, else the end of its text."""
    for text in (flash.text, flash.summary):
        if text and _tokens(llm, instruction, [], (flash, text), user_input) <= budget:
            return flash, text
    room = budget - _tokens(llm, instruction, [], (flash, ""), user_input) - 2
    if room > 16:
        text = llm.truncate(flash.text, room, keep="end")
        if _tokens(llm, instruction, [], (flash, text), user_input) <= budget:
            return flash, text
    return None


def assemble(llm: ChatLLM, budget: int, user_input: str, ranked: Sequence[MemoryItem], use_summary: dict[int, bool],
             flash: MemoryItem | None, instruction: str = INSTRUCTION) -> AgentPrompt:
    """Fit instruction + input + flash + activation memories (in rank order) into ``budget`` tokens.

    Each addition is kept only if the whole rendered prompt, counted with the model's own template, still
    fits, so the result never exceeds ``budget``. If the bare instruction + input do not fit, the input keeps
    its end and the instruction is dropped as a last resort.
    """
    instruction, user_input = _fit_input(llm, budget, instruction, user_input)
    flash_part = _fit_flash(llm, budget, instruction, flash, user_input) if flash is not None else None
    chosen: list[tuple[MemoryItem, str]] = []
    summarized: list[int] = []
    for it in ranked:
        forms = [it.summary, it.text] if use_summary.get(it.id) and it.summary else [it.text, it.summary]
        for text in forms:
            if text and _tokens(llm, instruction, chosen + [(it, text)], flash_part, user_input) <= budget:
                chosen.append((it, text))
                if text is it.summary and text != it.text:
                    summarized.append(it.id)
                break
    messages = render_agent_prompt(instruction, chosen, flash_part, user_input)
    n = llm.count_messages(messages)
    assert n <= budget, (n, budget)
    return AgentPrompt(messages, n, budget, [it.id for it, _ in chosen], summarized,
                       flash_part[0].id if flash_part else None)


# The public code summarizes a turn only when it is long (300 tokens at a 4k window); shorter turns are
# their own summary.
SHORT_ITEM_TOKENS = 64

SUMMARY_PROMPT = """Summarize this part of a conversation. Write one sentence for what the user said and one sentence for what the assistant answered, as two short paragraphs. Keep names, numbers, dates and places exactly.

{text}"""

MODES = ("scm", "no-controller", "no-memory", "full-history")


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
        llm: the backend (also used as the controller and the summarizer, as in the paper).
        stream: where turns are stored and retrieved from.
        k: activation memories to retrieve (paper: 3 to 10 depending on the window).
        mode: ``scm`` (controller on), ``no-controller`` (retrieve top-k and pack full texts), ``no-memory``
            (flash memory only) or ``full-history`` (as many latest turns as fit, i.e. plain truncation).
        max_new_tokens: reserved for the answer; the prompt budget is ``context_length - max_new_tokens``.
        controller: a custom :class:`MemoryController` (default: paper thresholds scaled to the window).
    """

    def __init__(self, llm: ChatLLM, stream: MemoryStream, k: int = 5, mode: str = "scm",
                 max_new_tokens: int = 128, controller: MemoryController | None = None,
                 instruction: str = INSTRUCTION) -> None:
        if mode not in MODES:
            raise unknown_choice("memory mode", mode, MODES)
        self.llm, self.stream, self.k, self.mode = llm, stream, k, mode
        self.max_new_tokens = max_new_tokens
        self.budget = llm.context_length - max_new_tokens
        if self.budget <= 0:
            raise UserError(f"--max-new-tokens {max_new_tokens} leaves no room in a {llm.context_length}-token window")
        self.controller = controller or MemoryController(llm)
        self.instruction = instruction
        self.touch = True  # activation restarts an item's recency (paper: "accessed recently")

    def summarize_item(self, item: MemoryItem) -> MemoryItem:
        """The item with a summary, generated once and stored (short items are their own summary, as in the code)."""
        if item.summary:
            return item
        if item.text_tokens <= SHORT_ITEM_TOKENS:
            summary = item.text
        else:
            msgs = [{"role": "user", "content": SUMMARY_PROMPT.format(text=item.text)}]
            room = self.llm.context_length - 96 - self.llm.count_messages([{"role": "user", "content": ""}]) - 32
            if self.llm.count_messages(msgs) > self.llm.context_length - 96:
                msgs = [{"role": "user", "content": SUMMARY_PROMPT.format(
                    text=self.llm.truncate(item.text, room, keep="start"))}]
            summary = self.llm.complete(msgs, max_new_tokens=96) or item.text
        n = self.llm.count(summary)
        self.stream.set_summary(item.id, summary, n)
        item.summary, item.summary_tokens = summary, n
        return item

    def build_prompt(self, user_input: str) -> tuple[AgentPrompt, list[Decision]]:
        """Steps 2 to 5 of SCM for one input (no generation, nothing stored)."""
        start = len(self.controller.log)
        if self.mode == "full-history":
            recent = self.stream.last(64)
            prompt = assemble(self.llm, self.budget, user_input, list(reversed(recent)), {}, None, self.instruction)
            return prompt, []
        flash_items = self.stream.last(1)
        flash = flash_items[0] if flash_items else None
        ranked: list[MemoryItem] = []
        use_summary: dict[int, bool] = {}
        used_memory = self.mode != "no-memory"
        if used_memory and self.mode == "scm":
            used_memory = self.controller.needs_memory(user_input)
        if used_memory:
            hits = self.stream.search(user_input, k=self.k, exclude=[flash.id] if flash else [])
            ranked = [h.item for h in hits]
            if self.mode == "scm":
                use_summary = self.controller.choose_forms(ranked, user_input, self.summarize_item)
        prompt = assemble(self.llm, self.budget, user_input, ranked, use_summary, flash, self.instruction)
        prompt.used_memory = used_memory
        if prompt.activation and self.touch:
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
            turn = f"User: {user_input.strip()}\nAssistant: {text.strip()}"
            item_id = self.stream.add([turn], [f"turn:{uuid.uuid4().hex}"], [self.llm.count(turn)], kind="turn")[0]
        return Reply(text, prompt, decisions, item_id)
