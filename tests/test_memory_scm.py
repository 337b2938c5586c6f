"""SCM controller and prompt assembly with a scripted LLM that counts tokens with the real SmolLM2 chat template.

Run: PYTHONPATH=src python -m pytest tests/test_memory_scm.py
"""

from __future__ import annotations

import random
from typing import Callable

import numpy as np
import pytest

from longseq.core.errors import UserError
from longseq.memory.agent import SCMAgent, assemble, render_agent_prompt
from longseq.memory.controller import ControllerConfig, MemoryController, parse_choice
from longseq.memory.embedders import HashingEmbedder
from longseq.memory.store import MemoryItem, MemoryStream, Ranking
from longseq.models.generation import TokenCounter


@pytest.fixture(scope="module")
def tokenizer(smol_tokenizer):
    return smol_tokenizer


class ScriptedChat(TokenCounter):
    """A chat backend whose answers come from a function; token counts are the real template's."""

    def __init__(self, tokenizer, context_length: int, answer: Callable[[list[dict]], str]) -> None:
        self.tokenizer, self.context_length, self.answer, self.name = tokenizer, context_length, answer, "scripted"
        self.calls: list[list[dict]] = []

    def count_messages(self, messages):
        return len(self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)["input_ids"])

    def complete(self, messages, max_new_tokens=128, stop=()):
        assert self.count_messages(messages) + max_new_tokens <= self.context_length
        self.calls.append(list(messages))
        return self.answer(list(messages))


@pytest.mark.parametrize(
    "text,value,rule",
    [
        ("(A)", True, "paren"), ("(B) No, it can be answered without it.", False, "paren"),
        ("  [b]  ", False, "paren"), ("I would say ( A ) here", True, "paren"),
        ("Answer: B", False, "labelled"), ("The answer is **A**.", True, "labelled"),
        ("option b", False, "labelled"), ("B.", False, "bare"), ("**A** because the user asks", True, "bare"),
        ("a) yes", True, "bare"), ("No, it does not need memory.", False, "word"),
        ("Yes! The user refers to last week.", True, "word"), ("It is not needed.", False, "word"),
        ("Sure, here is a joke about cats", None, "none"), ("", None, "none"),
        ("Absolutely", None, "none"),  # 'a' inside a word is not an answer
        ("The note is enough to answer (A). (B) would be wrong", True, "paren"),
    ],
)
def test_parse_choice_messy(text, value, rule):
    c = parse_choice(text)
    assert (c.value, c.rule) == (value, rule)


def _item(i: int, text: str, tok: Callable[[str], int], summary: str | None = None) -> MemoryItem:
    return MemoryItem(i, f"k{i}", "turn", text, summary, tok(text), tok(summary) if summary else None, None, 0.0, i)


def test_assemble_never_exceeds_budget_and_is_greedy(tokenizer):
    llm = ScriptedChat(tokenizer, 4096, lambda m: "")
    rng = random.Random(0)
    words = "river stone apple code number seven blue garden train window coffee".split()
    for trial in range(60):
        items = []
        for i in range(1, rng.randint(1, 9) + 1):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 120)))
            summary = " ".join(text.split()[:5]) if rng.random() < 0.5 else None
            items.append(_item(i, text, llm.count, summary))
        flash = _item(100, " ".join(rng.choice(words) for _ in range(rng.randint(3, 200))), llm.count)
        user = " ".join(rng.choice(words) for _ in range(rng.randint(1, 150)))
        budget = rng.randint(30, 700)
        use_summary = {it.id: rng.random() < 0.5 for it in items}
        p = assemble(llm, budget, user, items, use_summary, flash)
        assert p.tokens == llm.count_messages(p.messages) <= budget
        # greedy: any ranked item left out would not have fitted in either form
        chosen = [(it, it.summary if it.id in p.summarized else it.text) for it in items if it.id in p.activation]
        flash_part = None
        if p.flash is not None:
            content = p.messages[0]["content"]
            flash_part = (flash, content.split("### Previous turn\n", 1)[1])
        for it in items:
            if it.id in p.activation:
                continue
            for text in (it.text, it.summary):
                if text:
                    trial_msgs = render_agent_prompt(
                        "" if not p.messages[0]["content"].startswith("You are") else p.messages[0]["content"].split("\n\n")[0],
                        chosen + [(it, text)], flash_part, p.messages[1]["content"])
                    assert llm.count_messages(trial_msgs) > budget


def test_assemble_prefers_summary_when_told_and_keeps_input_end(tokenizer):
    llm = ScriptedChat(tokenizer, 4096, lambda m: "")
    long = "filler " * 300 + "the code is 4821"
    it = _item(1, long, llm.count, summary="User said the code is 4821.")
    p = assemble(llm, 2000, "what is the code?", [it], {1: True}, None)
    assert p.summarized == [1] and "User said the code is 4821." in p.messages[0]["content"]
    p = assemble(llm, 2000, "what is the code?", [it], {1: False}, None)
    assert p.summarized == [] and long in p.messages[0]["content"]
    # too small for the full text: the summary is used even if not chosen
    p = assemble(llm, 120, "what is the code?", [it], {1: False}, None)
    assert p.summarized == [1] and p.tokens <= 120
    # an input longer than the whole budget keeps its end (the actual question)
    p = assemble(llm, 80, "blah " * 500 + "QUESTION?", [it], {}, None)
    assert p.tokens <= 80 and p.messages[1]["content"].endswith("QUESTION?")


def _stream_with(texts, tok):
    s = MemoryStream(":memory:", HashingEmbedder(), Ranking(0.0))
    s.add(texts, [f"k{i}" for i in range(len(texts))], [tok(t) for t in texts])
    return s


def test_controller_gate_and_summary_decisions(tokenizer):
    replies: list[str] = []

    def answer(msgs):
        content = msgs[-1]["content"]
        if content.startswith("Summarize this part"):
            return "The user said the locker code is 4821."
        return replies.pop(0)

    llm = ScriptedChat(tokenizer, 2048, answer)
    fact = "User: my gym locker code is 4821. " + "I also talked about many other things at length. " * 60
    texts = [fact + "\nAssistant: noted", "User: tell me a joke\nAssistant: why did the chicken cross the road"]
    stream = _stream_with(texts + ["User: hello there\nAssistant: hi"], llm.count)
    config = ControllerConfig(item_tokens=200, total_tokens=300)
    agent = SCMAgent(llm, stream, k=2, max_new_tokens=32, controller=MemoryController(llm, config))

    replies[:] = ["Answer: (B) no memory needed", "sure!"]
    r = agent.respond("tell me a joke about dogs", store=False)
    assert not r.prompt.used_memory and r.prompt.activation == [] and r.text == "sure!"
    assert [(d.kind, d.value, d.parsed) for d in r.decisions] == [("needs_memory", False, "paren")]

    # memory needed; item 1 is long (> 200 tokens, total > 300): the summary is judged enough
    replies[:] = ["yes, it refers to something I said", "**A**", "It is 4821."]
    r = agent.respond("what is my gym locker code?", store=False)
    assert r.prompt.used_memory and 1 in r.prompt.activation and r.prompt.summarized == [1]
    assert "locker code is 4821" in r.prompt.messages[0]["content"] and "at length" not in r.prompt.messages[0]["content"]
    assert [(d.kind, d.item, d.value) for d in r.decisions] == [("needs_memory", None, True), ("summary_enough", 1, True)]
    assert stream.get([1])[0].summary == "The user said the locker code is 4821."  # stored for next time

    # summary judged not enough: the full text goes in
    replies[:] = ["(A)", "no, more detail is needed", "It is 4821."]
    r = agent.respond("what is my gym locker code?", store=False)
    assert r.prompt.summarized == [] and fact in r.prompt.messages[0]["content"]

    # unparseable gate answer: default is to use memory
    replies[:] = ["hmm", "???", "ok"]
    r = agent.respond("what is my gym locker code?", store=False)
    assert r.prompt.used_memory and r.decisions[0].parsed == "none"
    assert r.decisions[1].value is False  # unparseable decision 2: keep the full text


def test_agent_modes_and_store(tokenizer):
    llm = ScriptedChat(tokenizer, 512, lambda m: "(A)" if "Reply with (A) or (B)" in m[-1]["content"] else "ok")
    turns = [f"User: fact number {i} is {i * 7}\nAssistant: noted" for i in range(40)]
    stream = _stream_with(turns, llm.count)
    full = SCMAgent(llm, stream, k=3, mode="full-history", max_new_tokens=64)
    p, _ = full.build_prompt("what is fact number 2?")
    assert p.tokens <= 448 and 40 in p.activation and 3 not in p.activation  # truncation keeps only the latest
    scm = SCMAgent(llm, stream, k=3, mode="scm", max_new_tokens=64)
    p, _ = scm.build_prompt("what is fact number 2?")
    assert 3 in p.activation and p.flash == 40 and p.tokens <= 448
    none = SCMAgent(llm, stream, k=3, mode="no-memory", max_new_tokens=64)
    p, _ = none.build_prompt("what is fact number 2?")
    assert p.activation == [] and p.flash == 40
    r = scm.respond("thanks")
    assert r.item_id == 41 and stream.last(1)[0].text == "User: thanks\nAssistant: ok"


def test_bench_pipeline_with_copying_llm(tokenizer):
    """The bench protocol with an LLM that answers with every candidate word in its prompt: memory systems
    that put the evidence in the prompt must score exactly their recall on single-hop probes."""
    import longseq.memory.bench as mb

    gold_words = set(mb.PETS + mb.DRINKS + mb.CITIES + mb.TRIPS)

    def answer(msgs):
        if "Reply with (A) or (B)" in msgs[-1]["content"]:
            return "(A)"
        sys_text = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
        return " ".join(w for w in gold_words if w in sys_text) + " " + " ".join(
            t for t in sys_text.split() if t.rstrip(".").isdigit())

    llm = ScriptedChat(tokenizer, 768, answer)
    res = mb.run_bench(llm, HashingEmbedder(), sessions=2, k=4, max_new_tokens=16, progress=False)
    summ = res["summary"]
    assert set(summ) == set(mb.SYSTEMS) and all(m["max_prompt_tokens"] <= m["budget"] for m in summ.values())
    assert min(res["dialogue_tokens"]) > 768  # every dialogue is longer than the window
    assert summ["no-controller"]["recall"] > summ["full-history"]["recall"] > summ["no-memory"]["recall"]
    for r in res["records"]:
        if r["recall"] == 1.0 and r["kind"] == "single":
            assert r["correct"], r
    report = mb.report_markdown(res, {"model": "scripted", "context_length": 768, "k": 4, "sessions": 2,
                                      "seed": 0, "embedder": "hash-384"})
    assert "| scm |" in report and "retrieval recall" in report


def test_make_session_is_deterministic():
    from longseq.memory.bench import make_session

    a, b = make_session(3), make_session(3)
    assert a.turns == b.turns and [p.gold for p in a.probes] == [p.gold for p in b.probes]
    for p in a.probes:
        evidence_text = " ".join(a.turns[i][0] for i in p.evidence)
        assert p.gold in evidence_text
    assert make_session(4).turns != a.turns
    assert np.mean([len(a.turns)]) > 40


def test_summarize_document_hierarchy_and_resume(tokenizer, tmp_path):
    from longseq.memory.documents import summarize_document

    doc = tmp_path / "book.txt"
    doc.write_text(" ".join(f"Chapter {i} tells how the hero visits town number {i} and meets a friend." for i in range(60)))

    def answer(msgs):
        content = msgs[-1]["content"]
        if content.startswith("Combine these"):
            return "merged(" + str(content.count("part")) + ")"
        section = content.split("Section:\n", 1)[1]
        first = section.split()[1]
        return f"A part about chapter {first} and what follows."

    llm = ScriptedChat(tokenizer, 512, answer)  # asserts every call fits the window
    db = tmp_path / "book.db"
    with MemoryStream(db, HashingEmbedder()) as stream:
        res = summarize_document(llm, stream, doc, block_tokens=200, max_new_tokens=48, progress=False)
    blocks = [c for c in llm.calls if c[-1]["content"].startswith(("Summarize the following", "Previous", "Earlier"))
              or "Section:\n" in c[-1]["content"]]
    assert len(res.levels[0]) == len(blocks) > 4
    assert "Chapter 0 " in blocks[0][-1]["content"] and "Previous section" not in blocks[0][-1]["content"]
    # flash memory = the previous block (its summary, as the block is long) ...
    assert "Previous section: A part about chapter 0 " in blocks[1][-1]["content"]
    # ... and activation memory = summaries of earlier blocks retrieved by similarity
    assert "Earlier parts: A part about chapter" in blocks[3][-1]["content"]
    assert all(len(b) < len(a) for a, b in zip(res.levels, res.levels[1:])) and len(res.levels[-1]) == 1
    assert res.summary.startswith("merged(")
    n_calls = len(llm.calls)
    with MemoryStream(db, HashingEmbedder()) as stream:  # rerun: every block summary is reused
        again = summarize_document(llm, stream, doc, block_tokens=200, max_new_tokens=48, progress=False)
    assert again.levels[0] == res.levels[0]
    assert not any("Section:\n" in c[-1]["content"] for c in llm.calls[n_calls:])


def test_chatter_turns_out_of_range_is_a_user_error_and_the_bounds_work():
    from longseq.memory.bench import CHATTER, MIN_CHATTER, make_session

    for n in (MIN_CHATTER, len(CHATTER) * 3):
        assert len(make_session(0, n).turns) == 7 + n + 1  # seven facts, the chatter, the move
    for n in (MIN_CHATTER - 1, len(CHATTER) * 3 + 1):
        with pytest.raises(UserError, match="--chatter-turns must be between"):
            make_session(0, n)


def test_bench_cli_refuses_bad_chatter_turns_before_loading_a_model(capsys, tmp_path):
    from longseq.cli import main

    code = main(["memory", "bench", "--model", str(tmp_path / "missing"), "--chatter-turns", "2"])
    assert code == 2 and "--chatter-turns must be between" in capsys.readouterr().err
