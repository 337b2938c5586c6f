"""The ``--out`` folder of a training run: the clobber/resume guard and atomic resumable checkpoints.

``DIR/run.json`` records the run's fingerprint (:meth:`TrainConfig.fingerprint`); ``--resume`` continues
only a run with the same fingerprint. ``DIR/checkpoint`` is replaced atomically (via ``checkpoint.tmp``
and ``checkpoint.old``), so a kill at any moment leaves one complete checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from longseq.core.errors import UserError, one_line
from longseq.core.fsutil import atomic_write_text
from longseq.core.rundir import KIND_MARKER, LOCK_FILE
from longseq.train.config import TrainConfig


def fingerprint_json(cfg: TrainConfig) -> dict[str, Any]:
    """The fingerprint as it reads back from JSON (tuples become lists, other values strings)."""
    return json.loads(json.dumps(cfg.fingerprint(), default=str))


def fingerprint_hash(cfg: TrainConfig) -> str:
    """A short digest of the fingerprint, stored with every checkpoint."""
    return hashlib.sha256(json.dumps(cfg.fingerprint(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_out_dir(cfg: TrainConfig) -> dict[str, Any] | None:
    """Refuse to clobber another run. Returns the checkpoint state to resume from, or None to start fresh."""
    out = Path(cfg.out)
    run_file = out / "run.json"
    if out.is_dir() and not run_file.is_file() and any(p.name not in (KIND_MARKER, LOCK_FILE) for p in out.iterdir()):
        raise UserError(f"{out} exists and is not a longseq training folder; choose another --out")
    if not run_file.is_file():
        return None
    if not cfg.resume:
        raise UserError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    saved = _read_json(run_file).get("fingerprint")
    if not isinstance(saved, dict):
        raise UserError(f"{run_file} is unreadable or has no fingerprint; choose another --out")
    ours = fingerprint_json(cfg)
    if saved != ours:
        diff = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
        raise UserError(f"{out} holds a checkpoint of another run (differs in: {', '.join(diff)}); "
                        "resume with the same settings or choose another --out")
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return None
    return _read_json(ckpt / "state.json") | {"path": str(ckpt)}


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def latest_checkpoint(out: Path) -> Path | None:
    """``out/checkpoint``, or ``checkpoint.old`` when a kill fell between the two renames of :func:`save_checkpoint`
    (a checkpoint whose ``state.json`` does not read back is skipped)."""
    for name in ("checkpoint", "checkpoint.old"):
        p = out / name
        if isinstance(_read_json(p / "state.json").get("step"), int):
            return p
    return None


@contextlib.contextmanager
def write_errors(out: Path, what: str) -> Iterator[None]:
    """A failed write in the body (a full disk, a read-only folder) as a one-line :class:`UserError`.

    Not only ``OSError``: on a full disk ``torch.save`` raises a ``RuntimeError`` ("unexpected pos") and
    safetensors a ``SafetensorError``, so every exception but :class:`UserError` is reported, quoted. The
    writers used here leave the previous file or checkpoint in place, so ``--resume`` continues from it.
    """
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        free = _free_bytes(out)
        cause = f"the disk is full, {free >> 10} KiB free: " if free is not None and free < LOW_DISK else ""
        raise UserError(f"cannot write {what} in {out} ({cause}{one_line(err, 160)}); free disk space or make the "
                        "folder writable, then run the same command with --resume (the last checkpoint is intact)") \
            from None


LOW_DISK = 64 << 20  # below this much free space a failed write is reported as a full disk


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the file system of ``path`` (or of its nearest existing ancestor); None if unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def save_checkpoint(accelerator: Any, out: Path, state: dict[str, Any]) -> None:
    """accelerate ``save_state`` (model, optimizer, scheduler, RNG) + ``state.json``, swapped in atomically."""
    tmp, final, old = out / "checkpoint.tmp", out / "checkpoint", out / "checkpoint.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=False)
        accelerator.wait_for_everyone()  # every process's RNG file is in before the swap
        if accelerator.is_main_process:
            atomic_write_text(tmp / "state.json", json.dumps(state, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint.tmp; checkpoint/ is untouched
        raise
    if accelerator.is_main_process:
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
