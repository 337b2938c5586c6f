"""SCM controller and prompt assembly with a scripted LLM that counts tokens with the real SmolLM2 chat template:
the reference's answer parsing, prompts and drop / summary / full outcomes on hand-written cases.

Run: PYTHONPATH=src python -m pytest tests/test_memory_scm.py
"""

from __future__ import annotations

import random
from typing import Callable

import numpy as np
import pytest

from longseq.core.errors import UserError
from longseq.memory.agent import SCMAgent, assemble, memory_text, render_agent_prompt
from longseq.memory.controller import (ANSWERABLE_PROMPT, FORMS, POLICIES, ControllerConfig, MemoryController,
                                       naive_forms, parse_choice, parse_reference)
from longseq.memory.embedders import HashingEmbedder
from longseq.memory.store import Hit, MemoryItem, MemoryStream, Ranking
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


# ---------------------------------------------------------------------------------------------- answer parsing

# The reference (core/chat.py, get_binary_answer): `if '(B)否' in output or '(B)' in output: return False`,
# else True. Hand-written cases, expected values worked out from that rule by hand.
REFERENCE_CASES = [
    ("(B)", False), ("(B)否", False), ("(A)是", True), ("(A)", True),
    ("B", True), ("No", True), ("Answer: B", True), ("b) no", True), ("(b)", True), ("( B )", True),
    ("no, it cannot be answered", True), ("", True), ("I am not sure", True),
    ("[Answer]: The final answer is: (A) Yes / (B) No", False),  # echoing the format line says no
    ("[Answer]: The final answer is: (A) Yes", True), ("The answer is (A), not (B).", False),
    ("[Answer]: The final answer is: (B) No", False),
]


@pytest.mark.parametrize("text,value", REFERENCE_CASES)
def test_reference_parser_only_b_in_brackets_means_no(text, value):
    c = parse_reference(text)
    assert c.value is value and c.raw == text


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
def test_lenient_parser_messy(text, value, rule):
    c = parse_choice(text)
    assert (c.value, c.rule) == (value, rule)


def test_controller_uses_the_configured_parser(tokenizer):
    item = _item(1, "User: hi\n\nAssistant: hello", _count(tokenizer))
    for parser, expected in (("reference", True), ("lenient", False)):
        llm = ScriptedChat(tokenizer, 4096, lambda m: "Answer: B")
        ctrl = MemoryController(llm, ControllerConfig(parser=parser))
        assert ctrl.answerable("answerable", item, item.text, "q?") is expected


# ------------------------------------------------------------------ prompts, transcribed from the reference

# My transcription of wbbeyourself/SCM4LLMs prompts/dialogue.py (English prompts), written as Python strings.
REF_HISTORY = ("The following is a conversation between a user and an AI assistant. Please answer the current "
               "question based on the history of the conversation:\n\nRelated conversation history:\n\n"
               "{history_turn_text}\n\nPrevious conversation:\n\n{pre_turn_text}\n\n###\n\nUser: {input}\n\n"
               "Assistant: ")
REF_NO_HISTORY = ("The following is a conversation between a user and an AI assistant. Please answer the current "
                  "question based on the history of the conversation:\n\nPrevious conversation:\n\n"
                  "{pre_turn_text}\n\n###\n\nUser: {input}\n\nAssistant: ")
REF_SUMMARY = ("Below is a conversation between a user and an AI assistant. Please write a summary for each of them "
               "in one sentence and list them in separate paragraphs, while trying to preserve the key information "
               "of the user\u2019s question and the assistant\u2019s answer as much as possible.\n\n"
               "conversation content: \n\n{input}\n\nSummary:\n")
# judge_answerable_prompt exists only in Chinese; its lines, and the English rendering longseq sends.
REF_JUDGE_ZH = ("给定[对话内容]和[用户问题]，请回答指令问题。\n\n[对话内容]:\n```\n{content}\n```\n\n[用户问题]:\n```\n{query}\n```\n\n"
                "指令问题: \n```\n根据[对话内容]是否能够回答[用户问题]？如果能请回答 `(A)是`，否则请回答 `(B)否`。\n```\n\n"
                "现在请开始回答，输出必须严格按照以下格式输出：\n\n[答案]: 最终的答案是：(A)是 / (B)否\n")
JUDGE_EN = ("Given the [conversation content] and the [user question], answer the instruction question.\n\n"
            "[conversation content]:\n```\n{content}\n```\n\n[user question]:\n```\n{query}\n```\n\n"
            "Instruction question: \n```\nCan the [user question] be answered from the [conversation content]? "
            "If it can, answer `(A) Yes`, otherwise answer `(B) No`.\n```\n\n"
            "Now answer. The output must strictly follow this format:\n\n"
            "[Answer]: The final answer is: (A) Yes / (B) No\n")


def test_english_judge_prompt_has_the_reference_structure():
    assert JUDGE_EN == ANSWERABLE_PROMPT
    zh, en = REF_JUDGE_ZH.split("\n"), JUDGE_EN.split("\n")
    assert len(zh) == len(en)
    for a, b in zip(zh, en):  # same fences, slots, blank lines and answer options, line by line
        assert (a == "```", a == "", "{content}" in a, "{query}" in a) == (b == "```", b == "", "{content}" in b, "{query}" in b)
        assert ("(A)" in a, "(B)" in a) == ("(A)" in b, "(B)" in b)


def _count(tokenizer):
    return lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"])


def _turn(i: int, user: str, answer: str, tok: Callable[[str], int], summary: str | None = None) -> MemoryItem:
    text = f"User: {user}\n\nAssistant: {answer}"
    return _item(i, text, tok, summary)


def test_rendered_agent_and_controller_prompts_match_the_reference(tokenizer):
    tok = _count(tokenizer)
    old = _turn(3, "My dog is called Biscuit.", "Noted.", tok)
    prev = _turn(9, "Any tips for sleeping?", "Keep a schedule.", tok)
    msgs = render_agent_prompt([(old, memory_text(old, "full"))], (prev, memory_text(prev, "full")), "Dog's name?")
    expected = REF_HISTORY.format(history_turn_text="[Turn 3]\n\n" + old.text + "\n\n",
                                  pre_turn_text="[Turn 9]\n\n" + prev.text, input="Dog's name?")
    assert msgs == [{"role": "user", "content": expected}]
    msgs = render_agent_prompt([], (prev, memory_text(prev, "full")), "Dog's name?")
    assert msgs[0]["content"] == REF_NO_HISTORY.format(pre_turn_text="[Turn 9]\n\n" + prev.text, input="Dog's name?")
    assert render_agent_prompt([], None, "Hello") == [{"role": "user", "content": "Hello"}]  # first turn (turbo)
    # the controller's question and the summarizer, as the model receives them
    llm = ScriptedChat(tokenizer, 4096, lambda m: "(A)")
    ctrl = MemoryController(llm, ControllerConfig())
    ctrl.answerable("answerable", old, old.text, "Dog's name?")
    assert llm.calls[-1] == [{"role": "user", "content": JUDGE_EN.format(content=old.text, query="Dog's name?")}]
    long_turn = _turn(1, "Tell me about my trip. " * 40, "It is in May. " * 40, tok)
    stream = _stream_with([long_turn.text], tok)
    agent = SCMAgent(llm, stream, controller=ctrl)
    agent.summarize_item(stream.get([1])[0])
    assert llm.calls[-1] == [{"role": "user", "content": REF_SUMMARY.format(input=long_turn.text)}]


def test_budgets_scale_with_the_window_and_the_summary_threshold_is_the_fixed_300(tokenizer):
    c = ControllerConfig().scaled(4096)
    assert (c.memory_tokens, c.flash_tokens, c.summarize_tokens) == (2500, 500, 300)
    c = ControllerConfig().scaled(1024)
    assert (c.memory_tokens, c.flash_tokens, c.summarize_tokens, c.item_tokens, c.total_tokens) == (625, 125, 300, 200, 500)
    assert ControllerConfig().scaled(192).summarize_tokens == 300
    tok = _count(tokenizer)
    llm = ScriptedChat(tokenizer, 4096, lambda m: "A short summary.")
    ctrl = MemoryController(llm, ControllerConfig())
    words = "river stone apple code number seven blue garden train window coffee".split()
    # the reference compares the filled summarization prompt (not the turn) with 300
    for n_words in (150, 160, 170, 180, 190, 200, 210, 260):
        text = "User: " + " ".join(words[i % len(words)] for i in range(n_words)) + "\n\nAssistant: ok"
        stream = _stream_with([text], tok)
        agent = SCMAgent(llm, stream, controller=ctrl)
        calls = len(llm.calls)
        it = agent.summarize_item(stream.get([1])[0])
        summarized = tok(REF_SUMMARY.format(input=text)) > 300
        assert (len(llm.calls) > calls) is summarized
        assert it.summary == ("A short summary." if summarized else text)


# -------------------------------------------------------------------------- the controller's three outcomes


def _script(rules: dict[tuple[str, str], str], log: list[tuple[str, str]]):
    """An LLM that answers the judge prompt from ``rules[(kind, marker)]``; kind 'full' or 'summary'."""
    def answer(msgs):
        content = msgs[-1]["content"]
        if content.startswith("Below is a conversation"):
            marker = content.split("MARK", 1)[1].split()[0]
            return f"Summary of MARK{marker}."
        if content.startswith("Given the [conversation content]"):
            quoted = content.split("```\n", 2)[1]
            marker = quoted.split("MARK", 1)[1].split()[0].rstrip(".")
            kind = "summary" if quoted.startswith("Summary of") else "full"
            log.append((kind, marker))
            return rules[(kind, marker)]
        return "ok"
    return answer


def _long_turn(i: int, marker: str, n: int, tok) -> MemoryItem:
    return _turn(i, f"MARK{marker} " + "we talked about the garden and the weather at length. " * n, "Noted.", tok)


def _controller_case(tokenizer, rules, config, n_words=(30, 30, 30), flash_words=None):
    tok = _count(tokenizer)
    log: list[tuple[str, str]] = []
    llm = ScriptedChat(tokenizer, 8192, _script(rules, log))
    items = [_long_turn(i + 1, m, n, tok) for i, (m, n) in enumerate(zip("abc", n_words))]
    stream = _stream_with([it.text for it in items] + ([_long_turn(9, "f", flash_words, tok).text] if flash_words else []), tok)
    agent = SCMAgent(llm, stream, controller=MemoryController(llm, config))
    ranked = stream.get([1, 2, 3])  # best first: a is the most similar, c the least
    flash = stream.get([4])[0] if flash_words else None
    forms = agent.controller.choose_forms(ranked, "what did we say?", agent.summarize_item, flash)
    return {stream.get([i])[0].text.split()[1][4:]: f for i, f in forms.items()}, log, agent


def test_code_policy_drop_summary_full_on_hand_written_cases(tokenizer):
    cfg = ControllerConfig(memory_tokens=800, flash_tokens=500, summarize_tokens=50)  # 3 x ~330 tokens: over
    rules = {("full", "c"): "(B)", ("full", "b"): "[Answer]: The final answer is: (A) Yes",
             ("summary", "b"): "(A) Yes"}
    forms, log, _ = _controller_case(tokenizer, rules, cfg)
    assert forms == {"a": "full", "b": "summary", "c": "drop"}
    assert log == [("full", "c"), ("full", "b"), ("summary", "b")]  # least similar first; a is never asked
    rules[("summary", "b")] = "(B) No"
    forms, log, _ = _controller_case(tokenizer, rules, cfg)
    assert forms == {"a": "full", "b": "full", "c": "drop"}  # a + b in full fit once c is dropped
    # under the budget: no question at all, every memory in full
    forms, log, _ = _controller_case(tokenizer, rules, ControllerConfig(memory_tokens=5000))
    assert forms == {"a": "full", "b": "full", "c": "full"} and log == []


def test_code_policy_later_rounds_switch_full_texts_to_summaries(tokenizer):
    # both kept in full after round 1 but still over the budget: b (less similar) switches first, then a
    rules = {("full", "c"): "(B)", ("full", "b"): "(A)", ("summary", "b"): "(B)"}
    tok_a = 30 * 11  # about 11 tokens per filler sentence
    forms, _, _ = _controller_case(tokenizer, rules, ControllerConfig(memory_tokens=tok_a + 40, summarize_tokens=50))
    assert forms == {"a": "full", "b": "summary", "c": "drop"}
    forms, _, _ = _controller_case(tokenizer, rules, ControllerConfig(memory_tokens=30, summarize_tokens=50))
    assert forms == {"a": "summary", "b": "summary", "c": "drop"}  # still over with everything summarized: stops


def test_code_policy_counts_flash_memory_in_the_budget(tokenizer):
    rules = {("full", "c"): "(B)", ("full", "b"): "(B)"}
    cfg = ControllerConfig(memory_tokens=1200, flash_tokens=5000, summarize_tokens=50)
    forms, log, _ = _controller_case(tokenizer, rules, cfg)
    assert log == [] and set(forms.values()) == {"full"}  # three memories alone fit
    forms, log, _ = _controller_case(tokenizer, rules, cfg, flash_words=40)
    assert forms == {"a": "full", "b": "drop", "c": "drop"}  # the flash turn pushes them over
    # a long flash turn counts as its (short) summary
    forms, log, _ = _controller_case(tokenizer, rules, ControllerConfig(memory_tokens=1200, flash_tokens=100,
                                                                        summarize_tokens=50), flash_words=40)
    assert log == [] and set(forms.values()) == {"full"}


def test_flash_memory_is_the_previous_turn_summarized_from_500_tokens(tokenizer):
    tok = _count(tokenizer)
    llm = ScriptedChat(tokenizer, 8192, _script({}, []))
    for n, form in ((3, "full"), (60, "summary")):
        stream = _stream_with([_long_turn(1, "x", 1, tok).text, _long_turn(2, "f", n, tok).text], tok)
        agent = SCMAgent(llm, stream, controller=MemoryController(llm, ControllerConfig().scaled(4096)))
        flash = stream.get([2])[0]
        assert agent.controller.flash_form(flash) == ("full" if flash.text_tokens < 500 else "summary") == form
        p, _ = agent.build_prompt("what did we say?")
        assert p.flash == 2
        previous = p.messages[0]["content"].split("Previous conversation:\n\n", 1)[1].split("\n\n###")[0]
        assert previous == ("[Turn 2]\n\n" + flash.text if form == "full" else "Summary of MARKf.")


def test_scm_drops_a_memory_from_the_prompt(tokenizer):
    tok = _count(tokenizer)
    rules = {("full", "c"): "(B) No", ("full", "b"): "(A)", ("summary", "b"): "(A)"}
    log: list = []
    llm = ScriptedChat(tokenizer, 2048, _script(rules, log))
    texts = [_long_turn(i, m, 20, tok).text for i, m in ((1, "a"), (2, "b"), (3, "c"))] + ["User: bye\n\nAssistant: ok"]
    stream = _stream_with(texts, tok)
    agent = SCMAgent(llm, stream, k=3, controller=MemoryController(llm, ControllerConfig(memory_tokens=300, summarize_tokens=50)))
    agent.stream.search = lambda q, k, exclude, ranking=None: [Hit(it, 1.0 - 0.1 * n, 0.0) for n, it in
                                                                enumerate(stream.get([1, 2, 3]))]
    r = agent.respond("what did we say about MARKa?", store=False)
    assert r.prompt.forms == {1: "full", 2: "summary", 3: "drop"}
    content = r.prompt.messages[0]["content"]
    assert "MARKc" not in content and "Summary of MARKb." in content and "[Turn 1]" in content
    assert r.prompt.activation == [1, 2] and r.prompt.summarized == [2]
    assert [(d.kind, d.item, d.value) for d in r.decisions] == [("answerable", 3, False), ("answerable", 2, True),
                                                                 ("summary_enough", 2, True)]


def test_paper_policy_gate_and_thresholds(tokenizer):
    tok = _count(tokenizer)
    replies: list[str] = []
    llm = ScriptedChat(tokenizer, 4096, lambda m: "Summary of it." if m[-1]["content"].startswith("Below is")
                       else replies.pop(0))
    stream = _stream_with([_long_turn(1, "a", 40, tok).text, "User: short\n\nAssistant: ok", "User: x\n\nAssistant: y"], tok)
    cfg = ControllerConfig(**{**POLICIES["paper"].__dict__, "item_tokens": 200, "total_tokens": 300})
    agent = SCMAgent(llm, stream, k=2, controller=MemoryController(llm, cfg))
    replies[:] = ["(B)", "ok"]
    r = agent.respond("tell me a joke", store=False)
    assert not r.prompt.used_memory and r.prompt.activation == [] and r.prompt.forms == {}
    replies[:] = ["(A)", "(A)", "ok"]  # memory needed; the long item's summary is enough; never a drop
    r = agent.respond("what did we say?", store=False)
    assert r.prompt.forms == {1: "summary", 2: "full"}
    assert [(d.kind, d.item) for d in r.decisions] == [("needs_memory", None), ("summary_enough", 1)]


def test_naive_forms_are_the_reference_ablation(tokenizer):
    tok = _count(tokenizer)
    items = [_long_turn(i + 1, m, n, tok) for i, (m, n) in enumerate(zip("abcd", (30, 10, 60, 5)))]
    size = [it.text_tokens for it in items]
    cfg = ControllerConfig(memory_tokens=size[0] + size[1] + 1)
    assert naive_forms(cfg, items) == {1: "full", 2: "full", 3: "drop", 4: "drop"}  # stops at the first misfit
    assert naive_forms(ControllerConfig(memory_tokens=10), items) == {1: "full", 2: "drop", 3: "drop", 4: "drop"}


# ----------------------------------------------------------------------------------------- prompt assembly


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
        flash_item = _item(100, " ".join(rng.choice(words) for _ in range(rng.randint(3, 200))), llm.count)
        user = " ".join(rng.choice(words) for _ in range(rng.randint(1, 150)))
        budget = rng.randint(60, 700)
        forms = {it.id: rng.choice(FORMS) for it in items}
        p = assemble(llm, budget, user, items, forms, (flash_item, memory_text(flash_item, "full")))
        assert p.tokens == llm.count_messages(p.messages) <= budget
        assert not any(forms[i] == "drop" for i in p.activation)
        # greedy: any kept-form item left out would not have fitted in either form
        content = p.messages[0]["content"]
        user_in = content.rsplit("User: ", 1)[1].rsplit("\n\nAssistant: ", 1)[0] if p.flash or p.activation else content
        flash_part = None
        if p.flash is not None:
            flash_part = (flash_item, content.split("Previous conversation:\n\n", 1)[1].rsplit("\n\n###", 1)[0])
        chosen = [(it, memory_text(it, "summary" if it.id in p.summarized else "full"))
                  for it in items if it.id in p.activation]
        for it in items:
            if it.id in p.activation or forms[it.id] == "drop":
                continue
            for f in ("full", "summary"):
                trial_msgs = render_agent_prompt(chosen + [(it, memory_text(it, f))], flash_part, user_in)
                assert llm.count_messages(trial_msgs) > budget


def test_assemble_follows_forms_and_keeps_input_end(tokenizer):
    llm = ScriptedChat(tokenizer, 4096, lambda m: "")
    long = "filler " * 300 + "the code is 4821"
    it = _item(1, long, llm.count, summary="User said the code is 4821.")
    p = assemble(llm, 2000, "what is the code?", [it], {1: "summary"}, None)
    assert p.summarized == [1] and "User said the code is 4821." in p.messages[0]["content"]
    p = assemble(llm, 2000, "what is the code?", [it], {1: "full"}, None)
    assert p.summarized == [] and long in p.messages[0]["content"]
    p = assemble(llm, 2000, "what is the code?", [it], {1: "drop"}, None)
    assert p.activation == [] and p.messages == [{"role": "user", "content": "what is the code?"}]
    # too small for the full text: the summary is used even if not chosen
    p = assemble(llm, 160, "what is the code?", [it], {1: "full"}, None)
    assert p.summarized == [1] and p.tokens <= 160
    # an input longer than the whole budget keeps its end (the actual question)
    p = assemble(llm, 80, "blah " * 500 + "QUESTION?", [it], {}, None)
    assert p.tokens <= 80 and p.messages[0]["content"].endswith("QUESTION?")
    with pytest.raises(UserError, match="cannot hold even an empty prompt"):
        assemble(llm, 3, "hi", [it], {}, (it, "x"), render=lambda a, f, u: [{"role": "user", "content": "x " * 20 + u}])


def _stream_with(texts, tok):
    s = MemoryStream(":memory:", HashingEmbedder(), Ranking(0.0))
    s.add(texts, [f"k{i}" for i in range(len(texts))], [tok(t) for t in texts])
    return s


def test_agent_modes_and_store(tokenizer):
    llm = ScriptedChat(tokenizer, 512, lambda m: "(A)" if m[-1]["content"].startswith("Given the") else "ok")
    turns = [f"User: fact number {i} is {i * 7}\n\nAssistant: noted" for i in range(40)]
    stream = _stream_with(turns, llm.count)
    full = SCMAgent(llm, stream, k=3, mode="full-history", max_new_tokens=64)
    p, _ = full.build_prompt("what is fact number 2?")
    assert p.tokens <= 448 and p.flash == 40 and 39 in p.activation and 3 not in p.activation and p.forms == {}
    scm = SCMAgent(llm, stream, k=3, mode="scm", max_new_tokens=64)
    p, _ = scm.build_prompt("what is fact number 2?")
    assert 3 in p.activation and p.flash == 40 and p.tokens <= 448 and len(p.forms) == 3
    none = SCMAgent(llm, stream, k=3, mode="no-memory", max_new_tokens=64)
    p, _ = none.build_prompt("what is fact number 2?")
    assert p.activation == [] and p.flash == 40 and not p.used_memory
    r = scm.respond("thanks")
    assert r.item_id == 41 and stream.last(1)[0].text == "User: thanks\n\nAssistant: ok"
    system = SCMAgent(llm, stream, k=3, max_new_tokens=64, prompt_style="system")
    p, _ = system.build_prompt("what is fact number 2?")
    assert [m["role"] for m in p.messages] == ["system", "user"] and p.messages[1]["content"] == "what is fact number 2?"
    assert "### Previous turn\n[Turn 41]" in p.messages[0]["content"] and p.tokens <= 448
    for bad in (dict(k=0), dict(k=-1), dict(max_new_tokens=-4), dict(max_new_tokens=512), dict(prompt_style="x")):
        with pytest.raises(UserError):
            SCMAgent(llm, stream, **bad)


def test_bench_pipeline_with_copying_llm(tokenizer):
    """The bench protocol with an LLM that answers with every candidate word in its prompt: memory systems
    that put the evidence in the prompt must score exactly their recall on single-hop probes. The controller is
    told no for chatter memories, so SCM drops them and the report counts it."""
    import longseq.memory.bench as mb

    gold_words = set(mb.PETS + mb.DRINKS + mb.CITIES + mb.TRIPS)
    facts = ("called", "code", "favourite", "flying", "live", "sister", "works")

    def answer(msgs):
        content = msgs[-1]["content"]
        if content.startswith("Given the [conversation content]"):
            quoted = content.split("```\n", 2)[1]
            return "(A)" if any(f in quoted.split("Assistant:")[0] for f in facts) else "(B)"
        return " ".join(w for w in gold_words if w in content) + " " + " ".join(
            t for t in content.split() if t.rstrip(".").isdigit() and len(t.rstrip(".")) == 4)

    llm = ScriptedChat(tokenizer, 768, answer)
    res = mb.run_bench(llm, HashingEmbedder(), sessions=2, k=4, max_new_tokens=16, progress=False,
                       controller=ControllerConfig(memory_tokens=300))
    summ = res["summary"]
    assert set(summ) == set(mb.SYSTEMS) and all(m["max_prompt_tokens"] <= m["budget"] for m in summ.values())
    assert min(res["dialogue_tokens"]) > 768  # every dialogue is longer than the window
    assert summ["no-controller"]["recall"] > summ["full-history"]["recall"] > summ["no-memory"]["recall"]
    for r in res["records"]:
        if r["recall"] == 1.0 and r["kind"] == "single":
            assert r["correct"], r
    scm, naive = summ["scm"], summ["no-controller"]
    assert scm["drop"] > 0 and scm["drop"] + scm["summary"] + scm["full"] == naive["drop"] + naive["full"] == 2 * 6 * 4
    assert summ["no-memory"]["drop"] + summ["no-memory"]["full"] == 0
    report = mb.report_markdown(res, {"model": "scripted", "context_length": 768, "k": 4, "sessions": 2,
                                      "seed": 0, "embedder": "hash-384"})
    row = next(line for line in report.splitlines() if line.startswith("| scm |"))
    assert f"| {scm['drop']} / {scm['summary']} / {scm['full']} |" in row and "drop / summary / full" in report


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
