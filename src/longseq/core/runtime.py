"""Process-wide CPU runtime settings that make torch work fast on small shared machines.

Two settings, both applied once per process by :func:`tune_process` (the CLI calls it first thing;
``train_model`` and ``run_eval`` call it too, for Python API users):

* How idle OpenMP threads wait (only if the user set neither ``OMP_WAIT_POLICY`` nor ``GOMP_SPINCOUNT``, and
  only effective before torch loads OpenMP): a command picks one of :data:`WAITS`. ``passive`` (most
  commands) sleeps at once: with libgomp's default 3 ms spin, a 1k-token prefill on 2 busy cores took 5-15 s
  instead of 1 s. ``spin`` (``train`` and ``lab``: batch jobs that own the cores) spins about
  0.1 ms first: the gap between two small kernels is shorter than a thread's wake-up, so a lab training step
  went from 0.44 to 0.33 s; with another process on one of the two cores the same setting made an eval twice
  as slow as ``passive``.
* glibc ``malloc`` keeps freed memory instead of returning every large block to the kernel
  (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, -1)``). By default every tensor above
  32 MiB (the logits of a 49k-word vocabulary over 2048 tokens are 400 MB) is a fresh ``mmap`` whose
  pages the kernel zero-fills on first touch, then ``munmap``-ed again: on the lab's training step
  more CPU went to the kernel than to the model. Measured on 2 cores: 1.10 s -> 0.57-0.61 s per step,
  peak resident memory 2.3 -> 3.4 GB (freed blocks stay mapped for reuse). Set ``LONGSEQ_MALLOC=system``,
  or any ``MALLOC_*`` variable of your own, to keep glibc's defaults.

No library exposes these knobs (PyTorch leaves allocation on CPU to the C library), hence ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from longseq.core.errors import unknown_choice

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_MAX = -4
_NEVER = -1  # man mallopt: "-1 disables trimming completely"

MALLOC_CHOICES = ("tuned", "system")

# Environment settings per wait mode. GOMP_SPINCOUNT is libgomp's (the OpenMP runtime of torch's Linux wheels);
# ~100,000 spins take about a millisecond.
WAITS: dict[str, dict[str, str]] = {
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin": {"GOMP_SPINCOUNT": "10000"},
}
_USER_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

_done = False


def tune_malloc() -> bool:
    """Apply the allocator settings above; return whether they were applied (glibc Linux only).

    Raises :class:`UserError` when ``LONGSEQ_MALLOC`` is neither ``tuned`` (the default) nor ``system``.
    """
    choice = os.environ.get("LONGSEQ_MALLOC", "tuned")
    if choice not in MALLOC_CHOICES:
        raise unknown_choice("LONGSEQ_MALLOC", choice, MALLOC_CHOICES)
    if choice == "system" or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _NEVER))


def tune_process(wait: str = "passive") -> None:
    """Apply every setting once per process (idempotent: the first call's ``wait`` mode stays)."""
    global _done
    if _done:
        return
    if not any(k in os.environ for k in _USER_WAIT_VARS):
        os.environ.update(WAITS[wait])
    tune_malloc()
    _done = True
