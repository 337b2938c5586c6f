"""Summary intervals and per-task effective lengths: Wilson against scipy and known values, the bootstrap,
the headline and the uncertain-cell notes, and an end-to-end run writing them."""

from __future__ import annotations

import json
import math

import pytest

from longseq.eval.plan import EvalConfig
from longseq.eval.report import effective_label, format_table, headline, report_markdown, straddling
from longseq.eval.run import run_eval
from longseq.eval.summary import bootstrap_perplexity, effective_length, effective_length_by_task, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 1), (1, 2), (2, 2), (0, 5), (3, 5), (5, 5), (7, 20), (50, 100), (1, 1000)])
def test_wilson_matches_scipy(k, n):
    from scipy.stats import binomtest

    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(k, n)
    assert math.isclose(low, ref.low, abs_tol=1e-12) and math.isclose(high, ref.high, abs_tol=1e-12)


def test_wilson_known_values_and_edges():
    # Brown, Cai & DasGupta (2001) style textbook values: 5/10 -> (0.2366, 0.7634), 0/10 -> (0, 0.2775)
    assert [round(x, 4) for x in wilson_interval(5, 10)] == [0.2366, 0.7634]
    assert [round(x, 4) for x in wilson_interval(0, 10)] == [0.0, 0.2775]
    low, high = wilson_interval(2, 2)  # 2/2 correct still leaves the RULER threshold inside the interval
    assert round(low, 4) == 0.3424 and high == 1.0
    # closed form for x = n: lower bound n / (n + z^2)
    z = 1.959963984540054
    assert math.isclose(wilson_interval(8, 8)[0], 8 / (8 + z * z))
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_bootstrap_perplexity_is_reproducible_and_brackets_the_pooled_value():
    recs = [{"nll": nll, "scored_tokens": 100} for nll in (200.0, 260.0, 230.0, 310.0)]
    low, high = bootstrap_perplexity(recs)
    pooled = math.exp(sum(r["nll"] for r in recs) / 400)
    assert low < pooled < high
    assert math.exp(2.0) <= low and high <= math.exp(3.1)
    assert bootstrap_perplexity(recs) == (low, high)
    one = bootstrap_perplexity(recs[:1])
    assert one[0] == one[1] == pytest.approx(math.exp(2.0))


def _row(task, method, length, score, n=4):
    low, high = wilson_interval(score * n, n)
    return {"task": task, "method": method, "length": length, "score": score, "n": n, "ci_low": low, "ci_high": high}


def _summary():
    results = [_row("passkey", "none", L, s) for L, s in [(1024, 1.0), (2048, 1.0), (4096, 0.75), (8192, 0.0)]]
    results += [_row("lines", "none", L, 0.0) for L in (1024, 2048)]
    results += [_row("passkey", "yarn", 8192, 1.0), _row("passkey", "yarn", 16384, 1.0)]
    tasks = ["passkey", "lines"]
    return {"model": "m", "threshold": 0.856, "results": results, "tasks": tasks, "prompt_format": "raw",
            "backend": "hf", "seed": 0, "samples": 4, "complete": True,
            "effective_length": effective_length(results, tasks, 0.856),
            "effective_length_by_task": effective_length_by_task(results, tasks, 0.856)}


def test_effective_length_by_task_headline_and_uncertain_cells():
    s = _summary()
    assert s["effective_length_by_task"] == {"none": {"passkey": 2048, "lines": 0}, "yarn": {"passkey": 16384}}
    assert s["effective_length"] == {"none": 0, "yarn": 16384}  # none's mean fails at 1k; yarn ran passkey only
    assert headline(s) == "passkey: none 2k, yarn >= 16k; lines: none < 1k"
    assert effective_label(8192, [1024, 8192]) == ">= 8k" and effective_label(0, [2048]) == "< 2k"
    # 4/4 -> [0.51, 1] and 3/4 -> [0.30, 0.95] contain 0.856; 0/4 -> [0, 0.49] does not
    uncertain = {(r["task"], r["method"], r["length"]) for r in straddling(s)}
    assert ("passkey", "none", 4096) in uncertain and ("passkey", "none", 1024) in uncertain
    assert ("passkey", "none", 8192) not in uncertain and not any(t == "lines" for t, _, _ in uncertain)
    md = report_markdown(s, [])
    assert "**Effective length per task** (threshold 0.856): passkey: none 2k, yarn >= 16k; lines: none < 1k." in md
    assert "| passkey | 1.00 [0.51, 1.00] | 1.00 [0.51, 1.00] | 0.75 [0.30, 0.95] | 0.00 [0.00, 0.49] | 2k |" in md
    assert "## Uncertain cells" in md and "passkey none 4k (0.75 [0.30, 0.95], n=4)" in md
    text = format_table(s)
    assert "effective length per task (threshold 0.856): passkey: none 2k, yarn >= 16k; lines: none < 1k" in text
    assert "0.75 [0.30, 0.95]" in text


def test_summary_json_has_intervals_on_every_row_and_per_task_lengths(tiny_llama, tmp_path):
    cfg = EvalConfig(model=str(tiny_llama), out=str(tmp_path / "run"), tasks=["passkey", "niah", "ppl"],
                     cells=[("none", 256), ("none", 512)], samples=2, seed=3, chunk_size=256)
    summary = run_eval(cfg, progress=False, quiet=True)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert len(saved["results"]) == 6
    for r in saved["results"]:
        shown = r["perplexity"] if r["task"] == "ppl" else r["score"]
        assert r["ci_low"] <= shown <= r["ci_high"]
        if r["task"] != "ppl":
            assert (r["ci_low"], r["ci_high"]) == pytest.approx(wilson_interval(r["score"] * r["n"], r["n"]))
        else:
            assert r["ci_low"] < r["ci_high"]  # two windows of different text
    by_task = saved["effective_length_by_task"]
    assert set(by_task) == {"none"} and set(by_task["none"]) == {"passkey", "niah"}  # ppl never counts
    for task, eff in by_task["none"].items():
        assert eff == effective_length([r for r in saved["results"] if r["task"] == task], [task], 0.856)["none"]
    assert isinstance(saved["effective_length"]["none"], int)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "**Effective length per task**" in report and "| effective |" in report
    assert (tmp_path / "run" / "score_vs_length.png").stat().st_size > 500
