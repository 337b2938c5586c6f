"""``longseq eval`` and ``longseq export-lm-eval``: their flags, and how they (with ``--preset``) become an
:class:`EvalConfig`."""

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
    tasks = [t for value in args.tasks for t in parse_csv(value)] if args.tasks else list(
        preset.tasks if preset else ("passkey",))
    methods_flag = getattr(args, "methods", None)  # export-lm-eval has no --methods (prompts do not depend on it)
    if methods_flag or args.lengths or not preset:
        methods = parse_csv(methods_flag) if methods_flag else (
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
            if not depths:
                raise ValueError
        except ValueError:
            raise UserError(f"--depths must be numbers like 0,25,50,75,100 or 0,0.5,1; got '{args.depths}'") from None
        if max(depths) > 1:
            depths = [d / 100 for d in depths]
    samples = args.samples if args.samples is not None else (preset.samples if preset else 5)
    # a preset's per-task lengths hold while its grid does: not with explicit --lengths/--methods or other tasks
    limits = {t: ls for t, ls in preset.task_lengths.items() if t in tasks} if preset and not (
        methods_flag or args.lengths) else {}
    model = args.model
    out = args.out or f"runs/eval-{Path(model).name}"
    return EvalConfig(model=model, out=out, tasks=tasks, cells=cells, samples=samples, seed=args.seed,
                      threshold=getattr(args, "threshold", RULER_THRESHOLD), backend=getattr(args, "backend", "hf"),
                      prompt_format=args.prompt_format, dtype=getattr(args, "dtype", "auto"),
                      chunk_size=getattr(args, "chunk_size", 16384),
                      target_length=parse_length(args.target_length) if getattr(args, "target_length", None) else None,
                      depths=depths, ppl_text=getattr(args, "ppl_text", None),
                      ruler_qa=parse_csv(args.ruler_qa) if getattr(args, "ruler_qa", None) else None,
                      base_url=getattr(args, "base_url", None),
                      api_model=getattr(args, "api_model", None), api_key=getattr(args, "api_key", None),
                      truncate=args.truncate, task_lengths=limits or None)


def _cmd_eval(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    run_eval(cfg, progress=not args.no_progress)
    print(f"wrote {Path(cfg.out) / 'samples.jsonl'}, summary.json, report.md and plots")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from longseq.eval.lmeval import export_lm_eval

    if not args.out:
        raise UserError("export-lm-eval needs --out DIR (the task folder to write)")
    names = export_lm_eval(config_from_args(args), args.out)
    print(f"wrote {len(names)} lm-evaluation-harness tasks to {args.out}: {', '.join(names)}\n"
          f"run them with: lm_eval --model hf --model_args pretrained={args.model} --include_path {args.out} "
          f"--tasks {','.join(names)}")
    return 0


PRESET_HELP = ("Presets: quick (passkey 1k-16k with none and 16k with yarn, lines at 1k-2k; 2 samples), full (all "
               "tasks and methods at 1k-16k; 5 samples).")


def _task_flags(p: argparse.ArgumentParser, out_help: str) -> None:
    """The flags that choose the prompts (shared by ``eval`` and ``export-lm-eval``)."""
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="alias, folder, .gguf or Hub id (tokenizer source "
                   "for --backend openai and for export-lm-eval)")
    p.add_argument("--tasks", action="append", help="comma list of " + ",".join(task_names()) + " or jsonl:PATH "
                   "(your own context/question/answers records); repeatable (default passkey)")
    p.add_argument("--lengths", help="comma list of prompt lengths in tokens, e.g. 1k,2k,4k (default 1k,2k,4k)")
    p.add_argument("--samples", type=int, help="samples per (task, method, length) cell (default 5; RULER: per subtask; "
                   "jsonl: up to this many records)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (prompts depend only on task, length, seed, index)")
    p.add_argument("--out", help=out_help)
    p.add_argument("--preset", help="quick or full; explicit flags override it")
    p.add_argument("--prompt-format", default="auto", help="auto (= raw), raw (completion prompt ending with the answer "
                   "prefix) or chat (the model's chat template)")
    p.add_argument("--depths", help="niah needle depths, e.g. 0,25,50,75,100 (default: --samples evenly spaced)")
    p.add_argument("--truncate", help="jsonl tasks: 'middle' evaluates every record at every length, its context cut "
                   "in the middle to fit (LongBench); default: records go to the smallest length holding them")


def add_cli(sub: Any) -> None:
    """Register ``longseq eval`` and ``longseq export-lm-eval``."""
    p = sub.add_parser("eval", help="long-context evaluation: passkey, LongEval, NIAH, RULER, perplexity, effective length",
                       description="Tasks: " + ", ".join(task_names()) + ", jsonl:PATH. Methods: " + ", ".join(METHODS) +
                       ". " + PRESET_HELP)
    _task_flags(p, "output folder (default runs/eval-<model>); re-running resumes")
    p.add_argument("--methods", help="comma list of RoPE methods (default none)")
    p.add_argument("--threshold", type=float, default=RULER_THRESHOLD, help="effective-length threshold (default 0.856, RULER's)")
    p.add_argument("--backend", default="hf", help="hf (local transformers) or openai (any OpenAI-compatible server)")
    p.add_argument("--base-url", help="openai backend: server URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-model", help="openai backend: model name sent to the server (default MODEL)")
    p.add_argument("--api-key", help="openai backend: API key (default $OPENAI_API_KEY or 'EMPTY')")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="hf backend weights dtype")
    p.add_argument("--chunk-size", type=int, default=16384, help="hf backend prefill chunk in tokens (memory vs speed)")
    p.add_argument("--target-length", help="RoPE target length for the methods (default: the largest tested length)")
    p.add_argument("--ppl-text", help="ppl text: a file or hf:DATASET[:CONFIG] (default: the shipped haystack)")
    p.add_argument("--ruler-qa", help="RULER qa_1/qa_2 data: comma list of SQuAD 2.0 dev and/or HotpotQA dev distractor JSON files (the format picks the subtask)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)

    x = sub.add_parser("export-lm-eval", help="write longseq's tasks as an lm-evaluation-harness task folder",
                       description="Writes one lm-evaluation-harness task per (task, length), named like "
                       "longseq_passkey_4k (tags longseq and longseq_<task>), with longseq's prompts (sized with "
                       "MODEL's tokenizer) and scoring; run them with lm_eval --include_path DIR --tasks "
                       "longseq_passkey_4k. Tasks: " + ", ".join(t for t in task_names() if t != "ppl") +
                       ", jsonl:PATH. " + PRESET_HELP)
    _task_flags(x, "the task folder to write (YAML + JSONL + utils.py)")
    x.set_defaults(func=_cmd_export)
