"""``ppl``: sliding-window perplexity, every token of each window scored (the LongLoRA / PI convention).

A cell's ``samples`` windows of ``length`` tokens are spread evenly over a text; its perplexity is
``exp(sum of NLL / sum of scored tokens)`` and its score ``1 / perplexity``. The task needs token
log-likelihoods (``--backend hf``) and never enters the effective length.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from longseq.core.errors import UserError, one_line
from longseq.eval.tasks.hook import EvalTask, PlannedSample, RunContext
from longseq.eval.tasks.text import haystack_text


def ppl_tokens(source: str | None, tokenizer: Any) -> list[int]:
    """Token ids of the perplexity text ``source``: a file path, ``hf:NAME[:CONFIG]`` (a ``datasets``
    dataset, test split, ``text`` column), or the shipped haystack when empty."""
    if not source:
        text = haystack_text()
    elif source.startswith("hf:"):
        try:
            import datasets
        except ImportError:
            raise UserError("--ppl-text hf:... needs the datasets package; pip install 'longseq[data]'") from None
        name, _, conf = source[3:].partition(":")
        try:
            ds = datasets.load_dataset(name, conf or None, split="test")
        except Exception as err:
            raise UserError(f"cannot load dataset '{name}': {one_line(err, 200)}; pass a text file") from None
        text = "\n\n".join(ds["text"])
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"--ppl-text {source} is not a file; pass a text file or hf:DATASET")
        text = path.read_text(encoding="utf-8", errors="replace")
    return tokenizer(text)["input_ids"]


def ppl_window(tokens: list[int], length: int, index: int, samples: int) -> list[int]:
    """Window ``index`` of ``samples`` windows of ``length`` tokens, spread evenly over the text."""
    if len(tokens) < length:
        raise UserError(f"the perplexity text has {len(tokens)} tokens, fewer than length {length}; pass a longer "
                        "--ppl-text or drop that length")
    stride = (len(tokens) - length) // (samples - 1) if samples > 1 else 0
    start = index * stride
    return tokens[start:start + length]


class PerplexityTask(EvalTask):
    """Perplexity of ``--ppl-text`` windows; tables and plots show the perplexity, not the score."""

    name = "ppl"
    description = "sliding-window perplexity of --ppl-text (default: the shipped haystack)"
    label = "ppl (perplexity)"
    shown = "perplexity"
    in_effective_length = False
    hf_only = "needs token log-likelihoods"
    report_note = "`ppl` rows show perplexity (every token of each window scored)"

    def _window(self, ctx: RunContext, length: int, index: int) -> list[int]:
        tokens = ctx.once("ppl_tokens", lambda: ppl_tokens(ctx.settings.ppl_text, ctx.tokenizer))
        return ppl_window(tokens, length, index, ctx.settings.samples)

    def prepare(self, ctx: RunContext, sample: PlannedSample) -> None:
        self._window(ctx, sample.length, 0)

    def run(self, ctx: RunContext, engine: Any, sample: PlannedSample) -> dict[str, Any]:
        window = self._window(ctx, sample.length, sample.index)
        nll, count = engine.nll(window)
        return {"prompt_tokens": len(window), "depth": None, "expected": None, "output": None,
                "nll": nll, "scored_tokens": count, "score": math.exp(-nll / count)}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        nll, count = sum(r["nll"] for r in records), sum(r["scored_tokens"] for r in records)
        return {"perplexity": math.exp(nll / count), "score": math.exp(-nll / count)}

    def style_panel(self, ax: Any, threshold: float) -> None:
        ax.set_ylabel("perplexity")
        ax.set_yscale("log")


PPL = PerplexityTask()
