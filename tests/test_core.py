"""The shared helpers of ``longseq.core``: tables, the run-folder guard, one-line error text, length parsing,
atomic writes and append-only JSONL (torn lines, duplicates, two writers, a full disk)."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys

import pytest

from longseq.core import fsutil
from longseq.core.errors import UserError, one_line
from longseq.core.fsutil import KeyedJsonl, append_jsonl, atomic_dir, atomic_write_text, output_errors, read_jsonl
from longseq.core.parsing import parse_length, parse_lengths
from longseq.core.rundir import claim_run_folder
from longseq.core.tables import fmt_len, md_table, text_table


def test_fmt_len_uses_binary_k_only_for_whole_multiples():
    assert [fmt_len(n) for n in (1024, 16384, 1000, 1536)] == ["1k", "16k", "1000", "1536"]


def test_md_table_is_a_pipe_table():
    assert md_table(["a", "b"], [[1, "x"], ["2", 3.5]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2 | 3.5 |"


def test_text_table_aligns_first_column_left_others_right():
    assert text_table(["task", "1k"], [["passkey", "1.00"], ["ppl", "12.5"]]).splitlines() == [
        "  task       1k", "  passkey  1.00", "  ppl      12.5"]


def test_claim_records_then_accepts_the_same_settings_and_refuses_others(tmp_path):
    claim_run_folder(tmp_path, "run.json", {"model": "m", "seed": 0})
    assert json.loads((tmp_path / "run.json").read_text()) == {"model": "m", "seed": 0}
    claim_run_folder(tmp_path, "run.json", {"model": "m", "seed": 0, "new_key": 1})  # older marker: common keys
    with pytest.raises(UserError, match=r"holds a run with a different seed \(seed=0\); choose another --out"):
        claim_run_folder(tmp_path, "run.json", {"model": "m", "seed": 1, "new_key": 1})
    assert json.loads((tmp_path / "run.json").read_text())["seed"] == 0  # untouched on refusal


def test_claim_treats_an_unreadable_marker_as_empty_and_normalizes(tmp_path):
    (tmp_path / "run.json").write_bytes(b"\xff\xfe not json")
    claim_run_folder(tmp_path, "run.json", {"seed": 0})
    claim_run_folder(tmp_path, "run.json", {"seed": 0}, normalize=lambda old: {"seed": int(old["seed"])})
    with pytest.raises(UserError, match="seed=0"):
        claim_run_folder(tmp_path, "run.json", {"seed": 5}, normalize=lambda old: old)


def test_one_line_joins_whitespace_truncates_and_names_empty_errors():
    assert one_line(ValueError("a\n  b\tc")) == "a b c"
    assert one_line("x" * 10, limit=4) == "xxxx..."
    assert one_line(KeyError()) == "KeyError"


# ----------------------------------------------------------------------------------- parsing (bad input)


@pytest.mark.parametrize("text,value", [("1.5k", 1536), ("4k", 4096), ("1M", 1048576), ("4096", 4096), (" 2k ", 2048)])
def test_parse_length_accepts_whole_token_counts(text, value):
    assert parse_length(text) == value


@pytest.mark.parametrize("text,needle", [("1000.7", "not a whole number"), ("1.3k", "1331.2 tokens"),
                                         ("0", "must be positive"), ("k", "not a length"), ("1e3", "not a length"),
                                         ("-4k", "not a length"), ("", "not a length")])
def test_parse_length_refuses_fractions_and_junk(text, needle):
    with pytest.raises(UserError, match=needle):
        parse_length(text)


@pytest.mark.parametrize("text,needle", [("4k,4096", "lists 4096 tokens twice"), ("1k,1k", "twice"),
                                         (",", "no lengths given"), ("", "no lengths given")])
def test_parse_lengths_refuses_empty_and_duplicated_lists(text, needle):
    with pytest.raises(UserError, match=needle):
        parse_lengths(text)


def test_parse_lengths_sorts():
    assert parse_lengths("4k,1k,2048") == [1024, 2048, 4096]


# ------------------------------------------------------------------------------ atomic writes and JSONL


def test_atomic_writers_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("x")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_writers_are_cleaned_and_live_ones_kept(tmp_path):
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / f".model.tmp-{dead}").mkdir()
        (tmp_path / f".model.tmp-{dead}" / "w.bin").write_bytes(b"x")
        (tmp_path / f".summary.json.tmp-{dead}").write_text("{")
        (tmp_path / f".report.md.tmp-{live.pid}").write_text("being written")
        (tmp_path / f".ckpt.old-{dead}").mkdir()  # killed between its two renames: the previous version
        (tmp_path / "keep.tmp-1").write_text("not ours")
        atomic_write_text(tmp_path / "summary.json", "{}")  # every atomic write sweeps its folder
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == sorted(["ckpt", f".report.md.tmp-{live.pid}", "keep.tmp-1", "summary.json"])
    finally:
        live.kill()
        live.wait()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # the live writer has gone


def test_atomic_write_keeps_the_old_file_on_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_text(path, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil.os, "fsync", full)
    with pytest.raises(UserError, match=r"No space left on device; free some disk space") as err:
        with output_errors(tmp_path):
            atomic_write_text(path, "new")
    assert "\n" not in str(err.value)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    with pytest.raises(UserError, match="choose a writable --out"):
        with output_errors(tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))
    with pytest.raises(FileNotFoundError):  # other OS errors are not the user's to fix
        with output_errors(tmp_path):
            raise FileNotFoundError(errno.ENOENT, "gone")


def test_append_cuts_a_torn_tail_and_keeps_every_complete_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"k": 1}\n{"k": 2}\n{"k": 3, "tor')
    append_jsonl(path, {"k": 4})
    assert path.read_text() == '{"k": 1}\n{"k": 2}\n{"k": 4}\n'
    path.write_text('{"k": 1}')  # complete but unterminated: kept, terminated
    append_jsonl(path, {"k": 2})
    assert path.read_text() == '{"k": 1}\n{"k": 2}\n'
    path.write_text('{"k": 1}\n{"k": 2, "to{"k": 3}')  # an old torn line that swallowed a record
    append_jsonl(path, {"k": 4})
    assert [r["k"] for r in read_jsonl(path)] == [1, 3, 4]


def test_read_jsonl_recovers_swallowed_records_and_names_bad_lines(tmp_path, capsys):
    path = tmp_path / "s.jsonl"
    path.write_text('{"k": 1}\n{"k": 2, "sc{"k": 3}\n{"k": 4, "x\n')
    assert [r["k"] for r in read_jsonl(path)] == [1, 3]
    assert "s.jsonl:3: skipped a torn record" in capsys.readouterr().err
    path.write_text('{"k": 1}\nhello\n')
    with pytest.raises(UserError, match=r"s.jsonl:2 is not a JSON record; delete that line"):
        read_jsonl(path)

    def check(rec):
        if not isinstance(rec["k"], int):
            raise TypeError(f"field 'k' is {rec['k']!r}, not int")

    path.write_text('{"k": 1}\n{"k": "2"}\n')
    with pytest.raises(UserError, match=r"s.jsonl:2: field 'k' is '2', not int; fix or delete that line"):
        read_jsonl(path, check)
    path.write_text('{"k": 1}\n{"j": 2}\n')
    with pytest.raises(UserError, match=r"s.jsonl:2: field 'k' is missing"):
        read_jsonl(path, check)


def test_keyed_jsonl_counts_a_duplicated_line_once_and_never_appends_a_key_twice(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"k": 1, "v": "a"}\n{"k": 1, "v": "b"}\n{"k": 2, "v": "c"}\n')
    log = KeyedJsonl(path, lambda r: r["k"])
    assert [r["v"] for r in log.values()] == ["a", "c"] and 1 in log and 3 not in log
    assert log.append({"k": 2, "v": "again"}) is False
    assert log.append({"k": 3, "v": "d"}) is True
    other = KeyedJsonl(path, lambda r: r["k"])  # a second writer that read the file earlier
    append_jsonl(path, {"k": 4, "v": "e"})
    assert log.append({"k": 4, "v": "late"}) is False  # catches up with what others appended
    assert other.append({"k": 3, "v": "dup"}) is False
    assert [r["k"] for r in read_jsonl(path)] == [1, 1, 2, 3, 4]


_WRITER = """
import sys
from longseq.core.fsutil import KeyedJsonl
log = KeyedJsonl(sys.argv[1], lambda r: r["k"])
for k in range(200):
    log.append({"k": k, "by": sys.argv[2]})
"""


def test_two_processes_appending_the_same_keys_write_each_key_once(tmp_path):
    path = tmp_path / "s.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), name]) for name in "ab"]
    assert [p.wait(60) for p in procs] == [0, 0]
    keys = [r["k"] for r in read_jsonl(path)]
    assert sorted(keys) == list(range(200))
