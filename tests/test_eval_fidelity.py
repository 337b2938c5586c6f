"""``longseq eval``'s tasks against their reference implementations.

The reference prompts below are transcribed here from the reference repositories (never imported from
longseq): NVIDIA/RULER ``scripts/data/synthetic/constants.py`` (template + answer prefix, as ``prepare.py``
joins them), DachengLi1/LongChat ``longeval/utils.py`` and its published topics test cases, and
gkamradt/LLMTest_NeedleInAHaystack ``run.py`` / ``providers/openai.py``. Each rendered prompt, raw and as
``--backend openai`` sends it, must match its reference template exactly around the random parts, and the
random parts must follow the reference's construction.
"""

from __future__ import annotations

import json
import math
import random
import re
import string
from collections import Counter
from types import SimpleNamespace

import pytest

from longseq.core.errors import UserError
from longseq.eval.engine import OpenAIEngine
from longseq.eval.run import EvalConfig, run_eval
from longseq.eval.tasks import EVAL_TASKS, RULER_SUBTASKS, PlannedSample, PromptBuilder, RunContext
from longseq.eval.tasks.generate import prompt_builder
from longseq.eval.tasks.ruler import RULER, gen_cwe, gen_fwe, join_queries
from longseq.eval.tasks.ruler_qa import RULER_QA_SUBTASKS
from longseq.eval.tasks.text import sentences, topic_bank
from longseq.models.generation import Generation

# ------------------------------------------------------------------------- reference text, transcribed

RULER_NIAH = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz "
              "you about the numbers afterwards.\n{context}\nWhat are all the special magic numbers for {query} "
              "mentioned in the provided text? The special magic numbers for {query} mentioned in the provided text "
              "are")
# niah.py when num_needle_q * num_needle_v == 1: Some -> A, are all -> is, are -> is, numbers -> number
RULER_NIAH_ONE = ("A special magic number is hidden within the following text. Make sure to memorize it. I will quiz "
                  "you about the number afterwards.\n{context}\nWhat is the special magic number for {query} "
                  "mentioned in the provided text? The special magic number for {query} mentioned in the provided "
                  "text is")
RULER_VT = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
            "Question: Find all variables that are assigned the value {query} in the text above. Answer: According "
            "to the chain(s) of variable assignment in the text above, {num_v} variables are assigned the value "
            "{query}, they are: ")
RULER_CWE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
             "that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list? "
             "Answer: The top 10 words that appear most often in the list are:")
RULER_FWE = ("Read the following coded text and track the frequency of each coded word. Find the three most frequently "
             "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots "
             "'....'. What are the three most frequently appeared words in the above coded text? Answer: According "
             "to the coded text above, the three most frequently appeared words are:")
RULER_QA = ("Answer the question based on the given documents. Only give me the answer and do not output any other "
            "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
            "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query} Answer:")
RULER_PREFIXES = {"niah": " The special magic", "vt": " Answer: According to the chain(s)",
                  "cwe": " Answer: The top 10 words", "fwe": " Answer: According to the coded text"}
RULER_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
TOKENS_TO_GENERATE = {"niah_single": 128, "niah_multikey": 128, "niah_multivalue": 128, "niah_multiquery": 128,
                      "vt": 30, "cwe": 120, "fwe": 50, "lines": 100, "topics": 50, "niah": 300}

# LongChat generate_lines_testcases (LRT-NL), then the completion prefix of its base-model branch
LONGEVAL_LINES = ("Below is a record of lines I want you to remember. Each line begins with 'line <line index>' and "
                  "contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. For each line index, "
                  "memorize its corresponding <REGISTER_CONTENT>. At the end of the record, I will ask you to retrieve "
                  "the corresponding <REGISTER_CONTENT> of a certain line index. Now the record start:\n\n{lines}\n"
                  "Now the record is over. Tell me what is the <REGISTER_CONTENT> in line {key}? I need the number."
                  "Line <{key}>: <REGISTER_CONTENT> is")
# LongChat's published topics test cases (evaluation/topics/testcases/*.jsonl), then '\n ASSISTANT: The first topic is'
LONGEVAL_TOPICS = ("Below is a record of our previous conversation on {k} different topics. You are the ASSISTANT, and I "
                   "am the USER. At the beginning of each topic, the USER will say 'I would like to discuss the topic of "
                   "<TOPIC>'. Memorize each <TOPIC>. At the end of the record, I will ask you to retrieve the first "
                   "topic. Now the record start. {conversations} Now the record ends. What is the first topic we "
                   "discussed? Only give me the topic name. Do not summarize yourself.\n ASSISTANT: The first topic is")
LONGEVAL_CONVERSATION = ("USER: I would like to discuss the topic of {topic}. \n ASSISTANT: {turns} \n USER: Great, this "
                         "is the end of our discussion on the topic {Topic}, let's talk about the next topic.")
# Kamradt: run.py's needle, providers/openai.py's system message and question
NIAH_NEEDLE = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
NIAH = ("You are a helpful AI bot that answers questions for a user. Keep your response short and direct\n{context}\n"
        "What is the best thing to do in San Francisco? Don't give information outside the document or repeat your "
        "findings\nThe best thing to do in San Francisco is")


def pattern(template: str, **groups: str) -> re.Pattern[str]:
    """A regex matching ``template`` exactly; each ``{field}`` is a named group (``groups`` gives its
    pattern, default any text), a repeated field must repeat the same text."""
    out, seen = "", set()
    for literal, field, _, _ in string.Formatter().parse(template):
        out += re.escape(literal)
        if field is not None:
            out += f"(?P={field})" if field in seen else f"(?P<{field}>{groups.get(field, '.*?')})"
            seen.add(field)
    return re.compile(out + r"\Z", re.S)


@pytest.fixture(scope="module")
def builder(smol_tokenizer):
    return PromptBuilder(smol_tokenizer, "raw", seed=0)


def _sized(builder, task, sub, length, index=0, depth=None):
    gen = RULER_SUBTASKS[sub] if sub else EVAL_TASKS[task]
    return builder.build(gen, PlannedSample("none", task, sub, length, index, depth))


# ---------------------------------------------------------------------------------------------------- RULER


def test_ruler_wording_rules():
    assert join_queries(["a", "b", "c", "d"]) == "a, b, c, and d"  # ', '.join(q[:-1]) + ', and ' + q[-1]
    assert join_queries(["a", "b"]) == "a, and b" and join_queries(["a"]) == "a"


@pytest.mark.parametrize("sub,keys,values,queried", [("niah_single", 1, 1, 1), ("niah_multikey", 4, 1, 1),
                                                     ("niah_multivalue", 1, 4, 1), ("niah_multiquery", 4, 1, 4)])
def test_ruler_niah_prompt_is_the_reference_template(builder, sub, keys, values, queried):
    sp = _sized(builder, "ruler", sub, 2048, index=1)
    one = queried * values == 1
    m = pattern(RULER_NIAH_ONE if one else RULER_NIAH).match(sp.text)
    assert m, sp.text[-300:]
    assert sp.prompt.sep == "" and sp.prompt.answer_prefix.startswith(" The special magic")
    query = m["query"].split(", and ") if queried > 1 else [m["query"]]
    if queried > 1:
        query = query[0].split(", ") + query[1:]
    assert len(query) == queried
    needles = re.findall(r"One of the special magic numbers for (\S+) is: (\d{7})\.", m["context"])
    assert len(needles) == keys * values and len({k for k, _ in needles}) == keys
    assert sorted(sp.prompt.expected) == sorted(v for q in query for k, v in needles if k == q)
    needle = r"One of the special magic numbers for \S+ is: \d{7}\."
    hay = sentences(re.sub(needle + " ?", "", m["context"]))
    whole = {" ".join(hay[:j]) for j in range(len(hay) + 1)}
    for k, v in needles:  # each needle sits between whole sentences of the haystack
        before = m["context"][:m["context"].index(f"One of the special magic numbers for {k} is: {v}.")]
        assert re.sub(needle + " ?", "", before).strip() in whole


def test_ruler_vt_prompt_has_the_one_shot_example_and_one_statement_per_line(builder):
    sp = _sized(builder, "ruler", "vt", 2048)
    example = RULER_VT.replace("{context}", "{ex_context}").replace("{query}", "{ex_query}")
    m = pattern(example + " {ex_names}\n\n" + RULER_VT, ex_names=r"[A-Z]{3}(?: [A-Z]{3}){4}", query=r"\d{5}",
                ex_query=r"\d{5}", num_v="5").match(sp.text)
    assert m, sp.text[:400]
    for context, names, value in ((m["ex_context"], m["ex_names"].split(), m["ex_query"]),
                                  (m["context"], sp.prompt.expected, m["query"])):
        lines = context.split("\n")
        statements = [x for x in lines if x != RULER_NOISE]
        assert statements == [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a} " for a, b in zip(names, names[1:])]
        assert lines[-1] == RULER_NOISE and len(lines) > 5
    assert all(re.fullmatch(r"[A-Z]{5}", x) for x in sp.prompt.expected) and len(set(sp.prompt.expected)) == 5


@pytest.mark.parametrize("length,shot_words,shot_reps,reps", [(2048, 20, (3, 1), (6, 1)), (8192, 40, (10, 3), (30, 3))])
def test_ruler_cwe_example_and_counts_follow_the_reference(smol_tokenizer, length, shot_words, shot_reps, reps):
    p = gen_cwe(random.Random(length), 60, {"length": length, "tokenizer": smol_tokenizer})
    m = pattern(RULER_CWE.replace("{context}", "{shot}") + " {answer}\n" + RULER_CWE).match(p.body + p.answer_prefix)
    assert m
    for listing, words, (common_reps, other_reps), answer in ((m["shot"], shot_words, shot_reps, m["answer"]),
                                                              (m["context"], 60, reps, None)):
        numbered = re.findall(r"(\d+)\. (\S+)", listing)
        assert [int(i) for i, _ in numbered] == list(range(1, len(numbered) + 1))
        counts = Counter(w for _, w in numbered)
        assert len(counts) == words
        common = [w for w, c in counts.items() if c == common_reps]
        assert len(common) == 10 and sorted(counts.values()) == [other_reps] * (words - 10) + [common_reps] * 10
        if answer is not None:
            assert sorted(re.findall(r"\d+\. (\S+)", answer)) == sorted(common)
        else:
            assert sorted(p.expected) == sorted(common)


def test_ruler_fwe_prompt_and_deterministic_counts(builder):
    length = 2048
    sp = _sized(builder, "ruler", "fwe", length)
    m = pattern(RULER_FWE).match(sp.text)
    assert m
    counts = Counter(m["context"].split(" "))
    n, zeta2 = sp.units, math.pi ** 2 / 6  # RULER's num_words and scipy's zeta(2)
    reference = [int(n * k ** -2.0 / zeta2) for k in range(1, (length - 50) // 50 + 1)]
    assert sorted(counts.values(), reverse=True) == [c for c in reference if c]
    assert counts.most_common(1)[0][0] == "..."
    assert sorted(sp.prompt.expected) == sorted(w for w, _ in counts.most_common(4)[1:])


def test_ruler_fwe_top_three_never_tie():
    for seed in range(300):
        rng = random.Random(seed)
        length = rng.choice([1024, 2048, 4096, 8192, 32768, 131072])
        p = gen_fwe(rng, rng.randint(1, 6000), {"length": length})
        counts = Counter(p.body.split("coded words. ")[1].split("\nQuestion")[0].split(" "))
        ranked = [c for _, c in counts.most_common()]
        assert counts["..."] == ranked[0] > ranked[1]
        assert "..." not in p.expected and len(set(p.expected)) == 3
        assert sorted(counts[w] for w in p.expected) == sorted(ranked[1:4]) and ranked[3] > ranked[4]


def _qa_files(tmp_path):
    sents = [f"Sentence {i} tells about item {i}." for i in range(400)]
    squad = {"data": [{"title": f"T{a}", "paragraphs": [
        {"context": " ".join(sents[a * 40 + p * 8:a * 40 + p * 8 + 8]),
         "qas": [{"question": f"What is item {a * 40 + p * 8}?", "answers": [{"text": f"item {a * 40 + p * 8}"}],
                  "is_impossible": False},
                 {"question": "Unanswerable?", "answers": [], "is_impossible": True}]} for p in range(5)]}
        for a in range(10)]}
    hotpot = [{"question": f"Which two items {i}?", "answer": f"item {i}",
               "context": [[f"Title {i}", sents[i:i + 4]], [f"Title {i + 1}", sents[i + 4:i + 8]]]} for i in range(60)]
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    (tmp_path / "hotpot.json").write_text("\n  " + json.dumps(hotpot))
    return tmp_path / "squad.json", tmp_path / "hotpot.json"


def test_ruler_qa_runs_on_the_given_files_in_rulers_format(tmp_path, smol_tokenizer):
    squad, hotpot = _qa_files(tmp_path)
    settings = SimpleNamespace(samples=2, seed=0, depths=None, ppl_text=None, ruler_qa=[str(hotpot), str(squad)])
    planned = RULER.plan(settings, "none", 1024)
    assert [s.subtask for s in planned][-4:] == ["qa_1", "qa_1", "qa_2", "qa_2"]
    ctx = RunContext(settings, smol_tokenizer, "raw")
    for sample in planned[-4:]:
        task = RULER_QA_SUBTASKS[sample.subtask]
        task.prepare(ctx, sample)
        sp = prompt_builder(ctx).build(task, sample, task.data(ctx))
        m = pattern(RULER_QA).match(sp.text)
        assert m and sp.tokens + 32 <= 1024 and task.max_new_tokens == 32
        docs = re.findall(r"Document (\d+):\n", m["context"])
        assert [int(d) for d in docs] == list(range(1, len(docs) + 1)) and len(docs) == sp.prompt.meta["documents"]
        if sample.subtask == "qa_1":  # the index-th answerable question (the unanswerable ones skipped)
            item = 8 * sample.index
            assert m["query"] == f"What is item {item}?" and sp.prompt.expected == [f"item {item}"]
            assert " ".join(f"Sentence {i} tells about item {i}." for i in range(item, item + 8)) in m["context"]
        else:  # HotpotQA documents are 'title\nsentences'
            i = sample.index
            assert f"Title {i}\n" + "".join(f"Sentence {j} tells about item {j}." for j in range(i, i + 4)) in m["context"]
        assert task.score(f" {sp.prompt.expected[0].upper()} indeed", sp.prompt.expected) == 1.0


def test_ruler_qa_files_errors_are_one_line(tmp_path):
    squad, _ = _qa_files(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("hello")

    def plan(files):
        return RULER.plan(SimpleNamespace(samples=1, ruler_qa=files), "none", 4096)

    assert {s.subtask for s in plan(None)} == set(RULER_SUBTASKS)
    with pytest.raises(UserError, match=r"missing\.json does not exist.*dev-v2\.0\.json.*hotpot_dev_distractor"):
        plan([str(tmp_path / "missing.json")])
    with pytest.raises(UserError, match="neither SQuAD 2.0 JSON"):
        plan([str(bad)])
    with pytest.raises(UserError, match="two SQuAD 2.0 dev files"):
        plan([str(squad), str(squad)])
    (tmp_path / "broken.json").write_text('{"data": [{"no paragraphs": 1}]}')
    from longseq.eval.tasks.ruler_qa import load_qa
    with pytest.raises(UserError, match="not a valid SQuAD 2.0 dev file") as err:
        load_qa("qa_1", str(tmp_path / "broken.json"))
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------- LongEval


def test_lines_prompt_is_longchats(builder):
    sp = _sized(builder, "lines", "", 2048, index=2)
    m = pattern(LONGEVAL_LINES, lines=r"(?:line [a-z]+-[a-z]+: REGISTER_CONTENT is <\d+>\n)+",
                key=r"[a-z]+-[a-z]+").match(sp.text)
    assert m
    record = dict(re.findall(r"line (\S+): REGISTER_CONTENT is <(\d+)>", m["lines"]))
    assert len(record) == m["lines"].count("\n") == sp.prompt.meta["num_lines"]
    assert sp.prompt.expected == int(record[m["key"]]) and all(1 <= int(v) <= 50000 for v in record.values())
    task = EVAL_TASKS["lines"]
    assert (task.max_new_tokens, task.stop) == (100, ())


def test_topics_prompt_is_longchats_released_prompt_with_whole_conversations(builder):
    sp = _sized(builder, "topics", "", 4096, index=1)
    m = pattern(LONGEVAL_TOPICS, k=r"\d+").match(sp.text)
    assert m
    starts = [x.start() for x in re.finditer("USER: I would like to discuss the topic of ", m["conversations"])]
    assert starts[0] == 0 and len(starts) == int(m["k"]) >= 2
    convs = [m["conversations"][a:b] for a, b in zip(starts, starts[1:] + [None])]
    bank = {e["topic"] for e in topic_bank()}
    for conv in convs:  # every conversation is whole: opening, turns, the closing sentence of the same topic
        c = pattern(LONGEVAL_CONVERSATION).match(conv)
        assert c and c["Topic"] == c["topic"][0].upper() + c["topic"][1:] and c["topic"] in bank
    first = pattern(LONGEVAL_CONVERSATION).match(convs[0])["topic"]
    assert sp.prompt.expected == first and all(first not in c for c in convs[1:])
    task = EVAL_TASKS["topics"]
    assert (task.max_new_tokens, task.stop) == (50, ())


# ---------------------------------------------------------------------------------------------------- NIAH


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_niah_needle_wrapped_in_newlines_at_a_token_depth(builder, smol_tokenizer, depth):
    length = 2048
    sp = _sized(builder, "niah", "", length, index=int(depth * 100), depth=depth)  # the cache keys on the index
    m = pattern(NIAH).match(sp.text)
    assert m
    context = m["context"]
    assert context.count(NIAH_NEEDLE) == 1
    before, after = context.split(NIAH_NEEDLE)
    tokens = lambda s: len(smol_tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    hay = tokens(before) + tokens(after)
    assert abs(hay + tokens(NIAH_NEEDLE) - (length - 200)) <= 2  # Kamradt's 200-token buffer
    if depth == 1.0:
        assert after == ""
    else:  # int(hay * depth) tokens, moved back to the previous period token
        assert before == "" or before.endswith(".")
        assert 0 <= depth * hay - tokens(before) < 80
    assert EVAL_TASKS["niah"].max_new_tokens == 300


# ------------------------------------------------------------------------------ what the openai backend sends


PREFIX_START = {"niah_single": " The special magic", "niah_multikey": " The special magic",
                "niah_multivalue": " The special magic", "niah_multiquery": " The special magic", "vt": " Answer: ",
                "cwe": " Answer: ", "fwe": " Answer: ", "lines": "Line <", "topics": "\n ASSISTANT:",
                "niah": "\nThe best thing to do in San Francisco is"}


def template_of(sub: str, text: str) -> str:
    """The reference template (answer prefix included) of ``sub``; vt and cwe with their one-shot example
    when the prompt has one."""
    if sub == "vt" and text.count("Memorize and track") == 2:
        return RULER_VT.replace("{context}", "{ex_context}").replace("{query}", "{ex_query}") + " {ex_names}\n\n" + RULER_VT
    if sub == "cwe" and text.count("Below is a numbered") == 2:
        return RULER_CWE.replace("{context}", "{shot}") + " {answer}\n" + RULER_CWE
    return {"niah_single": RULER_NIAH_ONE, "niah_multikey": RULER_NIAH_ONE, "niah_multivalue": RULER_NIAH,
            "niah_multiquery": RULER_NIAH, "vt": RULER_VT, "cwe": RULER_CWE, "fwe": RULER_FWE, "lines": LONGEVAL_LINES,
            "topics": LONGEVAL_TOPICS, "niah": NIAH}[sub]


def test_what_the_openai_backend_sends_is_the_reference_prompt(chat_server, tiny_llama, tmp_path, monkeypatch):
    """Chat format through a real OpenAI-compatible server: one user message holding the reference prompt
    without its answer prefix; raw format (captured request): the reference prompt with it."""
    def answer(messages, max_tokens, stop):  # a perfect reader for the lines task, blank otherwise
        m = re.search(r"in line (\S+)\? I need", messages[-1]["content"])
        return re.search(rf"line {re.escape(m[1])}: REGISTER_CONTENT is <(\d+)>", messages[-1]["content"])[1] if m else ""

    server = chat_server(answer, model="tiny")
    common = dict(model=str(tiny_llama), tasks=["ruler", "lines", "topics", "niah"], cells=[("none", 1024)], samples=1,
                  backend="openai", api_model="tiny", seed=2)
    with server as url:
        run_eval(EvalConfig(out=str(tmp_path / "chat"), base_url=url, prompt_format="chat", **common),
                 progress=False, quiet=True)
        sent = []

        def complete(self, prompt, max_tokens, stop=()):
            sent.append((prompt, max_tokens, tuple(stop)))
            return Generation("", 0, "stop", 0.0)

        monkeypatch.setattr(OpenAIEngine, "complete", complete)
        run_eval(EvalConfig(out=str(tmp_path / "raw"), base_url=url, prompt_format="raw", **common),
                 progress=False, quiet=True)
    records = [json.loads(x) for x in (tmp_path / "chat" / "samples.jsonl").read_text().splitlines()]
    subs = [r["subtask"] or r["task"] for r in records]
    assert len(server.requests) == len(sent) == len(subs) == len(RULER_SUBTASKS) + 3
    assert next(r["score"] for r in records if r["task"] == "lines") == 1.0  # the answer is read and scored
    for req, (prompt, max_tokens, stop), sub in zip(server.requests, sent, subs):
        assert len(req["messages"]) == 1 and req["messages"][0]["role"] == "user"
        body = req["messages"][0]["content"]
        assert not req.get("stop") and req["max_tokens"] == max_tokens == TOKENS_TO_GENERATE[sub] and stop == ()
        template = template_of(sub, prompt)
        assert pattern(template).match(prompt), (sub, prompt[-200:])
        chat_template = template[:template.rindex(PREFIX_START[sub])]  # the server's template replaces the prefix
        assert pattern(chat_template).match(body), (sub, body[-200:])

