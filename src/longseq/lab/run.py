"""``longseq lab``: reproduce the context-extension findings end to end at small scale, on a CPU.

The papers behind longseq make their claims on 7B models and GPU clusters. The lab checks the same
claims on a few-million-parameter Llama in minutes, through the same code paths a real run uses
(``longseq train`` as a subprocess, ``longseq eval`` in process):

  data      pre-training corpus = shipped prose + Python's own docstrings + synthetic retrieval documents
            (passkey and LongEval lines, built by the eval task generators); the shipped prose's tail is
            held out for perplexity
  init      a tiny random Llama that uses the embedded model's tokenizer
  pretrain  full training from scratch at the native context L, with plain and with randomized positions
  finetune  from the plain model at 4L with one token budget: direct (extrapolation), PI, ABF (full
            fine-tuning), LongLoRA and LoRA (PI), timing and peak memory of each
  eval      perplexity, passkey and lines at 1L..8L: zero-shot none/pi/ntk/yarn (targets 4L and 8L),
            the randomized model, every fine-tuned model
  report    summary.json, report.md (one table per finding, the paper's claim beside the measured
            numbers, a verdict computed from them), plots

Every stage is cached under ``--out`` and an interrupted lab resumes where it stopped.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from longseq.core.errors import UserError
from longseq.core.fsutil import atomic_dir, atomic_write_text, read_jsonl


@dataclass(frozen=True)
class LabSize:
    """Model, data and budget of one lab run. ``native`` is the pre-training context L."""

    native: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    prose_chars: int  # docstring prose added to the shipped text
    synthetic_docs: int  # passkey + lines documents per corpus
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    finetune_steps: int
    finetune_batch: int
    finetune_lr: float  # full fine-tuning
    lora_lr: float  # LoRA / LongLoRA (adapters need a larger step than full weights)
    eval_samples: int


SIZES: dict[str, LabSize] = {
    "default": LabSize(native=256, hidden=128, layers=4, heads=4, kv_heads=2, intermediate=384,
                       prose_chars=3_000_000, synthetic_docs=3000, pretrain_steps=1200, pretrain_batch=8,
                       pretrain_lr=1.5e-3, finetune_steps=60, finetune_batch=2, finetune_lr=3e-4, lora_lr=1.5e-3,
                       eval_samples=6),
    "quick": LabSize(native=256, hidden=96, layers=3, heads=4, kv_heads=2, intermediate=256,
                     prose_chars=1_000_000, synthetic_docs=1500, pretrain_steps=400, pretrain_batch=8,
                     pretrain_lr=2e-3, finetune_steps=25, finetune_batch=2, finetune_lr=3e-4, lora_lr=1.5e-3,
                     eval_samples=4),
    # For the test suite: every stage runs, nothing is expected to be learned.
    "test": LabSize(native=256, hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64,
                    prose_chars=50_000, synthetic_docs=40, pretrain_steps=3, pretrain_batch=2,
                    pretrain_lr=1e-3, finetune_steps=2, finetune_batch=1, finetune_lr=1e-3, lora_lr=1e-3,
                    eval_samples=1),
}

FACTORS = (4, 8)  # extension targets, as multiples of L
FT_FACTOR = 4  # fine-tuning length = 4L
ZERO_SHOT = ("none", "pi", "ntk", "yarn")
TASKS = ("ppl", "passkey", "lines")


@dataclass(frozen=True)
class FineTune:
    """One fine-tuning arm of the lab."""

    name: str
    method: str
    rope: str
    label: str


FINETUNES: tuple[FineTune, ...] = (
    FineTune("ft-direct", "full", "none", "full fine-tune, no RoPE change (extrapolation)"),
    FineTune("ft-pi", "full", "pi", "PI + full fine-tune"),
    FineTune("ft-abf", "full", "abf", "ABF continual pre-training (base 500000)"),
    FineTune("ft-longlora", "longlora", "pi", "LongLoRA (S²-Attn + LoRA + embeddings/norms), PI"),
    FineTune("ft-lora", "lora", "pi", "LoRA only, PI"),
)


def _log(msg: str) -> None:
    print(f"[lab] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ data


def docstring_prose(max_chars: int) -> list[str]:
    """English prose from the docstrings of Python's standard library, read with ``ast`` (nothing imported).

    Deterministic for a given Python version; every machine has it, so the lab needs no download.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    total = 0
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if any(part in ("test", "tests", "idlelib", "site-packages", "lib2to3") for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200 and doc.count(" ") > len(doc) / 12:
                    docs.append(" ".join(doc.split()))
                    total += len(docs[-1])
                    if total >= max_chars:
                        return docs
    return docs


def _chunks(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size) if len(text[i:i + size]) > size // 4]


def synthetic_docs(n: int, max_tokens: int, seed: int) -> list[str]:
    """Passkey and LongEval-lines documents (prompt + answer) of at most ~``max_tokens`` tokens.

    Built with the eval task generators, so the model learns the very formats ``longseq eval`` asks.
    """
    from longseq.eval.tasks import TASKS as EVAL_TASKS

    rng = random.Random(seed)
    docs = []
    for i in range(n):
        if i % 2 == 0:  # passkey: ~80 tokens of fixed text, filler at ~4.5 characters per token
            task, size = EVAL_TASKS["passkey"], rng.randint(20, max(int((max_tokens - 80) * 4), 21))
        else:  # lines: ~180 tokens of fixed text, ~16 tokens per line
            task, size = EVAL_TASKS["lines"], rng.randint(1, max((max_tokens - 180) // 16, 1))
        p = task.generate(rng, size, {})
        docs.append(f"{p.body}{p.sep}{p.answer_prefix} {p.expected}.")
    return docs


def build_data(out: Path, size: LabSize, seed: int) -> dict[str, str]:
    """Write ``data/pretrain.jsonl``, ``data/finetune.jsonl`` and the held-out ``data/heldout.txt``."""
    from longseq.eval.tasks import haystack_text

    data = out / "data"
    paths = {k: str(data / f) for k, f in (("pretrain", "pretrain.jsonl"), ("finetune", "finetune.jsonl"),
                                           ("heldout", "heldout.txt"))}
    if (data / "done.json").is_file():
        return paths
    shipped = haystack_text()
    cut = int(len(shipped) * 0.75)  # the tail is never trained on: perplexity is measured there
    prose = _chunks(shipped[:cut], 1500) + [c for d in docstring_prose(size.prose_chars) for c in _chunks(d, 1500)]
    rng = random.Random(seed)
    with atomic_dir(data, overwrite=True) as tmp:
        for name, max_tokens in (("pretrain", size.native), ("finetune", size.native * FT_FACTOR)):
            docs = prose + synthetic_docs(size.synthetic_docs, max_tokens, seed + max_tokens)
            rng.shuffle(docs)
            (tmp / f"{name}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        (tmp / "heldout.txt").write_text(shipped[cut:])
        (tmp / "done.json").write_text(json.dumps({"prose_docs": len(prose), "synthetic": size.synthetic_docs}))
    return paths


def build_init(out: Path, size: LabSize, seed: int) -> str:
    """A random Llama at the native context with the embedded model's tokenizer, saved to ``init/``."""
    target = out / "init"
    if (target / "config.json").is_file():
        return str(target)
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from longseq.models.loading import DEFAULT_MODEL, local_dir

    tok = AutoTokenizer.from_pretrained(str(local_dir(DEFAULT_MODEL)))
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=size.hidden, intermediate_size=size.intermediate,
        num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
        max_position_embeddings=size.native, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with atomic_dir(target, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return str(target)


# -------------------------------------------------------------------------------------------- training


def run_training(out: Path, name: str, recipe: dict[str, Any], faithful_memory: bool = False) -> dict[str, Any]:
    """Run ``longseq train --config`` in a subprocess (resuming a partial run); return cost figures.

    A subprocess gives each arm its own peak resident memory (``os.wait4``) and is exactly what a user runs.
    ``faithful_memory`` runs it with glibc's default allocator (``LONGSEQ_MALLOC=system``): about 2x slower
    here, but peak RSS then tracks live memory instead of the blocks the tuned allocator keeps (runtime.py),
    which moved the same arm's peak by 5-15% between runs.
    """
    run_dir = out / name
    cost_file = out / "costs" / f"{name}.json"
    if (run_dir / "model" / "config.json").is_file() and cost_file.is_file():
        return json.loads(cost_file.read_text())
    recipe_path = out / "recipes" / f"{name}.yaml"
    import yaml

    recipe_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(recipe_path, yaml.safe_dump({**recipe, "out": str(run_dir)}, sort_keys=True))
    # --resume always: train starts fresh when the folder holds no checkpoint yet (an arm interrupted before its
    # first save) and picks up checkpoint.old after a kill between its two renames.
    cmd = [sys.executable, "-m", "longseq", "train", "--config", str(recipe_path), "--resume"]
    _log(f"{name}: {' '.join(cmd[1:])}")
    start = time.time()
    log_path = out / "recipes" / f"{name}.out.json"
    with open(log_path, "w", encoding="utf-8") as fh:
        env = {**os.environ, "LONGSEQ_MALLOC": "system"} if faithful_memory else None
        proc = subprocess.Popen(cmd, stdout=fh, env=env)
        try:
            # wait4 reports this child's own peak resident memory (RUSAGE_CHILDREN would mix all arms).
            _, status, usage = os.wait4(proc.pid, 0)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise UserError(f"lab stage {name} failed (exit {proc.returncode}); fix the error above and rerun the lab "
                        "to resume")
    text = log_path.read_text(encoding="utf-8")
    result = json.loads(text[text.index("{"):])
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    cost = {"seconds": round(time.time() - start, 1),
            "train_seconds": round(sum(m.get("step_s", 0.0) for m in metrics), 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
            "tokens": sum(int(m.get("tokens", 0)) for m in metrics),
            "final_loss": metrics[-1]["loss"] if metrics else None,
            "trainable_parameters": (result.get("parameters") or {}).get("trainable"),
            "allocator": "glibc default" if faithful_memory else "tuned"}
    atomic_write_text(cost_file, json.dumps(cost, indent=2))
    return cost


def base_recipe(size: LabSize, seed: int) -> dict[str, Any]:
    return {"seed": seed, "batch_size": size.pretrain_batch, "grad_accum": 1, "warmup_steps": 10,
            "gradient_checkpointing": False, "save_every": 25, "weight_decay": 0.0, "adam_beta2": 0.95}


# ------------------------------------------------------------------------------------------ evaluation


def run_evaluation(out: Path, name: str, model: str, cells: list[tuple[str, int]], target: int | None,
                   size: LabSize, heldout: str, seed: int) -> dict[str, Any]:
    """``longseq eval`` (in process, resumable) on one model; returns its summary with perplexities."""
    from longseq.eval.run import EvalConfig, run_eval

    cfg = EvalConfig(model=model, out=str(out / "eval" / name), tasks=list(TASKS), cells=cells,
                     samples=size.eval_samples, seed=seed, prompt_format="raw", target_length=target,
                     ppl_text=heldout)
    _log(f"eval {name}: {len(cells)} (method, length) cells x {len(TASKS)} tasks")
    summary = run_eval(cfg, progress=True, quiet=True)
    summary["perplexity"] = perplexities(Path(cfg.out) / "samples.jsonl")
    return summary


def perplexities(samples: Path) -> dict[str, dict[int, float]]:
    """Token-level perplexity per (method, length): exp(sum of NLL / sum of scored tokens)."""
    acc: dict[tuple[str, int], list[float]] = {}
    for r in read_jsonl(samples):
        if r["task"] == "ppl":
            a = acc.setdefault((r["method"], int(r["length"])), [0.0, 0.0])
            a[0] += float(r["nll"])
            a[1] += float(r["scored_tokens"])
    table: dict[str, dict[int, float]] = {}
    for (method, length), (nll, count) in sorted(acc.items()):
        table.setdefault(method, {})[length] = math.exp(nll / max(count, 1.0))
    return table


def retrieval(summary: dict[str, Any]) -> dict[str, dict[int, float]]:
    """Mean of passkey and lines scores per (method, length)."""
    acc: dict[tuple[str, int], list[float]] = {}
    for r in summary["results"]:
        if r["task"] in ("passkey", "lines"):
            acc.setdefault((r["method"], int(r["length"])), []).append(float(r["score"]))
    table: dict[str, dict[int, float]] = {}
    for (method, length), scores in sorted(acc.items()):
        table.setdefault(method, {})[length] = sum(scores) / len(scores)
    return table


# ----------------------------------------------------------------------------------------------- stages


def run_lab(out: str | Path, size_name: str = "default", seed: int = 0) -> dict[str, Any]:
    """Run (or resume) every stage; write ``summary.json``, ``report.md`` and plots; return the summary."""
    if size_name not in SIZES:
        from longseq.core.errors import unknown_choice

        raise unknown_choice("lab size", size_name, SIZES)
    size = SIZES[size_name]
    out = Path(out).resolve()  # recipes and eval folders record absolute paths: the lab resumes from any folder
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    _check_lab_file(out, size_name, size, seed)
    started = time.time()
    try:
        lengths, costs, evals = _run_stages(out, size, seed)
    finally:  # wall time over every invocation, so a resumed lab reports what the whole run cost
        seconds = _add_elapsed(out, time.time() - started)
    _log("[5/5] report")
    summary = summarize(size_name, size, seed, lengths, costs, evals, seconds)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    plots = write_plots(summary, out)
    atomic_write_text(out / "report.md", report_markdown(summary, plots))
    return summary


def _add_elapsed(out: Path, seconds: float) -> float:
    path = out / "elapsed.json"
    total = (json.loads(path.read_text())["seconds"] if path.is_file() else 0.0) + seconds
    atomic_write_text(path, json.dumps({"seconds": round(total, 1)}))
    return total


def _run_stages(out: Path, size: LabSize, seed: int) -> tuple[list[int], dict[str, Any], dict[str, dict[str, Any]]]:
    """Stages 1-4 (each cached under ``out``): lengths, training costs and eval summaries."""
    L = size.native
    lengths = [L, 2 * L, 4 * L, 8 * L]

    _log(f"[1/5] data and initial model (L = {L})")
    data = build_data(out, size, seed)
    init = build_init(out, size, seed)

    _log("[2/5] pre-training at L, plain and randomized positions")
    pre = {**base_recipe(size, seed), "model": init, "method": "full", "rope": "none", "data": data["pretrain"],
           "seq_len": L, "steps": size.pretrain_steps, "lr": size.pretrain_lr}
    costs = {"pretrain-std": run_training(out, "pretrain-std", pre),
             "pretrain-rand": run_training(out, "pretrain-rand", {**pre, "randomized_positions": 8 * L})}
    std_model, rand_model = str(out / "pretrain-std" / "model"), str(out / "pretrain-rand" / "model")

    _log(f"[3/5] fine-tuning at {FT_FACTOR}L with one token budget")
    for ft in FINETUNES:
        recipe = {**base_recipe(size, seed), "model": std_model, "method": ft.method, "rope": ft.rope,
                  "data": data["finetune"], "seq_len": FT_FACTOR * L, "steps": size.finetune_steps,
                  "batch_size": size.finetune_batch, "warmup_steps": 2,
                  "lr": size.lora_lr if ft.method in ("lora", "longlora") else size.finetune_lr}
        if ft.rope != "none":
            recipe["target_length"] = FT_FACTOR * L
        if ft.rope == "abf":
            recipe["theta"] = 500000.0
        costs[ft.name] = run_training(out, ft.name, recipe, faithful_memory=True)  # their costs are compared

    _log("[4/5] evaluation: perplexity, passkey, lines at 1L..8L")
    evals: dict[str, dict[str, Any]] = {}
    for f in FACTORS:
        cells = [(m, n) for m in ZERO_SHOT for n in lengths if n <= f * L]
        evals[f"zero-shot-{f}x"] = run_evaluation(out, f"zero-shot-{f}x", std_model, cells, f * L, size,
                                                  data["heldout"], seed)
    evals["randomized"] = run_evaluation(out, "randomized", rand_model, [("none", n) for n in lengths], None, size,
                                         data["heldout"], seed)
    for ft in FINETUNES:
        evals[ft.name] = run_evaluation(out, ft.name, str(out / ft.name / "model"), [("none", n) for n in lengths],
                                        None, size, data["heldout"], seed)
    return lengths, costs, evals


def _check_lab_file(out: Path, size_name: str, size: LabSize, seed: int) -> None:
    """A lab folder belongs to one (size, seed): resuming with other settings would mix runs."""
    marker = out / "lab.json"
    mine = {"size": size_name, "settings": asdict(size), "seed": seed}
    if marker.is_file():
        theirs = json.loads(marker.read_text())
        if theirs != mine:
            raise UserError(f"{out} holds a lab run with other settings ({theirs['size']}, seed {theirs['seed']}); "
                            "use another --out or the same settings to resume")
    else:
        atomic_write_text(marker, json.dumps(mine, indent=2))


# ---------------------------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Finding:
    """One claim of the literature, the numbers it is judged on, and the rule that judges it."""

    key: str
    title: str
    source: str
    claim: str
    judge: Callable[[dict[str, Any]], tuple[bool | None, str, list[list[str]], list[str]]]


def _ppl(summary: dict[str, Any], run: str, method: str, length: int) -> float | None:
    return summary["evals"].get(run, {}).get("perplexity", {}).get(method, {}).get(str(length))


def _ret(summary: dict[str, Any], run: str, method: str, length: int) -> float | None:
    return summary["evals"].get(run, {}).get("retrieval", {}).get(method, {}).get(str(length))


def _f(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


MARGIN = 0.02  # "beats" means lower perplexity by more than 2%: smaller gaps are noise at this scale


# "A fraction of the cost" means more than 10% less time or peak memory (same-arm noise stays below that).
COST_MARGIN = 0.10


def _lt(a: float | None, b: float | None) -> bool | None:
    """a beats b by more than :data:`MARGIN` (None when a number is missing)."""
    return None if a is None or b is None else a < b * (1 - MARGIN)


def _all(values: list[bool | None]) -> bool | None:
    return None if any(v is None for v in values) else all(values)


def judge_pi(s: dict[str, Any]) -> tuple[bool | None, str, list[list[str]], list[str]]:
    L4 = FT_FACTOR * s["native"]
    header = ["run", *(f"ppl@{n}" for n in s["lengths"]), f"retrieval@{L4}"]
    rows = [[r, *(_f(_ppl(s, r, "none", n)) for n in s["lengths"]), _f(_ret(s, r, "none", L4))]
            for r in ("ft-direct", "ft-pi")]
    ok = _lt(_ppl(s, "ft-pi", "none", L4), _ppl(s, "ft-direct", "none", L4))
    why = (f"after the same fine-tuning budget at {L4} tokens, perplexity at {L4}: PI "
           f"{_f(_ppl(s, 'ft-pi', 'none', L4))} vs extrapolation {_f(_ppl(s, 'ft-direct', 'none', L4))}")
    return ok, why, [header, *rows], []


def judge_yarn_ntk(s: dict[str, Any]) -> tuple[bool | None, str, list[list[str]], list[str]]:
    header = ["target", "method", *(f"ppl@{n}" for n in s["lengths"])]
    rows, checks, notes = [], [], []
    for f in FACTORS:
        run, target = f"zero-shot-{f}x", f * s["native"]
        for m in ZERO_SHOT:
            rows.append([f"{f}x", m, *(_f(_ppl(s, run, m, n)) for n in s["lengths"])])
        for m in ("yarn", "ntk"):
            better = _lt(_ppl(s, run, m, target), _ppl(s, run, "pi", target))
            checks.append(better)
            notes.append(f"{f}x: {m} {_f(_ppl(s, run, m, target))} vs pi {_f(_ppl(s, run, 'pi', target))} "
                         f"-> {'better' if better else 'not better'}")
    return _all(checks), "; ".join(notes), [header, *rows], []


def judge_abf(s: dict[str, Any]) -> tuple[bool | None, str, list[list[str]], list[str]]:
    L4 = FT_FACTOR * s["native"]
    header = ["run", *(f"ppl@{n}" for n in s["lengths"]), f"retrieval@{L4}"]
    rows = [[r, *(_f(_ppl(s, r, "none", n)) for n in s["lengths"]), _f(_ret(s, r, "none", L4))]
            for r in ("ft-abf", "ft-pi")]
    a, p = _ppl(s, "ft-abf", "none", L4), _ppl(s, "ft-pi", "none", L4)
    ok = None if a is None or p is None else a <= p * (1 + MARGIN)  # "matches or beats"
    return ok, f"continual training at {L4}: ABF perplexity {_f(a)} vs PI {_f(p)} (Llama 2 Long: 6.323 vs 6.341)", \
        [header, *rows], []


def judge_longlora(s: dict[str, Any]) -> tuple[bool | None, str, list[list[str]], list[str]]:
    L4 = FT_FACTOR * s["native"]
    header = ["run", f"ppl@{L4}", f"ppl@{2 * L4}", "train s", "peak RSS MB", "trainable params"]
    rows = []
    for r in ("ft-pi", "ft-longlora", "ft-lora"):
        c = s["costs"].get(r, {})
        rows.append([r, _f(_ppl(s, r, "none", L4)), _f(_ppl(s, r, "none", 2 * L4)), _f(c.get("train_seconds"), 1),
                     _f(c.get("peak_rss_mb"), 0), str(c.get("trainable_parameters", "–"))])
    ll, full, lora = (_ppl(s, r, "none", L4) for r in ("ft-longlora", "ft-pi", "ft-lora"))
    cl, cf = s["costs"].get("ft-longlora", {}), s["costs"].get("ft-pi", {})
    near = None if ll is None or full is None else ll <= 1.10 * full
    cheaper = None
    if cl.get("train_seconds") and cf.get("train_seconds"):
        cheaper = cl["train_seconds"] < cf["train_seconds"] * (1 - COST_MARGIN) or (
            bool(cl.get("peak_rss_mb")) and bool(cf.get("peak_rss_mb"))
            and cl["peak_rss_mb"] < cf["peak_rss_mb"] * (1 - COST_MARGIN))
    why = (f"LongLoRA perplexity {_f(ll)} vs full fine-tuning {_f(full)} (within 10%: {near}); "
           f"LoRA alone {_f(lora)}; more than {COST_MARGIN:.0%} cheaper in time or memory: {cheaper}")
    notes = []
    if cl.get("trainable_parameters") and cf.get("trainable_parameters"):
        share = cl["trainable_parameters"] / cf["trainable_parameters"]
        notes.append(f"LongLoRA trains {share:.0%} of this model's weights: the tied token embedding (trainable in "
                     "LongLoRA, as in the paper) dominates a model this small, while the paper's saving comes from "
                     "freezing a 7B body; cost is therefore expected to match full fine-tuning here")
    return _all([near, cheaper]), why, [header, *rows], notes


def judge_randomized(s: dict[str, Any]) -> tuple[bool | None, str, list[list[str]], list[str]]:
    header = ["pre-training", *(f"ppl@{n}" for n in s["lengths"]), *(f"retrieval@{n}" for n in s["lengths"])]
    runs = (("plain positions", "zero-shot-8x"), ("randomized positions", "randomized"))
    rows = [[label, *(_f(_ppl(s, r, "none", n)) for n in s["lengths"]),
             *(_f(_ret(s, r, "none", n)) for n in s["lengths"])] for label, r in runs]
    unseen = [n for n in s["lengths"] if n > s["native"]]
    checks = [_lt(_ppl(s, "randomized", "none", n), _ppl(s, "zero-shot-8x", "none", n)) for n in unseen]
    why = "perplexity at unseen lengths " + ", ".join(
        f"{n}: {_f(_ppl(s, 'randomized', 'none', n))} vs {_f(_ppl(s, 'zero-shot-8x', 'none', n))}" for n in unseen)
    return _all(checks), why, [header, *rows], []


FINDINGS: tuple[Finding, ...] = (
    Finding("pi", "Position interpolation beats extrapolation", "Chen et al. 2023 (PI), arXiv 2306.15595",
            "Fine-tuning with interpolated positions reaches the long context within a short budget, while direct "
            "fine-tuning (extrapolation) barely extends it.", judge_pi),
    Finding("yarn_ntk", "YaRN and NTK beat PI without training", "Peng et al. 2023 (YaRN), arXiv 2309.00071",
            "Without fine-tuning, NTK-aware and YaRN scaling keep perplexity low at the extended length where "
            "plain PI degrades.", judge_yarn_ntk),
    Finding("abf", "ABF suits continual pre-training", "Xiong et al. 2023 (Llama 2 Long), arXiv 2309.16039",
            "Raising the RoPE base and continuing pre-training on long sequences matches or beats PI "
            "(Books PPL 6.323 vs 6.341).", judge_abf),
    Finding("longlora", "LongLoRA nearly matches full fine-tuning at a fraction of the cost",
            "Chen et al. 2023 (LongLoRA), arXiv 2309.12307",
            "S²-Attn + LoRA with trainable embeddings and norms comes close to full fine-tuning perplexity with "
            "less time and memory; plain LoRA falls behind.", judge_longlora),
    Finding("randomized", "Randomized positions generalize to unseen lengths",
            "Ruoss et al. 2023, arXiv 2305.16843",
            "Training on ordered random subsets of a larger position range improves accuracy on lengths never "
            "seen in training (+12.0% on average on algorithmic tasks).", judge_randomized),
)


def summarize(size_name: str, size: LabSize, seed: int, lengths: list[int], costs: dict[str, Any],
              evals: dict[str, dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Collect the measured numbers and judge every finding from them."""
    s: dict[str, Any] = {
        "size": size_name, "settings": asdict(size), "seed": seed, "native": size.native, "lengths": lengths,
        "costs": costs, "seconds": round(seconds, 1),
        "evals": {name: {"perplexity": {m: {str(n): v for n, v in t.items()} for m, t in e["perplexity"].items()},
                         "retrieval": {m: {str(n): v for n, v in t.items()} for m, t in retrieval(e).items()},
                         "effective_length": e.get("effective_length")}
                  for name, e in evals.items()},
    }
    s["findings"] = []
    for f in FINDINGS:
        ok, why, table, notes = f.judge(s)
        verdict = "inconclusive" if ok is None else ("reproduced" if ok else "not reproduced")
        s["findings"].append({"key": f.key, "title": f.title, "source": f.source, "claim": f.claim,
                              "verdict": verdict, "evidence": why, "table": table, "notes": notes})
    return s


# ------------------------------------------------------------------------------------------------ report


def _md_table(table: list[list[str]]) -> str:
    header, *rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _retrieval_note(s: dict[str, Any]) -> list[str]:
    """One paragraph when no model retrieved anything: the verdicts then rest on perplexity alone."""
    scores = [v for e in s["evals"].values() for t in e.get("retrieval", {}).values() for v in t.values()]
    if scores and max(scores) == 0:
        return [f"No model retrieved a passkey or a line at any length ({len(scores)} retrieval cells, all 0): "
                "at this size retrieval is not learned, so the verdicts rest on perplexity.", ""]
    return []


def report_markdown(s: dict[str, Any], plots: list[str]) -> str:
    """The lab report: setup, then one section per finding with claim, measured table and verdict."""
    st = s["settings"]
    out = [
        "# longseq lab: context-extension findings at small scale",
        "",
        f"Model: Llama, {st['layers']} layers, width {st['hidden']}, {st['heads']} heads ({st['kv_heads']} KV), "
        f"SmolLM2 tokenizer; pre-trained from scratch at L = {s['native']} tokens for {st['pretrain_steps']} steps "
        f"x {st['pretrain_batch']} sequences. Fine-tuning at {FT_FACTOR}L = {FT_FACTOR * s['native']} tokens, "
        f"{st['finetune_steps']} steps x {st['finetune_batch']} sequences for every arm (same token budget). "
        f"Size preset `{s['size']}`, seed {s['seed']}, total {s['seconds'] / 60:.1f} min.",
        "",
        "Perplexity is measured on held-out shipped prose (never trained on); retrieval is the mean of passkey "
        "and LongEval-lines scores. Verdicts are computed by `longseq.lab.FINDINGS` from the numbers below.",
        "",
        *_retrieval_note(s),
        "| finding | source | verdict |",
        "|---|---|---|",
    ]
    out += [f"| {f['title']} | {f['source']} | **{f['verdict']}** |" for f in s["findings"]]
    for f in s["findings"]:
        out += ["", f"## {f['title']}", "", f"*Claim* ({f['source']}): {f['claim']}", "", _md_table(f["table"]), "",
                f"*Measured*: {f['evidence']}."]
        for note in f.get("notes", []):
            out += ["", f"*Note*: {note}."]
        out += ["", f"*Verdict*: **{f['verdict']}**"]
    out += ["", "## Training cost", "", _md_table(
        [["run", "train s", "wall s", "peak RSS MB", "tokens", "final loss"]]
        + [[name, _f(c.get("train_seconds"), 1), _f(c.get("seconds"), 1), _f(c.get("peak_rss_mb"), 0),
            str(c.get("tokens")), _f(c.get("final_loss"), 3)] for name, c in s["costs"].items()])]
    if plots:
        out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(out) + "\n"


def write_plots(s: dict[str, Any], out: Path) -> list[str]:
    """Perplexity vs length: zero-shot methods at 8x, fine-tuned arms, plain vs randomized pre-training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("zero-shot (target 8L)", [(m, "zero-shot-8x", m) for m in ZERO_SHOT]),
        (f"fine-tuned at {FT_FACTOR}L", [(ft.name, ft.name, "none") for ft in FINETUNES]),
        ("pre-training positions", [("plain", "zero-shot-8x", "none"), ("randomized", "randomized", "none")]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        for label, run, method in series:
            pts = [(n, _ppl(s, run, method, n)) for n in s["lengths"]]
            pts = [(n, v) for n, v in pts if v is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.axvline(s["native"], color="grey", linestyle=":", linewidth=1)
        ax.set(title=title, xlabel="context length (tokens)", ylabel="perplexity", xscale="log", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    name = "perplexity.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return [name]


# --------------------------------------------------------------------------------------------------- CLI


def _cmd_lab(args: argparse.Namespace) -> int:
    size = "quick" if args.quick else args.size
    summary = run_lab(args.out, size, args.seed)
    for f in summary["findings"]:
        print(f"{f['verdict']:>15}  {f['title']}: {f['evidence']}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def add_cli(sub: Any) -> None:
    """Register ``longseq lab``."""
    p = sub.add_parser("lab", help="reproduce the context-extension findings end to end on a tiny model (CPU)")
    p.add_argument("--out", required=True, help="lab folder (every stage is cached there and resumes)")
    p.add_argument("--quick", action="store_true", help="the quick preset (10 min on 2 CPU cores)")
    p.add_argument("--size", default="default", choices=sorted(SIZES),
                   help="size preset: default (29 min on 2 CPU cores), quick (10 min), test (a minute; for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_lab)
