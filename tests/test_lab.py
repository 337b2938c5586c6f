"""The lab: verdicts follow the measured numbers, and the whole pipeline runs end to end (reduced size)."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil

import pytest

from longseq.core.errors import UserError
from longseq.core.fsutil import read_jsonl
from longseq.lab.findings import FINDINGS, Stat, beats, margin, not_worse
from longseq.lab.presets import FACTORS, FINETUNES, SIZES, ZERO_SHOT
from longseq.lab.run import run_lab
from longseq.lab.stages import perplexities


NATIVE = 256
L4 = 4 * NATIVE


def fake_summary(seeds: int = 2) -> dict:
    """An empty lab summary (L = 256) to fill with hand-set numbers."""
    return {"native": NATIVE, "lengths": [NATIVE, 2 * NATIVE, 4 * NATIVE, 8 * NATIVE], "seeds": list(range(seeds)),
            "costs": {}, "evals": {}, "lengthgen": {}}


def put(s: dict, run: str, metric: str, method: str, length: int, v: float) -> None:
    s["evals"].setdefault(run, {}).setdefault(metric, {}).setdefault(method, {})[str(length)] = v


def put_arm(s: dict, arm: str, metric: str, length: int, *per_seed: float) -> None:
    """One value per seed of fine-tuning arm ``arm``."""
    for k, v in zip(s["seeds"], per_seed):
        put(s, f"{arm}-s{k}", metric, "none", length, v)


def put_cost(s: dict, arm: str, key: str, *per_seed: float) -> None:
    for k, v in zip(s["seeds"], per_seed):
        s["costs"].setdefault(f"{arm}-s{k}", {})[key] = v


def verdict(key: str, s: dict) -> bool | None:
    finding = next(f for f in FINDINGS if f.key == key)
    return finding.judge(s)[0]


def test_stat_and_margins():
    a, b = Stat.of([10.0, 12.0]), Stat.of([20.0, 21.0])
    assert (a.mean, a.spread, a.n) == (11.0, 2.0, 2) and Stat.of([1.0, None]) is None and Stat.of([]) is None
    assert margin(a, b, "perplexity") == 2.0  # the seed spread exceeds the 2% floor (0.41)
    assert margin(Stat.of([10.0]), Stat.of([20.0]), "perplexity") == pytest.approx(0.4)
    assert beats(a, b, "perplexity") and not beats(b, a, "perplexity")
    assert beats(Stat.of([0.9]), Stat.of([0.7]), "passkey") and not beats(Stat.of([0.75]), Stat.of([0.7]), "passkey")
    assert not_worse(Stat.of([0.65]), Stat.of([0.7]), "passkey") and beats(None, a, "passkey") is None


def test_pi_verdict_follows_passkey_and_perplexity():
    s = fake_summary()
    put_arm(s, "ft-pi", "passkey", L4, 0.9, 1.0)
    put_arm(s, "ft-direct", "passkey", L4, 0.2, 0.3)
    put_arm(s, "ft-pi", "perplexity", L4, 20.0, 20.5)
    put_arm(s, "ft-direct", "perplexity", L4, 20.2, 20.4)
    assert verdict("pi", s) is True  # better passkey, perplexity tied
    put_arm(s, "ft-direct", "passkey", L4, 0.9, 0.9)
    assert verdict("pi", s) is False  # tied on both
    put_arm(s, "ft-direct", "perplexity", L4, 30.0, 31.0)
    assert verdict("pi", s) is True  # tied passkey, better perplexity
    put_arm(s, "ft-direct", "passkey", L4, 1.0, 1.0)
    put_arm(s, "ft-pi", "passkey", L4, 0.3, 1.0)  # the gap of a seed range 0.7: worse is not shown either
    assert verdict("pi", s) is True
    put_arm(s, "ft-pi", "passkey", L4, 0.5, 0.6)  # worse on passkey by more than the margin
    assert verdict("pi", s) is False
    put_arm(s, "ft-pi", "passkey", L4, 0.9, 1.0)
    put_arm(s, "ft-pi", "perplexity", L4, 25.0, 36.0)  # a seed range of 11 swallows the gap of 5
    put_arm(s, "ft-direct", "passkey", L4, 0.9, 1.0)
    assert verdict("pi", s) is False
    del s["evals"]["ft-direct-s1"]
    assert verdict("pi", s) is None


def _zero_shot(ppl: dict[str, float], passkey: dict[str, float]) -> dict:
    s = fake_summary()
    for f in FACTORS:
        for m in ZERO_SHOT:
            for n in s["lengths"]:
                if n <= f * NATIVE:
                    put(s, f"zero-shot-{f}x", "perplexity", m, n, ppl[m])
                    put(s, f"zero-shot-{f}x", "passkey", m, n, passkey[m])
    return s


def test_yarn_ntk_verdict_needs_perplexity_and_passkey_at_both_factors():
    s = _zero_shot({"none": 90.0, "pi": 50.0, "yarn": 30.0, "ntk": 40.0},
                   {"none": 0.0, "pi": 0.5, "yarn": 0.5, "ntk": 0.6})
    assert verdict("yarn_ntk", s) is True
    put(s, "zero-shot-8x", "perplexity", "ntk", 8 * NATIVE, 49.5)  # within 2% of PI: not better
    assert verdict("yarn_ntk", s) is False
    put(s, "zero-shot-8x", "perplexity", "ntk", 8 * NATIVE, 40.0)
    put(s, "zero-shot-4x", "passkey", "yarn", 2 * NATIVE, 0.0)  # passkey lost over 2L-4L
    assert verdict("yarn_ntk", s) is False
    del s["evals"]["zero-shot-4x"]
    assert verdict("yarn_ntk", s) is None


def test_abf_verdict_matches_or_beats_on_perplexity_and_retrieval():
    s = fake_summary()
    put_arm(s, "ft-abf", "perplexity", L4, 9.0, 9.2)
    put_arm(s, "ft-pi", "perplexity", L4, 9.5, 9.5)
    put_arm(s, "ft-abf", "retrieval", L4, 0.5, 0.6)
    put_arm(s, "ft-pi", "retrieval", L4, 0.6, 0.6)
    assert verdict("abf", s) is True
    put_arm(s, "ft-abf", "retrieval", L4, 0.3, 0.3)
    assert verdict("abf", s) is False
    put_arm(s, "ft-abf", "retrieval", L4, 0.6, 0.6)
    put_arm(s, "ft-abf", "perplexity", L4, 9.9, 9.9)
    assert verdict("abf", s) is False


def test_longlora_verdict_checks_quality_cost_and_lora():
    s = fake_summary()
    for a, v in (("ft-pi", 10.0), ("ft-longlora", 10.5), ("ft-lora", 14.0)):
        put_arm(s, a, "perplexity", L4, v, v)
    put_cost(s, "ft-pi", "train_seconds", 100.0, 102.0)
    put_cost(s, "ft-pi", "peak_rss_mb", 900.0, 905.0)
    put_cost(s, "ft-longlora", "train_seconds", 60.0, 61.0)
    put_cost(s, "ft-longlora", "peak_rss_mb", 800.0, 800.0)
    assert verdict("longlora", s) is True
    worse = copy.deepcopy(s)
    put_arm(worse, "ft-longlora", "perplexity", L4, 12.0, 12.0)  # > 10% worse than full fine-tuning
    assert verdict("longlora", worse) is False
    dearer = copy.deepcopy(s)
    put_cost(dearer, "ft-longlora", "train_seconds", 95.0, 96.0)  # < 10% less time and memory: not "a fraction"
    put_cost(dearer, "ft-longlora", "peak_rss_mb", 860.0, 860.0)
    assert verdict("longlora", dearer) is False
    noisy = copy.deepcopy(s)
    put_cost(noisy, "ft-pi", "train_seconds", 60.0, 140.0)  # a seed range wider than the saving
    put_cost(noisy, "ft-pi", "peak_rss_mb", 810.0, 810.0)
    assert verdict("longlora", noisy) is False
    lora_ok = copy.deepcopy(s)
    put_arm(lora_ok, "ft-lora", "perplexity", L4, 10.6, 10.6)  # plain LoRA does not fall behind
    assert verdict("longlora", lora_ok) is False


def test_longlora_note_reports_the_measured_trainable_share():
    s = fake_summary()
    put_cost(s, "ft-pi", "trainable_parameters", 1000, 1000)
    put_cost(s, "ft-longlora", "trainable_parameters", 94, 94)
    notes = next(f for f in FINDINGS if f.key == "longlora").judge(s)[3]
    assert len(notes) == 1 and "LongLoRA trains 9% of the weights" in notes[0]
    put_cost(s, "ft-longlora", "train_seconds", 60.0, 62.0)
    put_cost(s, "ft-lora", "train_seconds", 80.0, 80.0)
    notes = next(f for f in FINDINGS if f.key == "longlora").judge(s)[3]
    assert "61.0 ±1.0 s vs full attention (LoRA) 80.0 ±0.0 s: -24%" in notes[1]
    assert next(f for f in FINDINGS if f.key == "longlora").judge(fake_summary())[3] == []


def _lengthgen(rope: list[float], rnd: list[float], train: list[float] | None = None) -> dict:
    """Hand-set lengthgen runs: test accuracy per seed of each encoding (and the randomized one's training fit)."""
    runs = [{"pe": pe, "seed": k, "accuracy": a, "sequence_accuracy": a / 2,
             "train_accuracy": (train[k] if train and pe == "randomized_rope" else 1.0)}
            for pe, accs in (("rope", rope), ("randomized_rope", rnd)) for k, a in enumerate(accs)]
    return {"protocol": {"tasks": ["even_pairs"], "train_lengths": [1, 15], "test_lengths": [16, 96], "steps": 9},
            "results": [], "runs": runs}


def test_randomized_verdict_reads_the_lengthgen_run_best_seed():
    s = fake_summary()
    s["lengthgen"] = _lengthgen([0.6, 0.62], [0.85, 0.5], train=[1.0, 0.5])
    assert verdict("randomized", s) is True  # the best randomized seed (0.85) against the best RoPE seed (0.62)
    s["lengthgen"] = _lengthgen([0.6, 0.62], [0.64, 0.65])  # within 5 points
    assert verdict("randomized", s) is False
    s["lengthgen"] = _lengthgen([0.6, 0.9], [0.85, 0.88])
    assert verdict("randomized", s) is False
    s["lengthgen"] = _lengthgen([0.5], [0.9], train=[0.6])  # its best seed never fit the training lengths
    ok, _, table, notes = next(f for f in FINDINGS if f.key == "randomized").judge(s)
    assert ok is None and "randomized_rope: no seed reached 90%" in notes[0]
    assert table[2][:4] == ["randomized_rope", "1", "0.600", "0.900"]
    s["lengthgen"] = {}
    assert verdict("randomized", s) is None


def test_perplexity_is_token_weighted(tmp_path):
    path = tmp_path / "samples.jsonl"
    common = {"method": "none", "length": 64, "subtask": None, "prompt_tokens": 64, "score": 0.0}
    rows = [{**common, "task": "ppl", "index": 0, "nll": 10.0, "scored_tokens": 10},
            {**common, "task": "ppl", "index": 1, "nll": 30.0, "scored_tokens": 10},
            {**common, "task": "passkey", "index": 0, "score": 1.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert perplexities(path) == {"none": {64: pytest.approx(2.718281828 ** 2)}}
    # a duplicated line (two writers, an old resume) counts once
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[1:2]))
    assert perplexities(path) == {"none": {64: pytest.approx(2.718281828 ** 2)}}


def test_pre_training_phases_and_the_base_model(tmp_path):
    from longseq.lab.stages import base_model, pretrain_phases

    assert [p[0] for p in pretrain_phases(SIZES["default"])] == ["pretrain-copy", "pretrain-short", "pretrain",
                                                                  "pretrain-anneal"]
    assert [p[0] for p in pretrain_phases(SIZES["quick"])] == ["pretrain-copy", "pretrain-short", "pretrain"]
    assert base_model(tmp_path, SIZES["default"]) == str(tmp_path / "pretrain-anneal" / "model")
    assert base_model(tmp_path, SIZES["quick"]) == str(tmp_path / "pretrain" / "model")  # no anneal steps


def test_lab_folder_of_other_settings_is_refused(tmp_path):
    (tmp_path / "lab.json").write_text(json.dumps({"size": "quick", "settings": {}, "seed": 0}))
    with pytest.raises(UserError, match="holds a lab run with a different size"):
        run_lab(tmp_path, "test")
    assert json.loads((tmp_path / "lab.json").read_text())["size"] == "quick"  # the marker is left as it was
    # the whole marker must match: one that lacks a setting is refused, not taken over
    mine = {"size": "test", "settings": dataclasses.asdict(SIZES["test"]), "seed": 0}
    for partial in ({"size": "test", "seed": 0}, {**mine, "extra": 1}):
        (tmp_path / "lab.json").write_text(json.dumps(partial))
        with pytest.raises(UserError, match="not this version's lab run"):
            run_lab(tmp_path, "test")
        assert json.loads((tmp_path / "lab.json").read_text()) == partial
    with pytest.raises(UserError, match="unknown lab size"):
        run_lab(tmp_path / "x", "huge")


@pytest.mark.slow
def test_lab_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "lab"
    summary = run_lab(out, "test")
    report = (out / "report.md").read_text()
    assert json.loads((out / "summary.json").read_text())["findings"] == summary["findings"]
    assert [f["key"] for f in summary["findings"]] == [f.key for f in FINDINGS]
    for f in summary["findings"]:
        assert f["verdict"] in ("reproduced", "not reproduced", "inconclusive")
        assert f"## {f['title']}" in report and f"**{f['verdict']}**" in report
        # the verdict in the file is what the judge says about the file's own numbers
        ok = next(x for x in FINDINGS if x.key == f["key"]).judge(summary)[0]
        assert f["verdict"] == {True: "reproduced", False: "not reproduced", None: "inconclusive"}[ok]
    assert [f["verdict"] for f in summary["findings"] if f["key"] != "randomized"].count("inconclusive") == 0
    size = SIZES["test"]
    runs = ["pretrain-copy", "pretrain-short", "pretrain", "pretrain-anneal",
            *(f"{ft.name}-s{k}" for ft in FINETUNES for k in range(size.seeds))]
    for run in runs:
        assert (out / run / "model" / "config.json").is_file()
        assert summary["costs"][run]["peak_rss_mb"] > 0
        assert summary["costs"][run]["allocator"] == ("tuned" if run.startswith("pretrain") else "glibc default")
    ft_pi = json.loads((out / "ft-pi-s0" / "model" / "config.json").read_text())
    assert ft_pi["rope_parameters"]["rope_type"] == "linear" and ft_pi["rope_parameters"]["factor"] == 4.0
    # the lab's own tokenizer, in every model, and an embedding share computed from the model
    assert json.loads((out / "pretrain" / "model" / "config.json").read_text())["vocab_size"] == size.vocab
    assert summary["model"]["embedding"] == 2 * size.vocab * size.hidden  # untied input and output embeddings
    assert f"({summary['model']['share']:.1%})" in report
    # the randomized-positions finding reads a real lengthgen run of both encodings
    assert sorted(r["pe"] for r in summary["lengthgen"]["runs"]) == ["randomized_rope", "rope"]
    assert summary["lengthgen"]["protocol"]["steps"] == size.lengthgen_steps
    # retrieval was measured where the judges read it
    L4 = 4 * size.native
    assert summary["evals"]["ft-pi-s0"]["passkey"]["none"][str(L4)] is not None
    assert summary["evals"]["zero-shot-8x"]["lines"]["none"][str(size.native)] is not None
    # the copy and digit tests read the model every extension starts from: the last pre-training phase's
    from longseq.lab.probe import digit_similarity

    assert summary["model"]["digit_embeddings"] == digit_similarity(str(out / "pretrain-anneal" / "model"))
    # and only there: zero-shot lines at L only, passkey at every length
    assert {n for curve in summary["evals"]["zero-shot-8x"]["lines"].values() for n in curve} == {str(size.native)}
    assert summary["evals"]["zero-shot-4x"]["lines"] == {}
    assert sorted(summary["evals"]["zero-shot-8x"]["passkey"]["yarn"], key=int) == [str(n) for n in summary["lengths"]]
    assert summary["lines_chance"] is not None and 0 < summary["lines_chance"] <= 1
    assert (out / "perplexity.png").stat().st_size > 1000
    # a second run reuses every cached stage and reproduces the same numbers
    again = run_lab(out, "test")
    assert again["evals"] == summary["evals"] and again["costs"] == summary["costs"]
    assert again["lengthgen"] == summary["lengthgen"]
    assert again["seconds"] >= summary["seconds"]  # the wall time of every invocation adds up
    # an arm interrupted before its first checkpoint (run.json and a partial metrics file, no checkpoint) reruns
    arm = out / "ft-lora-s0"
    for stale in ("model", "checkpoint", "checkpoint.old"):
        shutil.rmtree(arm / stale, ignore_errors=True)
    (out / "costs" / "ft-lora-s0.json").unlink()
    (arm / "metrics.jsonl").write_text((arm / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    assert (arm / "run.json").is_file()
    third = run_lab(out, "test")
    assert (arm / "model" / "config.json").is_file()
    assert [r["step"] for r in read_jsonl(arm / "metrics.jsonl")] == list(range(1, size.finetune_steps + 1))
    assert third["evals"] == summary["evals"]


def _fake_train(arm, steps, trainable=7):
    """A stand-in for the ``longseq train`` child: writes one run's model and metrics into ``arm``."""
    from types import SimpleNamespace

    def child(cmd, stdout, env=None, pass_fds=()):
        assert "--resume" not in cmd and not arm.exists()  # a fresh attempt in an empty folder
        (arm / "model").mkdir(parents=True)
        (arm / "model" / "config.json").write_text("{}")
        (arm / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "loss": 1.0 / s, "tokens": 10, "step_s": 0.5}) + "\n" for s in steps))
        stdout.write(json.dumps({"parameters": {"trainable": trainable}}))
        return 0, SimpleNamespace(ru_maxrss=2048)

    return child


def test_an_interrupted_training_arm_is_rerun_whole_and_its_cost_is_one_run(tmp_path, monkeypatch):
    from longseq.lab import stages

    arm = tmp_path / "ft-pi"
    arm.mkdir()  # a previous attempt, killed at step 2 of 4 (or finished by an orphan): no cost file
    (arm / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0, "tokens": 99, "step_s": 50.0})
                                               + "\n" for s in (1, 2)))
    (arm / "checkpoint").mkdir()
    recipe = {"steps": 4, "seed": 0}
    monkeypatch.setattr(stages, "run_child", _fake_train(arm, range(1, 5)))
    cost = stages.run_training(tmp_path, "ft-pi", recipe)
    assert (cost["tokens"], cost["train_seconds"], cost["peak_rss_mb"], cost["final_loss"]) == (40, 2.0, 2.0, 0.25)
    assert len(cost["run_id"]) == 12 and cost["trainable_parameters"] == 7
    assert json.loads((tmp_path / "costs" / "ft-pi.json").read_text()) == cost
    monkeypatch.setattr(stages, "run_child", lambda *a, **k: pytest.fail("a finished arm is cached"))
    assert stages.run_training(tmp_path, "ft-pi", recipe) == cost
    # metrics that are not exactly one run's steps are refused, never measured
    (tmp_path / "costs" / "ft-pi.json").unlink()
    monkeypatch.setattr(stages, "run_child", _fake_train(arm, [1, 2, 1, 2, 3, 4]))
    with pytest.raises(UserError, match="does not hold one run's steps 1..4"):
        stages.run_training(tmp_path, "ft-pi", recipe)
    assert not (tmp_path / "costs" / "ft-pi.json").exists()


def test_lab_refuses_a_folder_in_use_and_an_eval_folder(tmp_path):
    from longseq.core.rundir import claim_kind, lock_run_folder

    (tmp_path / "ev").mkdir()
    claim_kind(tmp_path / "ev", "eval")
    with pytest.raises(UserError, match="holds a longseq eval run, not a lab run"):
        run_lab(tmp_path / "ev", "test")
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["longseq-run.json"]
    (tmp_path / "lab").mkdir()
    with lock_run_folder(tmp_path / "lab"):
        with pytest.raises(UserError, match="another longseq run is using"):
            run_lab(tmp_path / "lab", "test")
    assert not (tmp_path / "lab" / "lab.json").exists()


@pytest.fixture(scope="module")
def lab_tokenizer():
    """The lab tokenizer trained on a slice of the lab corpus and a few retrieval documents."""
    import random

    from longseq.lab.data import RETRIEVAL, docstring_prose, retrieval_doc
    from longseq.lab.tokenizer import train_tokenizer

    rng = random.Random(0)
    docs = [retrieval_doc(t, rng, rng.randint(1, 30) if t == "lines" else rng.randint(50, 2000))
            for t in RETRIEVAL for _ in range(20)]
    return train_tokenizer(docstring_prose(100_000) + docs, 800), docs


def test_lab_tokenizer_round_trips_digits_and_retrieval_documents(lab_tokenizer):
    tok, docs = lab_tokenizer
    assert len(tok) == 800 and tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>"
    for text in [*docs, "The pass key is 40213. Remember it. 40213 is the pass key.", "0123456789 007 50000",
                 "line fuzzy-otter: REGISTER_CONTENT is <31337>\n\n", "  tabs\tand\r\nunicode é ✓ 🙂"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    # one token per digit, so every value is copied digit by digit
    assert tok.tokenize("is 40213.")[-6:-1] == ["4", "0", "2", "1", "3"]
    assert tok("x", add_special_tokens=True)["input_ids"] == tok("x", add_special_tokens=False)["input_ids"]


def test_training_rows_have_exactly_the_row_length(lab_tokenizer):
    from longseq.lab.data import RowBuilder, docstring_prose

    tok, _ = lab_tokenizer
    builder = RowBuilder(tok, docstring_prose(60_000), seed=0)
    rows = list(builder.rows(30, 255, 0.5))
    lengths = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in rows]
    assert lengths == [255] * 30  # a row that packing would shift by a token is drawn again
    docs = [d for r in rows for d in r.split(tok.eos_token)]
    assert len(docs) > len(rows)  # several curriculum documents share a row, each ended by EOS
    kinds = {"lines": 0, "passkey": 0, "repeat": 0, "prose": 0}
    for d in docs:  # every document keeps its answer: nothing is cut by the row boundary
        if "REGISTER_CONTENT" in d:
            kinds["lines"] += 1
            assert d.endswith(">.") and "Line <" in d
        elif "pass key" in d:
            kinds["passkey"] += 1
            assert d.endswith(".") and d.count("The pass key is") >= 2
        elif "Here is a list: " in d:
            kinds["repeat"] += 1
            listing = d.split("Here is a list: ")[1].split(".\n")[0]
            assert d.count(listing) == 4
        else:
            kinds["prose"] += 1
    assert all(kinds.values()), kinds


@pytest.mark.parametrize("tied", [True, False])
def test_embedding_share_counts_a_tied_embedding_once(tmp_path, make_tiny_llama, tied):
    from longseq.lab.data import embedding_share

    path = make_tiny_llama(tmp_path / "m", tie_word_embeddings=tied)
    info = embedding_share(str(path))
    config = json.loads((path / "config.json").read_text())
    assert info["embedding"] == (1 if tied else 2) * config["vocab_size"] * config["hidden_size"]
    assert 0 < info["share"] < 1 and info["parameters"] > info["embedding"]


def test_copy_test_reads_the_copies_of_the_list(lab_tokenizer, tiny_llama_dir):
    import random

    from longseq.lab.data import repeat_doc
    from longseq.lab.probe import _span_tokens, copy_test

    tok, _ = lab_tokenizer
    doc = repeat_doc(random.Random(3), 12)
    listing = doc.split("Here is a list: ")[1].split(".\n")[0]
    enc = tok(doc, add_special_tokens=False, return_offsets_mapping=True)
    starts = [i for i in range(len(doc)) if doc.startswith(listing, i)]
    spans = [[enc["input_ids"][i] for i in _span_tokens(enc["offset_mapping"], a, a + len(listing))] for a in starts]
    assert len(spans) == 4 and all(s == spans[0] for s in spans) and len(spans[0]) >= 12
    # a random model does not look back: the repeats cost what the first copy costs
    result = copy_test(str(tiny_llama_dir), docs=2, items=10)
    assert result["first"] > 1.0 and abs(result["gain"]) < 0.5
    assert result["gain"] == pytest.approx(result["first"] - result["repeats"], abs=1e-3)


def test_digit_test_measures_how_alike_the_digit_embeddings_are(lab_tokenizer, tiny_llama_config, tmp_path):
    import itertools

    import torch
    from transformers import LlamaForCausalLM

    from longseq.lab.probe import _mean_cosine, digit_similarity

    tok, _ = lab_tokenizer
    vectors = torch.randn(6, 16)
    pairs = [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in itertools.permutations(vectors, 2)]
    assert _mean_cosine(vectors) == pytest.approx(sum(pairs) / len(pairs), abs=1e-5)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(vocab_size=len(tok), hidden_size=128, tie_word_embeddings=True))
    model.save_pretrained(tmp_path / "random")
    tok.save_pretrained(tmp_path / "random")
    assert abs(digit_similarity(str(tmp_path / "random"))["digits"]) < 0.2  # random vectors: nearly orthogonal
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    with torch.no_grad():  # the collapse the test reports: every digit one vector, up to small noise
        emb = model.get_input_embeddings().weight
        emb[digits] = emb[digits[0]] + 0.1 * emb[digits[0]].std() * torch.randn(10, emb.shape[1])
    model.save_pretrained(tmp_path / "collapsed")
    tok.save_pretrained(tmp_path / "collapsed")
    result = digit_similarity(str(tmp_path / "collapsed"))
    assert result["digits"] > 0.99 and abs(result["all"]) < 0.1


def test_report_states_the_base_model_and_when_nothing_was_retrieved():
    from longseq.lab.report import report_markdown

    s = fake_summary()
    s.update(size="test", seed=0, seconds=60.0, findings=[], lines_chance=0.1,
             model={"parameters": 1000, "embedding": 90, "share": 0.09,
                    "copy_test": {"first": 5.5, "repeats": 5.4, "gain": 0.1},
                    "digit_embeddings": {"digits": 0.8, "all": 0.26}},
             settings={"layers": 2, "hidden": 32, "heads": 2, "kv_heads": 1, "vocab": 600, "pretrain_steps": 3,
                       "pretrain_batch": 2, "short_steps": 2, "short_batch": 2, "short_len": 256,
                       "copy_steps": 2, "copy_batch": 2, "copy_len": 128, "finetune_steps": 2,
                       "finetune_batch": 1, "retrieval_share": 0.8, "pretrain_lr": 1e-3, "anneal_steps": 2,
                       "anneal_lr": 5e-4})
    put(s, "zero-shot-8x", "passkey", "none", NATIVE, 0.0)
    put(s, "zero-shot-8x", "lines", "none", NATIVE, 0.0)
    report = report_markdown(s, [])
    assert "passkey 0.00, LongEval lines 0.00 (chance, guessing one of the record's lines: 0.10)" in report
    assert "embeddings (input and output) 90 (9.0%)" in report and "gain 0.10" in report
    assert "No model retrieved" in report
    assert "mean pairwise cosine 0.80 (all tokens: 0.26" in report
    assert "at learning rate 0.001, then 2 steps more at 0.0005." in report
    put(s, "zero-shot-8x", "passkey", "none", NATIVE, 0.9)
    assert "No model retrieved" not in report_markdown(s, []) and "passkey 0.90" in report_markdown(s, [])
