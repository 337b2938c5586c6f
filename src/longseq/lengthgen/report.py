"""The benchmark's results: the per-(task, PE) summary, the markdown report and the accuracy-vs-length plot.

Two metrics: ``accuracy`` is the reference's per-token accuracy (tokens up to the end token), the one behind
the tables of Ruoss et al. (ACL 2023); ``sequence_accuracy`` counts a sequence only when all its tokens are
right. A cell's ``accuracy_mean`` is the mean over seeds at the learning rate whose mean per-token accuracy
is best, and its ``accuracy_best`` the best single run (the number the paper reports); the
``sequence_accuracy_*`` fields are the same runs' per-sequence accuracy. Written by :func:`write_outputs` into
the run folder as ``summary.json``, ``report.md`` and ``accuracy_vs_length.png`` (per-token).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from longseq.core.fsutil import atomic_write_text
from longseq.core.plots import pyplot, save
from longseq.core.tables import md_table
from longseq.lengthgen.chomsky import CHOMSKY_TASKS
from longseq.lengthgen.protocol import Protocol, split_pe


def _best_lr_group(runs: list[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """The learning rate whose runs have the best mean accuracy, and those runs."""
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for r in runs:
        by_lr.setdefault(r["lr"], []).append(r)
    return max(by_lr.items(), key=lambda kv: np.mean([r["accuracy"] for r in kv[1]]))


def summarize(records: list[dict[str, Any]], p: Protocol) -> dict[str, Any]:
    """``{"results": [{"task","pe","accuracy_mean","accuracy_best","sequence_accuracy_mean", ...}]}``.

    ``accuracy_mean``: the mean per-token accuracy over seeds at the learning rate whose mean is best;
    ``accuracy_best``: the best single run (the paper's number); ``sequence_accuracy_mean`` /
    ``sequence_accuracy_best``: the per-sequence accuracy of the same group / the best run by it.
    Accuracies are fractions in [0, 1]. Records of other protocols (fingerprints), learning rates or seeds
    in the same ``runs.jsonl`` are ignored, and a run key met twice counts once.
    """
    unique: dict[str, dict[str, Any]] = {}
    for r in records:
        unique.setdefault(r["key"], r)  # the first copy of a key
    records = list(unique.values())
    fp = p.fingerprint()
    results = []
    for task in p.tasks:
        for pe in p.pes:
            runs = [r for r in records if r["task"] == task and r["pe"] == pe and r["fingerprint"] == fp
                    and r["lr"] in p.lrs and r["seed"] < p.seeds]
            if not runs:
                continue
            lr, group = _best_lr_group(runs)
            results.append({
                "task": task, "pe": pe,
                "accuracy_mean": float(np.mean([r["accuracy"] for r in group])),
                "accuracy_best": float(max(r["accuracy"] for r in runs)),
                "sequence_accuracy_mean": float(np.mean([r["sequence_accuracy"] for r in group])),
                "sequence_accuracy_best": float(max(r["sequence_accuracy"] for r in runs)),
                "seeds": len(group), "lr": lr,
                "train_accuracy": float(np.mean([r["train_accuracy"] for r in group])),
                "per_length": _mean_per_length(group, "per_length", p),
                "per_length_sequence": _mean_per_length(group, "per_length_sequence", p),
            })
    return {"protocol": {**asdict(p), "fingerprint": fp}, "results": results}


def _mean_per_length(group: list[dict[str, Any]], field: str, p: Protocol) -> dict[str, float]:
    """``{"n": mean over the group's runs of record[field]["n"]}`` for every test length."""
    return {str(n): float(np.mean([r[field][str(n)] for r in group])) for n in p.test_lengths}


def _span(lengths: list[int]) -> str:
    """``[1..40]`` -> ``1-40``; a range with gaps also says how many lengths it holds."""
    if lengths == list(range(lengths[0], lengths[-1] + 1)):
        return f"{lengths[0]}-{lengths[-1]}"
    return f"{lengths[0]}-{lengths[-1]} ({len(lengths)} lengths)"


def _gain_table(cells: dict[tuple[str, str], dict[str, Any]], tasks: list[str], pes: list[str],
                metric: str = "accuracy") -> list[str]:
    """Lines of the randomized-minus-plain table of ``metric`` (percentage points), or none without a pair."""
    pairs = [(b, f"randomized_{b}") for b in (split_pe(pe)[0] for pe in pes if not pe.startswith("randomized_"))
             if f"randomized_{b}" in pes]
    if not pairs:
        return []
    gains: dict[str, list[float]] = {b: [] for b, _ in pairs}
    rows = []
    for t in tasks:
        row = [t]
        for b, r in pairs:
            if (t, b) in cells and (t, r) in cells:
                g = 100 * (cells[t, r][f"{metric}_mean"] - cells[t, b][f"{metric}_mean"])
                gains[b].append(g)
                row.append(f"{g:+.1f}")
            else:
                row.append("")
        rows.append(row)
    rows.append(["**average**"] + [f"**{np.mean(gains[b]):+.1f}**" if gains[b] else "" for b, _ in pairs])
    return ["", f"Randomized gain in {_METRICS[metric]} (percentage points, mean over seeds; randomized minus "
                "plain):", "", md_table(["task"] + [f"{r} - {b}" for b, r in pairs], rows)]


_METRICS = {"accuracy": "per-token accuracy", "sequence_accuracy": "per-sequence accuracy"}


def _accuracy_table(cells: dict[tuple[str, str], dict[str, Any]], tasks: list[str], pes: list[str],
                    metric: str) -> str:
    """Task x PE markdown table of ``metric`` in %: mean over seeds (best run)."""
    rows = [[t, CHOMSKY_TASKS[t].level]
            + [f"{100 * cells[t, pe][f'{metric}_mean']:.1f} ({100 * cells[t, pe][f'{metric}_best']:.1f})"
               if (t, pe) in cells else "" for pe in pes] for t in tasks]
    return md_table(["task", "level", *pes], rows)


def render_report(summary: dict[str, Any]) -> str:
    """Markdown: per metric, a task x PE table (mean over seeds, best in brackets) and each randomized
    variant's gain."""
    p = summary["protocol"]
    cells = {(r["task"], r["pe"]): r for r in summary["results"]}
    tasks = [t for t in p["tasks"] if any(k[0] == t for k in cells)]
    pes = [pe for pe in p["pes"] if any(k[1] == pe for k in cells)]
    lines = [
        "# Length generalization (Ruoss et al. 2023 protocol)",
        "",
        f"Train lengths {_span(p['train_lengths'])}, test lengths {_span(p['test_lengths'])}, "
        f"{p['steps']} steps x batch {p['batch_size']}, lr {', '.join(f'{x:g}' for x in p['lrs'])}, "
        f"{p['eval_samples']} test sequences per length, L = {p['max_len']}, {p.get('loss', 'full')} loss.",
        "",
        "Per-token accuracy (%, the reference's metric) averaged over the test lengths: mean over seeds "
        "(best seed).",
        "",
        _accuracy_table(cells, tasks, pes, "accuracy"),
        *_gain_table(cells, tasks, pes, "accuracy"),
        "",
        "Per-sequence accuracy (%, every output token right) averaged over the test lengths: mean over seeds "
        "(best seed).",
        "",
        _accuracy_table(cells, tasks, pes, "sequence_accuracy"),
        *_gain_table(cells, tasks, pes, "sequence_accuracy"),
    ]
    return "\n".join(lines) + "\n"


def plot_accuracy(summary: dict[str, Any], path: Path) -> None:
    """One panel per task: accuracy (mean over seeds) vs test length, one line per PE (randomized solid)."""
    tasks = list(dict.fromkeys(r["task"] for r in summary["results"]))
    if not tasks:
        return
    plt = pyplot()
    cols = min(3, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for r in (r for r in summary["results"] if r["task"] == task):
            n = sorted(int(k) for k in r["per_length"])
            style = "-" if r["pe"].startswith("randomized_") else "--"
            ax.plot(n, [r["per_length"][str(k)] for k in n], style, label=r["pe"])
        ax.set_title(task)
        ax.set_xlabel("test length")
        ax.set_ylabel("per-token accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")  # rewritten after every run: never leave a torn image
    save(fig, tmp, dpi=110)
    tmp.replace(path)


def write_outputs(out: Path, records: list[dict[str, Any]], p: Protocol) -> dict[str, Any]:
    """Rewrite ``summary.json``, ``report.md`` and ``accuracy_vs_length.png`` in ``out``; returns the summary."""
    summary = summarize(records, p)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out / "report.md", render_report(summary))
    plot_accuracy(summary, out / "accuracy_vs_length.png")
    return summary
