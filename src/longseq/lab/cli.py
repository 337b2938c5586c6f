"""``longseq lab``: the context-extension findings reproduced end to end on a tiny model (:mod:`longseq.lab.run`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from longseq.lab.presets import SIZES
from longseq.lab.run import run_lab


def _cmd_lab(args: argparse.Namespace) -> int:
    size = "quick" if args.quick else args.size
    summary = run_lab(args.out, size, args.seed)
    for f in summary["findings"]:
        print(f"{f['verdict']:>15}  {f['title']}: {f['evidence']}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def add_cli(sub: Any) -> None:
    """Register ``longseq lab``."""
    p = sub.add_parser("lab", help="reproduce the context-extension findings end to end on a tiny model (CPU)")
    p.add_argument("--out", required=True, help="lab folder (every stage is cached there and resumes)")
    p.add_argument("--quick", action="store_true", help="the quick preset (one seed, short training; a smoke run)")
    p.add_argument("--size", default="default", choices=sorted(SIZES),
                   help="size preset: default (two fine-tuning seeds per arm), quick, test (about a minute; for "
                        "tests); measured times in docs/lab.md")
    p.add_argument("--seed", type=int, default=0, help="first seed (fine-tuning arms use seed .. seed + seeds - 1)")
    p.set_defaults(func=_cmd_lab, omp_wait="spin")
