"""``longseq eval``: its flags, and how they (with ``--preset``) become an :class:`EvalConfig`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from longseq.core.errors import UserError, unknown_choice
from longseq.core.parsing import parse_csv, parse_length, parse_lengths
from longseq.eval.plan import PRESETS, RULER_THRESHOLD, EvalConfig
from longseq.eval.run import run_eval
from longseq.eval.tasks import task_names
from longseq.models.loading import DEFAULT_MODEL, DTYPES
from longseq.models.rope import METHODS


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """Merge ``--preset`` with explicit flags (explicit flags win)."""
    preset = None
    if args.preset:
        if args.preset not in PRESETS:
            raise unknown_choice("preset", args.preset, PRESETS)
        preset = PRESETS[args.preset]
    tasks = parse_csv(args.tasks) if args.tasks else list(preset.tasks if preset else ("passkey",))
    if args.methods or args.lengths or not preset:
        methods = parse_csv(args.methods) if args.methods else (
            list(dict.fromkeys(m for m, _ in preset.groups)) if preset else ["none"])
        lengths = parse_lengths(args.lengths) if args.lengths else (
            sorted({L for _, ls in preset.groups for L in ls}) if preset else [1024, 2048, 4096])
        cells = [(m, L) for m in methods for L in lengths]
    else:
        cells = [(m, L) for m, ls in preset.groups for L in ls]
    depths = None
    if args.depths:
        try:
            depths = [float(x) for x in parse_csv(args.depths)]
        except ValueError:
            raise UserError(f"--depths must be numbers like 0,25,50,75,100 or 0,0.5,1; got '{args.depths}'") from None
        if max(depths) > 1:
            depths = [d / 100 for d in depths]
    samples = args.samples if args.samples is not None else (preset.samples if preset else 5)
    model = args.model
    out = args.out or f"runs/eval-{Path(model).name}"
    return EvalConfig(model=model, out=out, tasks=tasks, cells=cells, samples=samples, seed=args.seed,
                      threshold=args.threshold, backend=args.backend, prompt_format=args.prompt_format,
                      dtype=args.dtype, chunk_size=args.chunk_size,
                      target_length=parse_length(args.target_length) if args.target_length else None,
                      depths=depths, ppl_text=args.ppl_text, base_url=args.base_url, api_model=args.api_model,
                      api_key=args.api_key)


def _cmd_eval(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    run_eval(cfg, progress=not args.no_progress)
    print(f"wrote {Path(cfg.out) / 'samples.jsonl'}, summary.json, report.md and plots")
    return 0


def add_cli(sub: Any) -> None:
    """Register ``longseq eval``."""
    p = sub.add_parser("eval", help="long-context evaluation: passkey, LongEval, NIAH, RULER, perplexity, effective length",
                       description="Tasks: " + ", ".join(task_names()) + ". Methods: " + ", ".join(METHODS) +
                       ". Presets: quick (passkey+lines 1k-16k none, 16k yarn; 2 samples), full (all tasks and methods).")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="alias, folder, .gguf or Hub id (tokenizer source "
                   "for --backend openai)")
    p.add_argument("--tasks", help="comma list of " + ",".join(task_names()) + " (default passkey)")
    p.add_argument("--lengths", help="comma list of prompt lengths in tokens, e.g. 1k,2k,4k (default 1k,2k,4k)")
    p.add_argument("--methods", help="comma list of RoPE methods (default none)")
    p.add_argument("--samples", type=int, help="samples per (task, method, length) cell (default 5; RULER: per subtask)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (prompts depend only on task, length, seed, index)")
    p.add_argument("--out", help="output folder (default runs/eval-<model>); re-running resumes")
    p.add_argument("--preset", help="quick or full; explicit flags override it")
    p.add_argument("--threshold", type=float, default=RULER_THRESHOLD, help="effective-length threshold (default 0.856, RULER's)")
    p.add_argument("--backend", default="hf", help="hf (local transformers) or openai (any OpenAI-compatible server)")
    p.add_argument("--prompt-format", default="auto", help="auto (= raw), raw (completion prompt ending with the answer "
                   "prefix) or chat (the model's chat template)")
    p.add_argument("--base-url", help="openai backend: server URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-model", help="openai backend: model name sent to the server (default MODEL)")
    p.add_argument("--api-key", help="openai backend: API key (default $OPENAI_API_KEY or 'EMPTY')")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="hf backend weights dtype")
    p.add_argument("--chunk-size", type=int, default=16384, help="hf backend prefill chunk in tokens (memory vs speed)")
    p.add_argument("--target-length", help="RoPE target length for the methods (default: the largest tested length)")
    p.add_argument("--depths", help="niah needle depths, e.g. 0,25,50,75,100 (default: --samples evenly spaced)")
    p.add_argument("--ppl-text", help="ppl text: a file or hf:DATASET[:CONFIG] (default: the shipped haystack)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)
