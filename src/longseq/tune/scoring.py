"""Scoring one candidate rescaling on one calibration window: perplexity (and passkey) at the target length.

A *window* j is the j-th of ``windows`` token windows of the target length spread evenly over the
calibration text (:func:`longseq.eval.tasks.ppl.ppl_window`, the ``longseq eval --tasks ppl`` windows); its
negative log-likelihood comes from :meth:`longseq.models.generation.LocalLM.nll` (every token scored). With
the ``ppl+passkey`` objective window j also runs passkey sample j of ``longseq eval`` at the target length.
One window costs one forward pass over the target length (two with passkey): that is the ``--budget`` unit.

The candidate's loss over windows 0..k-1 is ln(perplexity) = sum NLL / sum tokens, plus, for
``ppl+passkey``, (1 - passkey accuracy): one missed passkey in two weighs as much as a perplexity x1.65.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from longseq.eval.engine import HFEngine, resolve_prompt_format
from longseq.eval.plan import EvalConfig
from longseq.eval.tasks import EVAL_TASKS, PlannedSample, RunContext
from longseq.eval.tasks.ppl import ppl_window
from longseq.tune.factors import Candidate, apply_candidate

OBJECTIVES: dict[str, int] = {"ppl": 1, "ppl+passkey": 2}
"""Objective -> forward passes per window."""


@dataclass(frozen=True)
class WindowScore:
    """The result of one candidate on one window: NLL sum, scored tokens, passkey score (None without)."""

    nll: float
    tokens: int
    passkey: float | None = None


def loss(scores: list[WindowScore]) -> float:
    """Search loss of a candidate over its scored windows (lower is better, see module docstring)."""
    value = sum(s.nll for s in scores) / sum(s.tokens for s in scores)
    keys = [s.passkey for s in scores if s.passkey is not None]
    return value + (1.0 - sum(keys) / len(keys) if keys else 0.0)


def perplexity(scores: list[WindowScore]) -> float:
    """exp(sum NLL / sum tokens) over the windows."""
    return math.exp(sum(s.nll for s in scores) / sum(s.tokens for s in scores))


class Scorer:
    """Holds the loaded model and evaluates candidates window by window.

    Args:
        model, tokenizer: the plain-RoPE model (loaded once) and its tokenizer.
        base_config: a copy of the model's original config (the candidates are applied to it).
        tokens: calibration token ids (at least ``target`` of them).
        target: the target length L'.
        windows: number of windows spread over ``tokens``.
        objective: a key of :data:`OBJECTIVES`.
        seed: seed of the passkey prompts.
    """

    def __init__(self, model: Any, tokenizer: Any, base_config: Any, tokens: list[int], target: int, windows: int,
                 objective: str, seed: int):
        self.model, self.base_config, self.target = model, base_config, target
        self.windows = [ppl_window(tokens, target, j, windows) for j in range(windows)]
        # chunk = target: the whole window in one call, so every position sees the long factors
        self.engine = HFEngine(model, tokenizer, chunk_size=max(target, 1))
        self.objective = objective
        self.current: str | None = None
        if objective == "ppl+passkey":
            settings = EvalConfig(model="", out="", tasks=["passkey"], samples=windows, seed=seed)
            self.ctx = RunContext(settings, tokenizer, resolve_prompt_format("auto", tokenizer))
            self.passkeys = [PlannedSample("none", "passkey", "", target, j) for j in range(windows)]
            for sample in self.passkeys[:1]:
                EVAL_TASKS["passkey"].prepare(self.ctx, sample)

    @property
    def passes_per_window(self) -> int:
        return OBJECTIVES[self.objective]

    def score(self, cand: Candidate, window: int) -> WindowScore:
        """Evaluate ``cand`` on window ``window`` (rebuilding the rotary modules only when the candidate changes)."""
        if self.current != cand.key:
            apply_candidate(self.model, self.base_config, cand, self.target)
            self.current = cand.key
        nll, count = self.engine.nll(self.windows[window])
        key = None
        if self.objective == "ppl+passkey":
            key = float(EVAL_TASKS["passkey"].run(self.ctx, self.engine, self.passkeys[window])["score"])
        return WindowScore(nll, count, key)
