"""Small file-system helpers shared by every command: atomic outputs, append-only JSONL, write errors.

  * :func:`atomic_dir` / :func:`atomic_write_text` write through a ``.NAME.tmp-PID`` sibling and ``os.replace``,
    so a reader never sees a half-written file; the usual permissions apply (umask). Leftovers of a
    killed writer are removed once that process is gone (:func:`clean_stale_tmp`).
  * :func:`append_jsonl` appends one fsync'ed record; a torn last line (the writer was killed mid-line)
    is cut off first, so it never swallows the next record. :class:`KeyedJsonl` adds a key per record and
    never appends a key twice, even with two writers. :func:`read_jsonl` skips torn lines with a
    warning and can check each record's fields (``file:line`` in the error).
  * :func:`output_errors` turns a full disk or an unwritable folder into a one-line :class:`UserError`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator

from longseq.core.errors import UserError

_STALE = re.compile(r"^\.(?P<name>.+)\.(?P<what>tmp|old)-(?P<pid>\d+)$")


# ------------------------------------------------------------------------------------- atomic outputs


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(folder: str | Path) -> list[str]:
    """Remove the ``.NAME.tmp-PID`` / ``.NAME.old-PID`` entries of ``folder`` whose writer PID is dead.

    A ``.NAME.old-PID`` whose ``NAME`` is missing (the writer died between its two renames) is the
    previous complete version: it is put back as ``NAME`` instead. Returns the names handled.
    """
    folder = Path(folder)
    handled = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return handled
    for entry in entries:
        m = _STALE.match(entry.name)
        if not m or int(m["pid"]) == os.getpid() or _pid_alive(int(m["pid"])):
            continue
        target = folder / m["name"]
        try:
            if m["what"] == "old" and not target.exists():
                os.replace(entry, target)
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        handled.append(entry.name)
    return handled


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``out``; on success rename it to ``out``.

    If the body raises, the temporary folder is removed and ``out`` is untouched, so a failed or
    interrupted command never leaves a half-written checkpoint. An existing ``out`` is an error unless
    ``overwrite`` is set; then it is replaced only after the new folder is complete.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"output folder {out} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(out.parent)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, fsync and ``os.replace`` (never a torn file).

    The file gets the usual permissions (0666 less the umask). On any error (a full disk) the temporary
    file is removed and ``path`` keeps its previous content. Leftovers of killed writers in the folder go.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


_FIXES = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some disk space",
          errno.EROFS: "choose a writable --out", errno.EACCES: "choose a writable --out",
          errno.EPERM: "choose a writable --out",
          errno.ENOTDIR: "choose an --out whose parent folders are folders, not files"}


@contextlib.contextmanager
def output_errors(out: str | Path) -> Iterator[None]:
    """Turn a full disk or an unwritable ``out`` inside the body into a one-line :class:`UserError`.

    Files written atomically or appended record by record stay as they were before the failed write, so
    the same command can be rerun once there is room.
    """
    try:
        yield
    except OSError as err:
        if err.errno not in _FIXES:
            raise
        where = err.filename or out
        raise UserError(f"cannot write {where}: {os.strerror(err.errno)}; {_FIXES[err.errno]} and run the same "
                        "command again (finished work is kept)") from None


# ------------------------------------------------------------------------------------------------ JSONL


def _cut_torn_tail(fh: Any) -> None:
    """Make the binary file ``fh`` (opened ``a+b``) end with a newline: a complete JSON object left without
    its newline gets one, a torn partial line is cut off (its record was never finished; readers warn)
    except for a complete record it swallowed (:func:`_parse_line`), which is kept on its own line."""
    end = fh.seek(0, os.SEEK_END)
    if end == 0:
        return
    fh.seek(end - 1)
    if fh.read(1) == b"\n":
        return
    start = end
    while start > 0:  # find the start of the last line, reading backwards in blocks
        step = min(start, 1 << 16)
        fh.seek(start - step)
        cut = fh.read(step).rfind(b"\n")
        start -= step
        if cut >= 0:
            start += cut + 1
            break
    fh.seek(start)
    tail = fh.read().decode("utf-8", errors="replace")
    try:
        whole = isinstance(json.loads(tail), dict)
    except ValueError:
        whole = False
    if whole:
        fh.write(b"\n")
        return
    swallowed = _parse_line(tail.strip())
    fh.truncate(start)
    if swallowed is not None:
        fh.write((json.dumps(swallowed, ensure_ascii=False) + "\n").encode("utf-8"))


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON record and fsync it, so that a killed run keeps every finished record.

    A torn last line left by a killed writer is cut off first, so it never merges with this record.
    """
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    with open(path, "a+b") as fh:
        _cut_torn_tail(fh)
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def warn(message: str) -> None:
    """One warning line on stderr (``longseq: warning: ...``)."""
    print(f"longseq: warning: {message}", file=sys.stderr, flush=True)


def _parse_line(line: str) -> dict[str, Any] | None:
    """The JSON object of one line, or the object a torn line swallowed (a killed writer's partial record
    followed by a complete one on the same line), or None."""
    try:
        rec = json.loads(line)
        return rec if isinstance(rec, dict) else None
    except ValueError:
        pass
    for i in (m.start() for m in re.finditer(r"\{", line) if m.start() > 0):
        try:
            rec = json.loads(line[i:])
        except ValueError:
            continue
        if isinstance(rec, dict):
            return rec
    return None


def read_jsonl(path: str | Path, check: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Read a JSONL file of objects, in order.

    A torn line (a writer killed mid-record) is skipped with a warning; a complete record written after
    a torn one on the same line is recovered. ``check(record)`` may raise ``KeyError``/``TypeError``/
    ``ValueError`` on a record with wrong fields: that is a :class:`UserError` naming ``file:line``.
    A line that is not a JSON object at all is one too.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            rec = _parse_line(line)
            if rec is None:
                if not line.startswith("{"):
                    raise UserError(f"{path}:{lineno} is not a JSON record; delete that line and run again")
                warn(f"{path}:{lineno}: skipped a torn record (a writer was interrupted); it is redone")
                continue
            if check is not None:
                try:
                    check(rec)
                except (KeyError, TypeError, ValueError) as err:
                    what = f"field {err.args[0]!r} is missing" if isinstance(err, KeyError) else str(err)
                    raise UserError(f"{path}:{lineno}: {what}; fix or delete that line and run again "
                                    "(a deleted record is redone)") from None
            records.append(rec)
    return records


class KeyedJsonl:
    """An append-only JSONL file where every record has a key and no key is ever written twice.

    ``KeyedJsonl(path, key, check)`` reads the file (see :func:`read_jsonl`; a duplicated line counts once,
    the first copy wins). :meth:`append` takes an exclusive ``flock`` on the file, reads what other
    writers appended since, and writes the record only when its key is new, so two processes writing the
    same samples produce each key once.
    """

    def __init__(self, path: str | Path, key: Callable[[dict[str, Any]], Hashable],
                 check: Callable[[dict[str, Any]], None] | None = None):
        self.path, self.key, self.check = Path(path), key, check
        self.records: dict[Hashable, dict[str, Any]] = {}
        self._size = 0
        self._merge(read_jsonl(self.path, check))
        self._size = self.path.stat().st_size if self.path.exists() else 0

    def _merge(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            self.records.setdefault(self.key(rec), rec)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.records

    def values(self) -> list[dict[str, Any]]:
        """The records, one per key, in file order."""
        return list(self.records.values())

    def refresh(self) -> None:
        """Read what other writers appended since this object last read the file (nothing if unchanged)."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if size != self._size:
            self._merge(read_jsonl(self.path, self.check))
            self._size = size

    def append(self, record: dict[str, Any]) -> bool:
        """Append ``record`` unless its key is already in the file; returns whether it was written."""
        import fcntl

        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # released when the file closes
            self.refresh()  # what another writer appended meanwhile
            if self.key(record) in self.records:
                return False
            _cut_torn_tail(fh)
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
            self._size = fh.tell()
        self.records[self.key(record)] = record
        return True
