"""Task generators (sizing, determinism, needle depth) and scoring functions of ``longseq eval``."""

from __future__ import annotations

import random

import pytest

from eval_fixtures import smol_tokenizer  # noqa: F401  (fixture)
from longseq.eval.engine import cut_at_stop, encode, render
from longseq.core.errors import UserError
from longseq.eval.run import Item, PromptBuilder, effective_length
from longseq.eval.tasks import NIAH_NEEDLE, PASSKEY_GARBAGE, RULER_SUBTASKS, TASKS, first_int, insert_at_depth, last_int, recall, score_contains, score_exact_int, score_last_int, score_recall_words, size_prompt

ALL = [("passkey", ""), ("lines", ""), ("topics", ""), ("niah", "")] + [("ruler", s) for s in RULER_SUBTASKS]


@pytest.mark.parametrize("length", [1024, 4096])
@pytest.mark.parametrize("fmt", ["raw", "chat"])
def test_every_generator_is_within_two_percent_in_model_tokens(smol_tokenizer, length, fmt):  # noqa: F811
    builder = PromptBuilder(smol_tokenizer, fmt, seed=3)
    for task, sub in ALL:
        for index in range(2):
            sp = builder.build(Item("none", task, sub, length, index, 0.5 if task == "niah" else None))
            # independent count: re-tokenize the final text exactly as the engine will feed it
            n = len(encode(smol_tokenizer, sp.text, fmt))
            assert n == sp.tokens
            assert 0.98 * length <= n <= length, (task, sub, n)
            if fmt == "chat":
                assert sp.text.startswith("<|im_start|>")


def test_generators_are_deterministic_in_task_length_seed_index(smol_tokenizer):  # noqa: F811
    def text(task, sub, length, seed, index):
        return PromptBuilder(smol_tokenizer, "raw", seed).build(Item("none", task, sub, length, index, 0.5)).text

    for task, sub in ALL:
        a = text(task, sub, 1024, 0, 0)
        assert a == text(task, sub, 1024, 0, 0)
        if task != "niah":  # the classic needle and haystack are fixed: only the depth varies
            assert a != text(task, sub, 1024, 0, 1)
            assert a != text(task, sub, 1024, 1, 0)
    # passkey: key and depth come from the (task, length, seed, index) RNG
    p1 = TASKS["passkey"].generate(random.Random("passkey|2048|0|0"), 500, {})
    p2 = TASKS["passkey"].generate(random.Random("passkey|2048|0|0"), 500, {})
    assert p1.body == p2.body and p1.expected == p2.expected


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_needle_sits_at_the_requested_depth_in_tokens(smol_tokenizer, depth):  # noqa: F811
    sp = PromptBuilder(smol_tokenizer, "raw", 0).build(Item("none", "niah", "", 4096, 0, depth))
    body = sp.prompt.body
    assert body.count(NIAH_NEEDLE) == 1
    context_start = body.index("\n") + 1
    context_end = body.rindex("\n")
    context = body[context_start:context_end]
    before = context[: context.index(NIAH_NEEDLE)]
    measured = len(smol_tokenizer(before)["input_ids"]) / len(smol_tokenizer(context)["input_ids"])
    assert abs(measured - depth) < 0.03, measured
    if depth < 1:  # moved back to a sentence boundary (NIAH): it starts the text or follows a full stop
        assert before == "" or before.rstrip()[-1] in '.!?"'
    else:  # depth 100% appends the needle
        assert context.endswith(NIAH_NEEDLE)


def test_passkey_depth_and_filler_match_the_reference_construction():
    p = TASKS["passkey"].generate(random.Random(5), 1000, {})
    prefix = p.body.split("\n")[1]
    assert prefix == (" ".join([PASSKEY_GARBAGE] * 20))[: len(prefix)]  # sliced by characters from the start
    assert abs(len(prefix) / 1000 - p.depth) < 1e-3
    assert f"The pass key is {p.expected}. Remember it. {p.expected} is the pass key." in p.body
    assert p.answer_prefix == "The pass key is" and 1 <= p.expected <= 50000


def test_ruler_needles_and_answers_are_consistent():
    from longseq.eval.tasks import gen_niah_multiquery, gen_niah_multivalue, gen_vt

    mq = gen_niah_multiquery(random.Random(1), 3000, {})
    assert len(mq.expected) == 4 and all(f"is: {v}." in mq.body for v in mq.expected)
    mv = gen_niah_multivalue(random.Random(2), 3000, {})
    key = mv.meta["keys"][0]
    assert sum(f"for {key} is: {v}." in mv.body for v in mv.expected) == 4
    vt = gen_vt(random.Random(3), 2000, {})
    chain = vt.expected
    assert f"VAR {chain[0]} = {vt.meta['value']}." in vt.body
    for a, b in zip(chain, chain[1:]):
        assert vt.body.index(f"VAR {a} =") < vt.body.index(f"VAR {b} = VAR {a}.")


def test_cwe_and_fwe_answers_are_the_true_most_frequent_words():
    from collections import Counter

    from longseq.eval.tasks import gen_cwe, gen_fwe

    cwe = gen_cwe(random.Random(4), 200, {"length": 8192})
    listing = cwe.body.split("\n")[1]
    counts = Counter(tok for i, tok in enumerate(listing.split()) if i % 2 == 1)
    assert sorted(w for w, _ in counts.most_common(10)) == sorted(cwe.expected)
    assert all(counts[w] == 30 for w in cwe.expected)
    fwe = gen_fwe(random.Random(5), 2000, {})
    words = Counter(w for w in fwe.body.split("\n")[1].split() if w != "....")
    top = [c for _, c in words.most_common(3)]
    assert [words[w] for w in fwe.expected] == top


def test_too_short_length_is_a_user_error(smol_tokenizer):  # noqa: F811
    builder = PromptBuilder(smol_tokenizer, "raw", 0)
    with pytest.raises(UserError, match="too short"):
        builder.build(Item("none", "topics", "", 40, 0))


def test_insert_at_depth_moves_back_to_sentence_end():
    text = "One two three. Four five six. Seven eight nine."
    out, off = insert_at_depth(text, "NEEDLE.", 0.7)  # 0.7 * 47 = 32, inside the third sentence
    assert out == "One two three. Four five six. NEEDLE. Seven eight nine."
    assert out[off:].startswith("NEEDLE.")
    assert insert_at_depth(text, "N.", 0.0)[0].startswith("N. One")
    assert insert_at_depth(text, "N.", 1.0)[0].endswith("nine. N.")


# --------------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("output,score", [
    (" 12345. Remember it.", 1.0), ("12345", 1.0), (" The pass key is 12345", 1.0),
    (" 1234", 0.0), (" 54321 or 12345", 0.0),  # first integer counts (landmark-attention)
    ("", 0.0), ("I don't know", 0.0), (None, 0.0), (" 12,345", 0.0),
])
def test_passkey_score(output, score):
    assert score_exact_int(output, 12345) == score


@pytest.mark.parametrize("output,score", [
    ("19147>.", 1.0), (" <19147>", 1.0), ("It is 5, I think 19147", 1.0),
    ("19147 and then line x is 8862", 0.0),  # LongEval takes the last integer: echoing more numbers fails
    ("", 0.0), ("no idea", 0.0), (None, 0.0),
])
def test_lines_score(output, score):
    assert score_last_int(output, 19147) == score


def test_int_parsers_on_malformed_text():
    assert first_int("abc") is None and last_int("") is None
    assert first_int("x-12y") == 12 and last_int("1a2b3") == 3


@pytest.mark.parametrize("output,score", [
    (" sourdough bread.", 1.0), ("SOURDOUGH  BREAD!", 1.0), ("The first topic was 'sourdough bread'", 1.0),
    (" sourdough", 0.0), (" bread", 0.0), ("", 0.0), (None, 0.0),
])
def test_topics_score(output, score):
    assert score_contains(output, "sourdough bread") == score


def test_ruler_recall():
    refs = ["1234567", "7654321", "1111111", "2222222"]
    assert recall("1234567, 7654321, 1111111 and 2222222", refs) == 1.0
    assert recall("1234567 and 2222222", refs) == 0.5
    assert recall("", refs) == 0.0
    assert recall("anything", []) == 0.0
    # whole-word matching for word answers: "class" is not found inside "classes"
    assert score_recall_words("classes, object", ["class", "object"]) == 0.5
    assert recall("classes", ["class"]) == 1.0  # plain RULER substring


def test_cut_at_stop_keeps_leading_blank_lines():
    assert cut_at_stop(" 123.\nline foo") == (" 123.", True)
    assert cut_at_stop("\n\n 123\nmore") == ("\n\n 123", True)
    assert cut_at_stop(" 123") == (" 123", False)


def test_render_raw_and_chat(smol_tokenizer):  # noqa: F811
    assert render("Q?", "A:", " ", "raw", smol_tokenizer) == "Q? A:"
    chat = render("Q?", "A:", " ", "chat", smol_tokenizer)
    assert chat.endswith("<|im_start|>assistant\nA:") and "<|im_start|>user\nQ?<|im_end|>" in chat


def test_effective_length_hand_computed():
    rows = [
        {"task": "passkey", "method": "none", "length": 1024, "score": 1.0},
        {"task": "lines", "method": "none", "length": 1024, "score": 0.8},    # mean 0.90 >= 0.856
        {"task": "passkey", "method": "none", "length": 2048, "score": 1.0},
        {"task": "lines", "method": "none", "length": 2048, "score": 0.75},   # mean 0.875
        {"task": "passkey", "method": "none", "length": 4096, "score": 0.8},
        {"task": "lines", "method": "none", "length": 4096, "score": 0.8},    # 0.80 < threshold
        {"task": "passkey", "method": "none", "length": 8192, "score": 1.0},
        {"task": "lines", "method": "none", "length": 8192, "score": 1.0},    # passes, but 4k failed
        {"task": "passkey", "method": "yarn", "length": 1024, "score": 0.5},
        {"task": "lines", "method": "yarn", "length": 1024, "score": 1.0},    # 0.75: fails at the shortest
        {"task": "ppl", "method": "none", "length": 1024, "score": 0.01},
    ]
    assert effective_length(rows, ["passkey", "lines"], 0.856) == {"none": 2048, "yarn": 0}
    assert effective_length(rows, ["passkey", "lines"], 0.75) == {"none": 8192, "yarn": 1024}
    assert effective_length(rows, ["passkey"], 0.9) == {"none": 2048, "yarn": 0}


def test_sizer_binary_search_with_a_character_tokenizer():
    """With a 1-char-per-token counter the sizer must land exactly on the requested length."""
    count = lambda p: (p.body + p.sep + p.answer_prefix, len(p.body + p.sep + p.answer_prefix))  # noqa: E731
    sp = size_prompt(TASKS["passkey"], 3000, 0, 0, count)
    assert sp.tokens == 3000
