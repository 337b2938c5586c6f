"""End to end ``longseq eval`` on a tiny random Llama: outputs, resume, engine vs transformers, errors."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from longseq.cli import main
from longseq.core.errors import UserError
from longseq.eval.engine import HFEngine
from longseq.eval.plan import EvalConfig, plan
from longseq.eval.run import run_eval
from longseq.eval.tasks import EVAL_TASKS, EvalTask, PlannedSample


def _cfg(model, out, **kw) -> EvalConfig:
    base = dict(model=str(model), out=str(out), tasks=["passkey", "lines", "niah", "ruler", "ppl"],
                cells=[("none", 512), ("none", 1024), ("yarn", 1024)], samples=2, seed=1, chunk_size=300)
    base.update(kw)
    return EvalConfig(**base)


def test_tiny_model_end_to_end_writes_valid_outputs_and_resumes(tiny_llama, tmp_path, monkeypatch, capsys):
    cfg = _cfg(tiny_llama, tmp_path / "run")
    summary = run_eval(cfg, progress=False)
    out = tmp_path / "run"
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    items = plan(cfg)
    assert len(records) == len(items) == 2 * 3 * (1 + 1 + 1 + 7 + 1)  # ruler: 7 subtasks
    for r in records:
        assert {"task", "method", "length", "prompt_tokens", "depth", "expected", "output", "score"} <= set(r)
        assert 0.0 <= r["score"] <= 1.0
        if r["task"] != "ppl":
            assert 0.98 * r["length"] <= r["prompt_tokens"] <= r["length"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert set(saved) >= {"model", "threshold", "results", "effective_length"}
    assert saved["threshold"] == 0.856
    cells = {(r["task"], r["method"], r["length"]) for r in saved["results"]}
    assert len(cells) == len(saved["results"]) == 3 * 5
    for r in saved["results"]:
        assert set(r) >= {"task", "method", "length", "score", "n"} and 0 <= r["score"] <= 1
        mine = [x["score"] for x in records if (x["task"], x["method"], x["length"]) == (r["task"], r["method"], r["length"])]
        assert r["n"] == len(mine)
        if r["task"] not in ("ruler", "ppl"):
            assert math.isclose(r["score"], sum(mine) / len(mine))
    ppl = [r for r in saved["results"] if r["task"] == "ppl"]
    # random weights over a 49k vocabulary: perplexity near the vocabulary size
    assert all(1e4 < r["perplexity"] < 2e5 for r in ppl)
    assert set(saved["effective_length"]) == {"none", "yarn"}
    assert all(isinstance(v, int) for v in saved["effective_length"].values())
    for name in ("report.md", "score_vs_length.png", "niah_heatmap.png"):
        assert (out / name).stat().st_size > 500
    assert (out / "score_vs_length.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## method none" in report and "| passkey |" in report and "RULER subtasks" in report
    assert "method none: effective length" in capsys.readouterr().out

    # resume: nothing is re-scored, the model is not even loaded, the file is unchanged
    before = (out / "samples.jsonl").read_bytes()

    def no_load(*a, **k):
        raise AssertionError("model loaded although every sample is done")

    monkeypatch.setattr(HFEngine, "load", classmethod(no_load))
    again = run_eval(cfg, progress=False, quiet=True)
    assert (out / "samples.jsonl").read_bytes() == before
    assert again["results"] == summary["results"]


def test_interrupted_run_keeps_samples_and_resume_finishes_without_duplicates(tiny_llama, tmp_path, monkeypatch):
    cfg = _cfg(tiny_llama, tmp_path / "run", tasks=["passkey"], cells=[("none", 512), ("none", 1024)], samples=3)
    real = HFEngine.answer
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(HFEngine, "answer", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg, progress=False, quiet=True)
    lines = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 3
    monkeypatch.setattr(HFEngine, "answer", real)
    seen = []
    monkeypatch.setattr(HFEngine, "answer", lambda self, *a, **k: seen.append(1) or real(self, *a, **k))
    run_eval(cfg, progress=False, quiet=True)
    assert len(seen) == 3  # only the missing samples ran
    keys = [(r["length"], r["index"]) for r in map(json.loads, (tmp_path / "run" / "samples.jsonl").read_text().splitlines())]
    assert sorted(keys) == sorted({(L, i) for L in (512, 1024) for i in range(3)})


def test_engine_matches_transformers_generate_and_full_forward_loss(tiny_llama):
    """Chunked prefill + KV cache + last-position logits == plain greedy ``generate``; chunked NLL ==
    cross-entropy of one full forward pass."""
    import torch

    engine = HFEngine.load(str(tiny_llama), dtype="float32", chunk_size=37)
    ids = torch.randint(100, 5000, (1, 150), generator=torch.Generator().manual_seed(0))
    gen = engine.generate_ids(ids[0].tolist(), max_new_tokens=12, stop=())
    ref = engine.model.generate(ids, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids))
    ref_ids = ref[0, 150:].tolist()
    ref_ids = ref_ids[: next((i for i, t in enumerate(ref_ids) if t in engine.eos_ids), len(ref_ids))]
    assert gen.text == engine.tokenizer.decode(ref_ids, skip_special_tokens=True)
    nll, count = engine.nll(ids[0].tolist())
    with torch.no_grad():
        logits = engine.model(ids).logits[0, :-1].float()
    ref_nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
    assert count == 149
    assert math.isclose(nll, ref_nll, rel_tol=1e-4)


def test_methods_are_applied_through_the_rope_registry(tiny_llama):
    eng = HFEngine.load(str(tiny_llama), "yarn", dtype="float32", target_length=4096)
    assert eng.model.config.rope_parameters["rope_type"] == "yarn"
    assert eng.model.config.rope_parameters["factor"] == 4.0
    eng = HFEngine.load(str(tiny_llama), "abf", dtype="float32")
    assert eng.model.config.rope_parameters["rope_theta"] == 500000.0


def _cli(capsys, *argv):
    code = main(["eval", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("argv,needle", [
    (["--tasks", "passkey,haystack"], "unknown task 'haystack'"),
    (["--lengths", "1k,lots"], "'lots' is not a length"),
    (["--methods", "yarnn"], "did you mean 'yarn'"),
    (["--lengths", "64m"], "needs about"),  # does not fit in memory
    (["--samples", "0"], "--samples must be >= 1"),
    (["--preset", "huge"], "unknown preset"),
    (["--backend", "openai"], "needs --base-url"),
    (["--lengths", "100", "--tasks", "topics"], "too short"),
])
def test_bad_input_is_one_line_exit_2(tiny_llama, tmp_path, capsys, argv, needle):
    code, err = _cli(capsys, str(tiny_llama), "--out", str(tmp_path / "o"), "--no-progress", "--samples", "1", *argv)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("longseq: error:") and needle in err[0], err


def test_chat_format_without_template_is_one_line_error(tiny_llama, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_llama, bare)
    (bare / "chat_template.jinja").unlink()
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    code, err = _cli(capsys, str(bare), "--prompt-format", "chat", "--out", str(tmp_path / "o"), "--lengths", "512")
    assert code == 2 and "no chat template" in err[-1] and len(err) == 1
    assert not (tmp_path / "o").exists()


def test_mixing_seeds_in_one_folder_is_refused(tiny_llama, tmp_path):
    cfg = _cfg(tiny_llama, tmp_path / "run", tasks=["passkey"], cells=[("none", 512)], samples=1)
    run_eval(cfg, progress=False, quiet=True)
    before = (tmp_path / "run" / "samples.jsonl").read_bytes()
    cfg.seed = 2
    with pytest.raises(UserError, match="different seed"):
        run_eval(cfg, progress=False, quiet=True)
    assert (tmp_path / "run" / "samples.jsonl").read_bytes() == before


def test_resume_from_another_folder_with_the_path_spelled_differently(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_llama.parent)
    cfg = _cfg(tiny_llama.name, tmp_path / "run", tasks=["passkey"], cells=[("none", 512)], samples=1)
    run_eval(cfg, progress=False, quiet=True)
    before = (tmp_path / "run" / "samples.jsonl").read_bytes()
    monkeypatch.chdir(tmp_path)
    cfg.model = str(tiny_llama)  # absolute now, relative before: the same checkpoint
    run_eval(cfg, progress=False, quiet=True)
    assert (tmp_path / "run" / "samples.jsonl").read_bytes() == before
    other = tmp_path / "other"
    shutil.copytree(tiny_llama, other)
    cfg.model = str(other)  # a different local folder (same weights) is still refused
    with pytest.raises(UserError, match="different model"):
        run_eval(cfg, progress=False, quiet=True)


def test_cli_quick_preset_plan():
    from longseq.cli import build_parser
    from longseq.eval.cli import config_from_args

    args = build_parser().parse_args(["eval", "--preset", "quick"])
    cfg = config_from_args(args)
    assert cfg.tasks == ["passkey", "lines"] and cfg.samples == 2
    assert cfg.cells == [("none", L) for L in (1024, 2048, 4096, 8192, 16384)] + [("yarn", 16384)]
    args = build_parser().parse_args(["eval", "--preset", "quick", "--methods", "none,pi", "--lengths", "2k"])
    assert config_from_args(args).cells == [("none", 2048), ("pi", 2048)]


class _CountTask(EvalTask):
    """A task the run loop has never heard of: three samples per cell, scored 0, 0.5, 1 without the model."""

    name = "count"
    description = "test task"
    label = "count (custom)"
    shown = "custom"

    def plan(self, settings, method, length):
        return [PlannedSample(method, self.name, "x", length, i) for i in range(3)]

    def run(self, ctx, engine, sample):
        return {"prompt_tokens": sample.length, "depth": None, "expected": sample.index, "output": str(sample.index),
                "score": sample.index / 2}

    def aggregate(self, records):
        return {"custom": 10 + sum(r["score"] for r in records)}

    def report_section(self, rows):
        return ["## count section", "", *(f"{r['method']} {r['length']}: {r['custom']}" for r in rows), ""]


def test_a_registered_task_runs_through_the_loop_summary_and_report(tiny_llama, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(EVAL_TASKS, "count", _CountTask())
    cfg = _cfg(tiny_llama, tmp_path / "run", tasks=["passkey", "count"], cells=[("none", 512)], samples=1)
    summary = run_eval(cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [(r["task"], r["subtask"], r["index"], r["score"]) for r in records if r["task"] == "count"] == [
        ("count", "x", 0, 0.0), ("count", "x", 1, 0.5), ("count", "x", 2, 1.0)]
    passkey, count = summary["results"]
    assert count["task"] == "count" and count["n"] == 3 and count["score"] == 0.5 and count["custom"] == 11.5
    mean = (passkey["score"] + 0.5) / 2
    assert summary["effective_length"] == {"none": 512 if mean >= cfg.threshold else 0}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| count (custom) | 11.50 |" in report and f"| mean | {mean:.2f} |" in report
    assert "## count section\n\nnone 512: 11.5\n" in report
    assert "count (custom)  11.50" in capsys.readouterr().out
    assert (tmp_path / "run" / "score_vs_length.png").stat().st_size > 500

    # opting out of the effective length drops the task from the mean row and the effective length
    monkeypatch.setattr(_CountTask, "in_effective_length", False)
    again = run_eval(cfg, progress=False, quiet=True)
    assert again["results"] == summary["results"]
    assert again["effective_length"] == {"none": 512 if passkey["score"] >= cfg.threshold else 0}
    assert f"| mean | {passkey['score']:.2f} |" in (tmp_path / "run" / "report.md").read_text()


def test_generic_modules_name_no_task():
    """The run loop, summary and report ask the task objects; only the tasks (and presets) name tasks."""
    import inspect

    from longseq.eval import report, run, summary

    for module in (run, summary, report):
        source = inspect.getsource(module)
        for name in EVAL_TASKS:
            assert f'"{name}"' not in source and f"'{name}'" not in source, (module.__name__, name)
