"""``longseq tune-rope``: search the per-dimension RoPE rescaling that extends a model furthest (:mod:`longseq.tune.run`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from longseq.models.loading import DEFAULT_MODEL, DTYPES
from longseq.tune.scoring import OBJECTIVES


def _cmd_tune(args: argparse.Namespace) -> int:
    from longseq.tune.run import TuneConfig, tune_rope

    cfg = TuneConfig(model=args.model, target_length=args.target_length, out=args.out, budget=args.budget,
                     calib=args.calib, heldout=args.heldout, objective=args.objective, seed=args.seed,
                     windows=args.windows, dtype=args.dtype, report_samples=args.report_samples)
    result = tune_rope(cfg, progress=not args.quiet)
    best = result["best"]
    print(f"best: {best['origin']}, calibration perplexity {best['ppl']:.3f} at {result['target']} tokens "
          f"(best seed: {min(s['ppl'] for s in result['seeds'].values()):.3f}); {result['passes']} forward passes")
    print(f"model: {Path(args.out) / 'model'}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def add_cli(sub: Any) -> None:
    """Register ``longseq tune-rope``."""
    p = sub.add_parser("tune-rope", help="search per-dimension RoPE rescale factors (LongRoPE) for a target length")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="alias, folder, .gguf or Hub id of a RoPE model")
    p.add_argument("--target-length", required=True, help="target context in tokens (e.g. 16k or 32768)")
    p.add_argument("--out", required=True, help="run folder (rerun the same command to resume)")
    p.add_argument("--budget", type=int, default=150,
                   help="forward passes over the target length the search may spend (default 150)")
    p.add_argument("--calib", help="calibration text file the search scores perplexity on (default: shipped prose)")
    p.add_argument("--heldout", help="text file for the report's perplexity (default: the calibration text)")
    p.add_argument("--objective", default="ppl", choices=list(OBJECTIVES),
                   help="ppl: log perplexity; ppl+passkey: plus (1 - passkey accuracy), two passes per window")
    p.add_argument("--windows", type=int, default=4, help="calibration windows a finalist is scored on (default 4)")
    p.add_argument("--seed", type=int, default=0, help="search seed (the search is deterministic given it)")
    p.add_argument("--report-samples", type=int, default=2,
                   help="samples per cell of the 1x..target comparison (0 skips it)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype (auto: bf16 where native)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_tune)
