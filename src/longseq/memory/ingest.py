"""Reading long inputs into the memory stream: validation, streamed sentence blocks, JSONL turns, ingest.

Files are read in bounded memory whatever their size (:data:`READ_CHARS` characters at a time), and block
boundaries depend only on the file content, so a killed ingest can resume: every item's key is
``<sha256 of the file>:<index>`` and the ``sources`` table of :mod:`longseq.memory.store` marks finished files.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from longseq.core.errors import UserError
from longseq.memory.store import MemoryStream
from longseq.models.loading import load_tokenizer

READ_CHARS = 1 << 20          # characters decoded per read: memory stays bounded for any file size
MAX_PENDING_CHARS = 1 << 16   # a run without any sentence end is force-split here


def check_input(path: str | Path) -> str:
    """Validate a file in one streamed pass; return the SHA-256 of its bytes (the idempotency key).

    Raises :class:`UserError` for a missing, empty, binary (NUL bytes) or non-UTF-8 file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"input {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise UserError(f"input {path} is empty; pass a text file or a JSONL conversation")
    h = hashlib.sha256()
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    nonblank = False
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            if b"\x00" in chunk:
                raise UserError(f"input {path} looks binary (NUL byte at offset {offset + chunk.index(0)}); "
                                "pass a UTF-8 text file")
            try:
                text = dec.decode(chunk)
            except UnicodeDecodeError as err:
                raise UserError(f"input {path} is not UTF-8 (bad byte at offset {offset + err.start}); "
                                "convert it with iconv -t UTF-8") from None
            nonblank = nonblank or bool(text.strip())
            h.update(chunk)
            offset += len(chunk)
        try:
            dec.decode(b"", final=True)
        except UnicodeDecodeError:
            raise UserError(f"input {path} is not UTF-8 (truncated character at the end); "
                            "convert it with iconv -t UTF-8") from None
    if not nonblank:
        raise UserError(f"input {path} has only whitespace; pass a text file or a JSONL conversation")
    return h.hexdigest()


_SENT_END = re.compile(r"(?<=[.!?。])\s+|\n\s*\n")


def _pieces(path: Path) -> Iterator[str]:
    """Sentence-ish pieces of a text file, streamed (bounded memory, deterministic for a given content)."""
    pending = ""
    with open(path, encoding="utf-8") as fh:
        while True:
            chunk = fh.read(READ_CHARS)
            pending += chunk
            parts = _SENT_END.split(pending)
            tail = parts.pop() if chunk else ""
            for p in parts:
                yield from _force_split(p)
            if not chunk:
                yield from _force_split(tail)
                return
            pending = tail
            while len(pending) > MAX_PENDING_CHARS:
                yield pending[:MAX_PENDING_CHARS]
                pending = pending[MAX_PENDING_CHARS:]


def _force_split(p: str) -> Iterator[str]:
    """A stripped piece in slices of at most :data:`MAX_PENDING_CHARS` characters (blank slices dropped)."""
    p = p.strip()
    for s in range(0, len(p), MAX_PENDING_CHARS):
        if p[s : s + MAX_PENDING_CHARS].strip():
            yield p[s : s + MAX_PENDING_CHARS]


def text_blocks(path: Path, count: Callable[[str], int], block_tokens: int) -> Iterator[tuple[str, int]]:
    """Pack sentence pieces into blocks of at most ``block_tokens`` tokens (a longer piece is cut by tokens).

    Yields ``(text, tokens)``; block boundaries depend only on the file content.
    """
    buf: list[str] = []
    buf_tokens = 0
    for piece in _pieces(path):
        t = count(piece)
        if t > block_tokens:
            if buf:
                yield " ".join(buf), buf_tokens
                buf, buf_tokens = [], 0
            words = piece.split(" ")
            cur: list[str] = []
            for w in words:
                if cur and count(" ".join(cur + [w])) > block_tokens:
                    yield " ".join(cur), count(" ".join(cur))
                    cur = []
                cur.append(w[: block_tokens * 2] if count(w) > block_tokens else w)
            piece = " ".join(cur)
            t = count(piece)
        if buf and buf_tokens + t + 1 > block_tokens:
            yield " ".join(buf), buf_tokens
            buf, buf_tokens = [], 0
        buf.append(piece)
        buf_tokens += t + (1 if len(buf) > 1 else 0)
    if buf:
        yield " ".join(buf), buf_tokens


def conversation_turns(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Turns of a JSONL conversation (``{"role", "content"}`` per line), streamed.

    A user message and the assistant messages that follow it form one turn ("User: ...\\nAssistant: ..."),
    as SCM stores an observation with its response. Bad lines raise :class:`UserError` with the line number.
    """
    cur: list[str] = []
    first = 0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: not JSON ({err.msg}); each line must be "
                                '{"role": "user"|"assistant"|"system", "content": "..."}') from None
            if not isinstance(rec, dict) or not isinstance(rec.get("content"), str) or \
                    rec.get("role") not in ("user", "assistant", "system"):
                raise UserError(f"{path}:{lineno}: need an object with role user|assistant|system and string content")
            role = rec["role"]
            if role in ("user", "system") and cur and any(c.startswith("Assistant:") for c in cur):
                yield "\n".join(cur), {"line": first}
                cur = []
            if not cur:
                first = lineno
            cur.append(f"{role.capitalize()}: {rec['content'].strip()}")
    if cur:
        yield "\n".join(cur), {"line": first}


def validate_conversation(path: Path) -> int:
    """Check every line of a JSONL conversation before anything is stored; return the number of turns."""
    return sum(1 for _ in conversation_turns(path))


def is_conversation(path: Path) -> bool:
    """A JSONL conversation (by suffix, or a first object with a role), rather than a plain text."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return True
    with open(path, encoding="utf-8", errors="replace") as fh:
        head = fh.read(4096).lstrip()
    return head.startswith("{") and '"role"' in head[:400]


def check_ingest_input(path: str | Path) -> tuple[str, bool]:
    """:func:`check_input`, plus every line if it is a conversation; return (sha256, is a conversation)."""
    path = Path(path)
    sha = check_input(path)
    conversation = is_conversation(path)
    if conversation:
        validate_conversation(path)
    return sha, conversation


def _batched(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    """Lists of ``n`` consecutive elements (the last one shorter)."""
    batch: list[Any] = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def ingest_file(
    stream: MemoryStream,
    path: str | Path,
    count: Callable[[str], int],
    block_tokens: int = 256,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Ingest a long text (as blocks) or a JSONL conversation (as turns); resumable and idempotent.

    Every item's key is ``<sha256 of the file>:<index>``, items are written in transactions of
    ``batch_size``, so a killed run loses at most the open batch, and a rerun skips what is stored.
    """
    path = Path(path)
    sha, conversation = check_ingest_input(path)
    row = stream.conn.execute("SELECT done, blocks FROM sources WHERE sha = ?", (sha,)).fetchone()
    if row and row[0]:
        return {"source": sha[:16], "items": row[1], "added": 0, "skipped": row[1], "resumed": False}
    with stream.transaction():
        stream.conn.execute("INSERT OR IGNORE INTO sources (sha, path, done, updated) VALUES (?, ?, 0, ?)",
                            (sha, str(path), time.time()))
    if conversation:
        units: Iterator[tuple[str, int, dict[str, Any]]] = ((t, count(t), m) for t, m in conversation_turns(path))
        kind = "turn"
    else:
        units = ((t, n, {}) for t, n in text_blocks(path, count, block_tokens))
        kind = "block"
    from tqdm import tqdm

    bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"ingest {path.name}",
               disable=not progress, file=sys.stderr)
    before = len(stream)
    index = 0
    for batch in _batched(units, batch_size):
        keys = [f"{sha[:32]}:{index + j}" for j in range(len(batch))]
        stream.add([b[0] for b in batch], keys, [b[1] for b in batch], kind=kind, source=str(path),
                   metas=[{**b[2], "index": index + j} for j, b in enumerate(batch)])
        index += len(batch)
        bar.update(sum(len(b[0].encode()) for b in batch))
    bar.close()
    if index == 0:
        raise UserError(f"input {path} has no text to store")
    with stream.transaction():
        stream.conn.execute("UPDATE sources SET done = 1, blocks = ?, updated = ? WHERE sha = ?", (index, time.time(), sha))
    added = len(stream) - before
    return {"source": sha[:16], "items": index, "added": added, "skipped": index - added, "resumed": added < index}


def token_counter(model: str) -> Callable[[str], int]:
    """``count(text) -> tokens`` with the tokenizer of ``model`` (an alias or folder; no weights loaded)."""
    try:
        tok = load_tokenizer(model)
    except UserError as err:
        raise UserError(f"--model {model} gives no tokenizer to count tokens with ({err}); pass a model with "
                        "tokenizer files, e.g. --model smollm2-135m") from None
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
