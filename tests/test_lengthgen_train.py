"""The length-generalization benchmark: the training loop learns, results aggregate as documented, the CLI
writes, resumes and rejects bad input with one line.

Run: PYTHONPATH=src python -m pytest tests/test_lengthgen_train.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from longseq import cli
from longseq.lengthgen.protocol import PRESETS, Protocol, make_protocol, parse_length_spec, run_key
from longseq.lengthgen.report import render_report, summarize
from longseq.lengthgen.run import evaluate_model, train_encoder
from longseq.core.errors import UserError

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model trains much faster single-threaded on a shared CPU
    yield
    torch.set_num_threads(old)


def test_short_training_run_learns_even_pairs():
    p = make_protocol(tasks=["even_pairs"], pes=["rope"], train_lengths=[1, 2, 3, 4, 5], test_lengths=[5],
                      steps=400, batch_size=32, eval_samples=256, max_len=64, dropout=0.0, n_layers=2, d_ff=128)
    before = evaluate_model(train_encoder("even_pairs", "rope", 0, 2e-3, replace(p, steps=1), progress=False)[0],
                            "even_pairs", [3, 4, 5], p, progress=False)
    model, stats = train_encoder("even_pairs", "rope", 0, 2e-3, p, progress=False)
    after = evaluate_model(model, "even_pairs", [1, 2, 3, 4, 5], p, progress=False)
    assert min(before.values()) < 0.8  # an untrained model is near chance on lengths >= 3
    # per-sequence accuracy on the training lengths (chance is 0.5); seeds 0, 3, 4 all reach 100% here
    assert sum(after.values()) / len(after) >= 0.95 and min(after.values()) >= 0.8, after
    assert stats["train_accuracy"] >= 0.9 and stats["train_seq_per_s"] > 0


def _record(task, pe, seed, lr, acc, p, per_length):
    return {"key": run_key(task, pe, seed, lr, p), "fingerprint": p.fingerprint(), "task": task, "pe": pe,
            "seed": seed, "lr": lr, "accuracy": acc, "per_length": {str(k): v for k, v in per_length.items()},
            "train_accuracy": 1.0}


def test_summary_mean_at_best_lr_and_best_run():
    p = Protocol(tasks=["parity_check"], pes=["rope", "randomized_rope"], test_lengths=[41, 42], seeds=2,
                 lrs=[1e-3, 1e-4])
    recs = [
        _record("parity_check", "rope", 0, 1e-3, 0.5, p, {41: 0.6, 42: 0.4}),
        _record("parity_check", "rope", 1, 1e-3, 0.7, p, {41: 0.8, 42: 0.6}),  # lr 1e-3 mean 0.6
        _record("parity_check", "rope", 0, 1e-4, 0.9, p, {41: 0.9, 42: 0.9}),
        _record("parity_check", "rope", 1, 1e-4, 0.1, p, {41: 0.1, 42: 0.1}),  # lr 1e-4 mean 0.5, best 0.9
        _record("parity_check", "randomized_rope", 0, 1e-3, 0.8, p, {41: 0.8, 42: 0.8}),
        _record("parity_check", "randomized_rope", 7, 1e-3, 0.0, p, {41: 0.0, 42: 0.0}),  # seed outside 0..1
        {**_record("parity_check", "randomized_rope", 1, 1e-3, 0.0, p, {41: 0, 42: 0}), "fingerprint": "old"},
    ]
    s = summarize(recs, p)
    rope, rand = s["results"]
    assert (rope["pe"], rope["lr"], rope["seeds"]) == ("rope", 1e-3, 2)
    assert rope["accuracy_mean"] == pytest.approx(0.6) and rope["accuracy_best"] == pytest.approx(0.9)
    assert rope["per_length"] == {"41": pytest.approx(0.7), "42": pytest.approx(0.5)}
    assert (rand["accuracy_mean"], rand["accuracy_best"], rand["seeds"]) == (pytest.approx(0.8), 0.8, 1)
    report = render_report(s)
    assert "| parity_check | R | 60.0 (90.0) | 80.0 (80.0) |" in report
    assert "| parity_check | +20.0 |" in report and "**+20.0**" in report


def test_length_spec_parsing():
    assert parse_length_spec("1-40") == list(range(1, 41))
    assert parse_length_spec("41-500:100") == [41, 141, 241, 341, 441]
    assert parse_length_spec("7, 3-4") == [3, 4, 7]
    for bad in ("0-5", "10-5", "a-b", "", "5-9:0"):
        with pytest.raises(UserError):
            parse_length_spec(bad)


def test_presets_are_valid_and_quick_is_small():
    quick, paper = make_protocol("quick"), make_protocol("paper")
    assert len(paper.tasks) == 15 and len(paper.pes) == 11 and paper.test_lengths == list(range(41, 501))
    assert paper.max_len == 2048 and paper.seeds == 10 and paper.batch_size == 128
    assert any(pe.startswith("randomized_") for pe in quick.pes) and any(
        not pe.startswith("randomized_") for pe in quick.pes)
    assert set(PRESETS) == {"default", "quick", "paper"}


def test_tape_longer_than_position_range_is_rejected_before_training():
    with pytest.raises(UserError, match="raise --max-len to at least 1500"):
        make_protocol(tasks=["duplicate_string"], pes=["randomized_rope"], test_lengths=[500], max_len=1024)
    make_protocol(tasks=["duplicate_string"], pes=["rope"], test_lengths=[500], max_len=1024)  # no table needed


def test_cli_writes_resumes_and_reports(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["lengthgen", "--tasks", "parity_check", "--pe", "none,sin_cos,randomized_sin_cos", "--steps", "3",
            "--train-lengths", "1-4", "--test-lengths", "5-7", "--eval-samples", "8", "--batch-size", "4",
            "--max-len", "32", "--device", "cpu", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["task"], r["pe"], r["seeds"]) for r in summary["results"]] == [
        ("parity_check", "none", 1), ("parity_check", "sin_cos", 1), ("parity_check", "randomized_sin_cos", 1)]
    for r in summary["results"]:
        assert set(r) >= {"task", "pe", "accuracy_mean", "accuracy_best", "seeds"}
        assert set(r["per_length"]) == {"5", "6", "7"}  # the first test length is not skipped
        assert 0 <= r["accuracy_mean"] <= r["accuracy_best"] <= 1
    report = (out / "report.md").read_text()
    assert "randomized_sin_cos - sin_cos" in report
    assert (out / "accuracy_vs_length.png").read_bytes()[:4] == b"\x89PNG"
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 3
    capsys.readouterr()
    assert cli.main(argv) == 0  # resume: nothing retrained
    assert "3/3 runs cached" in capsys.readouterr().err
    assert (out / "runs.jsonl").read_text().splitlines() == lines
    assert cli.main(argv + ["--seeds", "2"]) == 0  # adds seed 1 only
    assert len((out / "runs.jsonl").read_text().splitlines()) == 6


@pytest.mark.parametrize("args,needle", [
    (["--tasks", "parity_chek", "--pe", "rope"], "unknown task 'parity_chek' (did you mean 'parity_check'?)"),
    (["--tasks", "parity_check", "--pe", "randomized_none"], "unknown positional encoding"),
    (["--tasks", "parity_check", "--pe", "rope", "--test-lengths", "50-10"], "--test-lengths"),
    (["--tasks", "parity_check", "--pe", "rope", "--steps", "0"], "--steps must be >= 1"),
    (["--tasks", "parity_check", "--pe", "rope", "--lr", "fast"], "--lr 'fast' is not a number"),
    (["--tasks", "reverse_string", "--pe", "randomized_rope", "--max-len", "100"], "raise --max-len"),
    (["--tasks", "parity_check", "--pe", "rope", "--device", "cuda"], "no CUDA device"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    proc = subprocess.run([sys.executable, "-m", "longseq", "lengthgen", *args, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_evaluation_is_reproducible_and_leaves_global_rng_alone():
    p = make_protocol(tasks=["reverse_string"], pes=["randomized_rope"], train_lengths=[1, 2], test_lengths=[6],
                      steps=2, batch_size=4, eval_samples=16, max_len=64, n_layers=1)
    model, _ = train_encoder("reverse_string", "randomized_rope", 0, 1e-3, p, progress=False)
    logits = []
    model.register_forward_hook(lambda mod, args, out: logits.append(out.detach().clone()))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    evaluate_model(model, "reverse_string", [6], p, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    evaluate_model(model, "reverse_string", [6], p, progress=False)
    assert torch.equal(logits[0], logits[1])  # same positions drawn in both evaluations
    assert model.training and model.position_generator is None
