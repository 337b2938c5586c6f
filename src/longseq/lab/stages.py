"""Stages 1-4 of the lab: data, pre-training, fine-tuning (with ``longseq lengthgen``) and evaluation, each
cached under ``--out``.

Training runs ``longseq train`` (and ``longseq lengthgen``) as a subprocess (exactly what a user runs, with its
own peak memory);
evaluation runs :func:`longseq.eval.run.run_eval` in process and resumes a partial run. A training arm's
cost is a measurement of one whole run: an arm the lab did not finish is rerun from scratch, and its
child dies with the lab (own process group, killed on exit; ``PR_SET_PDEATHSIG`` on Linux when the lab
itself is killed), so no orphan keeps writing into the folder of the rerun.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

from longseq.core.errors import UserError
from longseq.core.fsutil import atomic_write_text, read_jsonl
from longseq.eval.plan import EvalConfig
from longseq.eval.run import open_samples, run_eval
from longseq.lab.data import build_data, build_init
from longseq.lab.presets import FACTORS, FINETUNES, FT_FACTOR, ZERO_SHOT, LabSize

# {method: {length: value}}: one number per (RoPE method, context length) of an eval run.
Curve = dict[str, dict[int, float]]


def log(msg: str) -> None:
    print(f"[lab] {msg}", file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------- training


def _pdeathsig() -> Any:
    """libc's ``prctl`` (Linux), looked up in the parent: the child must not ``dlopen`` between fork and exec."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the process group kill of run_child still applies
        return None


def _die_with_parent(prctl: Any, parent: int) -> None:
    """In the child, before exec: get SIGKILL when the parent dies (``PR_SET_PDEATHSIG`` = 1, kept across
    exec), and exit at once if the parent is already gone."""
    if prctl is not None:
        prctl(1, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the child's process group, SIGKILL it after 10 s, and reap the child."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue


def run_child(cmd: Sequence[str], stdout: Any, env: dict[str, str] | None = None,
              pass_fds: Sequence[int] = ()) -> tuple[int, Any]:
    """Run ``cmd`` to the end in its own process group; return (exit code, its ``os.wait4`` resource usage).

    The child dies with the caller: its group is killed when the caller leaves early (an exception, Ctrl-C,
    SIGTERM turned into an exception) and, on Linux, the kernel kills it when the caller is SIGKILLed.
    ``wait4`` reports this child's own peak resident memory (``RUSAGE_CHILDREN`` would mix all arms).
    """
    proc = subprocess.Popen(list(cmd), stdout=stdout, env=env, start_new_session=True, pass_fds=tuple(pass_fds),
                            preexec_fn=lambda prctl=_pdeathsig(), parent=os.getpid(): _die_with_parent(prctl, parent))
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        _stop_group(proc)
        raise
    return os.waitstatus_to_exitcode(status), usage


def run_training(out: Path, name: str, recipe: dict[str, Any], faithful_memory: bool = False,
                 lock_fd: int | None = None) -> dict[str, Any]:
    """Run ``longseq train --config`` in a subprocess; return cost figures (cached in ``costs/NAME.json``).

    A subprocess gives each arm its own peak resident memory (``os.wait4``) and is exactly what a user runs.
    The cost file is written atomically once the arm is complete, with the ``run_id`` of that attempt; an
    arm without one (interrupted, or finished by a process the lab no longer owns) is rerun whole from an
    empty folder, so time, peak memory and metrics always describe one run. ``lock_fd`` (the lab folder's
    lock) is inherited by the child: a child that outlived its lab keeps the folder locked.
    ``faithful_memory`` runs it with glibc's default allocator (``LONGSEQ_MALLOC=system``): about 2x slower
    here, but peak RSS then tracks live memory instead of the blocks the tuned allocator keeps
    (:mod:`longseq.core.runtime`), which moved the same arm's peak by 5-15% between runs.
    """
    run_dir = out / name
    cost_file = out / "costs" / f"{name}.json"
    if (run_dir / "model" / "config.json").is_file() and cost_file.is_file():
        return json.loads(cost_file.read_text())
    run_id = uuid.uuid4().hex[:12]
    if run_dir.exists():
        log(f"{name}: rerunning the interrupted arm whole (its cost must come from one run)")
        shutil.rmtree(run_dir)
    recipe_path = out / "recipes" / f"{name}.yaml"
    import yaml

    recipe_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(recipe_path, yaml.safe_dump({**recipe, "out": str(run_dir)}, sort_keys=True))
    cmd = [sys.executable, "-m", "longseq", "train", "--config", str(recipe_path)]
    log(f"{name}: {' '.join(cmd[1:])}")
    start = time.time()
    log_path = out / "recipes" / f"{name}.out.json"
    with open(log_path, "w", encoding="utf-8") as fh:
        env = {**os.environ, "LONGSEQ_MALLOC": "system"} if faithful_memory else None
        code, usage = run_child(cmd, fh, env, () if lock_fd is None else (lock_fd,))
    if code != 0:
        raise UserError(f"lab stage {name} failed (exit {code}); fix the error above and rerun the lab "
                        "to resume")
    text = log_path.read_text(encoding="utf-8")
    result = json.loads(text[text.index("{"):])
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    steps = [m.get("step") for m in metrics]
    if steps != list(range(1, int(recipe["steps"]) + 1)):
        raise UserError(f"lab stage {name}: {run_dir / 'metrics.jsonl'} does not hold one run's steps 1.."
                        f"{recipe['steps']}; rerun the lab (the arm is redone)")
    cost = {"run_id": run_id,
            "seconds": round(time.time() - start, 1),
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
                   size: LabSize, heldout: str, seed: int, retrieval: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """``longseq eval`` (in process, resumable) on one model; returns its summary with perplexities.

    Perplexity runs at every cell; each retrieval task of ``retrieval`` at its lengths only.
    """
    cfg = EvalConfig(model=model, out=str(out / "eval" / name), tasks=["ppl", *retrieval], cells=cells,
                     samples=size.eval_samples, seed=seed, prompt_format="raw", target_length=target,
                     ppl_text=heldout, task_lengths=dict(retrieval))
    log(f"eval {name}: {len(cells)} (method, length) cells")
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
    for r in open_samples(samples.parent).values():  # each sample once, even if a line is duplicated
        if r["task"] == "ppl":
            a = acc.setdefault((r["method"], int(r["length"])), [0.0, 0.0])
            a[0] += float(r["nll"])
            a[1] += float(r["scored_tokens"])
    return _by_cell(acc, lambda a: math.exp(a[0] / max(a[1], 1.0)))


def task_scores(summary: dict[str, Any], tasks: Sequence[str]) -> Curve:
    """Mean score of ``tasks`` (e.g. passkey, or passkey and lines) per (method, length) where all ran."""
    acc: dict[tuple[str, int], dict[str, float]] = {}
    for r in summary["results"]:
        if r["task"] in tasks:
            acc.setdefault((r["method"], int(r["length"])), {})[r["task"]] = float(r["score"])
    return _by_cell({k: v for k, v in acc.items() if len(v) == len(tasks)}, lambda d: sum(d.values()) / len(d))


# ---------------------------------------------------------------------------------------- length generalization


def run_lengthgen(out: Path, size: LabSize, seed: int, lock_fd: int | None = None) -> dict[str, Any]:
    """The randomized-positions finding on its paper's own protocol: ``longseq lengthgen`` (a subprocess, as a
    user runs it; it resumes finished runs) on Even Pairs with RoPE vs randomized RoPE, the lengthgen quick
    preset at ``size.lengthgen_steps`` steps and ``size.lengthgen_seeds`` seeds. Returns its summary plus every
    run's record."""
    folder = out / "lengthgen"
    cmd = [sys.executable, "-m", "longseq", "lengthgen", "--preset", "quick", "--pe", "rope,randomized_rope",
           "--steps", str(size.lengthgen_steps), "--seeds", str(size.lengthgen_seeds), "--out", str(folder),
           "--no-progress"]
    if _lengthgen_protocol(folder) != (size.lengthgen_steps, size.lengthgen_seeds):  # it resumes finished runs
        log(f"lengthgen: {' '.join(cmd[1:])}")
        with open(out / "lengthgen.log", "a", encoding="utf-8") as fh:
            code, _ = run_child(cmd, fh, None, () if lock_fd is None else (lock_fd,))
        if code != 0:
            raise UserError(f"lab stage lengthgen failed (exit {code}; see {out / 'lengthgen.log'}); fix it and "
                            "rerun the lab to resume")
    summary = json.loads((folder / "summary.json").read_text())
    return {"protocol": summary["protocol"], "results": summary["results"],
            "runs": read_jsonl(folder / "runs.jsonl")}


def _lengthgen_protocol(folder: Path) -> tuple[int, int] | None:
    """(steps, seeds) of the finished lengthgen run in ``folder``, or None."""
    try:
        p = json.loads((folder / "summary.json").read_text())["protocol"]
        return int(p["steps"]), int(p["seeds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------------------------- stages


def ft_run(name: str, seed: int) -> str:
    """Folder and eval name of fine-tuning arm ``name`` with seed ``seed``."""
    return f"{name}-s{seed}"


def pretrain_phases(size: LabSize) -> list[tuple[str, int, int, int, float]]:
    """(run folder, row length, steps, batch, learning rate) of each pre-training phase that runs, in order;
    each starts from the previous one's model."""
    phases = [("pretrain-copy", size.copy_len, size.copy_steps, size.copy_batch, size.pretrain_lr),
              ("pretrain-short", size.short_len, size.short_steps, size.short_batch, size.pretrain_lr),
              ("pretrain", size.native, size.pretrain_steps, size.pretrain_batch, size.pretrain_lr),
              ("pretrain-anneal", size.native, size.anneal_steps, size.pretrain_batch, size.anneal_lr)]
    return [p for p in phases if p[2]]


def base_model(out: Path, size: LabSize) -> str:
    """The pre-trained model every extension starts from: the last pre-training phase's."""
    return str(out / pretrain_phases(size)[-1][0] / "model")


def run_stages(out: Path, size: LabSize, seed: int,
               lock_fd: int | None = None) -> tuple[list[int], dict[str, Any], dict[str, dict[str, Any]],
                                                    dict[str, Any]]:
    """Stages 1-4 (each cached under ``out``): lengths, training costs, eval summaries, the lengthgen run.

    Fine-tuning arms run with seeds ``seed .. seed + size.seeds - 1`` (data order and adapter init differ).
    ``lock_fd``: the lab folder's lock, handed to every child process (:func:`run_training`)."""
    L = size.native
    lengths = [L, 2 * L, 4 * L, 8 * L]

    log(f"[1/5] tokenizer, data and initial model (L = {L})")
    data = build_data(out, size, seed)
    init = build_init(out, size, seed, data["tokenizer"])

    log(f"[2/5] pre-training at {size.copy_len}, {size.short_len} and L tokens; the randomized-positions benchmark "
        "(longseq lengthgen)")
    costs = {}
    model = init
    for name, n, steps, batch, lr in pretrain_phases(size):
        recipe = {**base_recipe(size, seed), "model": model, "method": "full", "rope": "none",
                  "data": data[name.replace("-", "_")], "seq_len": n, "steps": steps, "batch_size": batch,
                  "lr": lr, "warmup_steps": 30, "save_every": 200}
        costs[name] = run_training(out, name, recipe, lock_fd=lock_fd)
        model = str(out / name / "model")
    base = base_model(out, size)

    lengthgen = run_lengthgen(out, size, seed, lock_fd)

    log(f"[3/5] fine-tuning at {FT_FACTOR}L with one token budget, {size.seeds} seed(s) per arm")
    seeds = range(seed, seed + size.seeds)
    for s in seeds:
        for ft in FINETUNES:
            recipe = finetune_recipe(size, s, base, data["finetune"], ft.method, ft.rope)
            costs[ft_run(ft.name, s)] = run_training(out, ft_run(ft.name, s), recipe, True, lock_fd)

    log("[4/5] evaluation: perplexity at 1L..8L, passkey and lines")
    # Passkey wherever a finding reads it; lines where a finding reads it: the base model at L and the arms
    # at 4L. (A model that does not stop answers lines with all of LongChat's 100 new tokens: at every
    # zero-shot cell that would be most of the lab's evaluation time.)
    evals: dict[str, dict[str, Any]] = {}
    for f in FACTORS:
        methods = ZERO_SHOT if f == max(FACTORS) else tuple(m for m in ZERO_SHOT if m != "none")
        cells = [(m, n) for m in methods for n in lengths if n <= f * L]
        retrieval = {"passkey": tuple(n for n in lengths if n <= f * L)}
        if "none" in methods:
            retrieval["lines"] = (L,)
        evals[f"zero-shot-{f}x"] = run_evaluation(out, f"zero-shot-{f}x", base, cells, f * L, size,
                                                  data["heldout"], seed, retrieval)
    for s in seeds:
        for ft in FINETUNES:
            name = ft_run(ft.name, s)
            evals[name] = run_evaluation(out, name, str(out / name / "model"), [("none", n) for n in lengths],
                                         None, size, data["heldout"], seed,
                                         {t: (FT_FACTOR * L,) for t in ("passkey", "lines")})
    return lengths, costs, evals, lengthgen
