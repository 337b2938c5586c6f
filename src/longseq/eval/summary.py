"""summary.json: one result row per (task, method, length) cell, and the effective context length.

Effective context length (RULER, Hsieh et al. 2024): the largest tested length L such that the mean
score over the chosen retrieval tasks is >= threshold at L and at every shorter tested length (0 when
the shortest fails). RULER's threshold 0.856 is Llama-2-7B's 4k score on its 13 tasks; for other task
subsets it is a convention, not a transferable number. Tasks that opt out (``ppl``) are reported but
never enter it.
"""

from __future__ import annotations

from typing import Any, Iterable

from longseq.eval.plan import EvalConfig
from longseq.eval.tasks import EVAL_TASKS, PlannedSample, effective_tasks, record_key


def summarize(cfg: EvalConfig, records: list[dict[str, Any]], planned: list[PlannedSample], fmt: str) -> dict[str, Any]:
    """Aggregate the samples of the planned grid into the summary dict: a row per cell with its mean
    ``score``, ``n`` and mean ``prompt_tokens``, completed by the task's own aggregate."""
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
                results.append(row)
    return {"model": cfg.model, "threshold": cfg.threshold, "results": results,
            "effective_length": effective_length(results, effective_tasks(cfg.tasks), cfg.threshold),
            "tasks": cfg.tasks, "prompt_format": fmt, "backend": cfg.backend, "seed": cfg.seed,
            "samples": cfg.samples, "complete": wanted <= done}


def effective_length(results: Iterable[dict[str, Any]], tasks: list[str], threshold: float) -> dict[str, int]:
    """Per method: the largest tested length L with mean score over ``tasks`` >= threshold at L and at
    every shorter tested length; 0 when the shortest length already fails. A length where a task has no
    result yet (partial run) ends the scan."""
    scores: dict[str, dict[int, dict[str, float]]] = {}
    for r in results:
        if r["task"] in tasks:
            scores.setdefault(r["method"], {}).setdefault(int(r["length"]), {})[r["task"]] = float(r["score"])
    eff: dict[str, int] = {}
    if not tasks:
        return eff
    for method, per_len in scores.items():
        best = 0
        for length in sorted(per_len):
            cell = per_len[length]
            if set(tasks) - set(cell):
                break
            if sum(cell[t] for t in tasks) / len(tasks) < threshold:
                break
            best = length
        eff[method] = best
    return eff
