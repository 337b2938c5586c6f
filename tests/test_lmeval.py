"""``longseq export-lm-eval``: lm-evaluation-harness runs the exported tasks (hf backend, offline) on a tiny
checkpoint and gets the same greedy outputs and scores as ``longseq eval`` on the same samples."""

from __future__ import annotations

import json
import os

import pytest

from longseq.cli import main
from longseq.eval.lmeval import harness_name
from longseq.eval.plan import EvalConfig
from longseq.eval.run import run_eval


def test_lm_eval_round_trip_equals_longseq_eval(tiny_llama, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"context": "The vault code is 5521. " + "Rain fell all day. " * 30 * n,
                                        "question": "What is the vault code?", "answers": ["5521"],
                                        "metric": m}) + "\n" for n, m in ((1, "substring"), (2, "f1"))))
    tasks, lengths = ["passkey", "niah", f"jsonl:{docs}"], [256, 384]
    folder = tmp_path / "harness"
    assert main(["export-lm-eval", str(tiny_llama), "--tasks", "passkey,niah", "--tasks", f"jsonl:{docs}",
                 "--lengths", "256,384", "--samples", "2", "--seed", "4", "--out", str(folder)]) == 0
    assert "lm_eval --model hf" in capsys.readouterr().out
    names = [harness_name(t, "", L) for t in ("passkey", "niah", f"jsonl:{docs}") for L in lengths]
    assert sorted(p.stem for p in folder.glob("*.yaml")) == sorted(names)
    assert "longseq_docs_256" in names and harness_name("passkey", "", 4096) == "longseq_passkey_4k"

    summary = run_eval(EvalConfig(model=str(tiny_llama), out=str(tmp_path / "run"), tasks=tasks,
                                  cells=[("none", L) for L in lengths], samples=2, seed=4, dtype="float32"),
                       progress=False, quiet=True)
    ours = {(r["task"], r["length"], r["index"]): r
            for r in map(json.loads, (tmp_path / "run" / "samples.jsonl").read_text().splitlines())}

    import lm_eval
    from lm_eval.tasks import TaskManager

    from longseq.models.generation import cut_at_stop

    res = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(tiny_llama), "dtype": "float32"},
                                  tasks=names, task_manager=TaskManager(include_path=str(folder)), batch_size=1, device="cpu",
                                  log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    compared = 0
    for name in names:
        for s in res["samples"][name]:
            doc = s["doc"]
            mine = ours[(doc["task"], doc["length"], doc["index"])]
            assert s["arguments"][0][0] == doc["prompt"]  # the harness feeds our prompt text unchanged
            assert doc["prompt_tokens"] == mine["prompt_tokens"]
            assert cut_at_stop(s["resps"][0][0], ("\n",))[0] == mine["output"]
            assert s["score"] == mine["score"]
            compared += 1
        row = next(r for r in summary["results"] if harness_name(r["task"], "", r["length"]) == name)
        assert res["results"][name]["score,none"] == pytest.approx(row["score"])
    assert compared == 2 * 2 * 2 + 2  # passkey, niah: 2 lengths x 2 samples; docs.jsonl: one record per bucket


def test_export_refuses_ppl_and_a_file_as_out(tiny_llama, tmp_path, capsys):
    assert main(["export-lm-eval", str(tiny_llama), "--tasks", "ppl", "--lengths", "256", "--out",
                 str(tmp_path / "x")]) == 2
    assert "cannot be exported" in capsys.readouterr().err and not (tmp_path / "x").exists()
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    assert main(["export-lm-eval", str(tiny_llama), "--lengths", "256", "--samples", "1", "--out", str(blocker)]) == 2
    assert blocker.read_text() == "keep" and "is a file" in capsys.readouterr().err
    assert os.path.exists(blocker)


def test_export_again_replaces_the_folder_and_never_touches_other_files(tiny_llama, tmp_path, capsys):
    folder, base = tmp_path / "h", ["export-lm-eval", str(tiny_llama), "--samples", "1", "--out"]
    assert main(base + [str(folder), "--lengths", "256,384"]) == 0
    assert main(base + [str(folder), "--lengths", "256"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["longseq_passkey_256.jsonl", "longseq_passkey_256.yaml",
                                                        "utils.py"]
    doc = json.loads((folder / "longseq_passkey_256.jsonl").read_text().splitlines()[0])
    assert doc["task"] == "passkey" and 0.98 * 256 <= doc["prompt_tokens"] <= 256 and doc["max_new_tokens"] == 10
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(base + [str(other), "--lengths", "256"]) == 2
    assert "holds other files" in capsys.readouterr().err and sorted(os.listdir(other)) == ["notes.txt"]
