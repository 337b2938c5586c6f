"""The length-generalization benchmark: the training loop learns, results aggregate as documented, the CLI
writes, resumes and rejects bad input with one line.

Run: PYTHONPATH=src python -m pytest tests/test_lengthgen_train.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longseq import cli
from longseq.lengthgen.protocol import PRESETS, Protocol, make_protocol, parse_length_spec, run_key
from longseq.lengthgen.report import render_report, summarize
from longseq.lengthgen.run import evaluate_model, hits, token_loss, train_encoder
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
    assert min(before["token"].values()) < 0.8  # an untrained model is near chance on lengths >= 3
    assert before["token"] == before["sequence"]  # one output token: the two metrics agree
    # accuracy on the training lengths (chance is 0.5); seeds 0, 3, 4 all reach 100% here
    acc = after["token"]
    assert sum(acc.values()) / len(acc) >= 0.95 and min(acc.values()) >= 0.8, acc
    assert stats["train_accuracy"] >= 0.9 and stats["train_seq_per_s"] > 0


def _record(task, pe, seed, lr, acc, p, per_length):
    per_length = {str(k): v for k, v in per_length.items()}
    return {"key": run_key(task, pe, seed, lr, p), "fingerprint": p.fingerprint(), "task": task, "pe": pe,
            "seed": seed, "lr": lr, "accuracy": acc, "per_length": per_length, "train_accuracy": 1.0,
            "sequence_accuracy": acc / 2, "per_length_sequence": {k: v / 2 for k, v in per_length.items()}}


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
    recs.append({**recs[1], "accuracy": 0.0})  # a duplicated key (two writers): the first copy counts once
    s = summarize(recs, p)
    rope, rand = s["results"]
    assert (rope["pe"], rope["lr"], rope["seeds"]) == ("rope", 1e-3, 2)
    assert rope["accuracy_mean"] == pytest.approx(0.6) and rope["accuracy_best"] == pytest.approx(0.9)
    assert rope["per_length"] == {"41": pytest.approx(0.7), "42": pytest.approx(0.5)}
    assert rope["sequence_accuracy_mean"] == pytest.approx(0.3) and rope["sequence_accuracy_best"] == 0.45
    assert rope["per_length_sequence"] == {"41": pytest.approx(0.35), "42": pytest.approx(0.25)}
    assert (rand["accuracy_mean"], rand["accuracy_best"], rand["seeds"]) == (pytest.approx(0.8), 0.8, 1)
    report = render_report(s)
    assert "| parity_check | R | 60.0 (90.0) | 80.0 (80.0) |" in report
    assert "| parity_check | +20.0 |" in report and "**+20.0**" in report
    assert "| parity_check | R | 30.0 (45.0) | 40.0 (40.0) |" in report  # the per-sequence table
    assert "Per-token accuracy" in report and "Per-sequence accuracy" in report


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
        assert set(r) >= {"task", "pe", "accuracy_mean", "accuracy_best", "seeds", "sequence_accuracy_mean"}
        assert set(r["per_length"]) == {"5", "6", "7"}  # the first test length is not skipped
        assert set(r["per_length_sequence"]) == {"5", "6", "7"}
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
    (["--tasks", "parity_check", "--pe", "rope", "--steps", "0"], "--steps must be an integer >= 1"),
    (["--tasks", "parity_check", "--pe", "rope", "--lr", "fast"], "--lr 'fast' is not a number"),
    (["--tasks", "reverse_string", "--pe", "randomized_rope", "--max-len", "100"], "raise --max-len"),
    (["--tasks", "parity_check", "--pe", "rope", "--device", "cuda"], "no CUDA device"),
    (["--tasks", "parity_check", "--pe", "rope", "--lr", "nan"], "--lr must be a finite number in (0, 1], got nan"),
    (["--tasks", "parity_check", "--pe", "rope", "--lr", "inf"], "--lr must be a finite number"),
    (["--tasks", "parity_check", "--pe", "rope", "--lr=-1e-3"], "--lr must be a finite number"),
    (["--tasks", "parity_check", "--pe", "rope", "--lr", "1e-3,0.001"], "--lr lists 0.001 twice"),
    (["--tasks", "parity_check,parity_check", "--pe", "rope"], "--tasks lists parity_check twice"),
    (["--tasks", "parity_check", "--pe", "rope", "--batch-size", "-3"], "--batch-size must be an integer >= 1"),
    (["--tasks", "parity_check", "--pe", "rope", "--test-lengths", "1000000"],
     "testing parity_check at length 1,000,000 (tape of 1,000,001 positions) needs about"),
    (["--tasks", "duplicate_string", "--pe", "rope", "--train-lengths", "1-20000"],
     "a training step of duplicate_string at length 20,000 (batch 128, tape of 60,000 positions) needs about"),
    (["--tasks", "parity_check", "--pe", "randomized_rope", "--max-len", "100000000000"], "needs about"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, needle):
    assert cli.main(["lengthgen", *args, "--out", str(tmp_path / "o")]) == 2  # in-process: fast, and an
    err = capsys.readouterr().err                                            # uncaught exception fails it
    assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "o").exists()


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "longseq", "lengthgen", "--lr", "nan", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
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


def _quick_args(out: Path) -> list[str]:
    return ["lengthgen", "--tasks", "parity_check", "--pe", "none,rope", "--steps", "3", "--train-lengths", "1-4",
            "--test-lengths", "5-6", "--eval-samples", "8", "--batch-size", "4", "--max-len", "32",
            "--device", "cpu", "--out", str(out), "--no-progress"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished two-run folder, shared by the tests below (copied before being changed)."""
    out = tmp_path_factory.mktemp("lengthgen") / "run"
    assert cli.main(_quick_args(out)) == 0
    return out


def _drop(record: dict, *path: str) -> None:
    for key in path[:-1]:
        record = record[key]
    del record[path[-1]]


@pytest.mark.parametrize("line,change,needle", [
    (2, lambda r: r.update(accuracy="high"), "field 'accuracy' is \"high\", not a number"),
    (1, lambda r: _drop(r, "per_length"), "field 'per_length' is missing"),
    (2, lambda r: r.update(seed=1.5), "field 'seed' is 1.5, not an integer"),
    (1, lambda r: _drop(r, "per_length_sequence", "6"), "field 'per_length_sequence' has no accuracy for test length 6"),
    (2, None, "is not a JSON record"),
])
def test_bad_runs_jsonl_is_one_line_error_naming_the_line(finished_run, tmp_path, capsys, line, change, needle):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    log = out / "runs.jsonl"
    lines = log.read_text().splitlines()
    if change is None:
        lines[line - 1] = "[1, 2]"
    else:
        record = json.loads(lines[line - 1])
        change(record)
        lines[line - 1] = json.dumps(record)
    log.write_text("\n".join(lines) + "\n")
    before = _snapshot(out)
    capsys.readouterr()
    assert cli.main(_quick_args(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"runs.jsonl:{line}" in err and needle in err, err
    assert _snapshot(out) == before  # nothing written


def _results(log: Path) -> list[tuple]:
    """The measured part of each record (no timings), in file order."""
    return [(r["key"], r["accuracy"], r["sequence_accuracy"], r["per_length"], r["train_accuracy"])
            for r in map(json.loads, log.read_text().splitlines())]


def test_resume_after_a_kill_mid_record_is_exact(finished_run, tmp_path):
    """A writer killed mid-line leaves a torn last record: the rerun redoes that run only and every record
    equals an uninterrupted run's; a duplicated line (two writers) is counted once."""
    full, cut = finished_run, tmp_path / "cut"
    lines = (full / "runs.jsonl").read_text().splitlines()
    cut.mkdir()
    (cut / "runs.jsonl").write_text(lines[0] + "\n" + lines[0] + "\n" + lines[1][:40])  # duplicate + torn
    assert cli.main(_quick_args(cut)) == 0
    assert _results(cut / "runs.jsonl")[1:] == _results(full / "runs.jsonl")  # after the kept duplicate
    a, b = (json.loads((f / "summary.json").read_text())["results"] for f in (full, cut))
    assert a == b


def test_unwritable_out_is_refused_before_training(tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through file modes: use a read-only kernel folder instead
        out = Path("/sys/kernel/longseq-test")
        if not Path("/sys/kernel").is_dir() or os.access("/sys/kernel", os.W_OK) and _writable("/sys/kernel"):
            pytest.skip("no read-only folder available to root here")
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        out = ro / "run"
    assert cli.main(_quick_args(out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be written" in err, err
    assert not out.exists()


def _writable(folder: str) -> bool:
    try:
        Path(folder, ".longseq-w").touch()
        Path(folder, ".longseq-w").unlink()
        return True
    except OSError:
        return False


def test_memory_estimate_is_an_upper_bound_of_measured_peaks():
    """Peak RSS growth of a training step and of a test forward (alibi: the math attention path, which
    materializes the scores), measured in a fresh process, stays under the guard's estimate."""
    code = """
import json, resource, sys, torch
from longseq.lengthgen.protocol import make_protocol
from longseq.lengthgen.run import build_encoder, make_tape, token_loss
from longseq.lengthgen.chomsky import sample_batch
from longseq.lengthgen.guard import forward_bytes
torch.set_num_threads(1)
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
def hwm():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
p = make_protocol(tasks=["reverse_string"], pes=["alibi"], max_len=4096, n_layers=2)
out = []
for training, batch, n in ((True, 8, 150), (False, 4, 400)):
    model = build_encoder("reverse_string", "alibi", p, "cpu")
    x, y, m = sample_batch("reverse_string", n, batch, seed=0)
    tape = make_tape(x, y.shape[1], model.blank, "cpu")
    open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
    base = rss()
    if training:
        token_loss(model(tape)[:, -n:], torch.from_numpy(y), torch.from_numpy(m), "full").backward()
    else:
        model.eval()
        with torch.no_grad():
            model(tape)
    out.append((hwm() - base, forward_bytes(p, batch, 2 * n, training)))
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    for measured, estimate in json.loads(proc.stdout):
        assert 0 < measured <= estimate, (measured, estimate)
        assert estimate < 40 * measured  # an upper bound, not an absurd one


def test_losses_and_metrics_match_their_definitions():
    """``full`` is the reference's loss (mean over batch and slots of -sum(one_hot * log_softmax)), the padding
    after the end token included; ``masked`` stops at the end token; hits count tokens up to it."""
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3)
    y = torch.tensor([[1, 2, 0, 0], [0, 1, 1, 2]])  # end token 2, then the reference's 0-padding
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    reference = (-(one_hot * torch.log_softmax(logits, -1)).sum(-1)).mean()
    assert token_loss(logits, y, mask, "full").item() == pytest.approx(reference.item(), rel=1e-6)
    per_token = -(one_hot * torch.log_softmax(logits, -1)).sum(-1)
    assert token_loss(logits, y, mask, "masked").item() == pytest.approx(per_token[mask].mean().item(), rel=1e-6)
    guess = torch.nn.functional.one_hot(torch.tensor([[1, 0, 1, 1], [0, 1, 1, 2]]), 3).float()
    # row 0: first token right, second wrong, the rest masked; row 1: all four right
    assert hits(guess, y, mask) == (5, 6, 1)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20))
def test_length_spec_never_fails_with_anything_but_a_user_error(text):
    try:
        lengths = parse_length_spec(text)
    except UserError:
        return
    assert lengths == sorted(set(lengths)) and lengths[0] >= 1


@settings(max_examples=200, deadline=None)
@given(lr=st.floats(allow_nan=True, allow_infinity=True), steps=st.integers(-5, 5),
       dropout=st.floats(allow_nan=True, allow_infinity=True))
def test_protocol_numbers_are_validated(lr, steps, dropout):
    try:
        p = make_protocol(tasks=["parity_check"], pes=["rope"], lrs=[lr], steps=steps, dropout=dropout)
    except UserError:
        return
    assert 0 < p.lrs[0] <= 1 and p.steps >= 1 and 0 <= p.dropout < 1


def test_full_disk_while_saving_is_one_line_and_keeps_finished_runs(tmp_path, capsys, monkeypatch):
    import errno

    from longseq.lengthgen import run

    out = tmp_path / "run"
    real_append, calls = run.append_jsonl, []

    def append_until_full(path, record):
        calls.append(record["key"])
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_append(path, record)

    monkeypatch.setattr(run, "append_jsonl", append_until_full)
    assert cli.main(_quick_args(out)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("longseq: error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and err.endswith(errors[0] + "\n"), err
    assert len((out / "runs.jsonl").read_text().splitlines()) == 1  # the first run is kept
    monkeypatch.setattr(run, "append_jsonl", real_append)
    assert cli.main(_quick_args(out)) == 0  # rerun once there is room: only the second run is redone
    assert "1/2 runs cached" in capsys.readouterr().err
