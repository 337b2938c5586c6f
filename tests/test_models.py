"""Model resolution, loading, extension round trips and the info/extend commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from longseq import cli
from longseq.core.errors import UserError
from longseq.models.info import kv_cache_bytes, model_info
from longseq.models.loading import load_model, pick_dtype, resolve
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
        load_model(str(broken))


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(UserError, match="cannot load 'nobody/nothing' from the Hugging Face Hub"):
        load_model("nobody/nothing")


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


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longseq", *args], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("args, message", [
    (["info", "no-such-model"], "unknown model 'no-such-model'"),
    (["extend", "./missing-dir", "--method", "pi", "--factor", "2", "--out", "x"], "does not exist"),
    (["extend", "TINY", "--method", "warp", "--factor", "2", "--out", "OUT"], "unknown RoPE method 'warp'"),
    (["extend", "TINY", "--method", "pi", "--factor", "0", "--out", "OUT"], "must be > 0"),
    (["extend", "TINY", "--method", "yarn", "--target-length", "100", "--out", "OUT"], "below the native context"),
])
def test_cli_errors_are_one_line_exit_2(tiny_llama_dir, tmp_path, args, message):
    args = [a.replace("TINY", str(tiny_llama_dir)).replace("OUT", str(tmp_path / "o")) for a in args]
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
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
