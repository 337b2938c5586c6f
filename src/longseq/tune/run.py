"""``tune_rope``: search a model's per-dimension RoPE rescaling, write it as a ``longrope`` checkpoint and a report.

Output folder::

    DIR/tune.json      the run's settings (a rerun with the same settings resumes, other settings are refused)
    DIR/search.jsonl   one record per (candidate, window) score, appended as computed
    DIR/result.json    best candidate, seed scores, cost
    DIR/model/         the model with the best rescaling (transformers ``longrope``), plus its tokenizer
    DIR/compare/       ``longseq eval`` runs of the menu methods and of DIR/model at 1x..target
    DIR/report.md, DIR/factors.png, DIR/compare.png
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from longseq.core.errors import UserError, one_line, unknown_choice
from longseq.core.fsutil import atomic_dir, atomic_write_text
from longseq.core.parsing import parse_length
from longseq.core.rundir import claim_run_folder
from longseq.eval.tasks import haystack_text
from longseq.models.loading import load_config, load_model, load_tokenizer
from longseq.models.rope import native_context_length, rope_dim
from longseq.tune.factors import (SEED_METHODS, Candidate, apply_candidate, attention_range, bounds, check_rope_model,
                                  seed_candidate)
from longseq.tune.scoring import OBJECTIVES, Scorer
from longseq.tune.search import Search, SearchSettings, seed_cost, tqdm_progress

MARKER = "tune.json"


@dataclass
class TuneConfig:
    """Everything that defines a ``longseq tune-rope`` run (see ``longseq tune-rope --help``)."""

    model: str
    target_length: int | str
    out: str
    budget: int = 150
    calib: str | None = None
    heldout: str | None = None
    objective: str = "ppl"
    seed: int = 0
    windows: int = 4
    dtype: str = "auto"
    report_samples: int = 2
    settings: SearchSettings = field(default_factory=SearchSettings)


@dataclass
class Prepared:
    """Validated inputs: target, native length, calibration tokens and the text digests."""

    target: int
    native: int
    tokens: list[int]
    ident: dict[str, Any]


def read_text(path: str, flag: str) -> str:
    """The UTF-8 text of a user's file, or a one-line :class:`UserError` naming ``flag``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{flag} {path} cannot be read ({one_line(err, 120)}); pass a readable UTF-8 text file") from None
    if not text.strip():
        raise UserError(f"{flag} {path} is empty; pass a text file with at least the target length in tokens")
    return text


def prepare(cfg: TuneConfig) -> Prepared:
    """Check every input before anything is written (model, lengths, budget, texts)."""
    target = parse_length(cfg.target_length)
    if cfg.budget < 1:
        raise UserError(f"--budget must be >= 1 forward pass, got {cfg.budget}")
    if cfg.objective not in OBJECTIVES:
        raise unknown_choice("objective", cfg.objective, OBJECTIVES)
    if cfg.windows < 1 or cfg.report_samples < 0:
        raise UserError("--windows must be >= 1 and --report-samples >= 0")
    config = load_config(cfg.model)
    check_rope_model(config)
    native = native_context_length(config)
    if target <= native:
        raise UserError(f"--target-length {target} is not above the native context {native}; choose a longer target "
                        f"(e.g. {2 * native})")
    settings = cfg.settings if cfg.windows == cfg.settings.rungs[-1] else \
        SearchSettings(**{**asdict(cfg.settings), "rungs": _rungs(cfg.windows)})
    cfg.settings = settings
    need = seed_cost(len(SEED_METHODS), settings, OBJECTIVES[cfg.objective])
    if cfg.budget < need:
        raise UserError(f"--budget {cfg.budget} is below the {need} forward passes that scoring the "
                        f"{len(SEED_METHODS)} seed methods on {cfg.windows} windows takes; raise --budget")
    text = read_text(cfg.calib, "--calib") if cfg.calib else haystack_text()
    if cfg.heldout:
        read_text(cfg.heldout, "--heldout")
    tokens = load_tokenizer(cfg.model)(text)["input_ids"]
    if len(tokens) < target:
        raise UserError(f"the calibration text has {len(tokens)} tokens, fewer than the target {target}; pass a "
                        "longer --calib")
    ident = {"model": cfg.model, "target": target, "objective": cfg.objective, "seed": cfg.seed,
             "calib_sha256": hashlib.sha256(text.encode()).hexdigest()[:16], "dtype": cfg.dtype,
             "search": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}}
    return Prepared(target, native, tokens, ident)


def _rungs(windows: int) -> tuple[int, ...]:
    """Successive-halving rungs 1, 2, 4, ... up to ``windows`` (the last rung is every window)."""
    rungs = [1]
    while rungs[-1] * 2 < windows:
        rungs.append(rungs[-1] * 2)
    return tuple(sorted(set(rungs + [windows])))


def search_rope(cfg: TuneConfig, prep: Prepared, progress: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """Load the model, run (or resume) the search; returns (model with the best rescaling, tokenizer, result)."""
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype)
    base = copy.deepcopy(model.config)
    seeds = {m: seed_candidate(base, m, prep.target) for m in SEED_METHODS}
    scorer = Scorer(model, tokenizer, base, prep.tokens, prep.target, cfg.settings.rungs[-1], cfg.objective, cfg.seed)
    bar, update = tqdm_progress(cfg.budget, progress)
    search = Search(scorer.score, scorer.passes_per_window, seeds, bounds(prep.native, prep.target)[1],
                    attention_range(prep.target / prep.native), cfg.settings, cfg.budget, cfg.seed,
                    Path(cfg.out) / "search.jsonl", update)
    try:
        res = search.run()
    finally:
        bar.close()
    best = res.best
    result = {
        "model": cfg.model, "native": prep.native, "target": prep.target, "objective": cfg.objective,
        "rotary_dim": rope_dim(base),
        "best": {"origin": best.origin, "loss": best.loss(), "ppl": best.ppl, **best.cand.to_json()},
        "seeds": {n: {"loss": s.loss(), "ppl": s.ppl, **s.cand.to_json()} for n, s in res.seeds.items()},
        "candidates": res.candidates, "passes": res.passes, "budget": cfg.budget, "generations": res.generations,
        "best_loss_per_generation": res.best_per_generation,
    }
    apply_candidate(model, base, best.cand, prep.target)
    return model, tokenizer, result


def save_checkpoint(model: Any, tokenizer: Any, out: Path) -> None:
    """Write DIR/model atomically (a plain ``save_pretrained`` folder; the config holds the ``longrope`` rope)."""
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def tune_rope(cfg: TuneConfig, progress: bool = True) -> dict[str, Any]:
    """Run ``longseq tune-rope``: search, write DIR/model, compare with the menu methods, write the report.

    Returns the result dict (also ``DIR/result.json``).
    """
    from longseq.tune.report import compare_methods, write_report

    prep = prepare(cfg)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    claim_run_folder(out, MARKER, prep.ident, what="a tune-rope run")
    model, tokenizer, result = search_rope(cfg, prep, progress)
    save_checkpoint(model, tokenizer, out / "model")
    atomic_write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
    del model
    gc.collect()
    compare = compare_methods(cfg, prep.native, prep.target, progress) if cfg.report_samples else None
    write_report(out, result, compare, cfg)
    return result


def best_candidate(result: dict[str, Any]) -> Candidate:
    """The best candidate of a ``result.json``."""
    return Candidate.from_json(result["best"])
