"""``longseq lengthgen``: randomized positional encodings on the Chomsky-hierarchy length-generalization
tasks (Ruoss et al., ACL 2023). Building the parser imports no torch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from longseq.core.errors import UserError, unknown_choice
from longseq.core.parsing import parse_csv
from longseq.lengthgen.chomsky import CHOMSKY_TASKS
from longseq.lengthgen.protocol import LOSSES, PES, PRESETS, Protocol, make_protocol, parse_length_spec


def _names(text: str | None, choices: Sequence[str], kind: str) -> list[str] | None:
    """A comma list (or ``all``) of names from ``choices``; ``None`` when the flag is absent."""
    if text is None:
        return None
    names = list(choices) if text.strip() == "all" else parse_csv(text)
    for n in names:
        if n not in choices:
            raise unknown_choice(kind, n, choices)
    return names


def _lrs(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in parse_csv(text)]
    except ValueError:
        raise UserError(f"--lr '{text}' is not a number list; write e.g. 1e-3 or 1e-4,3e-4") from None


def _lengths(text: str | None, flag: str) -> list[int] | None:
    return parse_length_spec(text, flag) if text else None


def _protocol(args: argparse.Namespace) -> Protocol:
    lrs = _lrs(args.lr)  # checked first, as before the split into modules (the first bad flag is reported)
    return make_protocol(
        args.preset,
        tasks=_names(args.tasks, list(CHOMSKY_TASKS), "task"),
        pes=_names(args.pe, list(PES), "positional encoding"),
        train_lengths=_lengths(args.train_lengths, "--train-lengths"),
        test_lengths=_lengths(args.test_lengths, "--test-lengths"),
        steps=args.steps, seeds=args.seeds, lrs=lrs, batch_size=args.batch_size,
        eval_samples=args.eval_samples, max_len=args.max_len, loss=args.loss,
    )


def _cmd_lengthgen(args: argparse.Namespace) -> int:
    proto = _protocol(args)  # validated before torch loads
    from longseq.lengthgen.run import run_benchmark  # imports torch: kept out of `longseq --help`

    summary = run_benchmark(args.out, proto, device=args.device, progress=not args.no_progress,
                            threads=args.threads or None)
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out}/summary.json, report.md, accuracy_vs_length.png ({len(summary['results'])} cells)")
    return 0


def add_cli(sub: Any) -> None:
    """Register ``longseq lengthgen``."""
    p = sub.add_parser(
        "lengthgen", help="randomized positional encodings on the Chomsky-hierarchy length-generalization tasks",
        description="Train small encoders on short inputs, test on longer ones (Ruoss et al. 2023). "
                    f"Tasks: {', '.join(CHOMSKY_TASKS)}. PEs: none, sin_cos, learned, rope, relative, alibi, "
                    "and randomized_<pe> of each but none.")
    p.add_argument("--tasks", help="comma list of tasks, or 'all' (preset default)")
    p.add_argument("--pe", help="comma list of positional encodings, or 'all' (e.g. rope,randomized_rope)")
    p.add_argument("--train-lengths", help="training lengths, e.g. 1-40 (one length per step, uniform)")
    p.add_argument("--test-lengths", help="test lengths, e.g. 41-500 or 41-500:10 or 50,100")
    p.add_argument("--steps", type=int, help="training steps per run")
    p.add_argument("--seeds", type=int, help="number of seeds (0..K-1)")
    p.add_argument("--lr", help="Adam learning rate(s), comma list; the best is reported")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--eval-samples", type=int, help="test sequences per length")
    p.add_argument("--max-len", type=int, help="L: range of randomized positions (>= longest tape)")
    p.add_argument("--loss", choices=LOSSES, help="token cross-entropy over every output slot, as the reference "
                   "(full, the default), or only up to the end token (masked)")
    p.add_argument("--preset", choices=list(PRESETS), help="quick (2-core CPU, <30 min) or paper (GPU)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--out", required=True, help="output folder; re-running resumes finished runs")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest for this "
                   "tiny model; 0 = torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_lengthgen)
