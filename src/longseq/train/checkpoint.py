"""The ``--out`` folder of a training run: the clobber/resume guard and atomic resumable checkpoints.

``DIR/run.json`` records the run's fingerprint (:meth:`TrainConfig.fingerprint`); ``--resume`` continues
only a run with the same fingerprint. ``DIR/checkpoint`` is replaced atomically (via ``checkpoint.tmp``
and ``checkpoint.old``), so a kill at any moment leaves one complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from longseq.core.errors import UserError
from longseq.core.fsutil import atomic_write_text
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
    if out.exists() and any(out.iterdir()) and not run_file.is_file():
        raise UserError(f"{out} exists and is not a longseq training folder; choose another --out")
    if not run_file.is_file():
        return None
    if not cfg.resume:
        raise UserError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    saved = json.loads(run_file.read_text()).get("fingerprint", {})
    ours = fingerprint_json(cfg)
    if saved != ours:
        diff = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
        raise UserError(f"{out} holds a checkpoint of another run (differs in: {', '.join(diff)}); "
                        "resume with the same settings or choose another --out")
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return None
    return json.loads((ckpt / "state.json").read_text()) | {"path": str(ckpt)}


def latest_checkpoint(out: Path) -> Path | None:
    """``out/checkpoint``, or ``checkpoint.old`` when a kill fell between the two renames of :func:`save_checkpoint`."""
    for name in ("checkpoint", "checkpoint.old"):
        p = out / name
        if (p / "state.json").is_file():
            return p
    return None


def save_checkpoint(accelerator: Any, out: Path, state: dict[str, Any]) -> None:
    """accelerate ``save_state`` (model, optimizer, scheduler, RNG) + ``state.json``, swapped in atomically."""
    tmp, final, old = out / "checkpoint.tmp", out / "checkpoint", out / "checkpoint.old"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)
    accelerator.wait_for_everyone()  # every process's RNG file is in before the swap
    if accelerator.is_main_process:
        atomic_write_text(tmp / "state.json", json.dumps(state, indent=2))
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
