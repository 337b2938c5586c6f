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
    tune_process(sys.argv[2])
    print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT"))
""")


def _probe(mode: str, wait: str = "passive", **env: str) -> tuple[str, int, str, str]:
    """(allocator tuned, MB still mapped after freeing 300 MB, OMP_WAIT_POLICY, GOMP_SPINCOUNT) of a fresh process."""
    import os

    user = ("MALLOC_", "LONGSEQ_MALLOC", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(user)}
    out = subprocess.run([sys.executable, "-c", PROBE, mode, wait], env={**clean, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1]), out[2], out[3]


def test_tuned_allocator_keeps_freed_blocks_and_defaults_return_them():
    tuned, kept, omp, spin = _probe("tune")
    assert tuned == "True" and kept >= 250  # the 300 MB block stays mapped for the next tensor
    untouched, returned, *_ = _probe("plain")
    assert untouched == "False" and returned < 50  # glibc default: munmap on free
    assert (omp, spin) == ("PASSIVE", "None")


def test_wait_modes_set_their_variables():
    assert _probe("plain", "spin")[2:] == ("None", "10000")
    assert _probe("plain", "passive")[2:] == ("PASSIVE", "None")


def test_user_settings_win():
    tuned, returned, *_ = _probe("tune", LONGSEQ_MALLOC="system")
    assert tuned == "False" and returned < 50
    tuned, *_ = _probe("tune", MALLOC_ARENA_MAX="2")
    assert tuned == "False"
    assert _probe("plain", "spin", OMP_WAIT_POLICY="ACTIVE")[2:] == ("ACTIVE", "None")
    assert _probe("plain", "passive", GOMP_SPINCOUNT="500")[2:] == ("None", "500")


def test_bad_allocator_choice_is_a_one_line_error():
    import os

    env = {**os.environ, "LONGSEQ_MALLOC": "sytem"}
    proc = subprocess.run([sys.executable, "-m", "longseq", "info", "smollm2-135m"], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "longseq: error: unknown LONGSEQ_MALLOC 'sytem' (did you mean 'system'?); choose one of: system, tuned"]


def test_batch_commands_spin_and_the_others_sleep():
    import argparse

    from longseq.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    spinning = {name for name, p in sub.choices.items() if p.get_default("omp_wait") == "spin"}
    assert spinning == {"train", "lab"}
