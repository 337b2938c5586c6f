"""Process runtime settings: the glibc allocator keeps freed large blocks instead of unmapping them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt and /proc")

PROBE = textwrap.dedent("""
    import os, sys
    from longseq.core.runtime import tune_process, tune_malloc

    def rss_mb():
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:")) / 1024

    tuned = tune_malloc() if sys.argv[1] == "tune" else False
    base = rss_mb()
    block = bytearray(300 * 1024 * 1024)  # zero-filled: every page touched
    del block
    print(tuned, round(rss_mb() - base))
    tune_process()
    print(os.environ.get("OMP_WAIT_POLICY"))
""")


def _probe(mode: str, **env: str) -> tuple[str, int, str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LONGSEQ_MALLOC"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1]), out[2]


def test_tuned_allocator_keeps_freed_blocks_and_defaults_return_them():
    tuned, kept, omp = _probe("tune")
    assert tuned == "True" and kept >= 250  # the 300 MB block stays mapped for the next tensor
    untouched, returned, _ = _probe("plain")
    assert untouched == "False" and returned < 50  # glibc default: munmap on free
    assert omp == "PASSIVE"


def test_user_settings_win():
    tuned, returned, _ = _probe("tune", LONGSEQ_MALLOC="system")
    assert tuned == "False" and returned < 50
    tuned, _, _ = _probe("tune", MALLOC_ARENA_MAX="2")
    assert tuned == "False"
    *_, omp = _probe("plain", OMP_WAIT_POLICY="ACTIVE")
    assert omp == "ACTIVE"


def test_bad_allocator_choice_is_a_one_line_error():
    import os

    env = {**os.environ, "LONGSEQ_MALLOC": "sytem"}
    proc = subprocess.run([sys.executable, "-m", "longseq", "info", "smollm2-135m"], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "longseq: error: unknown LONGSEQ_MALLOC 'sytem' (did you mean 'system'?); choose one of: system, tuned"]
