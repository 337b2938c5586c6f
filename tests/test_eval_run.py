"""End to end ``longseq eval`` on a tiny random Llama: outputs, resume, engine vs transformers, errors."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

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
            assert r["prompt_tokens"] <= r["length"]  # RULER/LongEval: prompt + tokens to generate fit L
        if r["task"] == "passkey":
            assert 0.98 * r["length"] <= r["prompt_tokens"]
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
    (["--lengths", "1M"], "needs about"),  # a tiny model's 1M prompt: the attention mask alone is 48 GiB
    (["--chunk-size", "0"], "--chunk-size must be >= 1"),
    (["--seed", "-1"], "--seed must be"),
    (["--lengths", "1000.7"], "not a whole number"),
    (["--lengths", "4k,4096"], "lists 4096 tokens twice"),
    (["--lengths", ","], "no lengths given"),
    (["--tasks", ","], "nothing to evaluate"),
    (["--tasks", "passkey,passkey"], "--tasks lists passkey twice"),
    (["--methods", "none,none"], "method none at length 1024 is listed twice"),
    (["--target-length", "0"], "must be positive"),
    (["--methods", "none,yarn", "--target-length", "1000m"], "at most 1024 x"),  # refused before any model loads
    (["--threshold", "nan"], "--threshold must be in [0, 1]"),
    (["--depths", "50,nan", "--tasks", "niah"], "depths are fractions"),
    (["--depths", " , ", "--tasks", "niah"], "--depths must be numbers"),
    (["--prompt-format", "xml"], "unknown prompt format"),
    (["--tasks", "ppl", "--ppl-text", "/nonexistent/text.txt"], "/nonexistent/text.txt"),
])
def test_bad_input_is_one_line_exit_2(tiny_llama, tmp_path, capsys, monkeypatch, argv, needle):
    from longseq.models import generation

    monkeypatch.setattr(generation, "available_memory_bytes", lambda: 16 * 2**30)  # as on a 16 GiB machine
    code, err = _cli(capsys, str(tiny_llama), "--out", str(tmp_path / "o"), "--no-progress", "--samples", "1", *argv)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("longseq: error:") and needle in err[0], err
    assert not (tmp_path / "o").exists()  # validated before anything is written


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def done_run(tiny_llama, tmp_path):
    """A finished 3-sample passkey run (one cell) in tmp_path/run; returns its config."""
    cfg = _cfg(tiny_llama, tmp_path / "run", tasks=["passkey"], cells=[("none", 512)], samples=3)
    run_eval(cfg, progress=False, quiet=True)
    return cfg


@pytest.mark.parametrize("argv,needle", [
    (["--seed", "2"], "different seed"),
    (["--chunk-size", "0"], "--chunk-size"),
    (["--lengths", "100", "--tasks", "topics"], "too short"),
])
def test_bad_input_on_a_finished_run_changes_nothing(done_run, tiny_llama, capsys, argv, needle):
    out = Path(done_run.out)
    before = _snapshot(out)
    code, err = _cli(capsys, str(tiny_llama), "--out", str(out), "--no-progress", "--seed", "1", "--samples", "3",
                     "--lengths", "512", *argv)
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert _snapshot(out) == before


def _records(out):
    return [json.loads(line) for line in (Path(out) / "samples.jsonl").read_text().splitlines()]


def test_a_duplicated_line_is_counted_once_on_resume(done_run, monkeypatch):
    out = Path(done_run.out)
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join(lines + lines[1:2]))  # an old resume or a second writer
    before = (out / "samples.jsonl").read_bytes()
    monkeypatch.setattr(HFEngine, "load", classmethod(lambda *a, **k: pytest.fail("nothing is pending")))
    summary = run_eval(done_run, progress=False, quiet=True)
    row, = summary["results"]
    assert row["n"] == 3 and summary["complete"]
    assert math.isclose(row["score"], sum(r["score"] for r in _records(out)[:3]) / 3)
    assert (out / "samples.jsonl").read_bytes() == before  # nothing appended, nothing rewritten


def test_a_torn_last_line_is_redone_without_swallowing_the_next_record(done_run):
    out = Path(done_run.out)
    complete = _records(out)
    text = (out / "samples.jsonl").read_text()
    (out / "samples.jsonl").write_text(text[: len(text) - 25])  # killed in the middle of the third record
    run_eval(done_run, progress=False, quiet=True)
    again = _records(out)
    for r in again + complete:
        r.pop("seconds")
    assert again == complete  # the torn record was cut and redone (prompts are deterministic)
    assert json.loads((out / "summary.json").read_text())["results"][0]["n"] == 3


@pytest.mark.parametrize("field,value,needle", [
    ("length", "512x", "samples.jsonl:2: field 'length' is \"512x\", not int"),
    ("score", None, "samples.jsonl:2: field 'score' is null, not int or float"),
    ("index", True, "samples.jsonl:2: field 'index' is true, not int"),
    ("task", None, "samples.jsonl:2: field 'task' is null"),
    ("method", "DELETE", "samples.jsonl:2: field 'method' is missing"),
])
def test_a_record_with_wrong_fields_is_a_one_line_error_naming_the_line(done_run, tiny_llama, capsys, field, value,
                                                                         needle):
    out = Path(done_run.out)
    records = _records(out)
    if value == "DELETE":
        del records[1][field]
    else:
        records[1][field] = value
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    before = _snapshot(out)
    code, err = _cli(capsys, str(tiny_llama), "--out", str(out), "--no-progress", "--seed", "1", "--samples", "3",
                     "--lengths", "512")
    assert code == 2 and len(err) == 1 and needle in err[0] and "fix or delete that line" in err[0], err
    assert _snapshot(out) == before


def test_a_full_disk_is_a_one_line_error_and_the_rerun_completes(tiny_llama, tmp_path, capsys, monkeypatch):
    import errno

    from longseq.core import fsutil
    from longseq.core.fsutil import read_jsonl

    out = tmp_path / "run"
    appends = {"n": 0}

    class FullDisk:
        """A file whose write stores half of the bytes, then fails as a full disk does."""

        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def full_after_one_sample(path, mode="r", *a, **k):
        fh = open(path, mode, *a, **k)
        if str(path).endswith("samples.jsonl") and "a" in mode:
            appends["n"] += 1
            if appends["n"] > 1:
                return FullDisk(fh)
        return fh

    monkeypatch.setattr(fsutil, "open", full_after_one_sample, raising=False)
    argv = [str(tiny_llama), "--out", str(out), "--no-progress", "--seed", "1", "--samples", "3", "--lengths", "512"]
    code, err = _cli(capsys, *argv)
    err = [line for line in err if not line.startswith("Loading weights")]  # transformers' progress bar
    assert code == 2 and len(err) == 1 and "No space left on device; free some disk space" in err[0], err
    assert len(read_jsonl(out / "samples.jsonl")) == 1  # the finished sample is kept; the torn one is not counted
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]
    monkeypatch.undo()
    assert _cli(capsys, *argv)[0] == 0
    assert sorted(r["index"] for r in _records(out)) == [0, 1, 2]  # torn tail cut, every line complete


def test_a_read_only_out_is_a_one_line_error(done_run, tiny_llama, capsys, monkeypatch):
    import errno

    from longseq.core import rundir

    out = Path(done_run.out)
    before = _snapshot(out)

    def read_only(path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(rundir.os, "open", read_only)  # the first write of a run: its lock file
    code, err = _cli(capsys, str(tiny_llama), "--out", str(out), "--no-progress", "--seed", "1", "--samples", "3",
                     "--lengths", "512,1024")
    assert code == 2 and len(err) == 1 and "Read-only file system; choose a writable --out" in err[0], err
    assert _snapshot(out) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_out_folder_is_a_one_line_error(tiny_llama, tmp_path, capsys):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, err = _cli(capsys, str(tiny_llama), "--out", str(parent / "run"), "--no-progress", "--samples", "1",
                         "--lengths", "512")
    finally:
        parent.chmod(0o755)
    assert code == 2 and len(err) == 1 and "choose a writable --out" in err[0], err


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
    assert cfg.cells == [("none", L) for L in (1024, 4096, 8192, 16384)] + [("yarn", 16384)]
    assert cfg.task_lengths == {"lines": (1024,)}
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
    assert re.search(r"count \(custom\) +11\.50", capsys.readouterr().out)
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


_PEAK = """
import json, resource, sys
import torch
from longseq.models.generation import LocalLM, estimate_memory_bytes
from longseq.models.loading import load_model


def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))


def peak_of(run):
    # peak resident memory of run() above the memory held before it (VmHWM reset through clear_refs;
    # where that is not allowed, getrusage's lifetime peak, a lower bound of the same figure)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = status("VmRSS:")
        run()
        return status("VmHWM:") - before
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        run()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


rows = []
for attn, length, chunk, mode in json.loads(sys.argv[2]):
    model, tok = load_model(sys.argv[1], attn_implementation=attn)
    lm = LocalLM(model, tok, chunk)
    ids = torch.randint(100, model.config.vocab_size, (length,), generator=torch.Generator().manual_seed(length)).tolist()
    run = (lambda: lm.generate_ids(ids, 1, stop=())) if mode == "gen" else (lambda: lm.nll(ids))
    rows.append({"attn": attn, "length": length, "chunk": chunk, "mode": mode, "peak": peak_of(run),
                 "estimate": estimate_memory_bytes(model.config, length, chunk, lm.bytes_per_value, attn)})
    del lm, model
print(json.dumps(rows))
"""


def _peaks(model, cases):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _PEAK, str(model), json.dumps(cases)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_memory_estimate_is_an_upper_bound_of_the_measured_peak(tiny_llama):
    """Peak resident memory of a prefill (and of a perplexity pass) stays under the estimate; at these
    lengths the chunk x length attention mask is already the largest measured term (the KV cache of this
    model is a few MB), at 128k-1M it is nearly all of it."""
    rows = _peaks(tiny_llama, [["sdpa", 16384, 4096, "gen"], ["sdpa", 4096, 1024, "nll"], ["eager", 4096, 2048, "gen"]])
    for r in rows:
        assert r["estimate"] >= r["peak"], r
    assert rows[0]["peak"] > 3 * 4096 * 16384 // 2  # the mask is really there: the measurement is not vacuous


@pytest.mark.slow
def test_memory_estimate_bounds_the_embedded_model():
    for r in _peaks("smollm2-135m", [["sdpa", 8192, 4096, "gen"], ["sdpa", 8192, 2048, "nll"]]):
        assert r["estimate"] >= r["peak"], r


def test_a_folder_of_an_older_prompt_protocol_is_refused(done_run):
    """Samples scored with other prompts are never mixed in: a run.json without "protocol" is version 1."""
    marker = Path(done_run.out) / "run.json"
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "protocol"}))
    before = _snapshot(Path(done_run.out))
    with pytest.raises(UserError, match="different protocol"):
        run_eval(done_run, progress=False, quiet=True)
    assert _snapshot(Path(done_run.out)) == before
