"""``--tasks jsonl:PATH``: a user's own records end to end (bucketing, truncation, metrics, resume, errors)."""

from __future__ import annotations

import json
import math

import pytest

from longseq.cli import main
from longseq.core.errors import UserError
from longseq.eval.engine import HFEngine
from longseq.eval.plan import EvalConfig, plan
from longseq.eval.run import run_eval
from longseq.eval.summary import wilson_interval
from longseq.eval.tasks import EVAL_TASKS, RunContext
from longseq.eval.tasks.jsonl import exact_score, f1_score, normalize_answer, read_records, rouge_l_score, score_answers

WORDS = "river stone lamp garden window paper music orange silver cloud".split()


def _context(n_words: int, fact: str = "") -> str:
    words = [WORDS[(i * 7) % len(WORDS)] for i in range(n_words)]
    return " ".join(words[: n_words // 2]) + (f" {fact} " if fact else " ") + " ".join(words[n_words // 2:])


def _records(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_metrics_against_hand_computed_values():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_score("the Paris.", "paris") == 1.0 and exact_score("in Paris", "Paris") == 0.0
    assert math.isclose(f1_score("the cat sat on the mat", "a cat on a mat"), 6 / 7)  # P 3/4, R 1
    assert f1_score("dog", "cat") == 0.0
    assert math.isclose(rouge_l_score("the cat sat", "the cat sat on the mat"), 2 * 1 * 0.5 / 1.5)  # LCS 3
    assert score_answers("It is in Paris, France", ["London", "paris"], "substring") == 1.0
    assert score_answers("blue", ["red", "blue"], "exact") == 1.0  # best over the answers


def test_malformed_records_name_file_and_line(tmp_path):
    good = {"context": "c", "question": "q", "answers": ["a"]}
    cases = [("{not json", "not valid JSON"), ('["a list"]', "expected a JSON object"),
             ({"question": "q", "answers": ["a"]}, "'context' must be a non-empty string"),
             ({**good, "answers": "a"}, "'answers' must be a non-empty list"),
             ({**good, "answers": []}, "'answers' must be a non-empty list"),
             ({**good, "metric": "bleu"}, "unknown metric 'bleu'"),
             ({**good, "max_new_tokens": 0}, "'max_new_tokens' must be a whole number")]
    for bad, message in cases:
        path = _records(tmp_path / "r.jsonl", [good, "", bad])
        with pytest.raises(UserError) as err:
            read_records(str(path))
        assert str(err.value).startswith(f"{path}:3: ") and message in str(err.value)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no such file"):
        read_records(str(tmp_path / "missing.jsonl"))


def test_cli_malformed_line_is_one_line_error_before_anything_is_written(tiny_llama, tmp_path, capsys):
    path = _records(tmp_path / "docs.jsonl", [{"context": "x y", "question": "q?", "answers": ["y"]},
                                             '{"context": "x", "question": "q", "answers": ["a"],}'])
    out = tmp_path / "run"
    code = main(["eval", str(tiny_llama), "--tasks", f"jsonl:{path}", "--lengths", "256", "--out", str(out),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("longseq: error: ") and f"{path}:2: not valid JSON" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_records_bucketed_by_length_scored_resumed_and_reported(tiny_llama, tmp_path, monkeypatch, smol_tokenizer):
    # raw prompt sizes with the SmolLM2 tokenizer: ~70, ~180, ~330, ~900 tokens -> buckets 256, 256, 512, too long
    recs = [{"id": "short", "context": _context(40, "The code is 4417."), "question": "What is the code?",
             "answers": ["4417"]},
            {"context": _context(150, "Anna lives in Oslo."), "question": "Where does Anna live?",
             "answers": ["Oslo", "in Oslo"], "metric": "exact", "max_new_tokens": 8},
            {"context": _context(300), "question": "Which words repeat?", "answers": ["river stone"], "metric": "f1"},
            {"context": _context(900), "question": "Name one word.", "answers": ["lamp"], "metric": "rouge-l"}]
    path = _records(tmp_path / "my-docs.jsonl", [recs[0], "", recs[1], recs[2], recs[3]])
    name = f"jsonl:{path}"
    cfg = EvalConfig(model=str(tiny_llama), out=str(tmp_path / "run"), tasks=["passkey", name],
                     cells=[("none", 256), ("none", 512)], samples=5, seed=0, dtype="float32")
    items = [s for s in plan(cfg) if s.task == name]
    assert [(s.length, s.index) for s in items] == [(256, 1), (256, 3), (512, 4)]  # line numbers; line 5 too long
    summary = run_eval(cfg, progress=False, quiet=True)
    out = tmp_path / "run"
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines() if name in x]
    assert [(r["length"], r["index"], r["id"], r["metric"]) for r in rows] == [
        (256, 1, "short", "substring"), (256, 3, "3", "exact"), (512, 4, "4", "f1")]
    for r in rows:
        assert r["prompt_tokens"] <= r["length"] and (r["length"] == 256 or r["prompt_tokens"] > 256)
        assert r["score"] == score_answers(r["output"], r["expected"], r["metric"])
    cells = {r["length"]: r for r in summary["results"] if r["task"] == name}
    assert cells[256]["n"] == 2 and cells[512]["n"] == 1
    assert (cells[256]["ci_low"], cells[256]["ci_high"]) == pytest.approx(
        wilson_interval(cells[256]["score"] * 2, 2))
    assert name in summary["effective_length_by_task"]["none"]
    report = (out / "report.md").read_text()
    assert "| my-docs |" in report and "1 records are longer than the largest length" in report

    def no_load(*a, **k):
        raise AssertionError("model loaded although every sample is done")

    monkeypatch.setattr(HFEngine, "load", classmethod(no_load))
    before = (out / "samples.jsonl").read_bytes()
    assert run_eval(cfg, progress=False, quiet=True)["results"] == summary["results"]
    assert (out / "samples.jsonl").read_bytes() == before


def test_truncate_middle_keeps_both_ends_and_fits_every_length(tiny_llama, tmp_path, smol_tokenizer):
    head, tail = "HEADWORD opens the file.", "TAILWORD closes it."
    path = _records(tmp_path / "long.jsonl", [
        {"context": f"{head} {_context(700)} {tail}", "question": "What opens the file?", "answers": ["HEADWORD"]},
        {"context": _context(20), "question": "Short?", "answers": ["yes"]}])
    name = f"jsonl:{path}"
    cfg = EvalConfig(model=str(tiny_llama), out=str(tmp_path / "t"), tasks=[name], cells=[("none", 256), ("none", 512)],
                     samples=5, truncate="middle")
    items = plan(cfg)
    assert [(s.length, s.index) for s in items] == [(256, 1), (256, 2), (512, 1), (512, 2)]
    ctx = RunContext(cfg, smol_tokenizer, "raw")
    task = EVAL_TASKS[name]
    for s in items:
        rec, body, text, tokens = task.prompt(ctx, s)
        assert tokens <= s.length and text.endswith("Question: " + rec.question + "\nAnswer:")
        if s.index == 1:
            assert tokens >= s.length - 8 and head in body and tail in body and len(body) < len(rec.context)
        else:
            assert rec.context in body
    with pytest.raises(UserError, match="--truncate mode"):
        plan(EvalConfig(model=str(tiny_llama), out="x", tasks=[name], cells=[("none", 256)], truncate="left"))
