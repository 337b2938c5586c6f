"""SCM over documents far longer than the window: hierarchical summaries and question answering.

Wang, Liang et al. (arXiv 2304.13343) summarize books block by block, each block prompt carrying flash memory
(the previous block) and activation memory (summaries of earlier blocks retrieved by similarity), then merge
the block summaries level by level. Question answering ingests the document as blocks of the memory stream
and answers from the retrieved blocks, in a prompt that fits the window (:func:`longseq.memory.agent.assemble`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from longseq.core.errors import UserError
from longseq.memory.agent import Part, Reply, assemble
from longseq.memory.ingest import check_input, ingest_file, text_blocks
from longseq.memory.llm import ChatLLM, Message
from longseq.memory.store import MemoryItem, MemoryStream, Ranking

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
    if path.stat().st_size >= (64 << 20):
        raise UserError(f"{path} is over 64 MiB; summarize a smaller file or split it first")
    window = llm.context_length - max_new_tokens
    block_tokens = block_tokens or max(64, window // 3)
    blocks = list(text_blocks(path, llm.count, block_tokens))
    summaries: list[str] = []
    prev: MemoryItem | None = None
    for i, (block, ntok) in enumerate(tqdm(blocks, desc="summarize blocks", disable=not progress, file=sys.stderr)):
        item = stream.get(stream.add([block], [f"{sha[:32]}:{i}"], [ntok], kind="block", source=str(path)))[0]
        if not item.summary:
            bg = _background(llm, stream, block, item, prev, k, block_tokens)
            msgs = _fit_user_prompt(
                llm, lambda t: BLOCK_PROMPT.format(background=(bg + "\n\n") if bg else "", sentences=sentences, block=t),
                block, max_new_tokens)
            summary = llm.complete(msgs, max_new_tokens=max_new_tokens) or block[:400]
            stream.set_summary(item.id, summary, llm.count(summary))
            item.summary = summary
        summaries.append(item.summary or "")
        prev = item
    return DocumentSummary(_merge_levels(llm, summaries, max(64, window // 2), sentences, max_new_tokens))


def _background(llm: ChatLLM, stream: MemoryStream, block: str, item: MemoryItem, prev: MemoryItem | None, k: int,
                block_tokens: int) -> str:
    """Activation memory (summaries of earlier blocks like this one) and flash memory (the previous block)."""
    if prev is None:
        return ""
    background = []
    hits = stream.search(block, k=k, exclude=[item.id, prev.id]) if k else []
    acts = [h.item.summary for h in hits if h.item.summary and h.item.id < item.id]
    if acts:
        background.append("Earlier parts: " + " ".join(acts))
    flash = prev.text if prev.text_tokens <= block_tokens // 3 else (prev.summary or prev.text)
    background.append("Previous section: " + flash)
    return llm.truncate("\n".join(background), block_tokens // 2, keep="end")


def _merge_levels(llm: ChatLLM, summaries: list[str], group_tokens: int, sentences: int,
                  max_new_tokens: int) -> list[list[str]]:
    """Merge groups of consecutive summaries of up to ``group_tokens`` tokens, level by level, down to one."""
    levels = [summaries]
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
    return levels


ASK_INSTRUCTION = ("Answer the question using only the numbered parts of a long document below. "
                   "Answer briefly and copy names and numbers exactly.")


def render_document_prompt(parts: Sequence[Part], flash: Part | None, question: str) -> list[Message]:
    """The ``ask`` prompt: the instruction and the retrieved parts (document order) as a system message, then the
    question."""
    body = "\n\n".join(text for _, text in sorted(parts, key=lambda p: p[0].id))
    system = ASK_INSTRUCTION + ("\n\n" + body if body else "")
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def ask_document(llm: ChatLLM, stream: MemoryStream, path: str | Path, question: str, k: int = 6,
                 max_new_tokens: int = 64, block_tokens: int | None = None, progress: bool = True) -> Reply:
    """Answer ``question`` from a document of any length: ingest it as blocks, retrieve, budget, answer."""
    if not question.strip():
        raise UserError("empty question; pass the question as the second argument")
    budget = llm.context_length - max_new_tokens
    ingest_file(stream, path, llm.count, block_tokens=block_tokens or max(48, budget // (k + 1)), progress=progress)
    hits = stream.search(question, k=k, ranking=Ranking(recency_weight=0.0))
    prompt = assemble(llm, budget, question, [h.item for h in hits], {}, None, render_document_prompt)
    text = llm.complete(prompt.messages, max_new_tokens=max_new_tokens)
    return Reply(text, prompt, [])
