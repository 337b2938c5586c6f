"""The claims the lab checks (:data:`FINDINGS`) and the rules that judge them from the measured numbers.

Every judge reads a lab summary (``summary.json`` before its ``findings``: ``native``, ``lengths``,
``costs`` and ``evals[run]["perplexity"|"retrieval"][method][str(length)]``) and returns
``(verdict, evidence, table, notes)``: True / False, or None when a number it needs is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from longseq.lab.presets import FACTORS, FT_FACTOR, ZERO_SHOT

Judgement = tuple[bool | None, str, list[list[str]], list[str]]

MARGIN = 0.02  # "beats" means lower perplexity by more than 2%: smaller gaps are noise at this scale

# "A fraction of the cost" means more than 10% less time or peak memory (same-arm noise stays below that).
COST_MARGIN = 0.10


@dataclass(frozen=True)
class Finding:
    """One claim of the literature, the numbers it is judged on, and the rule that judges it."""

    key: str
    title: str
    source: str
    claim: str
    judge: Callable[[dict[str, Any]], Judgement]


def ppl_at(summary: dict[str, Any], run: str, method: str, length: int) -> float | None:
    """Perplexity of eval run ``run`` with RoPE ``method`` at ``length`` tokens (None if not measured)."""
    return summary["evals"].get(run, {}).get("perplexity", {}).get(method, {}).get(str(length))


def retrieval_at(summary: dict[str, Any], run: str, method: str, length: int) -> float | None:
    """Mean passkey/lines score of eval run ``run`` with RoPE ``method`` at ``length`` tokens."""
    return summary["evals"].get(run, {}).get("retrieval", {}).get(method, {}).get(str(length))


def fmt(x: float | None, digits: int = 2) -> str:
    """A table cell: ``x`` with ``digits`` decimals, or an en dash when it was not measured."""
    return "–" if x is None else f"{x:.{digits}f}"


def _lt(a: float | None, b: float | None) -> bool | None:
    """a beats b by more than :data:`MARGIN` (None when a number is missing)."""
    return None if a is None or b is None else a < b * (1 - MARGIN)


def _all(values: list[bool | None]) -> bool | None:
    return None if any(v is None for v in values) else all(values)


def _ppl_rows(s: dict[str, Any], runs: tuple[str, ...]) -> list[list[str]]:
    """Header + one row per fine-tuned run: perplexity at every length, retrieval at 4L."""
    L4 = FT_FACTOR * s["native"]
    header = ["run", *(f"ppl@{n}" for n in s["lengths"]), f"retrieval@{L4}"]
    return [header, *([r, *(fmt(ppl_at(s, r, "none", n)) for n in s["lengths"]), fmt(retrieval_at(s, r, "none", L4))]
                      for r in runs)]


def judge_pi(s: dict[str, Any]) -> Judgement:
    L4 = FT_FACTOR * s["native"]
    ok = _lt(ppl_at(s, "ft-pi", "none", L4), ppl_at(s, "ft-direct", "none", L4))
    why = (f"after the same fine-tuning budget at {L4} tokens, perplexity at {L4}: PI "
           f"{fmt(ppl_at(s, 'ft-pi', 'none', L4))} vs extrapolation {fmt(ppl_at(s, 'ft-direct', 'none', L4))}")
    return ok, why, _ppl_rows(s, ("ft-direct", "ft-pi")), []


def judge_yarn_ntk(s: dict[str, Any]) -> Judgement:
    header = ["target", "method", *(f"ppl@{n}" for n in s["lengths"])]
    rows, checks, notes = [], [], []
    for f in FACTORS:
        run, target = f"zero-shot-{f}x", f * s["native"]
        for m in ZERO_SHOT:
            rows.append([f"{f}x", m, *(fmt(ppl_at(s, run, m, n)) for n in s["lengths"])])
        for m in ("yarn", "ntk"):
            better = _lt(ppl_at(s, run, m, target), ppl_at(s, run, "pi", target))
            checks.append(better)
            notes.append(f"{f}x: {m} {fmt(ppl_at(s, run, m, target))} vs pi {fmt(ppl_at(s, run, 'pi', target))} "
                         f"-> {'better' if better else 'not better'}")
    return _all(checks), "; ".join(notes), [header, *rows], []


def judge_abf(s: dict[str, Any]) -> Judgement:
    L4 = FT_FACTOR * s["native"]
    a, p = ppl_at(s, "ft-abf", "none", L4), ppl_at(s, "ft-pi", "none", L4)
    ok = None if a is None or p is None else a <= p * (1 + MARGIN)  # "matches or beats"
    return ok, f"continual training at {L4}: ABF perplexity {fmt(a)} vs PI {fmt(p)} (Llama 2 Long: 6.323 vs 6.341)", \
        _ppl_rows(s, ("ft-abf", "ft-pi")), []


def _cheaper(cl: dict[str, Any], cf: dict[str, Any]) -> bool | None:
    """LongLoRA's cost ``cl`` is more than :data:`COST_MARGIN` below full fine-tuning's ``cf`` in time or memory."""
    if not (cl.get("train_seconds") and cf.get("train_seconds")):
        return None
    return cl["train_seconds"] < cf["train_seconds"] * (1 - COST_MARGIN) or (
        bool(cl.get("peak_rss_mb")) and bool(cf.get("peak_rss_mb"))
        and cl["peak_rss_mb"] < cf["peak_rss_mb"] * (1 - COST_MARGIN))


def judge_longlora(s: dict[str, Any]) -> Judgement:
    L4 = FT_FACTOR * s["native"]
    header = ["run", f"ppl@{L4}", f"ppl@{2 * L4}", "train s", "peak RSS MB", "trainable params"]
    rows = []
    for r in ("ft-pi", "ft-longlora", "ft-lora"):
        c = s["costs"].get(r, {})
        rows.append([r, fmt(ppl_at(s, r, "none", L4)), fmt(ppl_at(s, r, "none", 2 * L4)),
                     fmt(c.get("train_seconds"), 1), fmt(c.get("peak_rss_mb"), 0),
                     str(c.get("trainable_parameters", "–"))])
    ll, full, lora = (ppl_at(s, r, "none", L4) for r in ("ft-longlora", "ft-pi", "ft-lora"))
    cl, cf = s["costs"].get("ft-longlora", {}), s["costs"].get("ft-pi", {})
    near = None if ll is None or full is None else ll <= 1.10 * full
    cheaper = _cheaper(cl, cf)
    why = (f"LongLoRA perplexity {fmt(ll)} vs full fine-tuning {fmt(full)} (within 10%: {near}); "
           f"LoRA alone {fmt(lora)}; more than {COST_MARGIN:.0%} cheaper in time or memory: {cheaper}")
    notes = []
    if cl.get("trainable_parameters") and cf.get("trainable_parameters"):
        share = cl["trainable_parameters"] / cf["trainable_parameters"]
        notes.append(f"LongLoRA trains {share:.0%} of this model's weights: the tied token embedding (trainable in "
                     "LongLoRA, as in the paper) dominates a model this small, while the paper's saving comes from "
                     "freezing a 7B body; cost is therefore expected to match full fine-tuning here")
    return _all([near, cheaper]), why, [header, *rows], notes


def judge_randomized(s: dict[str, Any]) -> Judgement:
    header = ["pre-training", *(f"ppl@{n}" for n in s["lengths"]), *(f"retrieval@{n}" for n in s["lengths"])]
    runs = (("plain positions", "zero-shot-8x"), ("randomized positions", "randomized"))
    rows = [[label, *(fmt(ppl_at(s, r, "none", n)) for n in s["lengths"]),
             *(fmt(retrieval_at(s, r, "none", n)) for n in s["lengths"])] for label, r in runs]
    unseen = [n for n in s["lengths"] if n > s["native"]]
    checks = [_lt(ppl_at(s, "randomized", "none", n), ppl_at(s, "zero-shot-8x", "none", n)) for n in unseen]
    why = "perplexity at unseen lengths " + ", ".join(
        f"{n}: {fmt(ppl_at(s, 'randomized', 'none', n))} vs {fmt(ppl_at(s, 'zero-shot-8x', 'none', n))}"
        for n in unseen)
    return _all(checks), why, [header, *rows], []


FINDINGS: tuple[Finding, ...] = (
    Finding("pi", "Position interpolation beats extrapolation", "Chen et al. 2023 (PI), arXiv 2306.15595",
            "Fine-tuning with interpolated positions reaches the long context within a short budget, while direct "
            "fine-tuning (extrapolation) barely extends it.", judge_pi),
    Finding("yarn_ntk", "YaRN and NTK beat PI without training", "Peng et al. 2023 (YaRN), arXiv 2309.00071",
            "Without fine-tuning, NTK-aware and YaRN scaling keep perplexity low at the extended length where "
            "plain PI degrades.", judge_yarn_ntk),
    Finding("abf", "ABF suits continual pre-training", "Xiong et al. 2023 (Llama 2 Long), arXiv 2309.16039",
            "Raising the RoPE base and continuing pre-training on long sequences matches or beats PI "
            "(Books PPL 6.323 vs 6.341).", judge_abf),
    Finding("longlora", "LongLoRA nearly matches full fine-tuning at a fraction of the cost",
            "Chen et al. 2023 (LongLoRA), arXiv 2309.12307",
            "S²-Attn + LoRA with trainable embeddings and norms comes close to full fine-tuning perplexity with "
            "less time and memory; plain LoRA falls behind.", judge_longlora),
    Finding("randomized", "Randomized positions generalize to unseen lengths",
            "Ruoss et al. 2023, arXiv 2305.16843",
            "Training on ordered random subsets of a larger position range improves accuracy on lengths never "
            "seen in training (+12.0% on average on algorithmic tasks).", judge_randomized),
)
