"""``longseq eval`` on the real embedded model (slow)."""

from __future__ import annotations

import json

import pytest

from longseq.eval.run import EvalConfig, run_eval


@pytest.mark.slow
def test_embedded_model_passkey_at_2k_scores_at_least_0_8(tmp_path):
    summary = run_eval(EvalConfig(model="smollm2-135m", out=str(tmp_path / "run"), tasks=["passkey"],
                                  cells=[("none", 2048)], samples=5, seed=0), progress=False, quiet=True)
    (row,) = summary["results"]
    assert row["n"] == 5 and 2007 <= row["prompt_tokens"] <= 2048
    assert row["score"] >= 0.8, (tmp_path / "run" / "samples.jsonl").read_text()
    assert summary["effective_length"] == {"none": 2048}
    outputs = [json.loads(x)["output"] for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert all(o.strip() for o in outputs)
