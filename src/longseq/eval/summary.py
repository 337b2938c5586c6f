"""summary.json: one result row per (task, method, length) cell with a 95% interval, and the effective length.

Effective context length (RULER, Hsieh et al. 2024): the largest tested length L such that the mean
score over the chosen retrieval tasks is >= threshold at L and at every shorter tested length (0 when
the shortest fails). RULER's threshold 0.856 is Llama-2-7B's 4k score on its 13 tasks; for other task
subsets it is a convention, not a transferable number. Tasks that opt out (``ppl``) are reported but
never enter it. ``effective_length`` is computed on the mean over the tasks, ``effective_length_by_task``
on each task alone (RULER and the LongChat post read their curves per task).

Intervals (``ci_low``, ``ci_high``) bound the value a row shows (:attr:`EvalTask.shown`):
  * ``score``: the Wilson score interval (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over the
    normal approximation for small n) with ``n`` samples and ``n * score`` successes; fractional scores
    (recall, F1) are treated as that many successes, an approximation;
  * ``perplexity``: a percentile bootstrap over the cell's windows (resampling whole windows, seeded, so the
    interval is reproducible); one window gives a zero-width interval;
  * any other value (a task's own, see :data:`INTERVALS`): ``null``.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Iterable

from longseq.eval.plan import EvalConfig
from longseq.eval.tasks import EVAL_TASKS, PlannedSample, effective_tasks, record_key

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal
BOOTSTRAP_ROUNDS = 2000


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n`` (both bounds in [0, 1]).

    ``(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with ``p = successes / n``; (0, 1) when n = 0.
    """
    if n <= 0:
        return 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


def bootstrap_perplexity(records: list[dict[str, Any]], rounds: int = BOOTSTRAP_ROUNDS,
                         seed: int = 0) -> tuple[float, float]:
    """2.5% and 97.5% percentiles of ``exp(sum nll / sum tokens)`` over windows resampled with replacement."""
    rng = random.Random(seed)
    stats = []
    for _ in range(rounds):
        pick = [records[rng.randrange(len(records))] for _ in records]
        stats.append(math.exp(sum(r["nll"] for r in pick) / sum(r["scored_tokens"] for r in pick)))
    stats.sort()
    return stats[int(0.025 * (rounds - 1))], stats[int(math.ceil(0.975 * (rounds - 1)))]


def _score_interval(row: dict[str, Any], records: list[dict[str, Any]]) -> tuple[float, float]:
    return wilson_interval(row["score"] * row["n"], row["n"])


def _perplexity_interval(row: dict[str, Any], records: list[dict[str, Any]]) -> tuple[float, float]:
    return bootstrap_perplexity(records)


INTERVALS: dict[str, Callable[[dict[str, Any], list[dict[str, Any]]], tuple[float, float]]] = {
    "score": _score_interval, "perplexity": _perplexity_interval}
"""How the 95% interval of a row is computed, by the row key its task shows."""


def summarize(cfg: EvalConfig, records: list[dict[str, Any]], planned: list[PlannedSample], fmt: str) -> dict[str, Any]:
    """Aggregate the samples of the planned grid into the summary dict: a row per cell with its mean
    ``score``, ``n``, mean ``prompt_tokens`` and 95% interval, completed by the task's own aggregate."""
    wanted = {s.key for s in planned}
    done = {record_key(r) for r in records}
    by_cell: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in records:
        if record_key(r) in wanted:
            by_cell.setdefault((r["task"], r["method"], int(r["length"])), []).append(r)
    results = []
    for method in dict.fromkeys(s.method for s in planned):
        for length in sorted({s.length for s in planned if s.method == method}):
            for task in cfg.tasks:
                recs = by_cell.get((task, method, length), [])
                if not recs:
                    continue
                row: dict[str, Any] = {"task": task, "method": method, "length": length,
                                       "score": sum(r["score"] for r in recs) / len(recs), "n": len(recs),
                                       "prompt_tokens": round(sum(r["prompt_tokens"] for r in recs) / len(recs))}
                row.update(EVAL_TASKS[task].aggregate(recs))
                interval = INTERVALS.get(EVAL_TASKS[task].shown)
                row["ci_low"], row["ci_high"] = interval(row, recs) if interval else (None, None)
                results.append(row)
    eff_tasks = effective_tasks(cfg.tasks)
    return {"model": cfg.model, "threshold": cfg.threshold, "results": results,
            "effective_length": effective_length(results, eff_tasks, cfg.threshold),
            "effective_length_by_task": effective_length_by_task(results, eff_tasks, cfg.threshold),
            "tasks": cfg.tasks, "prompt_format": fmt, "backend": cfg.backend, "seed": cfg.seed,
            "samples": cfg.samples, "complete": wanted <= done}


def effective_length(results: Iterable[dict[str, Any]], tasks: list[str], threshold: float) -> dict[str, int]:
    """Per method: the largest tested length L with mean score over ``tasks`` >= threshold at L and at
    every shorter tested length; 0 when the shortest length already fails. The mean is over the tasks the
    method ran (a task limited to other methods' lengths does not count); a length where one of them has no
    result (partial run, or a task limited to shorter lengths) ends the scan."""
    scores: dict[str, dict[int, dict[str, float]]] = {}
    for r in results:
        if r["task"] in tasks:
            scores.setdefault(r["method"], {}).setdefault(int(r["length"]), {})[r["task"]] = float(r["score"])
    eff: dict[str, int] = {}
    for method, per_len in scores.items():
        ran = {t for cell in per_len.values() for t in cell}
        best = 0
        for length in sorted(per_len):
            cell = per_len[length]
            if ran - set(cell):
                break
            if sum(cell.values()) / len(cell) < threshold:
                break
            best = length
        eff[method] = best
    return eff


def effective_length_by_task(results: list[dict[str, Any]], tasks: list[str],
                             threshold: float) -> dict[str, dict[str, int]]:
    """``{method: {task: effective length of that task alone}}`` over the lengths where the task ran."""
    out: dict[str, dict[str, int]] = {}
    for task in tasks:
        for method, eff in effective_length([r for r in results if r["task"] == task], [task], threshold).items():
            out.setdefault(method, {})[task] = eff
    return out
