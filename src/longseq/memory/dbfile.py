"""The memory database as a file: opening it, recognizing it, and refusing what would damage it.

A longseq memory database is an SQLite file marked with ``PRAGMA application_id`` = :data:`APPLICATION_ID`
(SQLite's own slot for "which program owns this file"; files written before the marker are recognized by
their ``meta`` table). Every command that writes checks its targets before any work: a database of another
application, a truncated or corrupt file, a read-only file or folder, or an output path that is an input or a
database is a :class:`~longseq.core.errors.UserError` (one line, exit code 2) and the file is left untouched.
Errors SQLite raises later (a full disk, a file made read-only meanwhile) become one-line errors too
(:func:`database_errors`); the open transaction rolls back, so finished batches are kept and nothing is torn.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import quote

from longseq.core.errors import UserError, one_line

APPLICATION_ID = 0x4C534D4D  # "LSMM": longseq memory
SQLITE_HEADER = b"SQLite format 3\x00"
# tables of a longseq database: ours, the sqlite-vec index and its shadow tables, SQLite's own
_OWN_TABLES = ("meta", "items", "sources", "vec_items")
_SIDE_FILES = ("-wal", "-shm", "-journal")


def _sqlite_module() -> Any:
    """The DB-API module to use: stdlib ``sqlite3`` when it can load extensions, else the ``sqlean`` build."""
    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    try:
        import sqlean
    except ImportError:
        raise UserError(
            "this Python's sqlite3 cannot load extensions (needed for sqlite-vec); "
            "install the drop-in build with: pip install sqlean-py"
        ) from None
    return sqlean


def database_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes SQLite errors arrive as (stdlib and, where used, sqlean)."""
    mod = _sqlite_module()
    return tuple({sqlite3.DatabaseError, mod.DatabaseError})


def connect(path: str | Path, readonly: bool = False) -> Any:
    """A DB-API connection with sqlite-vec loaded (``readonly``: opened with ``mode=ro``, never written).

    The stdlib ``sqlite3`` of some Python builds (pyenv's here) has no ``enable_load_extension``; then the
    drop-in ``sqlean`` build of the same module is used.
    """
    mod = _sqlite_module()
    import sqlite_vec

    target, uri = str(path), False
    if readonly:
        p = Path(path).resolve()
        target, uri = f"file:{quote(str(p))}?mode=ro", True
        if not os.access(p.parent, os.W_OK) and not p.with_name(p.name + "-wal").exists():
            # a WAL file in a read-only folder: nobody can be writing it, and SQLite could not create the
            # shared-memory file it reads through, so read it as an unchanging file
            target += "&immutable=1"
    conn = mod.connect(target, timeout=60.0, isolation_level=None, check_same_thread=False, uri=uri)
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    conn.enable_load_extension(False)
    return conn


def _check_header(path: Path) -> None:
    with open(path, "rb") as fh:
        if fh.read(16) != SQLITE_HEADER:
            raise UserError(f"{path} is not a SQLite database; pass a .db file made by longseq memory")


def is_sqlite_file(path: str | Path) -> bool:
    """True for an existing, non-empty file that starts with the SQLite header."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return False
    with open(p, "rb") as fh:
        return fh.read(16) == SQLITE_HEADER


def inspect_db(path: str | Path, check: bool = False) -> str:
    """What ``path`` is, read without writing: ``"new"`` (no file), ``"empty"`` (no tables) or ``"longseq"``.

    Raises :class:`UserError` for a folder, a file that is not SQLite, a database of another application
    (tables that are not longseq's) and, with ``check``, a database that fails SQLite's ``quick_check``
    (truncated or corrupt).
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"--db {p} is a folder; pass a database file path like memory.db")
    if not p.exists():
        return "new"
    if p.stat().st_size == 0:
        return "empty"
    _check_header(p)
    try:
        conn = connect(p, readonly=True)
        try:
            app = int(conn.execute("PRAGMA application_id").fetchone()[0])
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            ours = "meta" in tables and conn.execute(
                "SELECT COUNT(*) FROM meta WHERE key IN ('schema', 'embedding_model')").fetchone()[0] == 2
            bad = conn.execute("PRAGMA quick_check").fetchone()[0] if check else "ok"
        finally:
            conn.close()
    except database_error_types() as err:
        if any(w in str(err).lower() for w in ("malformed", "not a database", "encrypted", "corrupt")):
            raise UserError(f"{p} is a damaged SQLite database ({one_line(err)}); restore it from a copy or "
                            "pass a new --db") from None
        raise UserError(f"{p} cannot be read ({one_line(err)}); check its permissions and its folder's") from None
    if bad != "ok":
        raise UserError(f"{p} is a damaged SQLite database (quick_check: {one_line(bad, 120)}); restore it "
                        "from a copy or pass a new --db")
    foreign = [t for t in tables if not t.startswith(("sqlite_", "vec_items")) and t not in _OWN_TABLES]
    if app not in (0, APPLICATION_ID) or foreign or (tables and not ours):
        shown = ", ".join((foreign or tables)[:4]) or f"application id {app:#x}"
        raise UserError(f"{p} is another application's SQLite database ({shown}); longseq writes only to its "
                        "own memory files: pass a new --db path")
    return "longseq" if tables else "empty"


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: str | Path, flag: str = "--db") -> None:
    """Raise :class:`UserError` unless ``path`` (a file, created if missing) and its folder can be written.

    A database in WAL mode also writes ``-wal`` and ``-shm`` files next to itself, so the folder must be
    writable too.
    """
    p = Path(path).resolve()
    folder = p.parent if p.parent.exists() else _nearest_existing(p.parent)
    if not folder.is_dir():
        raise UserError(f"{flag} {path}: {folder} is a file, not a folder; pass a path inside a folder")
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{flag} {path} is read-only; make it writable (chmod u+w {path}) or pass another {flag}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: folder {folder} is not writable; pass a path in a writable folder")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(out: str | Path, inputs: Iterable[str | Path], flag: str = "--out") -> Path:
    """Validate an output file path before any work; return it resolved.

    Refused: a folder, the same file as an input (symlinks and relative paths resolved) or as an input's
    ``-wal``/``-shm``/``-journal`` side file, and any existing SQLite database (an export must never replace one).
    """
    p = Path(out)
    real = p.resolve()
    if p.is_dir():
        raise UserError(f"{flag} {out} is a folder; pass a file path like notes.jsonl")
    for src in inputs:
        s = Path(src).resolve()
        clash = [s] + [s.with_name(s.name + suffix) for suffix in _SIDE_FILES]
        if any(real == c or _same_file(p, c) for c in clash):
            raise UserError(f"{flag} {out} is the input {src} itself; pass another output path")
    if is_sqlite_file(p):
        raise UserError(f"{flag} {out} is a SQLite database; an export never overwrites a database, "
                        "pass another output path")
    check_writable(p, flag)
    return real


def check_output_folder(out: str | Path, flag: str = "--out") -> Path:
    """Create ``out`` if needed and prove it writable (a probe file) before any work; return it."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {out} is a file; pass a folder path")
    check_writable(p / ".probe", flag)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{flag} {out} cannot be written ({one_line(err)}); pass a writable folder") from None
    return p


@contextlib.contextmanager
def database_errors(db: str | Path) -> Iterator[None]:
    """Turn SQLite errors raised inside the block into one-line :class:`UserError` messages.

    The open transaction has already rolled back when such an error arrives, so what was committed before
    (finished ingest batches, earlier turns) is kept; rerunning the same command resumes.
    """
    try:
        yield
    except database_error_types() as err:
        msg = one_line(err, 160)
        low = msg.lower()
        if "readonly" in low or "read-only" in low:
            hint = "it is read-only; make it writable or pass another --db"
        elif "disk" in low or "full" in low or "i/o" in low:
            hint = "the disk may be full; free space and run the same command again (finished work is kept)"
        elif "malformed" in low or "not a database" in low:
            hint = "the file is damaged; restore it from a copy or pass a new --db"
        elif "locked" in low or "busy" in low:
            hint = "another process holds it; wait for it to finish and run the command again"
        else:
            hint = "nothing committed was lost; fix the cause and run the same command again"
        raise UserError(f"database {db}: {msg}; {hint}") from None
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES):
            raise UserError(f"writing near {db} failed ({one_line(err, 160)}); free space or fix permissions "
                            "and run the same command again") from None
        raise
