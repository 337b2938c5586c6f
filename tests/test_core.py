"""The shared helpers of ``longseq.core``: tables, the run-folder guard and one-line error text."""

from __future__ import annotations

import json

import pytest

from longseq.core.errors import UserError, one_line
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
