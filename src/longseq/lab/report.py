"""Stage 5 of the lab: ``summary.json`` (measured numbers + judged findings), ``report.md`` and the plot."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from longseq.core.plots import length_axis, pyplot, save
from longseq.core.tables import md_table
from longseq.lab.findings import FINDINGS, fmt, ppl_at
from longseq.lab.presets import FINETUNES, FT_FACTOR, ZERO_SHOT, LabSize
from longseq.lab.stages import retrieval


def _str_lengths(curve: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
    """JSON keys: ``{method: {length: v}}`` with the lengths as strings."""
    return {m: {str(n): v for n, v in t.items()} for m, t in curve.items()}


def summarize(size_name: str, size: LabSize, seed: int, lengths: list[int], costs: dict[str, Any],
              evals: dict[str, dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Collect the measured numbers and judge every finding from them."""
    s: dict[str, Any] = {
        "size": size_name, "settings": asdict(size), "seed": seed, "native": size.native, "lengths": lengths,
        "costs": costs, "seconds": round(seconds, 1),
        "evals": {name: {"perplexity": _str_lengths(e["perplexity"]), "retrieval": _str_lengths(retrieval(e)),
                         "effective_length": e.get("effective_length")}
                  for name, e in evals.items()},
    }
    s["findings"] = []
    for f in FINDINGS:
        ok, why, table, notes = f.judge(s)
        verdict = "inconclusive" if ok is None else ("reproduced" if ok else "not reproduced")
        s["findings"].append({"key": f.key, "title": f.title, "source": f.source, "claim": f.claim,
                              "verdict": verdict, "evidence": why, "table": table, "notes": notes})
    return s


def _retrieval_note(s: dict[str, Any]) -> list[str]:
    """One paragraph when no model retrieved anything: the verdicts then rest on perplexity alone."""
    scores = [v for e in s["evals"].values() for t in e.get("retrieval", {}).values() for v in t.values()]
    if scores and max(scores) == 0:
        return [f"No model retrieved a passkey or a line at any length ({len(scores)} retrieval cells, all 0): "
                "at this size retrieval is not learned, so the verdicts rest on perplexity.", ""]
    return []


def _finding_section(f: dict[str, Any]) -> list[str]:
    """Claim, measured table, evidence, notes and verdict of one judged finding."""
    header, *rows = f["table"]
    out = ["", f"## {f['title']}", "", f"*Claim* ({f['source']}): {f['claim']}", "", md_table(header, rows), "",
           f"*Measured*: {f['evidence']}."]
    for note in f.get("notes", []):
        out += ["", f"*Note*: {note}."]
    return out + ["", f"*Verdict*: **{f['verdict']}**"]


def _cost_table(costs: dict[str, Any]) -> str:
    return md_table(["run", "train s", "wall s", "peak RSS MB", "tokens", "final loss"],
                    [[name, fmt(c.get("train_seconds"), 1), fmt(c.get("seconds"), 1), fmt(c.get("peak_rss_mb"), 0),
                      str(c.get("tokens")), fmt(c.get("final_loss"), 3)] for name, c in costs.items()])


def report_markdown(s: dict[str, Any], plots: list[str]) -> str:
    """The lab report: setup, then one section per finding with claim, measured table and verdict."""
    st = s["settings"]
    out = [
        "# longseq lab: context-extension findings at small scale",
        "",
        f"Model: Llama, {st['layers']} layers, width {st['hidden']}, {st['heads']} heads ({st['kv_heads']} KV), "
        f"SmolLM2 tokenizer; pre-trained from scratch at L = {s['native']} tokens for {st['pretrain_steps']} steps "
        f"x {st['pretrain_batch']} sequences. Fine-tuning at {FT_FACTOR}L = {FT_FACTOR * s['native']} tokens, "
        f"{st['finetune_steps']} steps x {st['finetune_batch']} sequences for every arm (same token budget). "
        f"Size preset `{s['size']}`, seed {s['seed']}, total {s['seconds'] / 60:.1f} min.",
        "",
        "Perplexity is measured on held-out shipped prose (never trained on); retrieval is the mean of passkey "
        "and LongEval-lines scores. Verdicts are computed by `longseq.lab.findings.FINDINGS` from the numbers below.",
        "",
        *_retrieval_note(s),
        "| finding | source | verdict |",
        "|---|---|---|",
    ]
    out += [f"| {f['title']} | {f['source']} | **{f['verdict']}** |" for f in s["findings"]]
    for f in s["findings"]:
        out += _finding_section(f)
    out += ["", "## Training cost", "", _cost_table(s["costs"])]
    if plots:
        out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(out) + "\n"


def write_plots(s: dict[str, Any], out: Path) -> list[str]:
    """Perplexity vs length: zero-shot methods at 8x, fine-tuned arms, plain vs randomized pre-training."""
    plt = pyplot()
    panels = [
        ("zero-shot (target 8L)", [(m, "zero-shot-8x", m) for m in ZERO_SHOT]),
        (f"fine-tuned at {FT_FACTOR}L", [(ft.name, ft.name, "none") for ft in FINETUNES]),
        ("pre-training positions", [("plain", "zero-shot-8x", "none"), ("randomized", "randomized", "none")]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        for label, run, method in series:
            pts = [(n, ppl_at(s, run, method, n)) for n in s["lengths"]]
            pts = [(n, v) for n, v in pts if v is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.axvline(s["native"], color="grey", linestyle=":", linewidth=1)
        length_axis(ax, s["lengths"], "context length (tokens)")
        ax.set(title=title, ylabel="perplexity", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return [save(fig, out / "perplexity.png", dpi=110)]
