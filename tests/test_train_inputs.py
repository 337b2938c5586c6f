"""``longseq train`` on bad input and failing disks: one-line errors (exit 2), nothing written, checkpoints intact."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from longseq.cli import main
from longseq.core.errors import UserError
from longseq.train.config import TrainConfig, load_recipe, validate

TEXT = "the quick brown fox jumps over the lazy dog. " * 60


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_tiny_llama) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", "smollm2", tie_word_embeddings=True)


@pytest.fixture(scope="module")
def bare(tmp_path_factory, tiny) -> Path:
    """The tiny model saved without a tokenizer, as training checkpoints often are."""
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("bare") / "model"
    AutoModelForCausalLM.from_pretrained(tiny).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "text.txt"
    p.write_text(TEXT)
    return p


RANGE = "must be a finite number"


@pytest.mark.parametrize("field, value, message", [
    ("lr", float("nan"), f"lr (--lr) {RANGE} > 0 and <= 1, got nan"),
    ("lr", float("inf"), "got inf"),
    ("lr", 0, "> 0"),
    ("lora_dropout", 2.0, f"lora_dropout (--lora-dropout) {RANGE} >= 0 and < 1, got 2.0"),
    ("adam_beta2", 1.5, f"adam_beta2 (--adam-beta2) {RANGE} >= 0 and < 1"),
    ("adam_beta1", -0.1, "adam_beta1"),
    ("max_grad_norm", -1.0, f"max_grad_norm (--max-grad-norm) {RANGE} >= 0, got -1.0"),
    ("warmup_steps", -5, f"warmup_steps (--warmup-steps) {RANGE} >= 0, got -5"),
    ("weight_decay", float("nan"), "weight_decay"),
    ("group_ratio", 0.0, "group_ratio (--group-ratio)"),
    ("steps", 0, "steps (--steps)"),
    ("steps", 2.5, "steps (--steps) must be a whole number, got 2.5"),
    ("seq_len", "abc", "seq_len (--seq-len): 'abc' is not a length"),
    ("factor", float("nan"), "factor (--factor)"),
    ("factor", 1e9, "<= 1024"),
    ("theta", -1.0, "theta (--theta)"),
    ("seed", -1, "seed (--seed)"),
    ("gradient_checkpointing", "yes", "gradient_checkpointing must be true or false"),
    ("method", 3, "method (--method) must be a string, got 3"),
    ("method", "qlora", "unknown training method 'qlora'"),
    ("rope", "warp", "unknown RoPE method 'warp'"),
    ("precision", "fp8", "unknown precision 'fp8'"),
])
def test_the_python_api_refuses_what_the_cli_refuses(field, value, message):
    with pytest.raises(UserError) as err:
        TrainConfig(**{field: value})
    assert message in str(err.value)


def test_yaml_spellings_are_read_as_meant():
    """PyYAML reads 2e-5 and 1e3 as strings and 8k is a length: they are coerced, and validate() sees numbers."""
    cfg = TrainConfig.from_dict(yaml.safe_load("lr: 2e-5\nsteps: 1e3\nseq_len: 8k\ngroup_size: 2k\nfactor: 2\n"
                                               "data: x\nout: y\n"))
    assert (cfg.lr, cfg.steps, cfg.seq_len, cfg.group_size, cfg.factor) == (2e-5, 1000, 8192, 2048, 2)
    validate(cfg)
    cfg.lr = float("nan")  # assigned after construction: validate() checks again
    with pytest.raises(UserError, match="lr"):
        validate(cfg)


@pytest.mark.parametrize("body, message", [
    ("lr: .nan\n", "lr (--lr)"),
    ("lora_dropout: 2\n", "lora_dropout (--lora-dropout)"),
    ("steps: many\n", "steps (--steps) must be a whole number, got 'many'"),
    ("max_grad_norm: [1, 2]\n", "max_grad_norm (--max-grad-norm)"),
    ("resume: maybe\n", "resume must be true or false"),
    ("lr_schedule: cosine\n", "unknown key"),
    ("- lr\n", "must be a mapping"),
    ("lr: [\n", "not valid YAML"),
])
def test_bad_recipe_names_file_and_field(tmp_path, body, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(body)
    with pytest.raises(UserError) as err:
        load_recipe(str(recipe))
    assert message in str(err.value) and str(recipe) in str(err.value)


def _cli(capsys, *args: str) -> tuple[int, list[str]]:
    try:
        code = main(["train", *args])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.strip().splitlines() if "error:" in line]


def test_cli_bad_values_are_one_line_and_write_nothing(tiny, bare, text_file, tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("lr: 2e-5\nadam_beta2: 1.5\n")
    (tmp_path / "afile").write_text("x")
    base = [str(tiny), "--data", str(text_file), "--seq-len", "64", "--steps", "1", "--rope", "none"]
    cases = {
        "lr (--lr)": ["--lr", "nan"],
        "lora_dropout (--lora-dropout)": ["--lora-dropout", "2"],
        "adam_beta2 (--adam-beta2)": ["--adam-beta2", "1.5"],
        "max_grad_norm (--max-grad-norm)": ["--max-grad-norm", "-1"],
        "warmup_steps (--warmup-steps)": ["--warmup-steps", "-2"],
        f"{recipe}: adam_beta2": ["--config", str(recipe)],
    }
    for needle, extra in cases.items():
        out = tmp_path / "run"
        code, err = _cli(capsys, *base, *extra, "--out", str(out))
        assert code == 2 and len(err) == 1 and needle in err[0], (needle, err)
        assert not out.exists()
    code, err = _cli(capsys, *base, "--out", str(tmp_path / "afile"))
    assert code == 2 and "is a file" in err[0]
    code, err = _cli(capsys, *base, "--out", str(tmp_path / "afile" / "run"))
    assert code == 2 and "afile is a file" in err[0]
    code, err = _cli(capsys, str(bare), *base[1:], "--out", str(tmp_path / "run"))
    assert code == 2 and len(err) == 1 and "has no tokenizer" in err[0] and "--tokenizer" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "bad.yaml"]


def test_read_only_out_is_refused_before_loading(tiny, text_file, tmp_path, capsys, monkeypatch):
    import os
    import tempfile

    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: simulate the read-only file system
        def refuse(*a, **k):
            raise PermissionError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    else:
        ro.chmod(0o500)
    try:
        code, err = _cli(capsys, str(tiny), "--data", str(text_file), "--seq-len", "64", "--steps", "1",
                         "--out", str(ro / "run"))
    finally:
        ro.chmod(0o700)
    assert code == 2 and len(err) == 1 and "cannot be written" in err[0] and "writable --out" in err[0], err
    assert list(ro.iterdir()) == []


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_full_disk_keeps_the_last_checkpoint_and_resumes(tiny, bare, text_file, tmp_path, capsys, monkeypatch):
    """The second checkpoint hits a full disk (torch.save fails as it does on ENOSPC): one line, exit 2,
    checkpoint/ of step 1 intact, no checkpoint.tmp; --resume on a disk with room finishes the run."""
    import torch

    out = tmp_path / "run"
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "checkpoint.tmp" in str(f) and (out / "checkpoint" / "state.json").exists():
            Path(f).write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 379008 vs 378896")
        return real_save(obj, f, *args, **kwargs)

    # A tokenizer-less checkpoint with --tokenizer trains, and the exported model gets that tokenizer.
    args = [str(bare), "--tokenizer", str(tiny), "--data", str(text_file), "--seq-len", "64", "--steps", "3",
            "--save-every", "1", "--grad-accum", "1", "--rope", "none", "--precision", "fp32", "--out", str(out)]
    monkeypatch.setattr(torch, "save", full_disk)
    code, err = _cli(capsys, *args)
    assert code == 2 and len(err) == 1 and "cannot write the checkpoint" in err[0] and "--resume" in err[0], err
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 1
    assert not (out / "checkpoint.tmp").exists() and not (out / "model").exists()
    kept = _digest(out / "checkpoint")
    code, err = _cli(capsys, *args)  # still full
    assert code == 2 and "--resume" in err[0]
    code, err = _cli(capsys, *args, "--resume")
    assert code == 2 and "cannot write the checkpoint" in err[0]
    assert _digest(out / "checkpoint") == kept
    monkeypatch.setattr(torch, "save", real_save)
    code, err = _cli(capsys, *args, "--resume")
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert (out / "model" / "tokenizer.json").is_file()


def test_another_precision_in_the_same_process_is_a_user_error(tiny, text_file, tmp_path, capsys):
    """accelerate fixes mixed precision per process: a second in-process run with another one is refused."""
    from accelerate.state import AcceleratorState

    from longseq.train.trainer import train

    if not AcceleratorState().initialized:  # a run in this process fixes the precision (fp32 in this file)
        train(TrainConfig(model=str(tiny), data=str(text_file), seq_len=64, steps=1, grad_accum=1, rope="none",
                          precision="fp32", out=str(tmp_path / "first")), progress=False)
    with pytest.raises(UserError, match="another precision than 'bf16'"):
        train(TrainConfig(model=str(tiny), data=str(text_file), seq_len=64, steps=1, rope="none", precision="bf16",
                          out=str(tmp_path / "second")), progress=False)
    assert not (tmp_path / "second").exists()


def test_write_errors_name_the_file_and_the_fix(tmp_path):
    from longseq.train.checkpoint import write_errors

    with pytest.raises(UserError, match=r"cannot write metrics.jsonl in .*No space left on device.*--resume"):
        with write_errors(tmp_path, "metrics.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")


def test_a_second_run_into_a_busy_folder_is_refused(tiny, text_file, tmp_path, capsys):
    from longseq.core.rundir import lock_run_folder

    out = tmp_path / "run"
    out.mkdir()
    with lock_run_folder(out):  # another process's run holds the folder
        code, err = _cli(capsys, str(tiny), "--data", str(text_file), "--seq-len", "64", "--steps", "1",
                         "--rope", "none", "--precision", "fp32", "--out", str(out))
    assert code == 2 and len(err) == 1 and "another longseq run is using" in err[0], err
    assert not (out / "run.json").exists() and not (out / "metrics.jsonl").exists()
