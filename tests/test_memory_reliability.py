"""Reliability of ``longseq memory``: SIGKILL mid-ingest then rerun, two concurrent writers, bad input on the
CLI (one line, exit 2), and a 100 MB file streamed in bounded memory. Real subprocesses throughout.

Run: PYTHONPATH=src python -m pytest tests/test_memory_reliability.py
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longseq.memory.ingest import check_input, text_blocks, token_counter
from longseq.memory.store import connect

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
WORDS = "the quick brown fox jumps over lazy dog memory stream river mountain castle code number".split()


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "longseq", *args], env=ENV, capture_output=True, text=True,
                          timeout=300, **kw)


def _ingest_cmd(db: Path, *files: Path, batch: int = 8) -> list[str]:
    return [sys.executable, "-m", "longseq", "memory", "ingest", "--db", str(db), "--embedder", "hash-384",
            "--block-tokens", "48", "--batch-size", str(batch), "--quiet", *map(str, files)]


def _write_doc(path: Path, sentences: int, seed: int) -> Path:
    r = random.Random(seed)
    path.write_text(" ".join(" ".join(r.choice(WORDS) for _ in range(12)).capitalize() + f" {seed}-{i}."
                             for i in range(sentences)))
    return path


def _expected_blocks(path: Path) -> int:
    count = token_counter("smollm2-135m")
    return sum(1 for _ in text_blocks(path, count, 48))


def _check_db(db: Path, expected: dict[str, int]) -> None:
    conn = connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        keys = [k for (k,) in conn.execute("SELECT key FROM items")]
        assert len(keys) == len(set(keys))
        for sha, n in expected.items():
            got = sorted(int(k.split(":")[1]) for k in keys if k.startswith(sha))
            assert got == list(range(n)), (sha, len(got), n)
        assert len(keys) == sum(expected.values())
        vec = conn.execute("SELECT COUNT(*) FROM vec_items").fetchone()[0]
        ids = conn.execute("SELECT COUNT(*), MIN(id), MAX(id) FROM items").fetchone()
        assert vec == ids[0] == len(keys)
        assert conn.execute("SELECT COUNT(*) FROM vec_items WHERE rowid NOT IN (SELECT id FROM items)").fetchone()[0] == 0
    finally:
        conn.close()


def test_sigkill_mid_ingest_then_rerun(tmp_path):
    doc = _write_doc(tmp_path / "doc.txt", 12000, seed=1)
    n = _expected_blocks(doc)
    sha = check_input(doc)[:32]
    db = tmp_path / "kill.db"
    proc = subprocess.Popen(_ingest_cmd(db, doc), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stored = 0
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
        if db.exists():
            try:
                conn = connect(db)
                stored = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
                conn.close()
            except Exception:  # schema not there yet
                continue
            if stored >= 40:
                break
    assert proc.poll() is None, "ingest finished before it could be killed; make the document longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    conn = connect(db)
    at_kill = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    done = conn.execute("SELECT done FROM sources").fetchone()[0]
    conn.close()
    assert 40 <= at_kill < n and done == 0 and at_kill % 8 == 0  # only whole batches (transactions) survive
    res = subprocess.run(_ingest_cmd(db, doc), env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["items"] == n and out["added"] == n - at_kill and out["skipped"] == at_kill and out["resumed"]
    _check_db(db, {sha: n})


def test_two_writers_never_corrupt(tmp_path):
    a = _write_doc(tmp_path / "a.txt", 1500, seed=2)
    b = _write_doc(tmp_path / "b.txt", 1500, seed=3)
    db = tmp_path / "two.db"
    # writer 1: a then b; writer 2: b then a, at the same time; both also race on the same keys
    p1 = subprocess.Popen(_ingest_cmd(db, a, b, batch=4), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p2 = subprocess.Popen(_ingest_cmd(db, b, a, batch=4), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for p in (p1, p2):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    _check_db(db, {check_input(a)[:32]: _expected_blocks(a), check_input(b)[:32]: _expected_blocks(b)})


def test_cli_bad_inputs_one_line_exit_2(tmp_path):
    db = tmp_path / "m.db"
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    binary = tmp_path / "bin.dat"
    binary.write_bytes(bytes(range(256)) * 10)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    badjson = tmp_path / "c.jsonl"
    badjson.write_text('{"role": "user", "content": "hi"}\nnot json\n')
    cases = [
        (["memory", "ingest", "--db", str(db), "--embedder", "hash-384", str(empty)], "is empty"),
        (["memory", "ingest", "--db", str(db), "--embedder", "hash-384", str(binary)], "binary"),
        (["memory", "ingest", "--db", str(db), "--embedder", "hash-384", str(latin)], "not UTF-8"),
        (["memory", "ingest", "--db", str(db), "--embedder", "hash-384", str(tmp_path / "nope.txt")], "does not exist"),
        (["memory", "ingest", "--db", str(db), "--embedder", "hash-384", str(badjson)], "c.jsonl:2"),
        (["memory", "stats", "--db", str(tmp_path / "missing.db")], "does not exist"),
        (["memory", "search", "--db", str(empty), "x"], "not a longseq memory database"),
        (["memory", "search", "--db", str(latin), "x"], "not a SQLite database"),
    ]
    for args, match in cases:
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("longseq: error:")]
        assert len(lines) == 1 and match in lines[0] and "Traceback" not in r.stderr, r.stderr
    # a database made with one embedding model is refused by another, and nothing is mixed into it
    good = _write_doc(tmp_path / "good.txt", 50, seed=4)
    assert _cli("memory", "ingest", "--db", str(db), "--embedder", "hash-384", "--quiet", str(good)).returncode == 0
    before = json.loads(_cli("memory", "stats", "--db", str(db)).stdout)
    r = _cli("memory", "ingest", "--db", str(db), "--embedder", "all-minilm-l6-v2", str(good))
    assert r.returncode == 2 and "built with embedding model hash-384" in r.stderr
    after = json.loads(_cli("memory", "stats", "--db", str(db)).stdout)
    assert before == after and after["embedding_model"] == "hash-384" and after["items"] > 0
    export = _cli("memory", "export", "--db", str(db)).stdout.splitlines()
    assert len(export) == after["items"] and json.loads(export[0])["id"] == 1


def test_100mb_file_is_streamed_in_bounded_memory(tmp_path):
    """Validation and block splitting of a 100 MiB file run in a fixed amount of memory (no full read)."""
    big = tmp_path / "big.txt"
    r = random.Random(0)
    para = " ".join(" ".join(r.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(2000)) + "\n\n"
    with open(big, "w") as fh:
        while fh.tell() < 100 * 1024 * 1024:
            fh.write(para)
    # peak RSS from VmHWM (ru_maxrss would report the forking pytest process's peak on Linux)
    code = (
        "import re, sys; from pathlib import Path; import longseq.memory.ingest as m\n"
        "m.check_input(sys.argv[1])\n"
        "n = sum(1 for _ in m.text_blocks(Path(sys.argv[1]), lambda s: len(s.split()), 256))\n"
        "hwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "print(n, hwm // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(big)], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    blocks, peak_mib = map(int, out.stdout.split())
    assert blocks > 50_000 and peak_mib < 100, (blocks, peak_mib)
    big.unlink()


@pytest.mark.parametrize("embedder", ["hash-384"])
def test_cli_search_and_stats(tmp_path, embedder):
    conv = tmp_path / "chat.jsonl"
    rows = []
    for i in range(30):
        rows += [{"role": "user", "content": f"small talk number {i} about weather"},
                 {"role": "assistant", "content": "nice"}]
    rows[10] = {"role": "user", "content": "my locker code is 4821"}
    conv.write_text("\n".join(json.dumps(x) for x in rows))
    db = tmp_path / "c.db"
    r = _cli("memory", "ingest", "--db", str(db), "--embedder", embedder, "--quiet", str(conv))
    assert r.returncode == 0, r.stderr
    stats = json.loads(_cli("memory", "stats", "--db", str(db)).stdout)
    assert stats["turns"] == 30 and stats["items"] == 30 and stats["embedding_model"] == embedder
    hits = [json.loads(x) for x in _cli("memory", "search", "--db", str(db), "my locker code is", "-k", "2",
                                        "--recency-weight", "0").stdout.splitlines()]
    assert hits[0]["id"] == 6 and "4821" in hits[0]["text"] and len(hits) == 2


def test_switching_to_wal_waits_out_the_creation_race():
    """Two processes creating one database: SQLite answers one WAL switch "locked" at once; it is retried."""
    import sqlite3

    from longseq.memory.store import _use_wal

    class Conn:
        def __init__(self, errors: list[str]) -> None:
            self.errors, self.calls = errors, 0

        def execute(self, sql: str) -> None:
            assert sql == "PRAGMA journal_mode = WAL"
            self.calls += 1
            if self.errors:
                raise sqlite3.OperationalError(self.errors.pop(0))

    conn = Conn(["database is locked", "database is locked"])
    _use_wal(conn)
    assert conn.calls == 3
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):  # other errors are not retried
        _use_wal(Conn(["disk I/O error"]))
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # nor past the deadline
        _use_wal(Conn(["database is locked"] * 100), wait_s=0.0)
