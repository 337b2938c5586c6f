"""The tune-rope report: the found factors against the menu curves, and perplexity / passkey at 1x..target.

The comparison runs two ordinary ``longseq eval`` runs (:func:`longseq.eval.run.run_eval`, resumable):
the base model with plain RoPE at the native length and PI, NTK, YaRN, Llama-3 at 1x, 2x, ... target, and
the written ``DIR/model`` with ``--methods none`` at the same lengths. Perplexity is measured on
``--heldout`` when given (text the search never saw), else on the calibration text.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from longseq.core.fsutil import atomic_write_text
from longseq.core.plots import length_axis, pyplot, save
from longseq.core.tables import fmt_len, md_table
from longseq.eval.plan import EvalConfig
from longseq.eval.run import run_eval
from longseq.tune.factors import SEED_METHODS

TUNED = "tuned"


def report_lengths(native: int, target: int) -> list[int]:
    """native, 2 native, 4 native, ... and the target."""
    lengths = [native]
    while lengths[-1] * 2 < target:
        lengths.append(lengths[-1] * 2)
    return lengths + [target]


def compare_methods(cfg: Any, native: int, target: int, progress: bool = True) -> dict[str, dict[int, dict[str, float]]]:
    """Evaluate the menu methods and the tuned checkpoint; returns method -> length -> {ppl, passkey}."""
    lengths = report_lengths(native, target)
    tasks = ["ppl", "passkey"]
    out = Path(cfg.out) / "compare"
    common = dict(tasks=tasks, samples=cfg.report_samples, seed=cfg.seed, dtype=cfg.dtype, ppl_text=cfg.heldout or cfg.calib,
                  chunk_size=max(target, 16384))
    menu = run_eval(EvalConfig(model=cfg.model, out=str(out / "menu"),
                               cells=[("none", native)] + [(m, L) for m in SEED_METHODS for L in lengths], **common),
                    progress=progress, quiet=True)
    tuned = run_eval(EvalConfig(model=str(Path(cfg.out) / "model"), out=str(out / TUNED),
                                cells=[("none", L) for L in lengths], **common), progress=progress, quiet=True)
    table: dict[str, dict[int, dict[str, float]]] = {}
    for summary, rename in ((menu, {}), (tuned, {"none": TUNED})):
        for row in summary["results"]:
            cell = table.setdefault(rename.get(row["method"], row["method"]), {}).setdefault(int(row["length"]), {})
            cell[row["task"]] = row["perplexity"] if row["task"] == "ppl" else row["score"]
    return table


def factors_plot(result: dict[str, Any], out: Path) -> str:
    """factors.png: lambda_i against the pair index for the found rescaling and each seed method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rec in result["seeds"].items():
        ax.plot(rec["long_factor"], label=f"{name} (ppl {rec['ppl']:.2f})", linestyle="--")
    ax.plot(result["best"]["long_factor"], label=f"found (ppl {result['best']['ppl']:.2f})", color="black", lw=2)
    ax.set_xlabel("rotary frequency pair i (high -> low frequency)")
    ax.set_ylabel("rescale factor lambda_i")
    ax.set_title(f"per-dimension factors at {fmt_len(result['target'])} (calibration perplexity)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, out / "factors.png")


def compare_plot(table: dict[str, dict[int, dict[str, float]]], out: Path) -> str:
    """compare.png: perplexity and passkey against length, one line per method."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    lengths = sorted({L for cells in table.values() for L in cells})
    for method, cells in table.items():
        xs = sorted(cells)
        style = dict(color="black", lw=2) if method == TUNED else dict(linestyle="--")
        for ax, task in zip(axes, ("ppl", "passkey")):
            ax.plot(xs, [cells[L].get(task, math.nan) for L in xs], marker="o", label=method, **style)
    for ax, label in zip(axes, ("perplexity", "passkey accuracy")):
        length_axis(ax, lengths)
        ax.set_ylabel(label)
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return save(fig, out / "compare.png")


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def write_report(out: Path, result: dict[str, Any], table: dict[str, dict[int, dict[str, float]]] | None,
                 cfg: Any) -> None:
    """Write DIR/report.md with the plots."""
    out = Path(out)
    best = result["best"]
    lines = [f"# tune-rope: {result['model']} at {fmt_len(result['target'])}", "",
             f"Searched per-dimension RoPE rescale factors ({result['rotary_dim'] // 2} frequency pairs) for "
             f"{fmt_len(result['target'])} (native {fmt_len(result['native'])}, scale "
             f"{result['target'] / result['native']:g}), objective `{result['objective']}`: "
             f"{result['candidates']} candidates, {result['passes']} of {result['budget']} forward passes, "
             f"{result['generations']} generations. The best came from `{best['origin']}`.", "",
             "## Search (calibration windows)", "",
             md_table(["method", "perplexity", "loss", "attention factor"],
                      [[n, _fmt(s["ppl"]), _fmt(s["loss"], 4), _fmt(s["attention_factor"])] for n, s in
                       result["seeds"].items()] + [["**found**", _fmt(best["ppl"]), _fmt(best["loss"], 4),
                                                    _fmt(best["attention_factor"])]]), "",
             f"![factors]({factors_plot(result, out)})", ""]
    if table:
        text = "held-out text " + f"`{cfg.heldout}`" if cfg.heldout else ("calibration text (not held out) " +
                                                                           f"`{cfg.calib or 'shipped haystack'}`")
        lengths = sorted({L for cells in table.values() for L in cells})
        rows = [[m] + [f"{_fmt(cells.get(L, {}).get('ppl'), 2)} / {_fmt(cells.get(L, {}).get('passkey'), 2)}"
                       for L in lengths] for m, cells in table.items()]
        lines += ["## Comparison at 1x..target", "",
                  f"Perplexity on {text} / passkey accuracy (samples per cell: {cfg.report_samples}; "
                  "`compare/menu` and `compare/tuned` are `longseq eval` runs). `tuned` uses the found factors "
                  "at every length (longrope short and long factors alike).", "",
                  md_table(["method"] + [fmt_len(L) for L in lengths], rows), "",
                  f"![comparison]({compare_plot(table, out)})", ""]
    lines += ["## Use", "", f"`DIR/model` is a plain transformers checkpoint (rope type `longrope`): "
              f"`longseq eval {out / 'model'} --methods none --tasks passkey --lengths {fmt_len(result['target'])}`.", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
