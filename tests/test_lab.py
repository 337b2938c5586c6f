"""The lab: verdicts follow the measured numbers, and the whole pipeline runs end to end (reduced size)."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil

import pytest

from longseq.core.errors import UserError
from longseq.core.fsutil import read_jsonl
from longseq.lab.findings import FINDINGS
from longseq.lab.presets import FACTORS, FINETUNES, SIZES
from longseq.lab.report import report_markdown
from longseq.lab.run import run_lab
from longseq.lab.stages import perplexities


def fake_summary(ppl: dict[str, dict[str, dict[int, float]]], costs: dict[str, dict] | None = None) -> dict:
    """A summary with hand-set perplexities: {run: {method: {length: ppl}}}."""
    native = 256
    return {
        "native": native, "lengths": [native, 2 * native, 4 * native, 8 * native],
        "costs": costs or {},
        "evals": {run: {"perplexity": {m: {str(n): v for n, v in t.items()} for m, t in methods.items()},
                        "retrieval": {}} for run, methods in ppl.items()},
    }


def verdict(key: str, s: dict) -> bool | None:
    finding = next(f for f in FINDINGS if f.key == key)
    return finding.judge(s)[0]


def test_pi_verdict_follows_numbers():
    s = fake_summary({"ft-pi": {"none": {1024: 20.0}}, "ft-direct": {"none": {1024: 90.0}}})
    assert verdict("pi", s) is True
    s["evals"]["ft-pi"]["perplexity"]["none"]["1024"] = 89.5  # within the 2% noise margin: not a win
    assert verdict("pi", s) is False
    s["evals"]["ft-pi"]["perplexity"]["none"]["1024"] = 95.0
    assert verdict("pi", s) is False
    del s["evals"]["ft-direct"]
    assert verdict("pi", s) is None


def test_yarn_ntk_verdict_needs_both_methods_at_both_factors():
    runs = {f"zero-shot-{f}x": {"pi": {256 * f: 50.0}, "yarn": {256 * f: 30.0}, "ntk": {256 * f: 40.0}, "none": {}}
            for f in FACTORS}
    s = fake_summary(runs)
    assert verdict("yarn_ntk", s) is True
    s["evals"]["zero-shot-8x"]["perplexity"]["ntk"]["2048"] = 60.0
    assert verdict("yarn_ntk", s) is False


def test_longlora_verdict_checks_quality_and_cost():
    ppl = {"ft-pi": {"none": {1024: 10.0}}, "ft-longlora": {"none": {1024: 10.5}}, "ft-lora": {"none": {1024: 14.0}}}
    costs = {"ft-pi": {"train_seconds": 100.0, "peak_rss_mb": 900.0},
             "ft-longlora": {"train_seconds": 60.0, "peak_rss_mb": 800.0}}
    s = fake_summary(ppl, costs)
    assert verdict("longlora", s) is True
    worse = copy.deepcopy(s)
    worse["evals"]["ft-longlora"]["perplexity"]["none"]["1024"] = 12.0  # > 10% worse than full fine-tuning
    assert verdict("longlora", worse) is False
    dearer = copy.deepcopy(s)
    dearer["costs"]["ft-longlora"] = {"train_seconds": 120.0, "peak_rss_mb": 950.0}
    assert verdict("longlora", dearer) is False
    noise = copy.deepcopy(s)
    noise["costs"]["ft-longlora"] = {"train_seconds": 98.0, "peak_rss_mb": 860.0}  # < 10% less: not "a fraction"
    assert verdict("longlora", noise) is False


def test_longlora_note_reports_the_measured_trainable_share():
    costs = {"ft-pi": {"trainable_parameters": 1000}, "ft-longlora": {"trainable_parameters": 940}}
    s = fake_summary({}, costs)
    notes = next(f for f in FINDINGS if f.key == "longlora").judge(s)[3]
    assert len(notes) == 1 and "trains 94% of this model's weights" in notes[0]
    assert next(f for f in FINDINGS if f.key == "longlora").judge(fake_summary({}))[3] == []


def test_randomized_and_abf_verdicts():
    s = fake_summary({"randomized": {"none": {512: 30.0, 1024: 35.0, 2048: 40.0}},
                      "zero-shot-8x": {"none": {512: 60.0, 1024: 200.0, 2048: 900.0}},
                      "ft-abf": {"none": {1024: 9.0}}, "ft-pi": {"none": {1024: 9.5}}})
    assert verdict("randomized", s) is True and verdict("abf", s) is True
    s["evals"]["randomized"]["perplexity"]["none"]["2048"] = 1000.0
    s["evals"]["ft-abf"]["perplexity"]["none"]["1024"] = 9.8
    assert verdict("randomized", s) is False and verdict("abf", s) is False


def test_report_says_when_no_model_retrieved_anything():
    s = fake_summary({"ft-pi": {"none": {1024: 9.0}}})
    s.update(size="test", seed=0, seconds=60.0, findings=[], costs={},
             settings={"layers": 2, "hidden": 32, "heads": 2, "kv_heads": 1, "pretrain_steps": 3,
                       "pretrain_batch": 2, "finetune_steps": 2, "finetune_batch": 1})
    s["evals"]["ft-pi"]["retrieval"] = {"none": {"256": 0.0, "1024": 0.0}}
    assert "No model retrieved" in report_markdown(s, [])
    s["evals"]["ft-pi"]["retrieval"]["none"]["1024"] = 0.5
    assert "No model retrieved" not in report_markdown(s, [])


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
        assert f["verdict"] in ("reproduced", "not reproduced")  # every number was measured
        assert f"## {f['title']}" in report and f"**{f['verdict']}**" in report
        # the verdict in the file is what the judge says about the file's own numbers
        ok = next(x for x in FINDINGS if x.key == f["key"]).judge(summary)[0]
        assert f["verdict"] == ("reproduced" if ok else "not reproduced")
    for run in ["pretrain-std", "pretrain-rand", *(ft.name for ft in FINETUNES)]:
        assert (out / run / "model" / "config.json").is_file()
        assert summary["costs"][run]["peak_rss_mb"] > 0
        assert summary["costs"][run]["allocator"] == ("tuned" if run.startswith("pretrain") else "glibc default")
    ft_pi = json.loads((out / "ft-pi" / "model" / "config.json").read_text())
    assert ft_pi["rope_parameters"]["rope_type"] == "linear" and ft_pi["rope_parameters"]["factor"] == 4.0
    assert (out / "perplexity.png").stat().st_size > 1000
    assert "*Note*: LongLoRA trains" in report  # computed from the arms' trainable parameter counts
    # a second run reuses every cached stage and reproduces the same numbers
    again = run_lab(out, "test")
    assert again["evals"] == summary["evals"] and again["costs"] == summary["costs"]
    assert again["seconds"] >= summary["seconds"]  # the wall time of every invocation adds up
    # an arm interrupted before its first checkpoint (run.json and a partial metrics file, no checkpoint) reruns
    arm = out / "ft-lora"
    for stale in ("model", "checkpoint", "checkpoint.old"):
        shutil.rmtree(arm / stale, ignore_errors=True)
    (out / "costs" / "ft-lora.json").unlink()
    (arm / "metrics.jsonl").write_text((arm / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    assert (arm / "run.json").is_file()
    third = run_lab(out, "test")
    assert (arm / "model" / "config.json").is_file()
    assert [r["step"] for r in read_jsonl(arm / "metrics.jsonl")] == list(range(1, SIZES["test"].finetune_steps + 1))
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
