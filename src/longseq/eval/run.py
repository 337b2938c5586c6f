"""``longseq eval``: how much of its context does a model really use?

Runs the tasks of :mod:`longseq.eval.tasks` over a grid of (RoPE method x length), one model load per
method, and writes to ``--out``:
  * ``samples.jsonl``: one line per scored sample, appended as soon as it is scored; re-running the same
    command skips every sample already there (resume);
  * ``summary.json``: ``{"model", "threshold", "results": [{"task", "method", "length", "score", "n", ...}],
    "effective_length": {method: int}}`` (:mod:`longseq.eval.summary`);
  * ``report.md``, ``score_vs_length.png`` and the tasks' own figures, e.g. ``niah_heatmap.png``
    (:mod:`longseq.eval.report`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from longseq.core.errors import UserError
from longseq.core.fsutil import append_jsonl, atomic_write_text, read_jsonl
from longseq.core.rundir import claim_run_folder
from longseq.core.runtime import tune_process
from longseq.eval.engine import HFEngine, OpenAIEngine, check_fits, resolve_prompt_format
from longseq.eval.plan import EvalConfig, plan
from longseq.eval.report import format_table, report_markdown, write_plots
from longseq.eval.summary import summarize
from longseq.eval.tasks import EVAL_TASKS, PlannedSample, RunContext, record_key
from longseq.models.loading import load_config, load_tokenizer

__all__ = ["EvalConfig", "run_eval"]


def _model_id(spec: str) -> str:
    """A local checkpoint by its absolute path: resuming from another folder, or with the path spelled
    differently, is the same run."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _claim(out: Path, cfg: EvalConfig, fmt: str) -> None:
    """Refuse to mix samples of a different model / seed / prompt format / backend in one folder."""
    ident = {"model": _model_id(cfg.model), "seed": cfg.seed, "prompt_format": fmt, "backend": cfg.backend,
             "api_model": cfg.api_model if cfg.backend == "openai" else None}
    claim_run_folder(out, "run.json", ident,
                     normalize=lambda old: {**old, "model": _model_id(old["model"])} if "model" in old else old)


def _engine_factory(cfg: EvalConfig) -> Callable[..., Any]:
    """``make(method, max_length=None)``: the engine of one RoPE method (the server, for ``openai``)."""

    def make(method: str, max_length: int | None = None) -> Any:
        if cfg.backend == "openai":
            return OpenAIEngine(cfg.base_url or "", cfg.api_model or cfg.model, cfg.api_key)
        target = cfg.target_length or max_length
        return HFEngine.load(cfg.model, method, cfg.dtype, cfg.chunk_size,
                             target_length=target if method not in ("none",) else None)

    return make


def _run_pending(cfg: EvalConfig, ctx: RunContext, planned: list[PlannedSample], pending: list[PlannedSample],
                 samples_path: Path, progress: bool) -> None:
    """Score every pending sample, one model load per method, appending each record as soon as it is scored."""
    from tqdm import tqdm

    make_engine = _engine_factory(cfg)
    bar = tqdm(total=len(planned), initial=len(planned) - len(pending), disable=not progress, file=sys.stderr,
               unit="sample", dynamic_ncols=True)
    try:
        for method in dict.fromkeys(s.method for s in pending):
            bar.set_description(f"loading model ({method})")
            engine = make_engine(method, max(s.length for s in planned if s.method == method))
            for sample in (s for s in pending if s.method == method):
                bar.set_description(f"{method} {sample.label} {sample.length}")
                rec = EVAL_TASKS[sample.task].run(ctx, engine, sample)
                append_jsonl(samples_path, {"task": sample.task, "subtask": sample.subtask or None, "method": method,
                                            "length": sample.length, "index": sample.index, "seed": cfg.seed, **rec})
                bar.update(1)
            del engine
    finally:
        bar.close()


def run_eval(cfg: EvalConfig, progress: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) an evaluation and write samples.jsonl, summary.json, report.md and plots.

    Returns the summary dict (also written to ``out/summary.json``).
    """
    tune_process()
    cfg.validate()
    tokenizer = load_tokenizer(cfg.model)
    fmt = resolve_prompt_format(cfg.prompt_format, tokenizer)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    planned = plan(cfg)
    if cfg.backend == "hf":
        config = load_config(cfg.model)
        bpv = 2 if str(cfg.dtype) in ("auto", "bfloat16", "float16") else 4
        for length in sorted({s.length for s in planned}):
            check_fits(config, length, cfg.chunk_size, bpv)
    else:
        _engine_factory(cfg)("none").check()  # server down -> one line, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    _claim(out, cfg, fmt)
    samples_path = out / "samples.jsonl"
    done = {record_key(r) for r in read_jsonl(samples_path)}
    pending = [s for s in planned if s.key not in done]
    ctx = RunContext(cfg, tokenizer, fmt)
    # Build one sample per (task, subtask, length) before loading any model: a length too short fails now.
    for sample in {(s.task, s.subtask, s.length): s for s in pending}.values():
        EVAL_TASKS[sample.task].prepare(ctx, sample)
    _run_pending(cfg, ctx, planned, pending, samples_path, progress)
    summary = summarize(cfg, read_jsonl(samples_path), planned, fmt)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    plots = write_plots(summary, out)
    atomic_write_text(out / "report.md", report_markdown(summary, plots))
    if not quiet:
        print(format_table(summary))
    return summary
