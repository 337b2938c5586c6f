"""``longseq lab``: reproduce the context-extension findings end to end at small scale, on a CPU.

The papers behind longseq make their claims on 7B models and GPU clusters. The lab checks the same
claims on a few-million-parameter Llama in minutes, through the same code paths a real run uses
(``longseq train`` as a subprocess, ``longseq eval`` in process):

  data      a byte-level BPE of about a thousand tokens trained on the lab corpus (prose: the shipped text and
            Python's own docstrings); training rows of exactly one sequence, most of them ending with
            passkey, LongEval-lines and repeated-list documents (the retrieval curriculum); the shipped
            text's tail is held out for perplexity (:mod:`longseq.lab.data`)
  init      a random Llama whose (untied) embeddings are under a tenth of its weights
  pretrain  full training from scratch: rows of repeated lists of words and numbers (``copy_len``), where
            the model learns to copy from its context, digits included; short rows (``short_len``) that all
            end with curriculum documents; then rows of the native context L, the last of them at a lower
            learning rate
  finetune  from the pre-trained model at 4L with one token budget, for each of ``seeds`` seeds: direct
            (extrapolation), PI, ABF (full fine-tuning), LongLoRA and LoRA (PI), timing and peak memory of
            each (:mod:`longseq.lab.stages`); and ``longseq lengthgen`` (RoPE vs randomized RoPE, Even Pairs)
  eval      perplexity at 1L..8L everywhere; passkey at 1L..8L zero-shot with none/pi/ntk/yarn (targets 4L
            and 8L), lines at L there; passkey and lines at 4L for every fine-tuned model
  report    summary.json, report.md (one table per finding, the paper's claim beside the measured
            numbers, a verdict computed from them by :data:`longseq.lab.findings.FINDINGS`), plots
            (:mod:`longseq.lab.report`)

Every stage is cached under ``--out`` and an interrupted lab resumes where it stopped (a training arm it
did not finish is redone whole, so its measured cost is one run's). One lab at a time uses a folder.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from longseq.core.errors import UserError, unknown_choice
from longseq.core.fsutil import atomic_write_text, output_errors
from longseq.core.rundir import claim_kind, claim_run_folder, lock_run_folder
from longseq.eval.run import open_samples
from longseq.lab.data import embedding_share
from longseq.lab.presets import SIZES
from longseq.lab.probe import copy_test, digit_similarity
from longseq.lab.report import report_markdown, summarize, write_plots
from longseq.lab.stages import base_model, log, run_stages


def run_lab(out: str | Path, size_name: str = "default", seed: int = 0) -> dict[str, Any]:
    """Run (or resume) every stage; write ``summary.json``, ``report.md`` and plots; return the summary."""
    if size_name not in SIZES:
        raise unknown_choice("lab size", size_name, SIZES)
    size = SIZES[size_name]
    out = Path(out).resolve()  # recipes and eval folders record absolute paths: the lab resumes from any folder
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    claim_kind(out, "lab", record=False)
    with output_errors(out), _sigterm_as_exit():
        out.mkdir(parents=True, exist_ok=True)
        with lock_run_folder(out) as lock_fd:
            _claim(out, {"size": size_name, "settings": asdict(size), "seed": seed})
            started = time.time()
            try:
                lengths, costs, evals, lengthgen = run_stages(out, size, seed, lock_fd)
            finally:  # wall time over every invocation, so a resumed lab reports what the whole run cost
                seconds = _add_elapsed(out, time.time() - started)
            log("[5/5] report")
            pretrained = base_model(out, size)
            base = {**embedding_share(str(out / "init")), "copy_test": copy_test(pretrained, seed),
                    "digit_embeddings": digit_similarity(pretrained)}
            summary = summarize(size_name, size, seed, lengths, costs, evals, lengthgen, base,
                                lines_chance(out, size.native), seconds)
            atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
            plots = write_plots(summary, out)
            atomic_write_text(out / "report.md", report_markdown(summary, plots))
    return summary


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Within the block (main thread only), SIGTERM raises ``SystemExit(143)`` so that cleanup runs: the
    training child's process group is stopped (:func:`longseq.lab.stages.run_child`)."""

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: nothing to restore
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _claim(out: Path, ident: dict[str, Any]) -> None:
    """A lab folder belongs to one (size, settings, seed): resuming with other settings would mix runs.

    The whole ``lab.json`` must match: a marker with a missing or an extra key (or an unreadable one) is
    refused as a run of another version, not silently taken over.
    """

    def same_keys(old: dict[str, Any]) -> dict[str, Any]:
        if old.keys() != ident.keys():
            raise UserError(f"{out} holds a lab.json that is not this version's lab run (keys {sorted(old)}); "
                            "choose another --out")
        return old

    claim_run_folder(out, "lab.json", ident, what="a lab run", normalize=same_keys, kind="lab")


def _add_elapsed(out: Path, seconds: float) -> float:
    """Add ``seconds`` to the lab's total wall time in ``elapsed.json``; return the new total."""
    path = out / "elapsed.json"
    total = (json.loads(path.read_text())["seconds"] if path.is_file() else 0.0) + seconds
    atomic_write_text(path, json.dumps({"seconds": round(total, 1)}))
    return total


def lines_chance(out: Path, native: int) -> float | None:
    """Chance level of LongEval lines at L: the mean of 1 / (lines in the record) over the base model's samples
    (a model that answers with one of the record's values, picked blindly)."""
    lines = [r.get("meta", {}).get("num_lines") for r in open_samples(out / "eval" / "zero-shot-8x").values()
             if r["task"] == "lines" and r["method"] == "none" and int(r["length"]) == native]
    lines = [n for n in lines if n]
    return sum(1 / n for n in lines) / len(lines) if lines else None
