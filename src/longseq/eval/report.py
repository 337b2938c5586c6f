"""The human-readable outputs of a ``longseq eval`` summary: terminal tables, report.md and the plots.

Each task decides how its rows read (:class:`longseq.eval.tasks.EvalTask`: ``label``, ``shown``,
``style_panel``, ``report_section``, ``plots``); this module lays them out. Every cell shows its value with
its 95% interval, every task its own effective length; the headline reads them per task
("passkey: none 8k, yarn >= 16k"), and report.md lists the cells whose interval contains the threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longseq.core.plots import length_axis, pyplot, save
from longseq.core.tables import fmt_len, md_table, text_table
from longseq.eval.tasks import EVAL_TASKS, EvalTask, effective_tasks
from longseq.eval.tasks.hook import score_panel


def mean_scores(results: list[dict[str, Any]], method: str, tasks: list[str]) -> dict[int, float]:
    """Per length: ``method``'s mean score over the ``tasks`` it ran, at the lengths where each has a result
    (as the summary's ``effective_length``)."""
    by_len: dict[int, list[float]] = {}
    for r in results:
        if r["method"] == method and r["task"] in tasks:
            by_len.setdefault(r["length"], []).append(r["score"])
    ran = {r["task"] for r in results if r["method"] == method and r["task"] in tasks}
    return {L: sum(v) / len(v) for L, v in by_len.items() if len(v) == len(ran)}


def _num(x: float) -> str:
    """Two decimals for scores, whole numbers from 100 on (perplexities)."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.2f}"


def _value(row: dict[str, Any], task: EvalTask) -> str:
    """A cell: its shown value and 95% interval, ``1.00 [0.34, 1.00]``."""
    value = _num(row[task.shown])
    if row.get("ci_low") is not None:
        value += f" [{_num(row['ci_low'])}, {_num(row['ci_high'])}]"
    return value


def effective_label(eff: int, lengths: list[int]) -> str:
    """An effective length in words: ``>= 16k`` when even the longest tested length passes, ``< 1k`` when the
    shortest fails, else the length itself."""
    if lengths and eff >= max(lengths):
        return f">= {fmt_len(eff)}"
    if eff == 0:
        return f"< {fmt_len(min(lengths))}" if lengths else "0"
    return fmt_len(eff)


def _tested(summary: dict[str, Any], method: str, task: str) -> list[int]:
    return sorted({r["length"] for r in summary["results"] if r["method"] == method and r["task"] == task})


def headline(summary: dict[str, Any]) -> str:
    """Per task, each method's effective length: ``passkey: none 8k, yarn >= 16k; lines: none < 1k``."""
    by_task = summary.get("effective_length_by_task", {})
    parts = []
    for task in effective_tasks(summary["tasks"]):
        mine = [f"{m} {effective_label(per[task], _tested(summary, m, task))}" for m, per in by_task.items()
                if task in per]
        if mine:
            parts.append(f"{EVAL_TASKS[task].label}: " + ", ".join(mine))
    return "; ".join(parts)


def straddling(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the effective-length tasks whose 95% interval contains the threshold (more samples could flip
    whether they count)."""
    thr = summary["threshold"]
    eff = set(effective_tasks(summary["tasks"]))
    return [r for r in summary["results"]
            if r["task"] in eff and r.get("ci_low") is not None and r["ci_low"] < thr <= r["ci_high"]]


def _tables(summary: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per method: tasks x lengths with 95% intervals and each task's effective length,
    plus the mean row and the effective length of the mean."""
    out = []
    eff_tasks = effective_tasks(summary["tasks"])
    by_task = summary.get("effective_length_by_task", {})
    for method in dict.fromkeys(r["method"] for r in summary["results"]):
        rows_m = [r for r in summary["results"] if r["method"] == method]
        lengths = sorted({r["length"] for r in rows_m})
        rows = []
        for name in summary["tasks"]:
            cells = {r["length"]: r for r in rows_m if r["task"] == name}
            if cells:
                task = EVAL_TASKS[name]
                eff = by_task.get(method, {}).get(name)
                rows.append([task.label] + [_value(cells[L], task) if L in cells else "-" for L in lengths]
                            + [effective_label(eff, sorted(cells)) if eff is not None else "-"])
        if eff_tasks:
            means = mean_scores(rows_m, method, eff_tasks)
            rows.append(["mean"] + [f"{means[L]:.2f}" if L in means else "-" for L in lengths] + [""])
        eff = summary["effective_length"].get(method)
        title = f"method {method}" + (f": effective length {eff} (mean over tasks; threshold {summary['threshold']})"
                                      if eff is not None else "")
        out.append((title, ["task"] + [fmt_len(L) for L in lengths] + ["effective"], rows))
    return out


def format_table(summary: dict[str, Any]) -> str:
    """Plain-text tables for the terminal, then the per-task effective lengths."""
    lines = []
    for title, header, rows in _tables(summary):
        lines += [title, text_table(header, rows), ""]
    if headline(summary):
        lines += [f"effective length per task (threshold {summary['threshold']}): {headline(summary)}"]
    if straddling(summary):
        lines += [f"{len(straddling(summary))} cells have a 95% interval containing the threshold (see report.md)"]
    return "\n".join(lines).rstrip() + "\n"


def _task_rows(summary: dict[str, Any]) -> list[tuple[EvalTask, list[dict[str, Any]]]]:
    """Each task of the summary that has results, with its result rows."""
    found = []
    for name in dict.fromkeys(summary["tasks"]):
        rows = [r for r in summary["results"] if r["task"] == name]
        if rows:
            found.append((EVAL_TASKS[name], rows))
    return found


def report_markdown(summary: dict[str, Any], plots: list[str]) -> str:
    """report.md: settings, one task x length table per method, the tasks' own sections, effective lengths
    and the plots."""
    notes = "; ".join(["scores are fractions in [0, 1]"] + [t.report_note for t in EVAL_TASKS.values() if t.report_note])
    md = [f"# longseq eval: {summary['model']}", ""]
    if headline(summary):
        md += [f"**Effective length per task** (threshold {summary['threshold']}): {headline(summary)}.", ""]
    md += [f"Prompt format `{summary['prompt_format']}`, backend `{summary['backend']}`, seed {summary['seed']}, "
           f"{summary['samples']} samples per cell; {notes}; brackets: 95% interval (Wilson for scores, bootstrap "
           f"over windows for perplexity). Effective length = largest tested length whose score (mean over the "
           f"tasks for the mean row) is >= {summary['threshold']} there and at every shorter length; `>= L`: even "
           "the longest tested length passes, `< L`: the shortest already fails.", ""]
    if not summary.get("complete", True):
        md += ["**Partial run**: some planned samples are missing; run the same command again to finish.", ""]
    for title, header, rows in _tables(summary):
        md += [f"## {title}", "", md_table(header, rows), ""]
    for task, rows in _task_rows(summary):
        md += task.report_section(rows)
    md += [md_table(["method", "effective length (mean over tasks)"], list(summary["effective_length"].items())), ""]
    md += _straddle_section(summary)
    md += [f"![{p}]({p})" for p in plots]
    return "\n".join(md) + "\n"


def _straddle_section(summary: dict[str, Any]) -> list[str]:
    """report.md's list of the cells too uncertain to say on which side of the threshold they are."""
    rows = straddling(summary)
    if not rows:
        return []
    cells = ", ".join(f"{EVAL_TASKS[r['task']].label} {r['method']} {fmt_len(r['length'])} ({r['score']:.2f} "
                      f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}], n={r['n']})" for r in rows)
    return ["## Uncertain cells", "",
            f"The 95% interval of these cells contains the threshold {summary['threshold']}, so more samples "
            f"could change whether they count towards the effective length: {cells}.", ""]


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def write_plots(summary: dict[str, Any], out: Path) -> list[str]:
    """score_vs_length.png (one panel per task + mean, one line per method) and the tasks' own figures."""
    results = summary["results"]
    if not results:
        return []
    plt = pyplot()
    methods = list(dict.fromkeys(r["method"] for r in results))
    eff_tasks = effective_tasks(summary["tasks"])
    panels: list[EvalTask | None] = [EVAL_TASKS[t] for t in summary["tasks"] if any(r["task"] == t for r in results)]
    if len(eff_tasks) > 1:
        panels.append(None)  # the mean over the effective-length tasks
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, task in zip(axes[0], panels):
        for k, method in enumerate(methods):
            shift = 2 ** (0.05 * (k - (len(methods) - 1) / 2))  # side by side on the log2 axis, bars visible
            if task is None:
                pts = [(L, v, v, v) for L, v in sorted(mean_scores(results, method, eff_tasks).items())]
            else:
                pts = sorted((r["length"], r[task.shown], _or(r.get("ci_low"), r[task.shown]),
                              _or(r.get("ci_high"), r[task.shown])) for r in results
                             if r["method"] == method and r["task"] == task.name)
            if pts:  # 95% intervals as error bars (none on the mean panel)
                ax.errorbar([p[0] * shift for p in pts], [p[1] for p in pts], marker="o", label=method, capsize=3,
                            yerr=[[max(p[1] - p[2], 0) for p in pts], [max(p[3] - p[1], 0) for p in pts]])
        length_axis(ax, sorted({r["length"] for r in results}))
        ax.set_title(task.name if task else "mean")
        if task:
            task.style_panel(ax, summary["threshold"])
        else:
            score_panel(ax, summary["threshold"])
    axes[0][0].legend()
    fig.tight_layout()
    written = [save(fig, out / "score_vs_length.png")]
    for task, rows in _task_rows(summary):
        written += task.plots(rows, out)
    return written
