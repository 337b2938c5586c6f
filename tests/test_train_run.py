"""``longseq train`` end to end on a tiny random Llama (CPU, fp32), plus one slow run on the embedded model."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from longseq.core.fsutil import read_jsonl
from longseq.train.config import TrainConfig
from longseq.train.trainer import train


ROOT = Path(__file__).resolve().parents[1]
TEXT = "the quick brown fox jumps over the lazy dog. " * 120


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m longseq ARGS`` in a real subprocess with this checkout on the path."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "longseq", *args], capture_output=True, text=True, env=full_env,
                          timeout=600)


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl (a line being written by a live run is skipped)."""
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_tiny_llama, smol_tokenizer) -> Path:
    """2-layer Llama (hidden 32, 4 heads / 2 KV heads, 256-token context) with SmolLM2's tokenizer."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", "smollm2",
                           pad_token_id=smol_tokenizer.pad_token_id, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "text.txt"
    p.write_text(TEXT)
    return p


def _state(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.detach().clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


# Which parameters each method may change (a name predicate over the merged checkpoint's state dict).
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
EXPECTED_CHANGE = {
    "longlora": lambda n: any(a in n for a in ATTN) or "norm" in n or "embed_tokens" in n or n == "lm_head.weight",
    "lora": lambda n: any(a in n for a in ATTN),
    "full": lambda n: True,
}


@pytest.mark.parametrize("method", ["longlora", "lora", "full"])
def test_training_lowers_loss_changes_only_intended_params_and_reloads(method, tiny, text_file, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    out = tmp_path / "run"
    cfg = TrainConfig(model=str(tiny), method=method, rope="pi", factor=2, data=str(text_file), seq_len=64, steps=6,
                      batch_size=2, grad_accum=1, lr=1e-2, warmup_steps=0, save_every=3, precision="fp32",
                      out=str(out))
    result = train(cfg, progress=False)
    curve = losses(out)
    assert sorted(curve) == list(range(1, 7))
    # repeating text is easy to learn; plain LoRA (B starts at zero, nothing else trainable) moves slowest
    assert curve[6] < curve[1] - (0.05 if method == "lora" else 0.5), curve

    before, after = _state(tiny), _state(out / "model")
    assert before.keys() == after.keys()  # LoRA merged: a plain Llama state dict, no lora_A/lora_B
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    expected = {n for n in before if EXPECTED_CHANGE[method](n)}
    assert changed == expected, (sorted(changed ^ expected))

    config = AutoConfig.from_pretrained(out / "model")
    assert config.rope_parameters["rope_type"] == "linear" and config.rope_parameters["factor"] == 2.0
    assert config.max_position_embeddings == 512
    assert not hasattr(config, "s2attn_group_size")
    assert config.longseq_training["method"] == method
    reloaded = AutoModelForCausalLM.from_pretrained(out / "model")
    assert reloaded.config._attn_implementation != "s2attn"  # inference uses full attention
    assert result["parameters"]["trainable"] < result["parameters"]["total"] or method == "full"


def test_save_adapter_keeps_peft_adapter(tiny, text_file, tmp_path):
    from peft import PeftConfig

    out = tmp_path / "run"
    train(TrainConfig(model=str(tiny), method="longlora", rope="yarn", target_length=512, data=str(text_file),
                      seq_len=64, steps=1, grad_accum=1, save_every=1, precision="fp32", save_adapter=True,
                      out=str(out)), progress=False)
    pc = PeftConfig.from_pretrained(out / "adapter")
    assert pc.r == 8 and pc.lora_alpha == 16 and set(pc.target_modules) == set(ATTN)
    assert "embed_tokens" in pc.modules_to_save and "norm" in pc.modules_to_save
    assert json.loads((out / "model" / "config.json").read_text())["rope_parameters"]["rope_type"] == "yarn"


def test_kill_and_resume_reproduces_the_uninterrupted_curve(tiny, text_file, tmp_path):
    """SIGKILL a real training process mid-run, resume it, and compare every step's loss (CPU, fp32)."""
    common = [str(tiny), "--method", "longlora", "--rope", "pi", "--factor", "2", "--data", str(text_file),
              "--seq-len", "64", "--steps", "6", "--batch-size", "2", "--grad-accum", "2", "--lr", "5e-3",
              "--warmup-steps", "2", "--save-every", "2", "--precision", "fp32", "--randomized-positions", "256"]
    straight = tmp_path / "straight"
    r = run_cli("train", *common, "--out", str(straight))
    assert r.returncode == 0, r.stderr[-2000:]

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "LONGSEQ_TRAIN_STEP_DELAY": "1.5"}
    proc = subprocess.Popen([sys.executable, "-m", "longseq", "train", *common, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").exists() and max(losses(killed), default=0) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model").exists()  # it really was interrupted
    assert json.loads((killed / "checkpoint" / "state.json").read_text())["step"] in (2, 4)

    r = run_cli("train", *common, "--out", str(killed), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = losses(straight), losses(killed)
    assert sorted(b) == list(range(1, 7))
    for step in range(1, 7):
        assert abs(a[step] - b[step]) <= 1e-4, (step, a[step], b[step])


def _cli(capsys, *args):
    from longseq.cli import main

    code = main(["train", *args])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "longseq: error" in line]
    return code, err


def test_bad_input_is_one_line_exit_2(tiny, text_file, tmp_path, capsys):
    base = [str(tiny), "--data", str(text_file), "--steps", "1", "--precision", "fp32", "--rope", "pi", "--factor", "2"]
    cases = {
        "fewer than --seq-len": ["--seq-len", "4096", "--out", str(tmp_path / "a")],
        "empty": ["--seq-len", "64", "--out", str(tmp_path / "b"), "--data", str(tmp_path / "empty.txt")],
        "does not divide": ["--seq-len", "64", "--group-size", "24", "--out", str(tmp_path / "c")],
        "disagree": ["--seq-len", "64", "--target-length", "1000", "--out", str(tmp_path / "d")],
        "must be an even": ["--seq-len", "60", "--group-ratio", "0.05", "--out", str(tmp_path / "e")],
        "unknown training method": ["--seq-len", "64", "--method", "qlora", "--out", str(tmp_path / "f")],
    }
    (tmp_path / "empty.txt").write_text("  \n")
    for needle, extra in cases.items():
        code, err = _cli(capsys, *base, *extra)
        assert code == 2 and len(err) == 1 and needle in err[0], (needle, err)
        assert not Path(extra[extra.index("--out") + 1]).exists()


def test_refuses_to_clobber_or_resume_another_run(tiny, text_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = [str(tiny), "--data", str(text_file), "--seq-len", "64", "--steps", "2", "--save-every", "1",
            "--grad-accum", "1", "--precision", "fp32", "--rope", "pi", "--factor", "2", "--out", str(out)]
    from longseq.cli import main

    assert main(["train", *args]) == 0
    digest = lambda: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "checkpoint").iterdir()}  # noqa: E731
    before = digest()
    capsys.readouterr()
    code, err = _cli(capsys, *args)  # same folder without --resume
    assert code == 2 and len(err) == 1 and "--resume" in err[0]
    code, err = _cli(capsys, *[a if a != "2" else "4" for a in args[:-2]], "--lr", "1e-3", "--out", str(out), "--resume")
    assert code == 2 and len(err) == 1 and "another run" in err[0] and "lr" in err[0]
    assert digest() == before  # no checkpoint overwritten


def test_instruction_data_trains_only_on_the_output(tiny, tmp_path):
    from transformers import AutoTokenizer

    from longseq.train.corpus import IGNORE_INDEX, load_train_data

    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps({"instruction": f"Repeat the number {i}.", "output": f"{i} {i} {i}"})
                              for i in range(4)))
    tok = AutoTokenizer.from_pretrained(tiny)
    td = load_train_data(str(data), tok, 64)
    assert td.kind == "instruction" and td.input_ids.shape == (4, 64)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Repeat the number 2."}], add_generation_prompt=True,
                                     tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    answer = tok("2 2 2", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    row = td.labels[2].tolist()
    assert row[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert row[len(prompt): len(prompt) + len(answer)] == answer
    assert set(row[len(prompt) + len(answer):]) == {IGNORE_INDEX}
    assert td.attention_mask[2].sum() == len(prompt) + len(answer)
    out = tmp_path / "run"
    train(TrainConfig(model=str(tiny), method="longlora", rope="none", data=str(data), seq_len=64, steps=2,
                      batch_size=2, grad_accum=1, lr=1e-2, save_every=5, precision="fp32", out=str(out)), progress=False)
    assert len(losses(out)) == 2


def test_packing_joins_documents_with_eos(tiny, tmp_path):
    from transformers import AutoTokenizer

    from longseq.train.corpus import load_train_data

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha beta gamma " * 20)
    (folder / "b.txt").write_text("delta epsilon " * 20)
    tok = AutoTokenizer.from_pretrained(tiny)
    stream = []
    for name in ("a.txt", "b.txt"):
        stream += tok((folder / name).read_text(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    td = load_train_data(str(folder), tok, 16)
    assert td.input_ids.flatten().tolist() == stream[: len(stream) // 16 * 16]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": (folder / n).read_text()}) for n in ("a.txt", "b.txt")))
    assert torch.equal(load_train_data(str(jsonl), tok, 16).input_ids, td.input_ids)


def test_recipes_are_valid():
    import yaml

    from longseq.train.config import load_recipe, validate

    recipes = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(recipes) >= 3
    for path in recipes:
        values = load_recipe(str(path))
        cfg = TrainConfig.from_dict({"out": "runs/x", "data": "corpus.txt", **values})
        validate(cfg)
    accel = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
    kinds = {yaml.safe_load(p.read_text())["distributed_type"] for p in accel}
    assert {"MULTI_GPU", "FSDP", "DEEPSPEED"} <= kinds


@pytest.mark.slow
def test_longlora_on_the_embedded_model(tmp_path):
    from transformers import AutoConfig

    data = tmp_path / "text.txt"
    data.write_text(TEXT * 3)
    out = tmp_path / "run"
    r = run_cli("train", "smollm2-135m", "--method", "longlora", "--rope", "pi", "--factor", "2", "--data", str(data),
                "--seq-len", "512", "--steps", "2", "--grad-accum", "1", "--no-gradient-checkpointing",
                "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    curve = losses(out)
    assert sorted(curve) == [1, 2] and all(0 < v < 20 for v in curve.values())
    summary = json.loads(r.stdout)
    assert 0.1 < summary["parameters"]["trainable"] / summary["parameters"]["total"] < 0.3  # LoRA+ (embeddings + norms + LoRA)
    config = AutoConfig.from_pretrained(out / "model")
    assert config.rope_parameters["rope_type"] == "linear" and config.max_position_embeddings == 16384


def test_two_process_data_parallel_matches_one_process(tiny, text_file, tmp_path):
    """torchrun with 2 CPU processes (gloo DDP through accelerate) = 1 process with the same global batch."""
    common = [str(tiny), "--method", "longlora", "--rope", "pi", "--factor", "2", "--data", str(text_file),
              "--seq-len", "64", "--steps", "3", "--grad-accum", "2", "--lr", "1e-2", "--warmup-steps", "0",
              "--save-every", "2", "--precision", "fp32"]
    one = tmp_path / "one"
    r = run_cli("train", *common, "--batch-size", "2", "--out", str(one))
    assert r.returncode == 0, r.stderr[-2000:]
    two = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "longseq",
                        "train", *common, "--batch-size", "1", "--out", str(two)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert sorted(b) == [1, 2, 3]  # one record per step: only process 0 writes
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-4, (step, a[step], b[step])
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in (two / "checkpoint").iterdir()}
