"""``longseq eval``: how much of its context does a model really use?

Runs the tasks of :mod:`longseq.eval.tasks` over a grid of (RoPE method x length), one model load per
method, and writes to ``--out``:
  * ``samples.jsonl``: one line per scored sample, appended as soon as it is scored; re-running the same
    command skips every sample already there (resume). Records are keyed by (method, task, subtask,
    length, index): a key is written once and counted once, even if the file holds a duplicated line;
  * ``summary.json``: ``{"model", "threshold", "results": [{"task", "method", "length", "score", "n",
    "ci_low", "ci_high", ...}], "effective_length": {method: int},
    "effective_length_by_task": {method: {task: int}}}`` (:mod:`longseq.eval.summary`);
  * ``report.md``, ``score_vs_length.png`` and the tasks' own figures, e.g. ``niah_heatmap.png``
    (:mod:`longseq.eval.report`);
  * ``run.json`` (the settings a resume must repeat), ``longseq-run.json`` and ``.longseq.lock``
    (:mod:`longseq.core.rundir`: the folder is an eval folder, used by one run at a time).

Every setting, the prompts of every pending sample and the memory estimate are checked before anything
is written, so a bad command leaves no trace.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from longseq.core.errors import UserError
from longseq.core.fsutil import KeyedJsonl, atomic_write_text, output_errors
from longseq.core.rundir import claim_kind, claim_run_folder, lock_run_folder
from longseq.core.runtime import tune_process
from longseq.eval.engine import HFEngine, OpenAIEngine, check_fits, resolve_prompt_format
from longseq.eval.plan import EvalConfig, plan
from longseq.eval.report import format_table, report_markdown, write_plots
from longseq.eval.summary import summarize
from longseq.eval.tasks import EVAL_TASKS, PlannedSample, RunContext, record_key
from longseq.models.loading import load_config, load_tokenizer, pick_dtype
from longseq.models.rope import extend_config

__all__ = ["EvalConfig", "run_eval"]


def _model_id(spec: str) -> str:
    """A local checkpoint by its absolute path: resuming from another folder, or with the path spelled
    differently, is the same run."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


PROTOCOL = 2
"""Version of the tasks' prompts and scoring; 2 follows the reference code (RULER, LongChat, NIAH). Samples of
another version are never mixed into a run (a folder without the field holds version 1)."""


def _normalize(old: dict[str, Any]) -> dict[str, Any]:
    old = {"protocol": 1, **old}
    return {**old, "model": _model_id(old["model"])} if "model" in old else old


def _claim(out: Path, cfg: EvalConfig, fmt: str) -> None:
    """Refuse to mix samples of a different model / seed / prompt format / backend / protocol in one folder."""
    ident = {"model": _model_id(cfg.model), "seed": cfg.seed, "prompt_format": fmt, "backend": cfg.backend,
             "api_model": cfg.api_model if cfg.backend == "openai" else None, "protocol": PROTOCOL}
    claim_run_folder(out, "run.json", ident, kind="eval", normalize=_normalize)


def check_record(rec: dict[str, Any]) -> None:
    """Raise ``KeyError``/``TypeError`` on a ``samples.jsonl`` record without the fields resume and the summary
    read (a hand-edited or foreign line); :func:`longseq.core.fsutil.read_jsonl` names its file:line."""
    for name, kinds in _FIELDS.items():
        value = rec[name]
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise TypeError(f"field '{name}' is {json.dumps(value)}, not {' or '.join(k.__name__ for k in kinds)}")
    if not isinstance(rec.get("subtask") or "", str):
        raise TypeError(f"field 'subtask' is {json.dumps(rec['subtask'])}, not a string")


_FIELDS: dict[str, tuple[type, ...]] = {"task": (str,), "method": (str,), "length": (int,), "index": (int,),
                                        "score": (int, float), "prompt_tokens": (int, float)}


def open_samples(out: Path) -> KeyedJsonl:
    """``out/samples.jsonl`` keyed by sample: checked records, each key once (the first copy)."""
    return KeyedJsonl(out / "samples.jsonl", record_key, check_record)


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
                 samples: KeyedJsonl, progress: bool) -> None:
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
                samples.append({"task": sample.task, "subtask": sample.subtask or None, "method": method,
                                "length": sample.length, "index": sample.index, "seed": cfg.seed, **rec})
                bar.update(1)
            del engine
    finally:
        bar.close()


def _check_before_writing(cfg: EvalConfig, ctx: RunContext, planned: list[PlannedSample], out: Path) -> KeyedJsonl:
    """Everything that can fail on the user's input, before a byte is written: the folder, the samples
    already there (returned), the memory each length needs (or the server), and the prompt of every
    pending sample."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    claim_kind(out, "eval", record=False)
    done = open_samples(out)
    if cfg.backend == "hf":
        config = load_config(cfg.model)
        bpv = pick_dtype(cfg.dtype).itemsize
        for length in sorted({s.length for s in planned}):
            check_fits(config, length, cfg.chunk_size, bpv)
        for method in dict.fromkeys(s.method for s in planned if s.method != "none"):
            # the scale each engine will use (e.g. a factor above the registry's bound) fails now, not mid-run
            extend_config(config, method, target_length=cfg.target_length or max(
                s.length for s in planned if s.method == method))
    else:
        _engine_factory(cfg)("none").check()  # server down -> one line, before anything is written
    # One sample per (task, subtask, length) before loading any model: a length too short fails now.
    for sample in {(s.task, s.subtask, s.length): s for s in planned if s.key not in done}.values():
        EVAL_TASKS[sample.task].prepare(ctx, sample)
    return done


def run_eval(cfg: EvalConfig, progress: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) an evaluation and write samples.jsonl, summary.json, report.md and plots.

    Returns the summary dict (also written to ``out/summary.json``). Raises :class:`UserError` when another
    run holds the folder, and on a full disk or an unwritable ``out`` (what was saved stays intact).
    """
    tune_process()
    cfg.validate()
    tokenizer = load_tokenizer(cfg.model)
    fmt = resolve_prompt_format(cfg.prompt_format, tokenizer)
    out = Path(cfg.out)
    planned = plan(cfg)
    ctx = RunContext(cfg, tokenizer, fmt)
    samples = _check_before_writing(cfg, ctx, planned, out)
    with output_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        with lock_run_folder(out):
            _claim(out, cfg, fmt)
            samples.refresh()  # what another run appended before this one took the lock
            pending = [s for s in planned if s.key not in samples]
            _run_pending(cfg, ctx, planned, pending, samples, progress)
            summary = summarize(cfg, samples.values(), planned, fmt)
            atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
            plots = write_plots(summary, out)
            atomic_write_text(out / "report.md", report_markdown(summary, plots))
    if not quiet:
        print(format_table(summary))
    return summary
