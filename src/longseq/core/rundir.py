"""The run-folder guard: one folder holds one run of one command, one process at a time, and a resume must
repeat its settings.

  * kind: ``longseq-run.json`` records which command owns the folder (``eval``, ``lab``, ``lengthgen``,
    ``train``); another command refuses it (:func:`claim_kind`). Folders written before the marker existed
    are recognized by their files (:data:`RUN_KINDS`).
  * lock: ``.longseq.lock`` is held with an advisory ``flock`` while a run writes (:func:`lock_run_folder`);
    a second run into the same folder is refused instead of duplicating every record. The kernel drops
    the lock when the process dies, so a killed run never leaves the folder locked.
  * settings: ``claim_run_folder`` records the run's settings in the command's marker and refuses others.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from longseq.core.errors import UserError
from longseq.core.fsutil import atomic_write_text, clean_stale_tmp

KIND_MARKER = "longseq-run.json"
LOCK_FILE = ".longseq.lock"

# kind -> (file, key) pairs identifying a folder of that kind written before KIND_MARKER existed: the file
# exists (key None) or is a JSON object holding that key (eval and train both write a run.json).
RUN_KINDS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "eval": (("samples.jsonl", None), ("run.json", "prompt_format")),
    "lab": (("lab.json", None),),
    "lengthgen": (("runs.jsonl", None),),
    "train": (("metrics.jsonl", None), ("checkpoint", None), ("run.json", "fingerprint")),
}


def _shows(out: Path, file: str, key: str | None) -> bool:
    """Whether ``out/file`` exists (``key`` None) or is a JSON object with ``key``."""
    if key is None:
        return (out / file).exists()
    try:
        data = json.loads((out / file).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and key in data


def run_kind(out: str | Path) -> str | None:
    """The command that owns ``out``: its recorded kind, else the kind its files show, else None."""
    out = Path(out)
    try:
        recorded = json.loads((out / KIND_MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, str):
        return recorded
    return next((kind for kind, signs in RUN_KINDS.items() if any(_shows(out, f, k) for f, k in signs)), None)


def claim_kind(out: str | Path, kind: str, record: bool = True) -> None:
    """Refuse ``out`` when it belongs to another command; else (``record`` and the folder exists) mark it
    as ``kind`` and remove temporary files that killed writers left there."""
    out = Path(out)
    if kind not in RUN_KINDS:
        raise ValueError(f"unknown run kind {kind!r}")
    found = run_kind(out)
    if found not in (None, kind):
        raise UserError(f"{out} holds a longseq {found} run, not a {kind} run; choose another --out")
    if record and out.is_dir():
        clean_stale_tmp(out)
        if found is None or not (out / KIND_MARKER).is_file():
            atomic_write_text(out / KIND_MARKER, json.dumps({"kind": kind}) + "\n")


@contextlib.contextmanager
def lock_run_folder(out: str | Path) -> Iterator[int]:
    """Hold ``out/.longseq.lock`` (exclusive, non-blocking ``flock``) for the body; a second holder anywhere
    on the machine gets a one-line error instead of writing the same records twice.

    Yields the lock's file descriptor: a child process that inherits it (``pass_fds``) shares the lock,
    which then lasts until every holder has exited."""
    import fcntl

    out = Path(out)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise UserError(f"another longseq run is using {out}; wait for it to finish or choose another --out") \
                from None
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def claim_run_folder(out: str | Path, marker: str, ident: dict[str, Any],
                     normalize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                     what: str = "a run", kind: str | None = None) -> None:
    """Record ``ident`` in ``out/marker``, or refuse when the folder already holds other settings.

    ``kind`` (a key of :data:`RUN_KINDS`) first refuses a folder of another command and marks it as this
    one's (:func:`claim_kind`). Only keys present on both sides are compared (older markers may lack newer
    keys); ``normalize`` maps a stored marker to comparable values (e.g. a model path recorded in another
    form). An unreadable marker counts as empty. Raises :class:`UserError` naming the differing settings
    and the fix; nothing is written then.
    """
    path = Path(out) / marker
    if kind is not None:
        claim_kind(out, kind, record=False)
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        if not isinstance(old, dict):
            old = {}
        if normalize:
            old = normalize(old)
        diff = [k for k in ident if k in old and old[k] != ident[k]]
        if diff:
            raise UserError(f"{out} holds {what} with a different {', '.join(diff)} "
                            f"({', '.join(f'{k}={_show(old[k])}' for k in diff)}); "
                            "choose another --out or repeat the original settings")
    if kind is not None:
        claim_kind(out, kind)
    atomic_write_text(path, json.dumps(ident, indent=2) + "\n")


def _show(value: Any, limit: int = 60) -> str:
    """A recorded setting for the one-line message: scalars as they are, containers as short JSON."""
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."
