"""Automatic prefix caching in LocalLM: same greedy outputs and eval scores as the uncached path, less prefill."""

from __future__ import annotations

import json

import pytest

from longseq.eval.engine import HFEngine
from longseq.eval.plan import EvalConfig
from longseq.eval.run import run_eval
from longseq.models.generation import LocalLM, common_prefix_length


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([7, 8], [7, 8]) == 2
    assert common_prefix_length([9], [1, 9]) == 0


@pytest.fixture(scope="module")
def engines(tiny_llama):
    plain = LocalLM.load(str(tiny_llama), dtype="float32", chunk_size=96)
    assert not plain.prefix_cache  # opt-in
    cached = LocalLM(plain.model, plain.tokenizer, chunk_size=96, prefix_cache=True)
    return cached, plain


def test_cached_generation_equals_uncached_and_reuses_the_shared_prefix(engines):
    import random

    cached, plain = engines
    rng = random.Random(0)
    base = [rng.randrange(100, 40000) for _ in range(300)]
    prompts = [base[:250] + [11, 12, 13], base[:250] + [14], base[:120] + [15] * 50, base[:120] + [15] * 50,
               [16] + base[:200], base]
    reused = []
    for ids in prompts:
        before = cached.reused_tokens
        a = cached.generate_ids(ids, 12, stop=())
        b = plain.generate_ids(ids, 12, stop=())
        assert (a.text, a.new_tokens, a.finish_reason) == (b.text, b.new_tokens, b.finish_reason)
        reused.append(cached.reused_tokens - before)
    # second prompt shares 250 tokens; the repeated prompt all but its last token; a new first token nothing
    assert reused == [0, 250, 120, 169, 0, 0]
    assert plain.reused_tokens == 0 and plain.prefilled_tokens == sum(len(p) for p in prompts)
    assert cached.prefilled_tokens + cached.reused_tokens == plain.prefilled_tokens
    cached.nll(base[:50])
    assert cached._kept is None  # perplexity never holds a second cache


def test_eval_scores_identical_with_and_without_prefix_cache(tiny_llama, tmp_path, monkeypatch):
    def cfg(out):
        return EvalConfig(model=str(tiny_llama), out=str(tmp_path / out), tasks=["passkey", "niah"],
                          cells=[("none", 384)], samples=3, seed=2, dtype="float32", chunk_size=128)

    engines = []
    monkeypatch.setattr(HFEngine, "__init__", _init(True, engines))
    with_cache = run_eval(cfg("cached"), progress=False, quiet=True)
    monkeypatch.setattr(HFEngine, "__init__", _init(False, engines))
    without = run_eval(cfg("plain"), progress=False, quiet=True)
    assert engines[0].reused_tokens > 0 and engines[1].reused_tokens == 0
    rows = [json.loads(x) for x in (tmp_path / "cached" / "samples.jsonl").read_text().splitlines()]
    plain_rows = [json.loads(x) for x in (tmp_path / "plain" / "samples.jsonl").read_text().splitlines()]
    assert [r["output"] for r in rows] == [r["output"] for r in plain_rows]
    assert [r["score"] for r in rows] == [r["score"] for r in plain_rows]
    assert with_cache["results"] == without["results"]


def _init(prefix_cache, seen):
    real = LocalLM.__init__

    def init(self, model, tokenizer, chunk_size=16384, prefix_cache_arg=True):
        real(self, model, tokenizer, chunk_size, prefix_cache=prefix_cache)
        seen.append(self)

    return init
