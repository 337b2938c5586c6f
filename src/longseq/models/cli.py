"""``longseq info``, ``longseq extend`` and ``longseq serve``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from longseq.core.errors import UserError
from longseq.core.parsing import parse_length
from longseq.models.info import format_info, model_info
from longseq.models.loading import DEFAULT_MODEL, DTYPES, SOURCE_DTYPE
from longseq.models.rope import ABF_DEFAULT_THETA, EXTEND_DTYPES, MAX_FACTOR, METHODS, extend_checkpoint
from longseq.models.serve import make_server


def _cmd_info(args: argparse.Namespace) -> int:
    info = model_info(args.model)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _cmd_extend(args: argparse.Namespace) -> int:
    opts = {"beta_fast": args.beta_fast, "beta_slow": args.beta_slow, "attention_factor": args.attention_factor,
            "low_freq_factor": args.low_freq_factor, "high_freq_factor": args.high_freq_factor}
    result = extend_checkpoint(args.model, args.out, args.method, args.factor, args.target_length, args.theta,
                               dtype=args.dtype, overwrite=args.overwrite, **opts)
    print(json.dumps(result, indent=2))
    return 0


def _size(text: str) -> int:
    """``--max-body``: bytes, with an optional binary k/m suffix (``512k``, ``16m``)."""
    try:
        return parse_length(text)
    except UserError:
        raise UserError(f"--max-body '{text}' is not a size; write bytes like 1048576, 512k or 16m") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    server = make_server(args.model, args.host, args.port, args.method,
                         parse_length(args.target_length) if args.target_length else None, args.dtype,
                         args.chunk_size, parse_length(args.max_length) if args.max_length else None, args.name,
                         _size(args.max_body) if args.max_body else None, args.max_queue, args.verbose)
    print(f"longseq serve: {args.model} ({args.method}) on {server.url}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="architecture, parameters, context length, RoPE and KV-cache sizes of a model")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"alias, folder, .gguf or Hub id (default {DEFAULT_MODEL})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_info)


def _add_extend(sub: Any) -> None:
    p = sub.add_parser("extend", help="write a checkpoint with an extended RoPE context (no training)",
                       description="Methods: " + ", ".join(METHODS))
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="alias, folder, .gguf or Hub id")
    p.add_argument("--method", required=True, help="one of: " + ", ".join(METHODS))
    p.add_argument("--factor", type=float, help=f"scale s = target / native length (1 to {MAX_FACTOR:g})")
    p.add_argument("--target-length", help="target context L' in tokens (e.g. 32768 or 32k); s = L'/L")
    p.add_argument("--theta", type=float, help=f"new RoPE base > 1 (abf: default {ABF_DEFAULT_THETA:g})")
    p.add_argument("--beta-fast", type=float, help="yarn: ramp start in turns, > --beta-slow (default 32)")
    p.add_argument("--beta-slow", type=float, help="yarn: ramp end in turns, > 0 (default 1)")
    p.add_argument("--attention-factor", type=float, help="yarn: override sqrt(1/t), in (0, 10] (default 0.1 ln s + 1)")
    p.add_argument("--low-freq-factor", type=float, help="llama3: > 0, below --high-freq-factor (default 1)")
    p.add_argument("--high-freq-factor", type=float, help="llama3: default 4")
    p.add_argument("--dtype", default=SOURCE_DTYPE, choices=EXTEND_DTYPES,
                   help="weights dtype of the written checkpoint (default: the source's; auto: bf16 where native)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_cmd_extend)


def add_cli(sub: Any) -> None:
    """Register ``longseq info`` and ``longseq extend``."""
    _add_info(sub)
    _add_extend(sub)


def add_serve_cli(sub: Any) -> None:
    """Register ``longseq serve`` (separate from :func:`add_cli` so that ``--help`` lists it after ``eval``)."""
    p = sub.add_parser("serve", help="OpenAI-compatible completions/chat server on a local model (greedy)")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="alias, folder, .gguf or Hub id")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    p.add_argument("--method", default="none", help="RoPE method applied at load (see longseq extend)")
    p.add_argument("--target-length", help="RoPE target length for --method")
    p.add_argument("--max-length", help="tokens that prompt + max_tokens may take (default: the model's context)")
    p.add_argument("--max-body", help="largest request body in bytes, e.g. 64m (default: 16 per context token, >= 1m)")
    p.add_argument("--max-queue", type=int, default=8, help="requests that may wait while one generates; more get 503")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    p.add_argument("--name", help="model name reported by /v1/models (default MODEL)")
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--chunk-size", type=int, default=16384, help="prefill chunk in tokens")
    p.set_defaults(func=_cmd_serve)
