"""Self-Controlled Memory (SCM) agent: memory controller, token-budgeted prompts, chat, summarize, ask.

Wang, Liang et al., "SCM: Enhancing Large Language Model with Self-Controlled Memory Framework"
(arXiv 2304.13343). Per user input the agent
  1. asks the controller whether the input needs memory at all (decision 1, the paper's "activation" prompt;
     the public code never calls it);
  2. retrieves activation memory: top-k of the :class:`~longseq.memory.MemoryStream` by relevance + recency;
  3. for long memories asks whether the summary is enough (decision 2; paper thresholds: only when the
     activation memory is over 2,000 tokens, only for items over 800, both scaled to the model's window);
  4. fuses instruction, activation memory, flash memory (the previous turn) and the input into a prompt whose
     token count, measured with the model's own chat template, never exceeds ``context_length - max_new_tokens``;
  5. answers and writes the new (observation, response) turn to the stream.

LLM backends sit behind :class:`ChatLLM`: a local transformers model (:class:`TransformersChat`) and any
OpenAI-compatible chat-completions endpoint (:class:`OpenAIChat`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from longseq.core.errors import UserError
from longseq.memory.llm import ChatLLM, Message
from longseq.memory.stream import Item, MemoryStream, Ranking, check_input, open_stream, text_blocks


# --------------------------------------------------------------------------------------------- controller

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

# The public code summarizes a turn only when it is long (300 tokens at a 4k window); shorter turns are
# their own summary.
SHORT_ITEM_TOKENS = 64

SUMMARY_PROMPT = """Summarize this part of a conversation. Write one sentence for what the user said and one sentence for what the assistant answered, as two short paragraphs. Keep names, numbers, dates and places exactly.

{text}"""

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
        return ControllerConfig(self.gate, self.summary_check, max(32, int(self.item_tokens * f)),
                                max(64, int(self.total_tokens * f)), self.default_gate, self.default_sufficient)


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

    def summary_enough(self, item: Item, user_input: str) -> bool:
        """Decision 2: can the input be answered from the item's summary alone?"""
        c = self._ask(SUFFICIENT_PROMPT.format(summary=item.summary or item.text, input=user_input))
        value = self.config.default_sufficient if c.value is None else c.value
        self.log.append(Decision("summary_enough", item.id, value, c.rule, c.raw))
        return value

    def choose_forms(self, items: Sequence[Item], user_input: str,
                     summarize: Callable[[Item], Item]) -> dict[int, bool]:
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


# --------------------------------------------------------------------------------------------- prompt assembly

INSTRUCTION = ("You are a helpful assistant with a long-term memory. Answer the user's current message. "
               "Use the memory of earlier conversation below when it is relevant; later statements override "
               "earlier ones.")


@dataclass
class Prompt:
    """An assembled prompt and what went into it."""

    messages: list[Message]
    tokens: int
    budget: int
    activation: list[int] = field(default_factory=list)
    summarized: list[int] = field(default_factory=list)
    flash: int | None = None
    used_memory: bool = True


def _label(it: Item) -> str:
    return f"[{'Turn' if it.kind == 'turn' else 'Part'} {it.id}]"


def render(instruction: str, activation: Sequence[tuple[Item, str]], flash: tuple[Item, str] | None,
           user_input: str) -> list[Message]:
    """The input-fusion prompt: instruction, activation memory (chronological), flash memory, then the input."""
    parts = [instruction]
    if activation:
        mem = "\n".join(f"{_label(it)} {text}" for it, text in sorted(activation, key=lambda p: p[0].id))
        parts.append("### Memory from earlier in the conversation\n" + mem)
    if flash:
        parts.append("### Previous turn\n" + flash[1])
    return [{"role": "system", "content": "\n\n".join(parts)}, {"role": "user", "content": user_input}]


def assemble(llm: ChatLLM, budget: int, user_input: str, ranked: Sequence[Item], use_summary: dict[int, bool],
             flash: Item | None, instruction: str = INSTRUCTION) -> Prompt:
    """Fit instruction + input + flash + activation memories (in rank order) into ``budget`` tokens.

    Each addition is kept only if the whole rendered prompt, counted with the model's own template, still
    fits, so the result never exceeds ``budget``. If the bare instruction + input do not fit, the input keeps
    its end and the instruction is dropped as a last resort.
    """
    count = llm.count_messages
    if count(render(instruction, [], None, user_input)) > budget:
        fixed = count(render(instruction, [], None, ""))
        user_input = llm.truncate(user_input, max(0, budget - fixed - 2), keep="end")
        while user_input and count(render(instruction, [], None, user_input)) > budget:
            user_input = llm.truncate(user_input, llm.count(user_input) - 4, keep="end")
        if count(render(instruction, [], None, user_input)) > budget:
            instruction = ""
            user_input = llm.truncate(user_input, max(0, budget - count(render("", [], None, "")) - 2), keep="end")
            if count(render(instruction, [], None, user_input)) > budget:
                raise UserError(f"a token budget of {budget} cannot hold even an empty chat prompt; "
                                "raise --context-length or lower --max-new-tokens")
    flash_part: tuple[Item, str] | None = None
    if flash is not None:
        for text in (flash.text, flash.summary):
            if text and count(render(instruction, [], (flash, text), user_input)) <= budget:
                flash_part = (flash, text)
                break
        if flash_part is None:
            room = budget - count(render(instruction, [], (flash, ""), user_input)) - 2
            if room > 16:
                text = llm.truncate(flash.text, room, keep="end")
                if count(render(instruction, [], (flash, text), user_input)) <= budget:
                    flash_part = (flash, text)
    chosen: list[tuple[Item, str]] = []
    summarized: list[int] = []
    for it in ranked:
        forms = [it.summary, it.text] if use_summary.get(it.id) and it.summary else [it.text, it.summary]
        for text in forms:
            if text and count(render(instruction, chosen + [(it, text)], flash_part, user_input)) <= budget:
                chosen.append((it, text))
                if text is it.summary and text != it.text:
                    summarized.append(it.id)
                break
    messages = render(instruction, chosen, flash_part, user_input)
    n = count(messages)
    assert n <= budget, (n, budget)
    return Prompt(messages, n, budget, [it.id for it, _ in chosen], summarized,
                  flash_part[0].id if flash_part else None)


# --------------------------------------------------------------------------------------------- agent

MODES = ("scm", "no-controller", "no-memory", "full-history")


@dataclass
class Reply:
    """The answer to one input, with the prompt that produced it and the controller's decisions."""

    text: str
    prompt: Prompt
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
            from longseq.core.errors import unknown_choice

            raise unknown_choice("memory mode", mode, MODES)
        self.llm, self.stream, self.k, self.mode = llm, stream, k, mode
        self.max_new_tokens = max_new_tokens
        self.budget = llm.context_length - max_new_tokens
        if self.budget <= 0:
            raise UserError(f"--max-new-tokens {max_new_tokens} leaves no room in a {llm.context_length}-token window")
        self.controller = controller or MemoryController(llm)
        self.instruction = instruction
        self.touch = True  # activation restarts an item's recency (paper: "accessed recently")

    def summarize_item(self, item: Item) -> Item:
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

    def build_prompt(self, user_input: str) -> tuple[Prompt, list[Decision]]:
        """Steps 2 to 5 of SCM for one input (no generation, nothing stored)."""
        start = len(self.controller.log)
        if self.mode == "full-history":
            recent = self.stream.last(64)
            prompt = assemble(self.llm, self.budget, user_input, list(reversed(recent)), {}, None, self.instruction)
            return prompt, []
        flash_items = self.stream.last(1)
        flash = flash_items[0] if flash_items else None
        ranked: list[Item] = []
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


# --------------------------------------------------------------------------------------------- long documents

BLOCK_PROMPT = """{background}Summarize the following section of a long document in at most {sentences} sentences. Keep names, numbers and places. Do not repeat the background.

Section:
{block}"""

MERGE_PROMPT = """Combine these consecutive summaries of one long document into a single summary of at most {sentences} sentences that keeps the most important facts, names and numbers.

{summaries}"""


@dataclass
class DocumentSummary:
    """Every level of a hierarchical summary: ``levels[0]`` are block summaries, ``levels[-1]`` has one."""

    levels: list[list[str]]

    @property
    def summary(self) -> str:
        return self.levels[-1][0]


def _fit_user_prompt(llm: ChatLLM, make: Callable[[str], str], text: str, reserve: int) -> list[Message]:
    """A single user message ``make(text)`` cut (text end dropped) to fit the window minus ``reserve``."""
    limit = llm.context_length - reserve
    msgs = [{"role": "user", "content": make(text)}]
    while llm.count_messages(msgs) > limit and text:
        over = llm.count_messages(msgs) - limit
        text = llm.truncate(text, max(0, llm.count(text) - over - 4), keep="start")
        msgs = [{"role": "user", "content": make(text)}]
    return msgs


def summarize_document(llm: ChatLLM, stream: MemoryStream, path: str | Path, block_tokens: int | None = None,
                       k: int = 2, max_new_tokens: int = 96, sentences: int = 4,
                       progress: bool = True) -> DocumentSummary:
    """SCM long-document mode: block summaries with flash + activation memory, then a hierarchical merge.

    Blocks are stored in ``stream`` with their summaries (key ``<file sha>:<index>``), so a rerun on the same
    database reuses every finished block summary.
    """
    from tqdm import tqdm

    path = Path(path)
    sha = check_input(path)
    window = llm.context_length - max_new_tokens
    block_tokens = block_tokens or max(64, window // 3)
    blocks = list(text_blocks(path, llm.count, block_tokens)) if path.stat().st_size < (64 << 20) else None
    if blocks is None:
        raise UserError(f"{path} is over 64 MiB; summarize a smaller file or split it first")
    summaries: list[str] = []
    prev: Item | None = None
    for i, (block, ntok) in enumerate(tqdm(blocks, desc="summarize blocks", disable=not progress, file=sys.stderr)):
        key = f"{sha[:32]}:{i}"
        item = stream.get(stream.add([block], [key], [ntok], kind="block", source=str(path)))[0]
        if not item.summary:
            background = []
            if prev is not None:
                hits = stream.search(block, k=k, exclude=[item.id, prev.id]) if k else []
                acts = [h.item.summary for h in hits if h.item.summary and h.item.id < item.id]
                if acts:
                    background.append("Earlier parts: " + " ".join(acts))
                flash = prev.text if prev.text_tokens <= block_tokens // 3 else (prev.summary or prev.text)
                background.append("Previous section: " + flash)
            bg = llm.truncate("\n".join(background), block_tokens // 2, keep="end") if background else ""
            msgs = _fit_user_prompt(
                llm, lambda t: BLOCK_PROMPT.format(background=(bg + "\n\n") if bg else "", sentences=sentences, block=t),
                block, max_new_tokens)
            summary = llm.complete(msgs, max_new_tokens=max_new_tokens) or block[:400]
            stream.set_summary(item.id, summary, llm.count(summary))
            item.summary = summary
        summaries.append(item.summary or "")
        prev = item
    levels = [summaries]
    group_tokens = max(64, window // 2)
    while len(levels[-1]) > 1:
        level, groups, cur, cur_tokens = levels[-1], [], [], 0
        for s in level:
            t = llm.count(s)
            if cur and cur_tokens + t > group_tokens:
                groups.append(cur)
                cur, cur_tokens = [], 0
            cur.append(s)
            cur_tokens += t
        groups.append(cur)
        if len(groups) == len(level):  # every summary fills a group alone: pair them so the level shrinks
            groups = [level[i : i + 2] for i in range(0, len(level), 2)]
        merged = []
        for g in groups:
            msgs = _fit_user_prompt(llm, lambda t: MERGE_PROMPT.format(sentences=sentences, summaries=t),
                                    "\n\n".join(g), max_new_tokens)
            merged.append(llm.complete(msgs, max_new_tokens=max_new_tokens) or g[0])
        levels.append(merged)
    return DocumentSummary(levels)


ASK_INSTRUCTION = ("Answer the question using only the numbered parts of a long document below. "
                   "Answer briefly and copy names and numbers exactly.")


def ask_document(llm: ChatLLM, stream: MemoryStream, path: str | Path, question: str, k: int = 6,
                 max_new_tokens: int = 64, block_tokens: int | None = None, progress: bool = True) -> Reply:
    """Answer ``question`` from a document of any length: ingest it as blocks, retrieve, budget, answer."""
    from longseq.memory.stream import ingest_file

    if not question.strip():
        raise UserError("empty question; pass the question as the second argument")
    budget = llm.context_length - max_new_tokens
    ingest_file(stream, path, llm.count, block_tokens=block_tokens or max(48, budget // (k + 1)), progress=progress)
    hits = stream.search(question, k=k, ranking=Ranking(recency_weight=0.0))
    prompt = assemble(llm, budget, question, [h.item for h in hits], {}, None, ASK_INSTRUCTION)
    text = llm.complete(prompt.messages, max_new_tokens=max_new_tokens)
    return Reply(text, prompt, [])


# --------------------------------------------------------------------------------------------- CLI


def _llm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="local model (alias, folder or .gguf); also the "
                   "tokenizer that counts tokens for an endpoint (default smollm2-135m)")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-model", help="model name to request from --base-url")
    p.add_argument("--api-key", help="key for --base-url (default $OPENAI_API_KEY)")
    p.add_argument("--context-length", type=int, help="window to budget for (default: the model's native one; "
                   "4096 for an endpoint)")
    p.add_argument("--max-new-tokens", type=int, default=128)


def _llm_from(args: argparse.Namespace) -> ChatLLM:
    return load_llm(args.model, args.base_url, args.api_model, args.context_length, args.api_key)


def _cmd_chat(args: argparse.Namespace) -> int:
    llm = _llm_from(args)
    with open_stream(args.memory, args.embedder) as stream:
        agent = SCMAgent(llm, stream, k=args.k, mode=args.mode, max_new_tokens=args.max_new_tokens)
        interactive = sys.stdin.isatty()
        if interactive:
            print(f"longseq chat: {len(stream)} memories in {args.memory}; budget {agent.budget} tokens; "
                  "/exit to quit", file=sys.stderr)
        while True:
            if interactive:
                print("you> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                break
            line = line.strip()
            if line in ("/exit", "/quit"):
                break
            if not line:
                continue
            reply = agent.respond(line)
            if args.verbose:
                p = reply.prompt
                print(json.dumps({"prompt_tokens": p.tokens, "budget": p.budget, "activation": p.activation,
                                  "summarized": p.summarized, "flash": p.flash, "used_memory": p.used_memory,
                                  "decisions": [d.__dict__ for d in reply.decisions]}), file=sys.stderr)
            print(reply.text, flush=True)
    return 0


def _cmd_summarize(args: argparse.Namespace) -> int:
    check_input(args.file)
    llm = _llm_from(args)
    with open_stream(args.db or ":memory:", args.embedder) as stream:
        res = summarize_document(llm, stream, args.file, block_tokens=args.block_tokens,
                                 max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps({"summary": res.summary, "levels": res.levels}, ensure_ascii=False, indent=2))
    else:
        print(res.summary)
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    check_input(args.file)
    llm = _llm_from(args)
    with open_stream(args.db or ":memory:", args.embedder) as stream:
        reply = ask_document(llm, stream, args.file, args.question, k=args.k, max_new_tokens=args.max_new_tokens)
    if args.verbose:
        print(json.dumps({"prompt_tokens": reply.prompt.tokens, "budget": reply.prompt.budget,
                          "parts": reply.prompt.activation}), file=sys.stderr)
    print(reply.text)
    return 0


def add_cli(sub: Any) -> None:
    """Register ``longseq chat``, ``longseq summarize`` and ``longseq ask``."""
    p = sub.add_parser("chat", help="chat with a self-controlled memory that survives restarts (SCM)")
    _llm_args(p)
    p.add_argument("--memory", required=True, help="SQLite memory file (created if missing)")
    p.add_argument("--embedder", default=None, help="embedding model (default: recorded in --memory, else all-minilm-l6-v2)")
    p.add_argument("-k", type=int, default=5, help="activation memories per turn (default 5)")
    p.add_argument("--mode", default="scm", choices=MODES)
    p.add_argument("--verbose", action="store_true", help="print prompt size and controller decisions to stderr")
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("summarize", help="summarize a document far longer than the window (SCM book mode)")
    _llm_args(p)
    p.add_argument("file")
    p.add_argument("--db", help="keep block summaries here (resumable); default in memory")
    p.add_argument("--embedder", default=None)
    p.add_argument("--block-tokens", type=int, help="tokens per block (default: a third of the window)")
    p.add_argument("--json", action="store_true", help="print every level of the hierarchy as JSON")
    p.set_defaults(func=_cmd_summarize, max_new_tokens=96)

    p = sub.add_parser("ask", help="answer a question from a document far longer than the window")
    _llm_args(p)
    p.add_argument("file")
    p.add_argument("question")
    p.add_argument("--db", help="keep the document's blocks here (reused next time); default in memory")
    p.add_argument("--embedder", default=None)
    p.add_argument("-k", type=int, default=6, help="document parts to retrieve (default 6)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_cmd_ask, max_new_tokens=64)
