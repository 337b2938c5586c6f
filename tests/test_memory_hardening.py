"""Bad input and faults on every ``longseq memory`` command that writes: one line, exit code 2, nothing lost.

Each case checks the exit code, that stderr is exactly one ``longseq: error:`` line naming the problem, and
that the database is intact (item count, integrity, or its bytes unchanged). Read-only cases run in a
subprocess without the root capability to bypass file permissions (``setpriv``); the full-disk case runs
ingest under a file-size limit (``RLIMIT_FSIZE``), which SQLite sees as a failed write.

Run: PYTHONPATH=src python -m pytest tests/test_memory_hardening.py
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from longseq.cli import main
from longseq.memory.store import MemoryStream, connect

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
WORDS = "the quick brown fox jumps over lazy dog memory stream river mountain castle code number".split()
CASES: list[str] = []  # every bad input tried, for the count in the closing assertion of the module


def _doc(path: Path, sentences: int, seed: int = 0) -> Path:
    r = random.Random(seed)
    path.write_text(" ".join(" ".join(r.choice(WORDS) for _ in range(12)).capitalize() + f" {seed}-{i}."
                             for i in range(sentences)))
    return path


def _items(db: Path) -> int:
    conn = connect(db, readonly=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    finally:
        conn.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(code: int, err: str, match: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("longseq: error:"), err
    assert match in lines[0] and "Traceback" not in err, err


def _fails(capsys, args: list[str], match: str) -> None:
    CASES.append(" ".join(args))
    code = main(args)
    _one_line(code, capsys.readouterr().err, match)


@pytest.fixture()
def db(tmp_path, capsys) -> Path:
    """A longseq database with a few blocks (hashing embedder)."""
    path = tmp_path / "m.db"
    assert main(["memory", "ingest", "--db", str(path), "--embedder", "hash-384", "--block-tokens", "48",
                 "--quiet", str(_doc(tmp_path / "doc.txt", 30))]) == 0
    capsys.readouterr()
    return path


def test_export_never_overwrites_an_input_or_a_database(db, tmp_path, capsys):
    n, digest = _items(db), _digest(db)
    other = tmp_path / "other.db"
    shutil.copy(db, other)
    link = tmp_path / "link.jsonl"
    link.symlink_to(db)
    (tmp_path / "sub").mkdir()
    cases = [
        (str(db), "is the input"), (str(link), "is the input"), (str(tmp_path / "sub" / ".." / "m.db"), "is the input"),
        (os.path.relpath(db), "is the input"), (str(db) + "-wal", "is the input"),
        (str(other), "is a SQLite database"), (str(tmp_path / "sub"), "is a folder"),
        (str(tmp_path / "doc.txt" / "x.jsonl"), "is a file, not a folder"),
    ]
    for out, match in cases:
        _fails(capsys, ["memory", "export", "--db", str(db), "--out", out], match)
        assert _items(db) == n and _digest(db) == digest and _items(other) == n
    assert main(["memory", "export", "--db", str(db), "--out", str(tmp_path / "out.jsonl")]) == 0
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == n and json.loads(lines[0])["id"] == 1 and _digest(db) == digest
    assert oct((tmp_path / "out.jsonl").stat().st_mode & 0o777) != "0o600"
    assert not list(tmp_path.glob(".out.jsonl.tmp-*"))


def test_ingest_refuses_a_foreign_or_damaged_database(db, tmp_path, capsys):
    doc = _doc(tmp_path / "more.txt", 20, seed=1)
    foreign = tmp_path / "app.db"
    conn = sqlite3.connect(foreign)
    conn.executescript("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);"
                       "INSERT INTO customers (name) VALUES ('ada'), ('alan');")
    conn.close()
    marked = tmp_path / "marked.db"  # another application's id, no tables yet
    conn = sqlite3.connect(marked)
    conn.execute("PRAGMA application_id = 1234")
    conn.close()
    raw = db.read_bytes()
    truncated = tmp_path / "trunc.db"
    truncated.write_bytes(raw[: len(raw) // 2])
    corrupt = tmp_path / "corrupt.db"  # header intact, pages past the schema overwritten
    corrupt.write_bytes(raw[:8192] + bytes(np.random.default_rng(0).integers(0, 256, len(raw) - 8192, np.uint8)))
    for target, match in ((foreign, "another application's SQLite database (customers"),
                          (marked, "another application's SQLite database"),
                          (truncated, "damaged SQLite database"), (corrupt, "damaged SQLite database"),
                          (doc, "not a SQLite database")):
        before = _digest(target)
        for command in (["memory", "ingest", "--db", str(target), "--embedder", "hash-384", "--quiet", str(doc)],
                        ["chat", "--memory", str(target), "--model", str(tmp_path / "no-model")],
                        ["summarize", str(doc), "--db", str(target), "--model", str(tmp_path / "no-model")]):
            _fails(capsys, command, match)
            wal = Path(str(target) + "-wal")  # a read-only look at a WAL-mode file may leave an empty -wal
            assert _digest(target) == before and (not wal.exists() or wal.stat().st_size == 0)
    _fails(capsys, ["memory", "stats", "--db", str(truncated)], "damaged SQLite database")
    # an empty SQLite file (no tables) and a longseq database are accepted
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("PRAGMA user_version = 1")
    for target in (empty, db):
        assert main(["memory", "ingest", "--db", str(target), "--embedder", "hash-384", "--quiet", str(doc)]) == 0
    capsys.readouterr()
    assert _items(empty) > 0


def test_numbers_out_of_range_are_refused_before_any_work(db, tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    new = tmp_path / "never.db"
    nomodel = str(tmp_path / "no-model")  # loading it would fail with another message: nothing is loaded
    cases = [
        (["memory", "ingest", "--db", str(new), "--batch-size", "0", str(doc)], "--batch-size must be a positive"),
        (["memory", "ingest", "--db", str(new), "--block-tokens", "0", str(doc)], "--block-tokens must be a positive"),
        (["memory", "ingest", "--db", str(new), "--block-tokens", "-5", str(doc)], "--block-tokens must be a positive"),
        (["memory", "search", "--db", str(db), "x", "--recency-weight", "nan"], "--recency-weight must be a finite"),
        (["memory", "search", "--db", str(db), "x", "--recency-weight", "inf"], "--recency-weight must be a finite"),
        (["memory", "search", "--db", str(db), "x", "--recency-weight", "-1"], "--recency-weight must be a finite"),
        (["memory", "search", "--db", str(db), "x", "--half-life", "0"], "--half-life must be a finite"),
        (["memory", "search", "--db", str(db), "x", "-k", "0"], "-k must be a positive"),
        (["memory", "search", "--db", str(db), "x", "-k", "-3"], "-k must be a positive"),
        (["chat", "--memory", str(new), "--model", nomodel, "--max-new-tokens", "-4"], "--max-new-tokens must be"),
        (["chat", "--memory", str(new), "--model", nomodel, "-k", "0"], "-k must be a positive"),
        (["chat", "--memory", str(new), "--model", nomodel, "--context-length", "0"], "--context-length must be"),
        (["chat", "--memory", str(new), "--model", nomodel, "--context-length", "64", "--max-new-tokens", "64"],
         "leaves no room"),
        (["chat", "--memory", str(new), "--model", nomodel, "--recency-weight", "nan"], "--recency-weight must be"),
        (["summarize", str(doc), "--model", nomodel, "--block-tokens", "0"], "--block-tokens must be a positive"),
        (["summarize", str(doc), "--model", nomodel, "--db", str(doc)], "not a SQLite database"),
        (["ask", str(doc), "q?", "--model", nomodel, "-k", "0"], "-k must be a positive"),
        (["ask", str(doc), "q?", "--model", nomodel, "--max-new-tokens", "-1"], "--max-new-tokens must be"),
        (["memory", "bench", "--model", nomodel, "-k", "0"], "-k must be a positive"),
        (["memory", "bench", "--model", nomodel, "--context-length", "0"], "--context-length must be"),
        (["memory", "bench", "--model", nomodel, "--sessions", "0"], "--sessions must be a positive"),
        (["memory", "bench", "--model", nomodel, "--out", str(doc)], "is a file"),
        (["memory", "ingest", "--db", str(new), "--model", nomodel, "--embedder", "hash-384", str(doc)],
         "gives no tokenizer"),
    ]
    (tmp_path / "no-model").mkdir()
    (tmp_path / "no-model" / "config.json").write_text('{"model_type": "llama"}')
    n = _items(db)
    for args, match in cases:
        _fails(capsys, args, match)
    assert not new.exists() and _items(db) == n


def test_stats_and_export_do_not_load_the_embedding_model(tmp_path, capsys, monkeypatch):
    class Named:  # records the default model's name without being it
        name, dim = "all-minilm-l6-v2", 8

        def encode(self, texts):
            return np.eye(8, dtype=np.float32)[[len(t) % 8 for t in texts]]

    path = tmp_path / "st.db"
    with MemoryStream(path, Named()) as s:
        s.add(["a", "bb", "ccc"], ["1", "2", "3"], [1, 1, 1])
    import longseq.memory.embedders as embedders

    def refuse(*a, **k):
        raise AssertionError("the embedding model was loaded")

    monkeypatch.setattr(embedders.SentenceTransformerEmbedder, "__init__", refuse)
    assert main(["memory", "stats", "--db", str(path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["items"] == 3 and stats["embedding_model"] == "all-minilm-l6-v2"
    assert main(["memory", "export", "--db", str(path), "--embeddings"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def _unprivileged(commands: list[list[str]]) -> list[tuple[int, str]]:
    """Run ``longseq`` commands in one subprocess that file permissions apply to (root drops the capabilities
    that bypass them); return (exit code, stderr) per command."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: read-only files cannot be simulated")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    code = ("import io, json, sys\nfrom contextlib import redirect_stderr\nfrom longseq.cli import main\nout = []\n"
            "for args in json.loads(sys.argv[1]):\n    buf = io.StringIO()\n    with redirect_stderr(buf):\n"
            "        out.append((main(args), buf.getvalue()))\nprint(json.dumps(out))\n")
    r = subprocess.run(prefix + [sys.executable, "-c", code, json.dumps(commands)], env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return [tuple(x) for x in json.loads(r.stdout.splitlines()[-1])]


def test_read_only_database_and_folders(db, tmp_path):
    doc = _doc(tmp_path / "more.txt", 20, seed=2)
    n, digest = _items(db), _digest(db)
    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copy(db, locked / "in.db")
    os.chmod(db, 0o444)
    os.chmod(locked, 0o555)
    nomodel = str(tmp_path / "no-model")
    cases = [
        (["memory", "ingest", "--db", str(db), "--embedder", "hash-384", "--quiet", str(doc)], "is read-only"),
        (["memory", "ingest", "--db", str(locked / "new.db"), "--embedder", "hash-384", str(doc)], "is not writable"),
        (["memory", "ingest", "--db", str(locked / "in.db"), "--embedder", "hash-384", str(doc)], "is not writable"),
        (["chat", "--memory", str(db), "--model", nomodel], "is read-only"),
        (["summarize", str(doc), "--db", str(db), "--model", nomodel], "is read-only"),
        (["ask", str(doc), "q?", "--db", str(locked / "a.db"), "--model", nomodel], "is not writable"),
        (["memory", "export", "--db", str(db), "--out", str(locked / "out.jsonl")], "is not writable"),
        (["memory", "bench", "--model", nomodel, "--out", str(locked / "bench")], "is not writable"),
    ]
    CASES.extend(" ".join(a) for a, _ in cases)
    try:
        results = _unprivileged([a for a, _ in cases])
        # reading a read-only database is fine
        reads = _unprivileged([["memory", "stats", "--db", str(db)], ["memory", "search", "--db", str(db), "fox"],
                               ["memory", "export", "--db", str(locked / "in.db")]])
    finally:
        os.chmod(db, 0o644)
        os.chmod(locked, 0o755)
    for (args, match), (code, err) in zip(cases, results):
        _one_line(code, err, match)
    assert [code for code, _ in reads] == [0, 0, 0], reads
    assert _items(db) == n and _digest(db) == digest
    assert sorted(p.name for p in locked.iterdir()) == ["in.db"]


def test_full_disk_on_ingest_keeps_finished_batches_and_resumes(db, tmp_path, capsys):
    doc = _doc(tmp_path / "big.txt", 500, seed=3)
    n = _items(db)
    limit = db.stat().st_size + 48 * 1024
    args = ["memory", "ingest", "--db", str(db), "--embedder", "hash-384", "--block-tokens", "48",
            "--batch-size", "8", "--quiet", str(doc)]
    CASES.append("memory ingest on a full disk")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # writes past `limit` bytes now fail (EFBIG)
    try:
        code = main(args)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    _one_line(code, capsys.readouterr().err, "the disk may be full")
    partial = _items(db)  # integrity_check passes: the failed transaction rolled back
    assert n <= partial and (partial - n) % 8 == 0
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["skipped"] == partial - n and res["added"] > 0 and _items(db) == n + res["items"]
