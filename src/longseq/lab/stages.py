"""Stages 1-4 of the lab: data, pre-training, fine-tuning and evaluation, each cached under ``--out``.

Training runs ``longseq train`` as a subprocess (exactly what a user runs, with its own peak memory);
evaluation runs :func:`longseq.eval.run.run_eval` in process. Both resume a partial run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from longseq.core.errors import UserError
from longseq.core.fsutil import atomic_write_text, read_jsonl
from longseq.eval.plan import EvalConfig
from longseq.eval.run import run_eval
from longseq.lab.data import build_data, build_init
from longseq.lab.presets import FACTORS, FINETUNES, FT_FACTOR, LAB_TASKS, ZERO_SHOT, LabSize

# {method: {length: value}}: one number per (RoPE method, context length) of an eval run.
Curve = dict[str, dict[int, float]]


def log(msg: str) -> None:
    print(f"[lab] {msg}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------- training


def run_training(out: Path, name: str, recipe: dict[str, Any], faithful_memory: bool = False) -> dict[str, Any]:
    """Run ``longseq train --config`` in a subprocess (resuming a partial run); return cost figures.

    A subprocess gives each arm its own peak resident memory (``os.wait4``) and is exactly what a user runs.
    ``faithful_memory`` runs it with glibc's default allocator (``LONGSEQ_MALLOC=system``): about 2x slower
    here, but peak RSS then tracks live memory instead of the blocks the tuned allocator keeps
    (:mod:`longseq.core.runtime`), which moved the same arm's peak by 5-15% between runs.
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
    log(f"{name}: {' '.join(cmd[1:])}")
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
    """The training settings shared by every run of the lab."""
    return {"seed": seed, "batch_size": size.pretrain_batch, "grad_accum": 1, "warmup_steps": 10,
            "gradient_checkpointing": False, "save_every": 25, "weight_decay": 0.0, "adam_beta2": 0.95}


def finetune_recipe(size: LabSize, seed: int, model: str, data: str, method: str, rope: str) -> dict[str, Any]:
    """One fine-tuning arm at 4L; every arm gets the same token budget."""
    L4 = FT_FACTOR * size.native
    recipe = {**base_recipe(size, seed), "model": model, "method": method, "rope": rope, "data": data,
              "seq_len": L4, "steps": size.finetune_steps, "batch_size": size.finetune_batch, "warmup_steps": 2,
              "lr": size.lora_lr if method in ("lora", "longlora") else size.finetune_lr}
    if rope != "none":
        recipe["target_length"] = L4
    if rope == "abf":
        recipe["theta"] = 500000.0
    return recipe


# ------------------------------------------------------------------------------------------ evaluation


def run_evaluation(out: Path, name: str, model: str, cells: list[tuple[str, int]], target: int | None,
                   size: LabSize, heldout: str, seed: int) -> dict[str, Any]:
    """``longseq eval`` (in process, resumable) on one model; returns its summary with perplexities."""
    cfg = EvalConfig(model=model, out=str(out / "eval" / name), tasks=list(LAB_TASKS), cells=cells,
                     samples=size.eval_samples, seed=seed, prompt_format="raw", target_length=target,
                     ppl_text=heldout)
    log(f"eval {name}: {len(cells)} (method, length) cells x {len(LAB_TASKS)} tasks")
    summary = run_eval(cfg, progress=True, quiet=True)
    summary["perplexity"] = perplexities(Path(cfg.out) / "samples.jsonl")
    return summary


def _by_cell(acc: dict[tuple[str, int], Any], value: Any) -> Curve:
    """``{(method, length): acc}`` -> ``{method: {length: value(acc)}}``, both sorted."""
    table: Curve = {}
    for (method, length), a in sorted(acc.items()):
        table.setdefault(method, {})[length] = value(a)
    return table


def perplexities(samples: Path) -> Curve:
    """Token-level perplexity per (method, length): exp(sum of NLL / sum of scored tokens)."""
    acc: dict[tuple[str, int], list[float]] = {}
    for r in read_jsonl(samples):
        if r["task"] == "ppl":
            a = acc.setdefault((r["method"], int(r["length"])), [0.0, 0.0])
            a[0] += float(r["nll"])
            a[1] += float(r["scored_tokens"])
    return _by_cell(acc, lambda a: math.exp(a[0] / max(a[1], 1.0)))


def retrieval(summary: dict[str, Any]) -> Curve:
    """Mean of passkey and lines scores per (method, length)."""
    acc: dict[tuple[str, int], list[float]] = {}
    for r in summary["results"]:
        if r["task"] in ("passkey", "lines"):
            acc.setdefault((r["method"], int(r["length"])), []).append(float(r["score"]))
    return _by_cell(acc, lambda scores: sum(scores) / len(scores))


# ----------------------------------------------------------------------------------------------- stages


def run_stages(out: Path, size: LabSize, seed: int) -> tuple[list[int], dict[str, Any], dict[str, dict[str, Any]]]:
    """Stages 1-4 (each cached under ``out``): lengths, training costs and eval summaries."""
    L = size.native
    lengths = [L, 2 * L, 4 * L, 8 * L]

    log(f"[1/5] data and initial model (L = {L})")
    data = build_data(out, size, seed)
    init = build_init(out, size, seed)

    log("[2/5] pre-training at L, plain and randomized positions")
    pre = {**base_recipe(size, seed), "model": init, "method": "full", "rope": "none", "data": data["pretrain"],
           "seq_len": L, "steps": size.pretrain_steps, "lr": size.pretrain_lr}
    costs = {"pretrain-std": run_training(out, "pretrain-std", pre),
             "pretrain-rand": run_training(out, "pretrain-rand", {**pre, "randomized_positions": 8 * L})}
    std_model, rand_model = str(out / "pretrain-std" / "model"), str(out / "pretrain-rand" / "model")

    log(f"[3/5] fine-tuning at {FT_FACTOR}L with one token budget")
    for ft in FINETUNES:
        recipe = finetune_recipe(size, seed, std_model, data["finetune"], ft.method, ft.rope)
        costs[ft.name] = run_training(out, ft.name, recipe, faithful_memory=True)  # their costs are compared

    log("[4/5] evaluation: perplexity, passkey, lines at 1L..8L")
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
