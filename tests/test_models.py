"""Model resolution, loading, extension round trips and the info/extend commands."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from longseq import cli
from longseq.core.errors import UserError
from longseq.models.info import kv_cache_bytes, model_info
from longseq.models.loading import load_config, load_model, pick_dtype, resolve
from longseq.models.rope import METHODS, apply_rope, extend_checkpoint

IDS = torch.tensor([[5, 17, 42, 3, 99, 64, 7, 8, 120, 11] * 40])  # 400 tokens: beyond the native 256


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def test_resolve_kinds(tiny_llama_dir, tmp_path):
    assert resolve(str(tiny_llama_dir)).kind == "dir"
    assert resolve("org/model").kind == "hub"
    assert resolve("smollm2-135m").kind == "gguf"
    with pytest.raises(UserError, match="unknown model 'smolm2'.*did you mean 'smollm2-135m'"):
        resolve("smolm2")
    with pytest.raises(UserError, match="does not exist"):
        resolve(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="not a .gguf file"):
        resolve(str(tmp_path / "weights.bin"))


def test_corrupt_inputs_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGSEQ_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(UserError, match="cannot read GGUF file"):
        load_model(str(bad))
    assert list((tmp_path / "cache").rglob("*.safetensors")) == []  # nothing half-converted is cached
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot load model from"):
        load_config(str(broken))
    with pytest.raises(UserError, match="has no tokenizer"):
        load_model(str(broken))


def test_hub_id_offline_is_a_clear_error_at_once():
    start = time.monotonic()
    with pytest.raises(UserError, match="cannot load 'nobody/nothing' from the Hugging Face Hub .*offline mode"):
        load_model("nobody/nothing")
    assert time.monotonic() - start < 2  # no retries


def test_hub_id_with_an_unreachable_hub_fails_fast(tmp_path):
    """Not offline, but nothing listens at the endpoint: one line within seconds, not 11 retry lines over 30 s
    (the back-off alone sleeps 23 s). Timed inside a fresh process, after its imports."""
    code = ("import time, transformers\n"
            "from longseq.core.errors import UserError\n"
            "from longseq.models.loading import load_config\n"
            "t = time.monotonic()\n"
            "try:\n    load_config('nobody/nothing')\n"
            "except UserError as err:\n    print(f'{time.monotonic() - t:.2f}'); print(err)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    seconds, message = proc.stdout.strip().splitlines()
    assert "cannot load 'nobody/nothing' from the Hugging Face Hub (the Hub is unreachable" in message
    assert "Retry" not in proc.stderr, proc.stderr
    assert float(seconds) < 10


def test_hub_id_in_the_local_cache_loads_offline(tiny_llama_dir, tmp_path, monkeypatch):
    """Offline, a Hub id already in the Hub cache loads from there (no request at all)."""
    import shutil

    from huggingface_hub import constants

    from longseq.models import loading

    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(tiny_llama_dir, repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(loading, "_HUB_SOURCES", {})
    assert load_config("org/tiny").max_position_embeddings == 256
    assert loading.hub_source("org/tiny") == repo / "snapshots" / ("0" * 40)


def test_dtype_choice():
    assert pick_dtype("float32") == torch.float32
    assert pick_dtype("auto") in (torch.bfloat16, torch.float32)
    with pytest.raises(UserError, match="unknown dtype"):
        pick_dtype("fp8")


@pytest.mark.parametrize("method, kwargs", [
    ("pi", dict(factor=4)), ("ntk", dict(factor=4)), ("dynamic-ntk", dict(factor=4)), ("yarn", dict(factor=4)),
    ("abf", dict(theta=500000.0, factor=4)), ("llama3", dict(factor=4)),
])
def test_saved_extension_reloads_in_plain_transformers_with_identical_logits(tiny_llama_dir, tmp_path, method, kwargs):
    out = tmp_path / f"ext-{method}"
    extend_checkpoint(str(tiny_llama_dir), str(out), method, dtype="float32", **kwargs)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)  # no longseq involved
    in_memory, _ = load_model(str(tiny_llama_dir), dtype="float32")
    original = logits(in_memory)
    apply_rope(in_memory, method, **kwargs)
    extended = logits(in_memory)
    torch.testing.assert_close(logits(reloaded), extended, rtol=0, atol=0)
    assert not torch.allclose(extended, original), f"{method} did not change the model"
    assert reloaded.config.rope_parameters == in_memory.config.rope_parameters


def test_none_keeps_logits(tiny_llama_dir, tmp_path):
    model, _ = load_model(str(tiny_llama_dir), dtype="float32")
    before = logits(model)
    apply_rope(model, "none")
    torch.testing.assert_close(logits(model), before, rtol=0, atol=0)
    extend_checkpoint(str(tiny_llama_dir), str(tmp_path / "none"), "none", dtype="float32")
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "none")), before, rtol=0, atol=0)


def test_extend_refuses_existing_output_and_leaves_it_intact(tiny_llama_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="already exists"):
        extend_checkpoint(str(tiny_llama_dir), str(out), "pi", factor=2)
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny-llama"]  # no temporary leftovers


def _saved_dtypes(folder: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        return {str(fh.get_slice(k).get_dtype()) for k in fh.keys()}


@pytest.mark.parametrize("source_dtype", [torch.float32, torch.bfloat16])
def test_extend_keeps_the_source_precision_and_the_in_memory_logits(tiny_llama_dir, tmp_path, source_dtype):
    """Only the RoPE config changes: a default extend of an fp32 (bf16) checkpoint stays fp32 (bf16), and plain
    transformers on the written folder computes exactly what apply_rope computes in memory."""
    src = tmp_path / "src"
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=source_dtype).save_pretrained(src)
    out = tmp_path / "ext"
    result = extend_checkpoint(str(src), str(out), "yarn", factor=4)  # dtype defaults to the source's
    assert result["dtype"] == str(source_dtype).removeprefix("torch.") and result["tokenizer"] is False
    assert _saved_dtypes(out) == {{torch.float32: "F32", torch.bfloat16: "BF16"}[source_dtype]}
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=source_dtype)
    in_memory = AutoModelForCausalLM.from_pretrained(src, dtype=source_dtype)
    apply_rope(in_memory, "yarn", factor=4)
    torch.testing.assert_close(logits(reloaded), logits(in_memory), rtol=0, atol=0)
    assert extend_checkpoint(str(src), str(tmp_path / "bf"), "pi", factor=2, dtype="bfloat16")["dtype"] == "bfloat16"
    assert _saved_dtypes(tmp_path / "bf") == {"BF16"}


def test_extend_copies_the_tokenizer_only_when_there_is_one(tiny_llama_dir, tmp_path):
    bare = tmp_path / "bare"  # a training checkpoint: weights and config, no tokenizer
    AutoModelForCausalLM.from_pretrained(tiny_llama_dir).save_pretrained(bare)
    assert extend_checkpoint(str(bare), str(tmp_path / "a"), "pi", factor=2)["tokenizer"] is False
    assert not (tmp_path / "a" / "tokenizer.json").exists()
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "a").config.rope_parameters["factor"] == 2
    assert extend_checkpoint(str(tiny_llama_dir), str(tmp_path / "b"), "pi", factor=2)["tokenizer"] is True
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "b")("w1 w2")["input_ids"] == [4, 5]
    with pytest.raises(UserError, match=r"has no tokenizer \(none of tokenizer.json.*copy the tokenizer files"):
        load_model(str(bare))


def _ls(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_extend_refuses_bad_outputs_and_corrupt_weights_writing_nothing(tiny_llama_dir, tmp_path, monkeypatch):
    import shutil

    trunc = tmp_path / "trunc"
    shutil.copytree(tiny_llama_dir, trunc)
    weights = trunc / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="cannot load model from .*trunc.*truncated or corrupt"):
        extend_checkpoint(str(trunc), str(tmp_path / "o1"), "pi", factor=2)
    with pytest.raises(UserError, match="is the model folder being extended"):
        extend_checkpoint(str(tiny_llama_dir), str(tiny_llama_dir), "pi", factor=2, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="file is a file; choose another --out"):
        extend_checkpoint(str(tiny_llama_dir), str(tmp_path / "file" / "o2"), "pi", factor=2)
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as m:  # root ignores permission bits: a read-only folder is simulated
        m.setattr(tempfile, "mkstemp", refuse)
        with pytest.raises(UserError, match="cannot be written .*Read-only file system.*writable --out"):
            extend_checkpoint(str(tiny_llama_dir), str(tmp_path / "o3"), "pi", factor=2)
    from transformers import PreTrainedModel

    def full_disk(self, folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
    with pytest.raises(UserError, match="No space left on device; free some disk space"):
        extend_checkpoint(str(tiny_llama_dir), str(tmp_path / "o4"), "pi", factor=2)
    assert _ls(tmp_path) == ["file", "tiny-llama", "trunc"]  # no output, no temporary folder
    assert (trunc / "config.json").is_file() and (tiny_llama_dir / "model.safetensors").stat().st_size > 1000


def test_kv_cache_formula():
    config = AutoConfig.for_model("llama", num_hidden_layers=30, num_key_value_heads=3, num_attention_heads=9,
                                  hidden_size=576, head_dim=64)
    # 2 (K,V) x 30 layers x 3 kv heads x 64 dims x 4096 tokens x 2 bytes = 90 MiB
    assert kv_cache_bytes(config, 4096) == 2 * 30 * 3 * 64 * 4096 * 2 == 90 * 2**20


def test_info_on_tiny(tiny_llama_dir):
    info = model_info(str(tiny_llama_dir))
    assert info["native_context"] == 256
    assert info["parameters"] == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_llama_dir).parameters())
    assert info["rope_parameters"]["rope_theta"] == 10000.0


def test_info_on_a_model_without_rope(tmp_path, capsys):
    """GPT-2 has learned absolute positions: info describes it, extend refuses it, neither with a traceback."""
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=512).save_pretrained(tmp_path / "gpt2")
    info = model_info(str(tmp_path / "gpt2"))
    assert info["rotary_dim"] is None and info["rope_parameters"] == {} and info["native_context"] == 512
    assert cli.main(["info", str(tmp_path / "gpt2")]) == 0
    assert "rope             none (no rotary position embedding" in capsys.readouterr().out
    with pytest.raises(UserError, match="no RoPE parameters"):
        extend_checkpoint(str(tmp_path / "gpt2"), str(tmp_path / "out"), "pi", factor=2)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longseq", *args], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])


def main_exit(argv: list[str]) -> int:
    """``longseq ARGV`` in process: its exit code, argparse's SystemExit included."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("args, message", [
    (["info", "no-such-model"], "unknown model 'no-such-model'"),
    (["extend", "./missing-dir", "--method", "pi", "--factor", "2", "--out", "x"], "does not exist"),
    (["extend", "TINY", "--method", "warp", "--factor", "2", "--out", "OUT"], "unknown RoPE method 'warp'"),
    (["extend", "TINY", "--method", "pi", "--factor", "0", "--out", "OUT"], "--factor must be a finite number >= 1"),
    (["extend", "TINY", "--method", "yarn", "--target-length", "100", "--out", "OUT"], "below the native context"),
    (["extend", "TINY", "--method", "pi", "--factor", "nan", "--out", "OUT"], "--factor must be a finite number >= 1 "
                                                                              "and <= 1024"),
    (["extend", "TINY", "--method", "pi", "--factor", "inf", "--out", "OUT"], "got inf"),
    (["extend", "TINY", "--method", "pi", "--factor", "1e9", "--out", "OUT"], "<= 1024"),
    (["extend", "TINY", "--method", "yarn", "--factor", "2", "--attention-factor", "-1", "--out", "OUT"],
     "--attention-factor must be a finite number > 0"),
    (["extend", "TINY", "--method", "yarn", "--factor", "2", "--beta-fast", "1", "--beta-slow", "32", "--out", "OUT"],
     "must be below --beta-fast"),
    (["extend", "TINY", "--method", "abf", "--theta", "nan", "--out", "OUT"], "--theta must be a finite number > 1"),
    (["extend", "TINY", "--method", "pi", "--factor", "2", "--dtype", "fp8", "--out", "OUT"], "invalid choice"),
])
def test_cli_errors_are_one_line_exit_2(tiny_llama_dir, tmp_path, capsys, args, message):
    args = [a.replace("TINY", str(tiny_llama_dir)).replace("OUT", str(tmp_path / "o")) for a in args]
    code = main_exit(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(("longseq: error:", "longseq extend: error:")), err
    if "invalid choice" not in message:  # argparse prints its usage first
        assert err.strip().count("\n") == 0, err
    assert not (tmp_path / "o").exists()


def test_cli_extend_and_info_json(tiny_llama_dir, tmp_path):
    out = tmp_path / "yarn"
    proc = run_cli("extend", str(tiny_llama_dir), "--method", "yarn", "--target-length", "1k", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "yarn" and config["rope_parameters"]["factor"] == 4.0
    proc = run_cli("info", str(out), "--json")
    info = json.loads(proc.stdout)
    assert info["native_context"] == 256 and info["max_position_embeddings"] == 1024


def test_help_shows_quick_start():
    parser = cli.build_parser()
    text = parser.format_help()
    assert text.count("longseq ") >= 3 and "quick start" in text
    extend_help = parser._subparsers._group_actions[0].choices["extend"].format_help()
    assert all(m in extend_help for m in METHODS)


@pytest.mark.slow
def test_embedded_model_answers_a_chat_prompt():
    model, tok = load_model("smollm2-135m")
    assert model.config.max_position_embeddings == 8192
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "paris" in answer.lower(), answer


@pytest.mark.slow
def test_extending_the_embedded_model_changes_nothing_but_rope(tmp_path):
    """The embedded model is fp32 once dequantized: the written extension is fp32 too (it was saved as bf16:
    max logit change 0.39) and plain transformers on it gives exactly the in-memory extension's logits."""
    out = tmp_path / "yarn-32k"
    assert extend_checkpoint("smollm2-135m", str(out), "yarn", target_length="32k")["dtype"] == "float32"
    assert _saved_dtypes(out) == {"F32"}
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    in_memory, tok = load_model("smollm2-135m", dtype="float32")
    apply_rope(in_memory, "yarn", target_length="32k")
    ids = tok("The capital of France is Paris. " * 40, return_tensors="pt")["input_ids"]
    torch.testing.assert_close(logits(reloaded, ids), logits(in_memory, ids), rtol=0, atol=0)
