"""Stage 5 of the lab: ``summary.json`` (measured numbers + judged findings), ``report.md`` and the plot."""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Callable

from longseq.core.plots import length_axis, pyplot, save
from longseq.core.tables import md_table
from longseq.lab.findings import FINDINGS, arm, fmt, ppl_at, value
from longseq.lab.presets import FINETUNES, FT_FACTOR, ZERO_SHOT, LabSize
from longseq.lab.probe import describe, describe_digits
from longseq.lab.stages import task_scores


def _str_lengths(curve: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
    """JSON keys: ``{method: {length: v}}`` with the lengths as strings."""
    return {m: {str(n): v for n, v in t.items()} for m, t in curve.items()}


def _eval_entry(e: dict[str, Any]) -> dict[str, Any]:
    """One eval run in the summary: perplexity, passkey, lines and their mean (retrieval) per method and length."""
    return {"perplexity": _str_lengths(e["perplexity"]),
            **{name: _str_lengths(task_scores(e, tasks)) for name, tasks in
               (("passkey", ("passkey",)), ("lines", ("lines",)), ("retrieval", ("passkey", "lines")))},
            "effective_length": e.get("effective_length")}


def summarize(size_name: str, size: LabSize, seed: int, lengths: list[int], costs: dict[str, Any],
              evals: dict[str, dict[str, Any]], lengthgen: dict[str, Any], model: dict[str, Any],
              lines_chance: float | None, seconds: float) -> dict[str, Any]:
    """Collect the measured numbers and judge every finding from them."""
    s: dict[str, Any] = {
        "size": size_name, "settings": asdict(size), "seed": seed, "seeds": list(range(seed, seed + size.seeds)),
        "native": size.native, "lengths": lengths, "model": model, "lines_chance": lines_chance,
        "costs": costs, "seconds": round(seconds, 1),
        "evals": {name: _eval_entry(e) for name, e in evals.items()}, "lengthgen": lengthgen,
    }
    s["findings"] = []
    for f in FINDINGS:
        ok, why, table, notes = f.judge(s)
        verdict = "inconclusive" if ok is None else ("reproduced" if ok else "not reproduced")
        s["findings"].append({"key": f.key, "title": f.title, "source": f.source, "claim": f.claim,
                              "verdict": verdict, "evidence": why, "table": table, "notes": notes})
    return s


def _base_model_lines(s: dict[str, Any]) -> list[str]:
    """What the pre-trained model retrieves at L, before any extension, and the embedding's share."""
    L, m = s["native"], s["model"]
    pk, ln = (value(s, "zero-shot-8x", t, "none", L) for t in ("passkey", "lines"))
    chance = s.get("lines_chance")
    out = [f"Pre-trained model at L = {L}, before any extension: passkey {fmt(pk)}, LongEval lines {fmt(ln)} "
           f"(chance, guessing one of the record's lines: {fmt(chance)}). Parameters {m['parameters']:,}, of which "
           f"the token embeddings (input and output) {m['embedding']:,} ({m['share']:.1%})."]
    if m.get("copy_test"):
        out[0] += f" The {describe(m['copy_test'])}."
    if m.get("digit_embeddings"):
        out[0] += f" In the pre-trained model {describe_digits(m['digit_embeddings'])}."
    scores = [v for e in s["evals"].values() for t in ("passkey", "lines")
              for curve in e.get(t, {}).values() for v in curve.values()]
    if scores and max(scores) == 0:
        out[0] += (f" No model retrieved a passkey or a line at any length ({len(scores)} cells, all 0), so every "
                   "retrieval comparison below is a tie and the verdicts rest on the other metrics.")
    return out + [""]

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


def _anneal(st: dict[str, Any]) -> str:
    """The fourth pre-training phase in words (none when it has no steps)."""
    steps = st.get("anneal_steps", 0)
    return f", then {steps} steps more at {st['anneal_lr']:g}" if steps else ""


def report_markdown(s: dict[str, Any], plots: list[str]) -> str:
    """The lab report: setup, then one section per finding with claim, measured table and verdict."""
    st = s["settings"]
    seeds = ", ".join(map(str, s["seeds"]))
    out = [
        "# longseq lab: context-extension findings at small scale",
        "",
        f"Model: Llama, {st['layers']} layers, width {st['hidden']}, {st['heads']} heads ({st['kv_heads']} KV), "
        f"a {st['vocab']}-token byte-level BPE trained on the lab corpus; pre-trained from scratch for "
        f"{st['copy_steps']} steps x {st['copy_batch']} rows of {st['copy_len']} tokens of repeated lists of words "
        f"and numbers, {st['short_steps']} steps x {st['short_batch']} rows of {st['short_len']} tokens, each ending "
        f"with passkey, lines and repeated-list documents, then at L = {s['native']} tokens for "
        f"{st['pretrain_steps']} steps x {st['pretrain_batch']} rows, {st['retrieval_share']:.0%} of them ending "
        f"with such documents, at learning rate {st['pretrain_lr']:g}{_anneal(st)}. Fine-tuning "
        f"at {FT_FACTOR}L = {FT_FACTOR * s['native']} tokens, {st['finetune_steps']} steps x "
        f"{st['finetune_batch']} sequences for every arm (same token budget), seeds {seeds}. Size preset "
        f"`{s['size']}`, total {s['seconds'] / 60:.1f} min.",
        "",
        *_base_model_lines(s),
        "Perplexity is measured on held-out shipped prose (never trained on); passkey and LongEval lines are "
        "`longseq eval`'s tasks; retrieval is their mean. A fine-tuning arm's cell is the mean over its seeds "
        "± half their range; a verdict needs a gap larger than the floor of its metric and than the seed "
        "range. Verdicts are computed by `longseq.lab.findings.FINDINGS` from the numbers below.",
        "",
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
    """Perplexity vs length: zero-shot methods at 8x, and the fine-tuned arms (mean over seeds)."""
    plt = pyplot()

    def arm_mean(name: str) -> Callable[[int], float | None]:
        return lambda n: (st.mean if (st := arm(s, name, "perplexity", n)) else None)

    panels: list[tuple[str, list[tuple[str, Callable[[int], float | None]]]]] = [
        ("zero-shot (target 8L)", [(m, partial(ppl_at, s, "zero-shot-8x", m)) for m in ZERO_SHOT]),
        (f"fine-tuned at {FT_FACTOR}L (mean over seeds)", [(ft.name, arm_mean(ft.name)) for ft in FINETUNES]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        for label, ppl in series:
            pts = [(n, v) for n in s["lengths"] if (v := ppl(n)) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.axvline(s["native"], color="grey", linestyle=":", linewidth=1)
        length_axis(ax, s["lengths"], "context length (tokens)")
        ax.set(title=title, ylabel="perplexity", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return [save(fig, out / "perplexity.png", dpi=110)]
