"""Automatic prefix caching in the ``longseq eval`` engine: wall time with and without it, in one process.

    PYTHONPATH=src python bench/prefix_cache.py --tasks niah --lengths 4k,8k --samples 5
    PYTHONPATH=src python bench/prefix_cache.py --preset quick [--tokens-only]

Runs the samples of an eval plan (the same prompts, in the same order as ``longseq eval``: method, length,
task, the task's order) through one loaded ``HFEngine`` per method twice, first with the prefix cache off, then
on (``LocalLM.prefix_cache``), and prints per method: prompt tokens, the share taken from the kept cache, the
two wall times and their ratio, and how many greedy outputs and scores are identical. The CPU model is printed
too; speed ratios only hold for the machine they were measured on. ``--tokens-only`` loads no model: it counts
the prompt tokens the cache would supply (the same longest-common-prefix rule as ``LocalLM``), which is exact
and machine-independent.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from longseq.core.runtime import tune_process  # noqa: E402

tune_process()


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "unknown")


def run_samples(ctx, engine, samples, cached: bool):
    """Run ``samples`` in order; returns (seconds, records, reused tokens, prefilled tokens)."""
    from longseq.eval.tasks import EVAL_TASKS

    engine.prefix_cache = cached
    engine.clear_prefix_cache()
    reused0, filled0 = engine.reused_tokens, engine.prefilled_tokens
    t0 = time.perf_counter()
    recs = [EVAL_TASKS[s.task].run(ctx, engine, s) for s in samples]
    return time.perf_counter() - t0, recs, engine.reused_tokens - reused0, engine.prefilled_tokens - filled0


def reusable_tokens(ctx, samples) -> tuple[int, int]:
    """(prompt tokens, tokens the kept cache supplies) for ``samples`` run in order by one engine."""
    from longseq.eval.engine import encode
    from longseq.eval.lmeval import sample_document
    from longseq.models.generation import common_prefix_length

    total = reused = 0
    previous: list[int] = []
    for s in samples:
        ids = encode(ctx.tokenizer, sample_document(ctx, s)["prompt"], ctx.fmt)
        reused += min(common_prefix_length(previous, ids), len(ids) - 1)
        total += len(ids)
        previous = ids  # the kept cache also holds the generated tokens, which never match a new prompt's
    return total, reused


def main() -> None:
    from longseq.core.parsing import parse_csv, parse_lengths
    from longseq.core.tables import md_table
    from longseq.eval.engine import HFEngine, resolve_prompt_format
    from longseq.eval.plan import PRESETS, EvalConfig, plan
    from longseq.eval.tasks import EVAL_TASKS, RunContext
    from longseq.models.loading import load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--preset", help="an eval preset (quick, full) instead of --tasks/--lengths/--methods")
    ap.add_argument("--tasks", default="niah")
    ap.add_argument("--lengths", default="4k,8k")
    ap.add_argument("--methods", default="none")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokens-only", action="store_true", help="count reusable prompt tokens, run no model")
    args = ap.parse_args()
    if args.preset:
        pre = PRESETS[args.preset]
        cfg = EvalConfig(model=args.model, out="-", tasks=list(pre.tasks), samples=pre.samples, seed=args.seed,
                         cells=[(m, L) for m, ls in pre.groups for L in ls], task_lengths=pre.task_lengths)
    else:
        cfg = EvalConfig(model=args.model, out="-", tasks=parse_csv(args.tasks), samples=args.samples, seed=args.seed,
                         cells=[(m, L) for m in parse_csv(args.methods) for L in parse_lengths(args.lengths)])
    cfg.validate()
    tokenizer = load_tokenizer(cfg.model)
    ctx = RunContext(cfg, tokenizer, resolve_prompt_format(cfg.prompt_format, tokenizer))
    planned = plan(cfg)
    for s in planned:
        EVAL_TASKS[s.task].prepare(ctx, s)  # prompts are built (and cached) outside the timed runs
    print(f"CPU: {cpu_model()}; model {cfg.model}; {len(planned)} samples")
    rows, tot = [], [0.0, 0.0]
    if args.tokens_only:
        for method in dict.fromkeys(s.method for s in planned):
            total, reused = reusable_tokens(ctx, [s for s in planned if s.method == method])
            rows.append([method, total, reused, f"{reused / total:.1%}"])
        print(md_table(["method", "prompt tokens", "from the kept cache", "share"], rows))
        return
    for method in dict.fromkeys(s.method for s in planned):
        mine = [s for s in planned if s.method == method]
        engine = HFEngine.load(cfg.model, method, cfg.dtype, cfg.chunk_size,
                               target_length=max(s.length for s in planned) if method != "none" else None)
        t_off, recs_off, _, filled = run_samples(ctx, engine, mine, cached=False)
        t_on, recs_on, reused, _ = run_samples(ctx, engine, mine, cached=True)
        same_out = sum(a["output"] == b["output"] for a, b in zip(recs_off, recs_on))
        same_score = sum(a["score"] == b["score"] for a, b in zip(recs_off, recs_on))
        rows.append([method, len(mine), filled, f"{reused / filled:.1%}", f"{t_off:.1f}", f"{t_on:.1f}",
                     f"{t_on / t_off:.2f}", f"{same_out}/{len(mine)}", f"{same_score}/{len(mine)}"])
        tot[0] += t_off
        tot[1] += t_on
        del engine
    print(md_table(["method", "samples", "prompt tokens", "reused from cache", "uncached s", "cached s",
                    "cached / uncached", "same output", "same score"], rows))
    print(f"total: uncached {tot[0]:.1f} s, cached {tot[1]:.1f} s, ratio {tot[1] / tot[0]:.2f}")


if __name__ == "__main__":
    main()
