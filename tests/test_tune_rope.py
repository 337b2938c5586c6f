"""longseq tune-rope: seed curves, LongRoPE operators, resumable deterministic search, the written checkpoint,
bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from longseq.cli import main
from longseq.core.fsutil import read_jsonl
from longseq.tune.factors import (SEED_METHODS, Candidate, apply_candidate, bounds, is_monotone, longrope_config,
                                  seed_candidate)
from longseq.tune.run import TuneConfig, tune_rope
from longseq.tune.scoring import Scorer, WindowScore
from longseq.tune.search import Search, SearchSettings

TARGET = 512  # 2x the 256-token native context of the word-tokenizer tiny Llama


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    import random

    rng = random.Random(0)
    path = tmp_path / "calib.txt"
    path.write_text(" ".join(f"w{rng.randrange(125)}" for _ in range(2000)))
    return path


def _rotary(config: Any, positions: int) -> tuple[Any, Any]:
    """cos, sin of transformers' Llama rotary module for ``config`` at positions 0..positions-1."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rot = LlamaRotaryEmbedding(config)
    x = torch.zeros(1, positions, config.hidden_size)
    return rot(x, torch.arange(positions)[None])


@pytest.mark.parametrize("method", SEED_METHODS)
def test_longrope_with_seed_factors_reproduces_the_seed_method(tiny_llama_config: Any, method: str) -> None:
    import torch

    from longseq.models.rope import extend_config

    config = tiny_llama_config()
    cand = seed_candidate(config, method, TARGET)
    assert is_monotone(cand.factors) and len(cand.factors) == 8
    assert min(cand.factors) >= 1 - 1e-6 and max(cand.factors) <= bounds(256, TARGET)[1]
    cos_ref, sin_ref = _rotary(extend_config(config, method, target_length=TARGET), TARGET)
    cos, sin = _rotary(longrope_config(config, cand, TARGET), TARGET)  # > native: longrope's long factors
    torch.testing.assert_close(cos, cos_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sin, sin_ref, rtol=1e-5, atol=1e-5)


def test_longrope_uses_one_table_at_every_length(tiny_llama_config: Any) -> None:
    """Below the native length the written checkpoint rotates exactly as beyond it: a generation that crosses
    the native length never mixes two tables in its KV cache."""
    import torch

    config = tiny_llama_config()
    cand = seed_candidate(config, "yarn", TARGET)
    extended = longrope_config(config, cand, TARGET)
    short, _ = _rotary(extended, 200)  # transformers picks the short table here
    long, _ = _rotary(extended, TARGET)  # and the long one here
    torch.testing.assert_close(short, long[:, :200])
    plain, _ = _rotary(config, 200)
    assert not torch.allclose(short, plain)  # the found factors apply, not plain RoPE


def _search(tmp_path: Path, score: Any, budget: int, seed: int = 0, name: str = "s.jsonl") -> Search:
    seeds = {"flat": Candidate((2.0,) * 8, 1.0), "ramp": Candidate(tuple(1 + i / 7 for i in range(8)), 1.0)}
    return Search(score, 1, seeds, 2.5, (1.0, 1.14), SearchSettings(initial=8, parents=4, mutations=3, crossovers=3),
                  budget, seed, tmp_path / name)


def _toy_score(cand: Candidate, window: int) -> WindowScore:
    """A known landscape: squared distance to the curve 1, 1.1, ..., 1.7 (plus a per-window offset)."""
    dist = sum((f - (1 + 0.1 * i)) ** 2 for i, f in enumerate(cand.factors)) + (cand.attention - 1.05) ** 2
    return WindowScore(nll=(dist + 0.01 * window) * 100, tokens=100)


def test_search_improves_on_its_best_seed_and_keeps_the_constraints(tmp_path: Path) -> None:
    res = _search(tmp_path, _toy_score, budget=120).run()
    best_seed = min(s.loss() for s in res.seeds.values())
    assert res.best.loss() < best_seed
    curve = res.best_per_generation  # the population's best after the seeds, then after each generation
    assert curve[0] == best_seed and all(b <= a for a, b in zip(curve, curve[1:])) and res.generations >= 3
    assert res.passes <= 120
    for rec in read_jsonl(tmp_path / "s.jsonl"):
        assert is_monotone(rec["long_factor"]) and 1.0 <= min(rec["long_factor"]) and max(rec["long_factor"]) <= 2.5
        assert 1.0 <= rec["attention_factor"] <= 1.14 + 1e-9
    keys = [(r["candidate"], r["window"]) for r in read_jsonl(tmp_path / "s.jsonl")]
    assert len(keys) == len(set(keys))


def test_search_is_deterministic_given_the_seed_and_resumes_after_a_kill(tmp_path: Path) -> None:
    calls = {"n": 0}

    def killed_after_20(cand: Candidate, window: int) -> WindowScore:
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        return _toy_score(cand, window)

    with pytest.raises(KeyboardInterrupt):
        _search(tmp_path, killed_after_20, budget=80, name="a.jsonl").run()
    assert len(read_jsonl(tmp_path / "a.jsonl")) == 20
    calls["n"] = -1000
    resumed = _search(tmp_path, killed_after_20, budget=80, name="a.jsonl").run()
    fresh = _search(tmp_path, _toy_score, budget=80, name="b.jsonl").run()
    a, b = read_jsonl(tmp_path / "a.jsonl"), read_jsonl(tmp_path / "b.jsonl")
    assert calls["n"] == -1000 + len(a) - 20  # the resumed run computed only what the killed one had not
    assert [(r["candidate"], r["window"]) for r in a] == [(r["candidate"], r["window"]) for r in b]
    assert resumed.best.cand == fresh.best.cand and resumed.best.loss() == fresh.best.loss()
    other = _search(tmp_path, _toy_score, budget=80, seed=1, name="c.jsonl").run()
    assert [r["candidate"] for r in read_jsonl(tmp_path / "c.jsonl")] != [r["candidate"] for r in b]
    assert other.passes == fresh.passes == 80


def test_tune_rope_resumes_after_a_kill_and_writes_a_plain_longrope_checkpoint(
        tmp_path: Path, tiny_llama_dir: Path, calib: Path, monkeypatch: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from longseq.models.loading import load_model

    out = tmp_path / "run"
    real, calls = Scorer.score, {"n": 0}

    def killed_after_11(self: Scorer, cand: Candidate, window: int) -> WindowScore:
        calls["n"] += 1
        if calls["n"] > 11:
            raise KeyboardInterrupt
        return real(self, cand, window)

    monkeypatch.setattr(Scorer, "score", killed_after_11)
    args = ["tune-rope", str(tiny_llama_dir), "--target-length", str(TARGET), "--out", str(out), "--budget", "24",
            "--calib", str(calib), "--windows", "2", "--dtype", "float32", "--report-samples", "0", "--quiet"]
    assert main(args) == 130 and len(read_jsonl(out / "search.jsonl")) == 11 and not (out / "model").exists()
    monkeypatch.setattr(Scorer, "score", real)
    cfg = TuneConfig(model=str(tiny_llama_dir), target_length=TARGET, out=str(out), budget=24, calib=str(calib),
                     windows=2, dtype="float32", report_samples=0)
    result = tune_rope(cfg, progress=False)
    keys = [(r["candidate"], r["window"]) for r in read_jsonl(out / "search.jsonl")]
    assert len(keys) == len(set(keys)) == result["passes"] == 24
    assert result["passes"] <= 24 and result["best"]["loss"] <= min(s["loss"] for s in result["seeds"].values())
    saved = json.loads((out / "model" / "config.json").read_text())
    rope = saved["rope_parameters"]
    assert rope["rope_type"] == "longrope" and rope["original_max_position_embeddings"] == 256
    assert rope["short_factor"] == rope["long_factor"] == result["best"]["long_factor"]
    assert saved["max_position_embeddings"] == TARGET
    plain = AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32).eval()
    model, _ = load_model(str(tiny_llama_dir), dtype="float32")
    apply_candidate(model, model.config.__class__.from_dict(model.config.to_dict()),
                    Candidate.from_json(result["best"]), TARGET)
    ids = torch.randint(3, 128, (1, 400), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model(ids).logits)
    assert (out / "report.md").is_file() and (out / "factors.png").is_file()
    # the search log: one record per (candidate, window), the seeds first and fully scored
    recs = read_jsonl(out / "search.jsonl")
    assert {r["origin"] for r in recs[:8]} == {f"seed:{m}" for m in SEED_METHODS}


def test_scorer_matches_the_eval_perplexity(tiny_llama_dir: Path, calib: Path) -> None:
    """Window j's NLL equals LocalLM.nll on the same window under the same longrope checkpoint config."""
    import copy

    from longseq.eval.tasks.ppl import ppl_window
    from longseq.models.generation import LocalLM
    from longseq.models.loading import load_model

    model, tok = load_model(str(tiny_llama_dir), dtype="float32")
    base = copy.deepcopy(model.config)
    tokens = tok(calib.read_text())["input_ids"]
    scorer = Scorer(model, tok, base, tokens, TARGET, 2, "ppl", 0)
    cand = seed_candidate(base, "yarn", TARGET)
    got = scorer.score(cand, 1)
    other, _ = load_model(str(tiny_llama_dir), dtype="float32", config=longrope_config(base, cand, TARGET))
    nll, count = LocalLM(other, tok).nll(ppl_window(tokens, TARGET, 1, 2))
    assert count == got.tokens == TARGET - 1 and math.isclose(nll, got.nll, rel_tol=1e-5)


def _gpt2_dir(tmp_path: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=128, n_positions=256, bos_token_id=1,
                                    eos_token_id=2)).save_pretrained(path)
    return path


@pytest.mark.parametrize("case, message", [
    ("below", "is not above the native context 256"),
    ("budget0", "--budget must be >= 1"),
    ("budget_small", "below the 16 forward passes"),
    ("norope", "has no RoPE"),
    ("calib", "cannot be read"),
    ("short_calib", "fewer than the target"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, tiny_llama_dir: Path, calib: Path,
                                                         capsys: Any, case: str, message: str) -> None:
    out = tmp_path / "out"
    model, args = str(tiny_llama_dir), ["--target-length", "512", "--budget", "50", "--calib", str(calib)]
    if case == "below":
        args[1] = "256"
    elif case == "budget0":
        args[3] = "0"
    elif case == "budget_small":
        args[3] = "15"
    elif case == "norope":
        model = str(_gpt2_dir(tmp_path))
    elif case == "calib":
        args[5] = str(tmp_path / "missing.txt")
    elif case == "short_calib":
        (tmp_path / "short.txt").write_text("w1 w2 w3")
        args[5] = str(tmp_path / "short.txt")
    assert main(["tune-rope", model, *args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("longseq:")]
    assert len(lines) == 1 and lines[0].startswith("longseq: error:") and message in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()


def test_ppl_plus_passkey_scores_the_eval_passkey_sample(tiny_llama: Path) -> None:
    import copy

    from longseq.eval.tasks import haystack_text
    from longseq.models.loading import load_model
    from longseq.tune.scoring import loss

    model, tok = load_model(str(tiny_llama), dtype="float32")
    base = copy.deepcopy(model.config)
    scorer = Scorer(model, tok, base, tok(haystack_text())["input_ids"], 2048, 2, "ppl+passkey", 0)
    assert scorer.passes_per_window == 2
    got = scorer.score(seed_candidate(base, "yarn", 2048), 0)
    assert got.passkey in (0.0, 1.0) and got.tokens == 2047
    assert loss([got]) == pytest.approx(got.nll / got.tokens + 1 - got.passkey)
