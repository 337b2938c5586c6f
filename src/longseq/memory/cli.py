"""``longseq memory ingest|search|stats|export|bench``, ``longseq chat``, ``longseq summarize`` and ``longseq ask``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

from longseq.core.errors import UserError
from longseq.memory.agent import MODES, PROMPT_STYLES, SCMAgent
from longseq.memory.bench import SYSTEMS, check_chatter_turns, parse_systems, run_bench, save_report
from longseq.memory.controller import PARSERS, POLICIES, ControllerConfig, MemoryController
from longseq.memory.dbfile import (check_output_file, check_output_folder, check_writable, database_errors,
                                   inspect_db)
from longseq.memory.documents import ask_document, summarize_document
from longseq.memory.embedders import DEFAULT_EMBEDDER, EMBEDDERS, load_embedder
from longseq.memory.ingest import check_ingest_input, check_input, ingest_file, token_counter
from longseq.memory.llm import ChatLLM, load_llm
from longseq.memory.store import MemoryStream, Ranking, open_stream, recorded_embedder, resolve_embedder

# ------------------------------------------------------------------------------------------- argument checks

# (attribute, flag, test, what it must be): every numeric flag of these commands, checked before any work
_NUMBER_RULES: list[tuple[str, str, Callable[[float], bool], str]] = [
    (name, flag, lambda v: v > 0, "a positive integer")
    for name, flag in (("k", "-k"), ("max_new_tokens", "--max-new-tokens"), ("context_length", "--context-length"),
                       ("block_tokens", "--block-tokens"), ("batch_size", "--batch-size"), ("sessions", "--sessions"))
] + [
    ("recency_weight", "--recency-weight", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    ("half_life", "--half-life", lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
]


def check_numbers(args: argparse.Namespace) -> None:
    """Raise :class:`UserError` for the first numeric flag out of its range (flags a command lacks are skipped)."""
    for name, flag, ok, what in _NUMBER_RULES:
        value = getattr(args, name, None)
        if value is not None and not ok(value):
            raise UserError(f"{flag} must be {what}, got {value}")
    ctx, new = getattr(args, "context_length", None), getattr(args, "max_new_tokens", None)
    if ctx is not None and new is not None and new >= ctx:
        raise UserError(f"--max-new-tokens {new} leaves no room in a --context-length {ctx} window; lower it")


def _writable_db(db: str) -> None:
    """A database a command will write: longseq's or new/empty, intact, and writable (checked before any work)."""
    check_writable(db)
    inspect_db(db, check=True)


def _controller_config(args: argparse.Namespace) -> ControllerConfig:
    return replace(POLICIES[args.policy], parser=args.answer_parser)


# --------------------------------------------------------------------------------------------- longseq memory


def _need_db(db: str) -> None:
    if not Path(db).is_file():
        raise UserError(f"database {db} does not exist; create it with: longseq memory ingest --db {db} FILE")
    if recorded_embedder(db) is None:
        raise UserError(f"{db} is not a longseq memory database (no meta table); pass a .db made by "
                        "longseq memory ingest")


def _cmd_ingest(args: argparse.Namespace) -> int:
    check_numbers(args)
    for f in args.inputs:  # every input is checked before anything is stored
        check_ingest_input(f)
    _writable_db(args.db)
    embedder = resolve_embedder(args.db, args.embedder)
    count = token_counter(args.model)
    with database_errors(args.db), open_stream(args.db, embedder) as stream:
        for f in args.inputs:
            res = ingest_file(stream, f, count, block_tokens=args.block_tokens, batch_size=args.batch_size,
                              progress=not args.quiet)
            print(json.dumps({"input": str(f), **res}))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    check_numbers(args)
    _need_db(args.db)
    if not args.query.strip():
        raise UserError("empty query; pass the text to search for")
    with database_errors(args.db), open_stream(args.db, args.embedder, readonly=True) as stream:
        ranking = Ranking(args.recency_weight, args.half_life)
        for h in stream.search(args.query, k=args.k, ranking=ranking):
            text = h.item.text if args.full else " ".join(h.item.text.split())[:160]
            print(json.dumps({"id": h.item.id, "score": round(h.score, 4), "relevance": round(h.relevance, 4),
                              "recency": round(h.recency, 4), "kind": h.item.kind, "text": text}, ensure_ascii=False))
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    _need_db(args.db)
    with database_errors(args.db), MemoryStream(args.db, None, readonly=True) as stream:  # no model loaded
        print(json.dumps(stream.stats(), indent=2))
    return 0


def _export_records(stream: MemoryStream, embeddings: bool) -> Iterator[str]:
    for it in stream.iter_items():
        rec = {"id": it.id, "key": it.key, "kind": it.kind, "source": it.source, "text": it.text,
               "summary": it.summary, "text_tokens": it.text_tokens, "summary_tokens": it.summary_tokens,
               "created": it.created, "last_access": it.last_access, "meta": it.meta}
        if embeddings:
            rec["embedding"] = [round(float(x), 6) for x in stream.embeddings([it.id])[0]]
        yield json.dumps(rec, ensure_ascii=False) + "\n"


def _cmd_export(args: argparse.Namespace) -> int:
    _need_db(args.db)
    out = check_output_file(args.out, [args.db]) if args.out else None  # never the database itself
    with database_errors(args.db), MemoryStream(args.db, None, readonly=True) as stream:
        if out is None:
            try:
                for line in _export_records(stream, args.embeddings):
                    sys.stdout.write(line)
            except BrokenPipeError:  # e.g. piped into head
                pass
            return 0
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        try:  # a temporary file renamed at the end: an interrupted export never leaves a torn file
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.writelines(_export_records(stream, args.embeddings))
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return 0


def _add_memory(sub: Any) -> None:
    """Register ``longseq memory ingest|search|stats|export|bench``."""
    p = sub.add_parser("memory", help="the SCM memory stream: ingest, search, stats, export, bench")
    msub = p.add_subparsers(dest="memory_command", metavar="ACTION")

    def common(q: argparse.ArgumentParser, embedder: bool = True) -> None:
        q.add_argument("--db", required=True, help="SQLite memory file (created by ingest)")
        if embedder:
            q.add_argument("--embedder", default=None,
                           help=f"embedding model: {', '.join(EMBEDDERS)} or a sentence-transformers folder "
                                f"(default: the one the database records, else {DEFAULT_EMBEDDER})")

    q = msub.add_parser("ingest", help="store a long text (as blocks) or a JSONL conversation (as turns)")
    common(q)
    q.add_argument("inputs", nargs="+", help="text files or JSONL files of {role, content}")
    q.add_argument("--model", default="smollm2-135m", help="model whose tokenizer counts tokens")
    q.add_argument("--block-tokens", type=int, default=256, help="tokens per document block (default 256)")
    q.add_argument("--batch-size", type=int, default=64, help="items per transaction (default 64)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_cmd_ingest)

    q = msub.add_parser("search", help="top-k memories by relevance + recency")
    common(q)
    q.add_argument("query")
    q.add_argument("-k", type=int, default=5)
    q.add_argument("--recency-weight", type=float, default=Ranking.recency_weight)
    q.add_argument("--half-life", type=float, default=Ranking.half_life)
    q.add_argument("--full", action="store_true", help="print full texts")
    q.set_defaults(func=_cmd_search)

    q = msub.add_parser("stats", help="JSON: items, turns, tokens, summaries, embedding model")
    common(q, embedder=False)
    q.set_defaults(func=_cmd_stats)

    q = msub.add_parser("export", help="every item as JSONL")
    common(q, embedder=False)
    q.add_argument("--out", help="write to this file instead of stdout")
    q.add_argument("--embeddings", action="store_true", help="include the float embeddings")
    q.set_defaults(func=_cmd_export)

    _add_bench(msub)


def _cmd_bench(args: argparse.Namespace) -> int:
    check_numbers(args)
    systems = parse_systems(args.systems)
    check_chatter_turns(args.chatter_turns)  # before the model loads
    out = check_output_folder(args.out)  # before the benchmark runs, not after
    llm = _llm_from(args)
    embedder = load_embedder(args.embedder)
    config = _controller_config(args)
    result = run_bench(llm, embedder, sessions=args.sessions, seed=args.seed, k=args.k,
                       max_new_tokens=args.max_new_tokens, systems=systems, chatter_turns=args.chatter_turns,
                       controller=config, prompt_style=args.prompt_style)
    meta = {"model": args.api_model or args.model, "context_length": llm.context_length, "k": args.k,
            "sessions": args.sessions, "seed": args.seed, "embedder": embedder.name, "policy": args.policy,
            "parser": args.answer_parser, "prompt_style": args.prompt_style}
    print(save_report(out, result, meta))
    return 0


def _controller_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--policy", default="code", choices=list(POLICIES),
                   help="memory controller: code (the public SCM code: drop, summary or full text per memory "
                        "under a 2,500-token budget at a 4k window) or paper (the paper: a memory-needed question, "
                        "then summary or full text past 2,000 / 800 tokens); default code")
    q.add_argument("--answer-parser", default="reference", choices=list(PARSERS),
                   help="how (A)/(B) answers are read: reference (only '(B)' is no, as the SCM code) or lenient "
                        "(letters, 'Answer: B', yes/no words); default reference")
    q.add_argument("--prompt-style", default="reference", choices=list(PROMPT_STYLES),
                   help="the answer prompt: reference (the SCM code's, one user message) or system (memories in a "
                        "system message, which small chat models follow better); default reference")


def _add_bench(msub: Any) -> None:
    """Register ``longseq memory bench``."""
    q = msub.add_parser("bench", help="SCM Table-2 protocol on a synthetic long-dialogue set -> report.md")
    q.add_argument("--model", default="smollm2-135m")
    q.add_argument("--base-url")
    q.add_argument("--api-model")
    q.add_argument("--api-key")
    q.add_argument("--context-length", type=int, default=1024,
                   help="window to budget for (default 1024, so that each dialogue is longer than the window)")
    q.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    q.add_argument("--sessions", type=int, default=4)
    q.add_argument("--chatter-turns", type=int, default=36)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("-k", type=int, default=4)
    q.add_argument("--max-new-tokens", type=int, default=32)
    q.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of: {', '.join(SYSTEMS)}")
    q.add_argument("--out", default="runs/memory-bench", help="folder for report.md and results.json")
    _controller_args(q)
    q.set_defaults(func=_cmd_bench)


# --------------------------------------------------------------------------------------------- chat, summarize, ask


def _llm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="local model (alias, folder or .gguf); also the "
                   "tokenizer that counts tokens for an endpoint (default smollm2-135m)")
    p.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-model", help="model name to request from --base-url")
    p.add_argument("--api-key", help="key for --base-url (default $OPENAI_API_KEY)")
    p.add_argument("--context-length", type=int, help="window to budget for (default: the model's native one; "
                   "4096 for an endpoint)")
    p.add_argument("--max-new-tokens", type=int, default=128)


def _llm_from(args: argparse.Namespace) -> ChatLLM:
    return load_llm(args.model, args.base_url, args.api_model, args.context_length, args.api_key)


def _cmd_chat(args: argparse.Namespace) -> int:
    check_numbers(args)
    _writable_db(args.memory)
    resolve_embedder(args.memory, args.embedder)  # a mismatch is refused before the model loads
    llm = _llm_from(args)
    with database_errors(args.memory), open_stream(args.memory, args.embedder) as stream:
        agent = SCMAgent(llm, stream, k=args.k, mode=args.mode, max_new_tokens=args.max_new_tokens,
                         controller=MemoryController(llm, _controller_config(args).scaled(llm.context_length)),
                         ranking=Ranking(args.recency_weight, args.half_life), prompt_style=args.prompt_style)
        _chat_loop(agent, args, len(stream))
    return 0


def _chat_loop(agent: SCMAgent, args: argparse.Namespace, memories: int) -> None:
    """Read messages from stdin until EOF or /exit; answer each and store the turn."""
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"longseq chat: {memories} memories in {args.memory}; budget {agent.budget} tokens; "
              "/exit to quit", file=sys.stderr)
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        if line in ("/exit", "/quit"):
            break
        if not line:
            continue
        reply = agent.respond(line)
        if args.verbose:
            p = reply.prompt
            print(json.dumps({"prompt_tokens": p.tokens, "budget": p.budget, "activation": p.activation,
                              "summarized": p.summarized, "flash": p.flash, "used_memory": p.used_memory,
                              "forms": p.forms, "decisions": [d.__dict__ for d in reply.decisions]}),
                  file=sys.stderr)
        print(reply.text, flush=True)


def _document_db(args: argparse.Namespace) -> str:
    """``--db`` of summarize/ask, checked before any work (default: a throwaway in-memory database)."""
    check_numbers(args)
    check_input(args.file)
    if args.db:
        _writable_db(args.db)
        if Path(args.db).resolve() == Path(args.file).resolve():
            raise UserError(f"--db {args.db} is the input file itself; pass another --db")
    return args.db or ":memory:"


def _cmd_summarize(args: argparse.Namespace) -> int:
    db = _document_db(args)
    llm = _llm_from(args)
    with database_errors(db), open_stream(db, args.embedder) as stream:
        res = summarize_document(llm, stream, args.file, block_tokens=args.block_tokens,
                                 max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps({"summary": res.summary, "levels": res.levels}, ensure_ascii=False, indent=2))
    else:
        print(res.summary)
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    db = _document_db(args)
    llm = _llm_from(args)
    with database_errors(db), open_stream(db, args.embedder) as stream:
        reply = ask_document(llm, stream, args.file, args.question, k=args.k, max_new_tokens=args.max_new_tokens)
    if args.verbose:
        print(json.dumps({"prompt_tokens": reply.prompt.tokens, "budget": reply.prompt.budget,
                          "parts": reply.prompt.activation}), file=sys.stderr)
    print(reply.text)
    return 0


def _add_documents_and_chat(sub: Any) -> None:
    """Register ``longseq chat``, ``longseq summarize`` and ``longseq ask``."""
    p = sub.add_parser("chat", help="chat with a self-controlled memory that survives restarts (SCM)")
    _llm_args(p)
    p.add_argument("--memory", required=True, help="SQLite memory file (created if missing)")
    p.add_argument("--embedder", default=None, help="embedding model (default: recorded in --memory, else all-minilm-l6-v2)")
    p.add_argument("-k", type=int, default=4, help="activation memories per turn (default 4, as the SCM demo)")
    p.add_argument("--mode", default="scm", choices=MODES)
    _controller_args(p)
    p.add_argument("--recency-weight", type=float, default=0.0,
                   help="weight of the recency term in retrieval (default 0: cosine only, as the SCM code)")
    p.add_argument("--half-life", type=float, default=Ranking.half_life,
                   help="turns after which the recency term halves (default 32)")
    p.add_argument("--verbose", action="store_true", help="print prompt size and controller decisions to stderr")
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("summarize", help="summarize a document far longer than the window (SCM book mode)")
    _llm_args(p)
    p.add_argument("file")
    p.add_argument("--db", help="keep block summaries here (resumable); default in memory")
    p.add_argument("--embedder", default=None)
    p.add_argument("--block-tokens", type=int, help="tokens per block (default: a third of the window)")
    p.add_argument("--json", action="store_true", help="print every level of the hierarchy as JSON")
    p.set_defaults(func=_cmd_summarize, max_new_tokens=96)

    p = sub.add_parser("ask", help="answer a question from a document far longer than the window")
    _llm_args(p)
    p.add_argument("file")
    p.add_argument("question")
    p.add_argument("--db", help="keep the document's blocks here (reused next time); default in memory")
    p.add_argument("--embedder", default=None)
    p.add_argument("-k", type=int, default=6, help="document parts to retrieve (default 6)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_cmd_ask, max_new_tokens=64)


def add_cli(sub: Any) -> None:
    """Register ``longseq memory ...``, ``chat``, ``summarize`` and ``ask``."""
    _add_memory(sub)
    _add_documents_and_chat(sub)
