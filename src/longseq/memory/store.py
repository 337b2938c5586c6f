"""The SCM memory stream: one SQLite file (WAL) holding every turn or document block.

Self-Controlled Memory (Wang, Liang et al. 2023, arXiv 2304.13343) keeps a *memory stream* of past
interactions; each item has its text, a summary, token counts, timestamps and an embedding. This module
is the storage and retrieval half; :mod:`longseq.memory.controller` and :mod:`longseq.memory.agent` hold the
controller and the agent.

Storage (the SQLite file is the only source of truth, no pickles; it is marked as longseq's with ``PRAGMA
application_id``, and opening one checks it first: :mod:`longseq.memory.dbfile`):
  * ``meta``    key/value: schema version, embedding model name and dimension (a database never mixes two
    embedding models: opening it with another one is a :class:`UserError`);
  * ``items``   one row per turn/block: idempotent ``key``, text, summary, token counts, created/accessed
    times, ``last_access`` on the turn clock (the item id), and the float32 embedding as a BLOB;
  * ``vec_items`` a sqlite-vec ``vec0`` index of the binary-quantized embeddings (1 bit per dimension,
    :mod:`longseq.memory.index`). A KNN over the bit index returns an oversampled candidate set that is
    re-scored exactly with the float embeddings.
  * ``sources`` one row per ingested file (content hash, blocks, done flag) so ingest is resumable
    (:mod:`longseq.memory.ingest`).

Ranking (paper: rank = recency + relevance; the paper gives no recency formula, so we choose one):
    score_i = cos(q, e_i) + w * 0.5 ** ((now - last_access_i) / half_life)
with ``now`` the next item id (the turn clock) and ``last_access`` moved to ``now`` whenever the item is
activated. ``w = 0`` gives the public code's relevance-only ranking.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from longseq.core.errors import UserError
from longseq.memory.dbfile import APPLICATION_ID, check_writable, connect, database_error_types, inspect_db
from longseq.memory.embedders import DEFAULT_EMBEDDER, Embedder, load_embedder
from longseq.memory.index import BitIndex, bit_dim

SCHEMA_VERSION = "1"


@dataclass
class MemoryItem:
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


@dataclass
class Hit:
    """A ranked search result: ``score = relevance + recency``."""

    item: MemoryItem
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
        """The recency bonus of items ``age`` turns since their last access (same shape as ``age``)."""
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


def _row_item(row: Sequence[Any]) -> MemoryItem:
    return MemoryItem(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], json.loads(row[10]))


def _use_wal(conn: Any, wait_s: float = 60.0) -> None:
    """``PRAGMA journal_mode = WAL``, retried for up to ``wait_s`` while the database is locked.

    Two processes that create one database at the same time both read it, then both need the write lock to
    change its journal mode; SQLite answers one of them "database is locked" at once instead of waiting (it
    would otherwise deadlock), whatever the busy timeout. Once the other has switched the file to WAL, the
    retry finds nothing left to change.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except database_error_types() as err:
            if "locked" not in str(err).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class MemoryStream:
    """The memory stream in one SQLite file (``":memory:"`` for a throwaway one).

    Args:
        path: database file; created if missing.
        embedder: the embedder to use; its name is recorded on first use and checked on every open.
        ranking: recency settings for :meth:`search`.
    """

    def __init__(self, path: str | Path, embedder: Embedder | None, ranking: Ranking | None = None,
                 readonly: bool = False) -> None:
        self.path = str(path)
        self.readonly = readonly
        if self.path != ":memory:":
            state = inspect_db(self.path)  # refuses folders, non-SQLite files and other applications' databases
            if readonly and state != "longseq":
                raise UserError(f"{self.path} is not a longseq memory database; create it with: "
                                f"longseq memory ingest --db {self.path} FILE")
            if not readonly:
                check_writable(self.path)
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.ranking = ranking or Ranking()
        self.conn = connect(self.path, readonly=readonly)
        self.conn.execute("PRAGMA busy_timeout = 60000")
        if readonly:
            meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
            self.embedder = embedder or RecordedEmbedder(meta["embedding_model"], int(meta["embedding_dim"]))
            self.index = BitIndex(self.conn, self.embedder.dim)
            self._check_embedder(meta)
            return
        if embedder is None:
            raise ValueError("a writable MemoryStream needs an embedder")
        self.embedder = embedder
        if self.path != ":memory:":
            _use_wal(self.conn)
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.index = BitIndex(self.conn, embedder.dim)
        self._init_schema()

    # -- schema and meta

    def _init_schema(self) -> None:
        with self.transaction():
            if int(self.conn.execute("PRAGMA application_id").fetchone()[0]) != APPLICATION_ID:
                self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.conn.execute(statement)
            meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                self.index.create()
                now = str(time.time())
                for k, v in {"schema": SCHEMA_VERSION, "embedding_model": self.embedder.name,
                             "embedding_dim": str(self.embedder.dim), "created": now}.items():
                    self.conn.execute("INSERT INTO meta VALUES (?, ?)", (k, v))
                meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        self._check_embedder(meta)

    def _check_embedder(self, meta: dict[str, str]) -> None:
        """Keep ``meta``; raise :class:`UserError` (connection closed) if it records another embedding model."""
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
                    self.index.insert(cur.lastrowid, vecs[j])
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

    def get(self, ids: Iterable[int]) -> list[MemoryItem]:
        """The items with these ids, in the given order (unknown ids are left out)."""
        ids = list(ids)
        if not ids:
            return []
        rows = self.conn.execute(f"SELECT {_COLS} FROM items WHERE id IN ({','.join('?' * len(ids))})", ids).fetchall()
        by_id = {r[0]: _row_item(r) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def last(self, n: int = 1, kind: str | None = None) -> list[MemoryItem]:
        """The ``n`` newest items, oldest first (flash memory is ``last(1)``)."""
        where, args = ("WHERE kind = ?", [kind]) if kind else ("", [])
        rows = self.conn.execute(f"SELECT {_COLS} FROM items {where} ORDER BY id DESC LIMIT ?", [*args, n]).fetchall()
        return [_row_item(r) for r in reversed(rows)]

    def iter_items(self, batch: int = 1000) -> Iterator[MemoryItem]:
        """Every item in id order, read ``batch`` rows at a time."""
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
            cand = self.index.candidates(q, knn, total)
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
            "index": f"sqlite-vec vec0 bit[{bit_dim(int(self.meta['embedding_dim']))}] + exact float re-scoring",
        }


class _Tx:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:  # SQLite may already have rolled back (e.g. on a full disk)
            self.conn.execute("ROLLBACK")


class RecordedEmbedder:
    """The embedding model a database records, without loading it: enough for counts and exports.

    Opening a database read-only for ``stats`` or ``export`` needs the model's name and dimension only;
    :meth:`encode` is refused so nothing embeds with a model that is not there.
    """

    def __init__(self, name: str, dim: int) -> None:
        self.name, self.dim = name, dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        raise UserError(f"embedding model {self.name} is not loaded; open the database with it to search or add")


def resolve_embedder(db: str, embedder: str | None) -> str:
    """The embedder to open ``db`` with: ``embedder``, else the one the database records, else the default.

    Raises :class:`UserError` (before any model loads) if ``embedder`` is not the one the database records.
    """
    recorded = recorded_embedder(db) if db != ":memory:" else None
    if embedder is None:
        return recorded or DEFAULT_EMBEDDER
    if recorded and embedder != recorded and not Path(embedder).is_dir():
        raise UserError(f"{db} was built with embedding model {recorded}, not {embedder}; "
                        f"pass --embedder {recorded} or use a new database")
    return embedder


def open_stream(db: str, embedder: str | None, readonly: bool = False) -> MemoryStream:
    """Open ``db`` with ``embedder``; with ``embedder=None`` use the model the database records (or the default)."""
    return MemoryStream(db, load_embedder(resolve_embedder(db, embedder)), readonly=readonly)


def recorded_embedder(db: str) -> str | None:
    """The embedding model name stored in an existing longseq database, or None (no file, empty file).

    Raises :class:`UserError` for a file that is not a longseq memory database (see :func:`inspect_db`).
    """
    if inspect_db(db) != "longseq":
        return None
    conn = connect(db, readonly=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'embedding_model'").fetchone()
    finally:
        conn.close()
    return row[0] if row else None
