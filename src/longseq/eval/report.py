"""The human-readable outputs of a ``longseq eval`` summary: terminal tables, report.md and the plots.

Each task decides how its rows read (:class:`longseq.eval.tasks.EvalTask`: ``label``, ``shown``,
``style_panel``, ``report_section``, ``plots``); this module lays them out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longseq.core.plots import length_axis, pyplot, save
from longseq.core.tables import fmt_len, md_table, text_table
from longseq.eval.tasks import EVAL_TASKS, EvalTask, effective_tasks
from longseq.eval.tasks.hook import score_panel


def mean_scores(results: list[dict[str, Any]], method: str, tasks: list[str]) -> dict[int, float]:
    """Per length: ``method``'s mean score over ``tasks``, at the lengths where every task has a result."""
    by_len: dict[int, list[float]] = {}
    for r in results:
        if r["method"] == method and r["task"] in tasks:
            by_len.setdefault(r["length"], []).append(r["score"])
    return {L: sum(v) / len(v) for L, v in by_len.items() if len(v) == len(tasks)}


def _tables(summary: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per method: tasks x lengths, plus the mean row and effective length."""
    out = []
    eff_tasks = effective_tasks(summary["tasks"])
    for method in dict.fromkeys(r["method"] for r in summary["results"]):
        rows_m = [r for r in summary["results"] if r["method"] == method]
        lengths = sorted({r["length"] for r in rows_m})
        rows = []
        for name in summary["tasks"]:
            cells = {r["length"]: r for r in rows_m if r["task"] == name}
            if cells:
                task = EVAL_TASKS[name]
                rows.append([task.label] + [f"{cells[L][task.shown]:.2f}" if L in cells else "-" for L in lengths])
        if eff_tasks:
            means = mean_scores(rows_m, method, eff_tasks)
            rows.append(["mean"] + [f"{means[L]:.2f}" if L in means else "-" for L in lengths])
        eff = summary["effective_length"].get(method)
        title = f"method {method}" + (f": effective length {eff} (threshold {summary['threshold']})"
                                      if eff is not None else "")
        out.append((title, ["task"] + [fmt_len(L) for L in lengths], rows))
    return out


def format_table(summary: dict[str, Any]) -> str:
    """Plain-text tables for the terminal."""
    lines = []
    for title, header, rows in _tables(summary):
        lines += [title, text_table(header, rows), ""]
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
    md = [f"# longseq eval: {summary['model']}", "",
          f"Prompt format `{summary['prompt_format']}`, backend `{summary['backend']}`, seed {summary['seed']}, "
          f"{summary['samples']} samples per cell; {notes}. Effective length = largest tested length whose mean "
          f"retrieval score is >= {summary['threshold']} there and at every shorter length.", ""]
    if not summary.get("complete", True):
        md += ["**Partial run**: some planned samples are missing; run the same command again to finish.", ""]
    for title, header, rows in _tables(summary):
        md += [f"## {title}", "", md_table(header, rows), ""]
    for task, rows in _task_rows(summary):
        md += task.report_section(rows)
    md += [md_table(["method", "effective length"], list(summary["effective_length"].items())), ""]
    md += [f"![{p}]({p})" for p in plots]
    return "\n".join(md) + "\n"


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
        for method in methods:
            if task is None:
                pts = sorted(mean_scores(results, method, eff_tasks).items())
            else:
                pts = sorted((r["length"], r[task.shown]) for r in results
                             if r["method"] == method and r["task"] == task.name)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
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
