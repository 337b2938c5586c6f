"""The ``longseq`` console script.

Each capability's ``cli.py`` exposes ``add_cli(subparsers)``; :data:`COMMAND_MODULES` lists them (as
``module`` or ``module:function``) in the order ``--help`` shows them. Heavy imports (torch, transformers) happen inside the
command functions so that ``longseq --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from longseq.core.errors import UserError
from longseq.core.runtime import tune_process

COMMAND_MODULES: tuple[str, ...] = (
    "longseq.models.cli",
    "longseq.eval.cli",
    "longseq.models.cli:add_serve_cli",
    "longseq.train.cli",
    "longseq.lengthgen.cli",
    "longseq.memory.cli",
    "longseq.lab.cli",
    "longseq.tune.cli",
)

EPILOG = """quick start:
  longseq info smollm2-135m
  longseq extend smollm2-135m --method yarn --target-length 32768 --out runs/smollm2-yarn-32k
  longseq eval smollm2-135m --preset quick --out runs/eval-quick
"""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="longseq",
        description="How long can this model truly use its context, and how do I make it longer?",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in COMMAND_MODULES:
        module, _, function = entry.partition(":")
        getattr(importlib.import_module(module), function or "add_cli")(sub)
    return parser



def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, and turn :class:`UserError` into a one-line message with exit code 2."""
    parser = build_parser()  # imports no torch: the settings below still reach OpenMP
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        tune_process(getattr(args, "omp_wait", "passive"))  # a command's own default: core/runtime.py
        result = args.func(args)
    except UserError as err:
        print(f"longseq: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("longseq: interrupted; finished work is saved, run the same command again to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
