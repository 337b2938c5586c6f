"""``longseq eval``: how much of its context does a model really use?

Runs the synthetic tasks of :mod:`longseq.tasks` (and sliding-window perplexity) over a grid of
(RoPE method x length), one model load per method, and writes to ``--out``:
  * ``samples.jsonl``: one line per scored sample, appended as soon as it is scored; re-running the same
    command skips every sample already there (resume);
  * ``summary.json``: ``{"model", "threshold", "results": [{"task", "method", "length", "score", "n", ...}],
    "effective_length": {method: int}}``;
  * ``report.md``, ``score_vs_length.png`` and (for ``niah``) ``niah_heatmap.png``.

Effective context length (RULER, Hsieh et al. 2024): the largest tested length L such that the mean
score over the chosen retrieval tasks is >= threshold at L and at every shorter tested length
(0 when the shortest fails). RULER's threshold 0.856 is Llama-2-7B's 4k score on its 13 tasks; for
other task subsets it is a convention, not a transferable number. ``ppl`` is reported but never enters
the effective length.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from longseq.core.errors import UserError, unknown_choice
from longseq.core.fsutil import append_jsonl, atomic_write_text, read_jsonl
from longseq.core.parsing import parse_csv, parse_length, parse_lengths

RULER_THRESHOLD = 0.856
BACKENDS = ("hf", "openai")


@dataclass(frozen=True)
class Preset:
    """A named evaluation plan: tasks, (method, lengths) groups and samples per cell."""

    tasks: tuple[str, ...]
    groups: tuple[tuple[str, tuple[int, ...]], ...]
    samples: int


PRESETS: dict[str, Preset] = {
    # `make demo`: passkey and lines up to the native 8k with plain RoPE, then 16k with and without YaRN.
    "quick": Preset(("passkey", "lines"), (("none", (1024, 2048, 4096, 8192, 16384)), ("yarn", (16384,))), 2),
    "full": Preset(("passkey", "lines", "topics", "niah", "ruler", "ppl"),
                   tuple((m, (1024, 2048, 4096, 8192, 16384)) for m in ("none", "pi", "yarn", "ntk", "abf")), 5),
}


@dataclass
class EvalConfig:
    """Everything that defines an evaluation run (see ``longseq eval --help``)."""

    model: str
    out: str
    tasks: list[str] = field(default_factory=lambda: ["passkey"])
    cells: list[tuple[str, int]] = field(default_factory=lambda: [("none", 1024), ("none", 2048), ("none", 4096)])
    samples: int = 5
    seed: int = 0
    threshold: float = RULER_THRESHOLD
    backend: str = "hf"
    prompt_format: str = "auto"
    dtype: str = "auto"
    chunk_size: int = 16384
    target_length: int | None = None
    depths: list[float] | None = None
    ppl_text: str | None = None
    base_url: str | None = None
    api_model: str | None = None
    api_key: str | None = None

    def validate(self) -> None:
        from longseq.models.rope import METHODS
        from longseq.eval.tasks import task_names

        for t in self.tasks:
            if t not in task_names():
                raise unknown_choice("task", t, task_names())
        for m, _ in self.cells:
            if m not in METHODS:
                raise unknown_choice("RoPE method", m, METHODS)
        if not self.tasks or not self.cells:
            raise UserError("nothing to evaluate; give --tasks, --methods and --lengths (or --preset quick)")
        if self.samples < 1:
            raise UserError(f"--samples must be >= 1, got {self.samples}")
        if not 0 <= self.threshold <= 1:
            raise UserError(f"--threshold must be in [0, 1] (scores are fractions), got {self.threshold}")
        if self.backend not in BACKENDS:
            raise unknown_choice("backend", self.backend, BACKENDS)
        if self.backend == "openai":
            if not self.base_url:
                raise UserError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
            if "ppl" in self.tasks:
                raise UserError("task 'ppl' needs token log-likelihoods; run it with --backend hf")
            if any(m != "none" for m, _ in self.cells):
                raise UserError("with --backend openai the server owns the RoPE setup; use --methods none")
        for d in self.depths or []:
            if not 0 <= d <= 1:
                raise UserError(f"depths are fractions in [0, 1] (or percents 0-100), got {d}")


# ------------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class Item:
    """One sample to run: (method, task, subtask, length, index) plus the niah depth."""

    method: str
    task: str
    subtask: str
    length: int
    index: int
    depth: float | None = None

    @property
    def key(self) -> tuple[str, str, str, int, int]:
        return (self.method, self.task, self.subtask, self.length, self.index)


def record_key(rec: dict[str, Any]) -> tuple[str, str, str, int, int]:
    return (rec["method"], rec["task"], rec.get("subtask") or "", int(rec["length"]), int(rec["index"]))


def niah_depths(cfg: EvalConfig) -> list[float]:
    """``--depths`` or ``samples`` evenly spaced depths in [0, 1] (0.5 for one sample)."""
    if cfg.depths:
        return list(cfg.depths)
    n = cfg.samples
    return [0.5] if n == 1 else [i / (n - 1) for i in range(n)]


def plan(cfg: EvalConfig) -> list[Item]:
    """All samples of the run, method-major (one model load per method), then length, task, index."""
    from longseq.eval.tasks import RULER_SUBTASKS

    methods = list(dict.fromkeys(m for m, _ in cfg.cells))
    items = []
    for method in methods:
        for length in sorted({L for m, L in cfg.cells if m == method}):
            for task in cfg.tasks:
                if task == "ruler":
                    items += [Item(method, task, sub, length, i) for sub in RULER_SUBTASKS for i in range(cfg.samples)]
                elif task == "niah":
                    items += [Item(method, task, "", length, i, d) for i, d in enumerate(niah_depths(cfg))]
                else:
                    items += [Item(method, task, "", length, i) for i in range(cfg.samples)]
    return items


# -------------------------------------------------------------------------------------------- the run


class PromptBuilder:
    """Builds and caches sized prompts (they do not depend on the RoPE method)."""

    def __init__(self, tokenizer: Any, fmt: str, seed: int):
        from longseq.eval.engine import encode, render

        self.tokenizer, self.fmt, self.seed = tokenizer, fmt, seed
        self._cache: dict[tuple[str, str, int, int], Any] = {}
        self._render, self._encode = render, encode

    def count(self, p: Any) -> tuple[str, int]:
        text = self._render(p.body, p.answer_prefix, p.sep, self.fmt, self.tokenizer)
        return text, len(self._encode(self.tokenizer, text, self.fmt))

    def build(self, item: Item) -> Any:
        from longseq.eval.tasks import size_prompt, task_for

        key = (item.task, item.subtask, item.length, item.index)
        if key not in self._cache:
            task = task_for(item.task, item.subtask or None)
            opts = {"depth": item.depth} if item.depth is not None else {}
            name = f"ruler/{item.subtask}" if item.subtask else item.task
            self._cache[key] = (size_prompt(task, item.length, self.seed, item.index, self.count, opts, key=name))
        return self._cache[key]


def ppl_tokens(cfg: EvalConfig, tokenizer: Any) -> list[int]:
    """Token ids of the perplexity text: a file path, ``hf:NAME[:CONFIG]`` (a ``datasets`` dataset, test
    split, ``text`` column), or the shipped haystack by default."""
    from longseq.eval.tasks import haystack_text

    src = cfg.ppl_text
    if not src:
        text = haystack_text()
    elif src.startswith("hf:"):
        try:
            import datasets
        except ImportError:
            raise UserError("--ppl-text hf:... needs the datasets package; pip install 'longseq[data]'") from None
        name, _, conf = src[3:].partition(":")
        try:
            ds = datasets.load_dataset(name, conf or None, split="test")
        except Exception as err:
            raise UserError(f"cannot load dataset '{name}': {' '.join(str(err).split())[:200]}; pass a text file") from None
        text = "\n\n".join(ds["text"])
    else:
        path = Path(src)
        if not path.is_file():
            raise UserError(f"--ppl-text {src} is not a file; pass a text file or hf:DATASET")
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


def _model_id(spec: str) -> str:
    """A local checkpoint by its absolute path: resuming from another folder, or with the path spelled
    differently, is the same run."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _check_run_file(out: Path, cfg: EvalConfig, fmt: str) -> None:
    """Refuse to mix samples of a different model / seed / prompt format / backend in one folder."""
    ident = {"model": _model_id(cfg.model), "seed": cfg.seed, "prompt_format": fmt, "backend": cfg.backend,
             "api_model": cfg.api_model if cfg.backend == "openai" else None}
    path = out / "run.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        if "model" in old:
            old["model"] = _model_id(old["model"])
        diff = [k for k in ident if k in old and old[k] != ident[k]]
        if diff:
            raise UserError(f"{out} holds a run with a different {', '.join(diff)} ({', '.join(f'{k}={old[k]}' for k in diff)}); "
                            "choose another --out or repeat the original settings")
    atomic_write_text(path, json.dumps(ident, indent=2) + "\n")


def run_eval(cfg: EvalConfig, progress: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) an evaluation and write samples.jsonl, summary.json, report.md and plots.

    Returns the summary dict (also written to ``out/summary.json``).
    """
    from tqdm import tqdm

    from longseq.eval.engine import check_fits, resolve_prompt_format
    from longseq.models.loading import load_config
    from longseq.core.runtime import tune_process
    from longseq.eval.tasks import task_for

    tune_process()

    cfg.validate()
    from longseq.models.loading import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    fmt = resolve_prompt_format(cfg.prompt_format, tokenizer)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    items = plan(cfg)
    engine_factory = _engine_factory(cfg)
    if cfg.backend == "hf":
        config = load_config(cfg.model)
        bpv = 2 if str(cfg.dtype) in ("auto", "bfloat16", "float16") else 4
        for length in sorted({i.length for i in items}):
            check_fits(config, length, cfg.chunk_size, bpv)
    else:
        engine_factory("none").check()  # server down -> one line, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    _check_run_file(out, cfg, fmt)
    samples_path = out / "samples.jsonl"
    done = {record_key(r) for r in read_jsonl(samples_path)}
    pending = [i for i in items if i.key not in done]
    builder = PromptBuilder(tokenizer, fmt, cfg.seed)
    # Size one prompt per (task, length) before loading any model: a length too short for a task fails now.
    for item in {(i.task, i.subtask, i.length): i for i in pending if i.task != "ppl"}.values():
        builder.build(item)
    ppl_cache: list[int] | None = None
    if any(i.task == "ppl" for i in pending):
        ppl_cache = ppl_tokens(cfg, tokenizer)
        for length in {i.length for i in pending if i.task == "ppl"}:
            ppl_window(ppl_cache, length, 0, cfg.samples)
    bar = tqdm(total=len(items), initial=len(items) - len(pending), disable=not progress, file=sys.stderr,
               unit="sample", dynamic_ncols=True)
    try:
        for method in dict.fromkeys(i.method for i in pending):
            bar.set_description(f"loading model ({method})")
            engine = engine_factory(method, max(i.length for i in items if i.method == method))
            for item in (i for i in pending if i.method == method):
                label = f"{item.task}{'/' + item.subtask if item.subtask else ''}"
                bar.set_description(f"{method} {label} {item.length}")
                if item.task == "ppl":
                    assert ppl_cache is not None
                    window = ppl_window(ppl_cache, item.length, item.index, cfg.samples)
                    nll, count = engine.nll(window)
                    rec = {"prompt_tokens": len(window), "depth": None, "expected": None, "output": None,
                           "nll": nll, "scored_tokens": count, "score": math.exp(-nll / count)}
                else:
                    sized = builder.build(item)
                    task = task_for(item.task, item.subtask or None)
                    gen = engine.answer(sized.prompt.body, sized.text, fmt, task.max_new_tokens)
                    rec = {"prompt_tokens": sized.tokens, "depth": sized.prompt.depth, "expected": sized.prompt.expected,
                           "output": gen.text, "score": float(task.score(gen.text, sized.prompt.expected)),
                           "new_tokens": gen.new_tokens, "seconds": round(gen.seconds, 3)}
                append_jsonl(samples_path, {"task": item.task, "subtask": item.subtask or None, "method": method,
                                            "length": item.length, "index": item.index, "seed": cfg.seed, **rec})
                bar.update(1)
            del engine
    finally:
        bar.close()
    records = read_jsonl(samples_path)
    summary = summarize(cfg, records, items, fmt)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    plots = write_plots(summary, out)
    atomic_write_text(out / "report.md", report_markdown(summary, plots))
    if not quiet:
        print(format_table(summary))
    return summary


def _engine_factory(cfg: EvalConfig) -> Any:
    from longseq.eval.engine import HFEngine, OpenAIEngine

    def make(method: str, max_length: int | None = None) -> Any:
        if cfg.backend == "openai":
            return OpenAIEngine(cfg.base_url or "", cfg.api_model or cfg.model, cfg.api_key)
        target = cfg.target_length or max_length
        return HFEngine.load(cfg.model, method, cfg.dtype, cfg.chunk_size,
                             target_length=target if method not in ("none",) else None)

    return make


# -------------------------------------------------------------------------------------------- summary


def summarize(cfg: EvalConfig, records: list[dict[str, Any]], items: list[Item], fmt: str) -> dict[str, Any]:
    """Aggregate the samples of the planned grid into the summary dict."""
    wanted = {i.key for i in items}
    by_cell: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in records:
        if record_key(r) in wanted:
            by_cell.setdefault((r["task"], r["method"], int(r["length"])), []).append(r)
    results = []
    for method in dict.fromkeys(i.method for i in items):
        for length in sorted({i.length for i in items if i.method == method}):
            for task in cfg.tasks:
                recs = by_cell.get((task, method, length), [])
                if not recs:
                    continue
                row: dict[str, Any] = {"task": task, "method": method, "length": length,
                                       "score": sum(r["score"] for r in recs) / len(recs), "n": len(recs),
                                       "prompt_tokens": round(sum(r["prompt_tokens"] for r in recs) / len(recs))}
                if task == "ppl":
                    nll, cnt = sum(r["nll"] for r in recs), sum(r["scored_tokens"] for r in recs)
                    row["perplexity"] = math.exp(nll / cnt)
                    row["score"] = math.exp(-nll / cnt)
                if task == "ruler":
                    subs: dict[str, list[float]] = {}
                    for r in recs:
                        subs.setdefault(r["subtask"], []).append(r["score"])
                    row["subtasks"] = {k: sum(v) / len(v) for k, v in subs.items()}
                    row["score"] = sum(row["subtasks"].values()) / len(row["subtasks"])
                if task == "niah":
                    depth: dict[str, list[float]] = {}
                    for r in recs:
                        depth.setdefault(f"{r['depth']:.3f}", []).append(r["score"])
                    row["depths"] = {k: sum(v) / len(v) for k, v in sorted(depth.items())}
                results.append(row)
    eff_tasks = [t for t in cfg.tasks if t != "ppl"]
    return {"model": cfg.model, "threshold": cfg.threshold, "results": results,
            "effective_length": effective_length(results, eff_tasks, cfg.threshold),
            "tasks": cfg.tasks, "prompt_format": fmt, "backend": cfg.backend, "seed": cfg.seed,
            "samples": cfg.samples, "complete": all(i.key in {record_key(r) for r in records} for i in items)}


def effective_length(results: Iterable[dict[str, Any]], tasks: list[str], threshold: float) -> dict[str, int]:
    """Per method: the largest tested length L with mean score over ``tasks`` >= threshold at L and at
    every shorter tested length; 0 when the shortest length already fails. Lengths where a task has no
    result yet are skipped (partial runs)."""
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


def _fmt_len(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _tables(summary: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) per method: tasks x lengths, plus the mean row and effective length."""
    out = []
    eff_tasks = [t for t in summary["tasks"] if t != "ppl"]
    for method in dict.fromkeys(r["method"] for r in summary["results"]):
        rows_m = [r for r in summary["results"] if r["method"] == method]
        lengths = sorted({r["length"] for r in rows_m})
        header = ["task"] + [_fmt_len(L) for L in lengths]
        rows = []
        for task in summary["tasks"]:
            cells = {r["length"]: r for r in rows_m if r["task"] == task}
            if not cells:
                continue
            if task == "ppl":
                rows.append(["ppl (perplexity)"] + [f"{cells[L]['perplexity']:.2f}" if L in cells else "-" for L in lengths])
            else:
                rows.append([task] + [f"{cells[L]['score']:.2f}" if L in cells else "-" for L in lengths])
        if eff_tasks:
            means = []
            for L in lengths:
                vals = [r["score"] for r in rows_m if r["length"] == L and r["task"] in eff_tasks]
                means.append(f"{sum(vals) / len(vals):.2f}" if len(vals) == len(eff_tasks) else "-")
            rows.append(["mean"] + means)
        eff = summary["effective_length"].get(method)
        title = f"method {method}" + (f": effective length {eff} (threshold {summary['threshold']})" if eff is not None else "")
        out.append((title, header, rows))
    return out


def format_table(summary: dict[str, Any]) -> str:
    """Plain-text tables for the terminal."""
    lines = []
    for title, header, rows in _tables(summary):
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        lines.append(title)
        for row in [header] + rows:
            lines.append("  " + "  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths))))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def report_markdown(summary: dict[str, Any], plots: list[str]) -> str:
    """report.md: settings, one task x length table per method, effective lengths and the plots."""
    md = [f"# longseq eval: {summary['model']}", "",
          f"Prompt format `{summary['prompt_format']}`, backend `{summary['backend']}`, seed {summary['seed']}, "
          f"{summary['samples']} samples per cell; scores are fractions in [0, 1]; `ppl` rows show perplexity "
          f"(every token of each window scored). Effective length = largest tested length whose mean retrieval "
          f"score is >= {summary['threshold']} there and at every shorter length.", ""]
    if not summary.get("complete", True):
        md += ["**Partial run**: some planned samples are missing; run the same command again to finish.", ""]
    for title, header, rows in _tables(summary):
        md += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    ruler = [r for r in summary["results"] if r["task"] == "ruler"]
    if ruler:
        subs = list(ruler[0]["subtasks"])
        md += ["## RULER subtasks", "", "| method | length | " + " | ".join(subs) + " |", "|" + "---|" * (len(subs) + 2)]
        md += [f"| {r['method']} | {_fmt_len(r['length'])} | " + " | ".join(f"{r['subtasks'].get(s, float('nan')):.2f}" for s in subs) + " |"
               for r in ruler] + [""]
    md += ["| method | effective length |", "|---|---|"]
    md += [f"| {m} | {v} |" for m, v in summary["effective_length"].items()] + [""]
    md += [f"![{p}]({p})" for p in plots]
    return "\n".join(md) + "\n"


def write_plots(summary: dict[str, Any], out: Path) -> list[str]:
    """score_vs_length.png (one panel per task + mean, one line per method) and niah_heatmap.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    results = summary["results"]
    if not results:
        return written
    methods = list(dict.fromkeys(r["method"] for r in results))
    eff_tasks = [t for t in summary["tasks"] if t != "ppl"]
    panels = [t for t in summary["tasks"] if any(r["task"] == t for r in results)]
    if len(eff_tasks) > 1:
        panels.append("mean")
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for method in methods:
            if panel == "mean":
                by_len: dict[int, list[float]] = {}
                for r in results:
                    if r["method"] == method and r["task"] in eff_tasks:
                        by_len.setdefault(r["length"], []).append(r["score"])
                pts = sorted((L, sum(v) / len(v)) for L, v in by_len.items() if len(v) == len(eff_tasks))
            else:
                key = "perplexity" if panel == "ppl" else "score"
                pts = sorted((r["length"], r[key]) for r in results if r["method"] == method and r["task"] == panel)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xscale("log", base=2)
        ticks = sorted({r["length"] for r in results})
        ax.set_xticks(ticks, [_fmt_len(L) for L in ticks])
        ax.minorticks_off()
        ax.set_title(panel)
        ax.set_xlabel("prompt length (tokens)")
        if panel == "ppl":
            ax.set_ylabel("perplexity")
            ax.set_yscale("log")
        else:
            ax.set_ylim(-0.05, 1.05)
            ax.axhline(summary["threshold"], color="gray", ls="--", lw=0.8)
            ax.set_ylabel("score")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(out / "score_vs_length.png", dpi=100)
    plt.close(fig)
    written.append("score_vs_length.png")

    niah = [r for r in results if r["task"] == "niah"]
    if niah:
        nm = list(dict.fromkeys(r["method"] for r in niah))
        fig, axes = plt.subplots(1, len(nm), figsize=(4.5 * len(nm), 3.6), squeeze=False)
        for ax, method in zip(axes[0], nm):
            rows = [r for r in niah if r["method"] == method]
            lengths = sorted({r["length"] for r in rows})
            depths = sorted({d for r in rows for d in r["depths"]}, key=float)
            grid = [[next((r["depths"].get(d, math.nan) for r in rows if r["length"] == L), math.nan) for L in lengths]
                    for d in depths]
            im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto", origin="upper")
            ax.set_xticks(range(len(lengths)), [_fmt_len(L) for L in lengths])
            ax.set_yticks(range(len(depths)), [f"{float(d) * 100:.0f}%" for d in depths])
            ax.set_xlabel("context length")
            ax.set_ylabel("needle depth")
            ax.set_title(f"niah ({method})")
        fig.colorbar(im, ax=axes[0].tolist())
        fig.savefig(out / "niah_heatmap.png", dpi=100)
        plt.close(fig)
        written.append("niah_heatmap.png")
    return written


# ------------------------------------------------------------------------------------------------- CLI


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """Merge ``--preset`` with explicit flags (explicit flags win)."""
    preset = None
    if args.preset:
        if args.preset not in PRESETS:
            raise unknown_choice("preset", args.preset, PRESETS)
        preset = PRESETS[args.preset]
    tasks = parse_csv(args.tasks) if args.tasks else list(preset.tasks if preset else ("passkey",))
    if args.methods or args.lengths or not preset:
        methods = parse_csv(args.methods) if args.methods else (
            list(dict.fromkeys(m for m, _ in preset.groups)) if preset else ["none"])
        lengths = parse_lengths(args.lengths) if args.lengths else (
            sorted({L for _, ls in preset.groups for L in ls}) if preset else [1024, 2048, 4096])
        cells = [(m, L) for m in methods for L in lengths]
    else:
        cells = [(m, L) for m, ls in preset.groups for L in ls]
    depths = None
    if args.depths:
        try:
            depths = [float(x) for x in parse_csv(args.depths)]
        except ValueError:
            raise UserError(f"--depths must be numbers like 0,25,50,75,100 or 0,0.5,1; got '{args.depths}'") from None
        if max(depths) > 1:
            depths = [d / 100 for d in depths]
    samples = args.samples if args.samples is not None else (preset.samples if preset else 5)
    model = args.model
    out = args.out or f"runs/eval-{Path(model).name}"
    return EvalConfig(model=model, out=out, tasks=tasks, cells=cells, samples=samples, seed=args.seed,
                      threshold=args.threshold, backend=args.backend, prompt_format=args.prompt_format,
                      dtype=args.dtype, chunk_size=args.chunk_size,
                      target_length=parse_length(args.target_length) if args.target_length else None,
                      depths=depths, ppl_text=args.ppl_text, base_url=args.base_url, api_model=args.api_model,
                      api_key=args.api_key)


def _cmd_eval(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    run_eval(cfg, progress=not args.no_progress)
    print(f"wrote {Path(cfg.out) / 'samples.jsonl'}, summary.json, report.md and plots")
    return 0


def add_cli(sub: Any) -> None:
    """Register ``longseq eval``."""
    from longseq.models.loading import DEFAULT_MODEL, DTYPES
    from longseq.models.rope import METHODS
    from longseq.eval.tasks import task_names

    p = sub.add_parser("eval", help="long-context evaluation: passkey, LongEval, NIAH, RULER, perplexity, effective length",
                       description="Tasks: " + ", ".join(task_names()) + ". Methods: " + ", ".join(METHODS) +
                       ". Presets: quick (passkey+lines 1k-16k none, 16k yarn; 2 samples), full (all tasks and methods).")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="alias, folder, .gguf or Hub id (tokenizer source "
                   "for --backend openai)")
    p.add_argument("--tasks", help="comma list of " + ",".join(task_names()) + " (default passkey)")
    p.add_argument("--lengths", help="comma list of prompt lengths in tokens, e.g. 1k,2k,4k (default 1k,2k,4k)")
    p.add_argument("--methods", help="comma list of RoPE methods (default none)")
    p.add_argument("--samples", type=int, help="samples per (task, method, length) cell (default 5; RULER: per subtask)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (prompts depend only on task, length, seed, index)")
    p.add_argument("--out", help="output folder (default runs/eval-<model>); re-running resumes")
    p.add_argument("--preset", help="quick or full; explicit flags override it")
    p.add_argument("--threshold", type=float, default=RULER_THRESHOLD, help="effective-length threshold (default 0.856, RULER's)")
    p.add_argument("--backend", default="hf", help="hf (local transformers) or openai (any OpenAI-compatible server)")
    p.add_argument("--prompt-format", default="auto", help="auto (= raw), raw (completion prompt ending with the answer "
                   "prefix) or chat (the model's chat template)")
    p.add_argument("--base-url", help="openai backend: server URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-model", help="openai backend: model name sent to the server (default MODEL)")
    p.add_argument("--api-key", help="openai backend: API key (default $OPENAI_API_KEY or 'EMPTY')")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="hf backend weights dtype")
    p.add_argument("--chunk-size", type=int, default=16384, help="hf backend prefill chunk in tokens (memory vs speed)")
    p.add_argument("--target-length", help="RoPE target length for the methods (default: the largest tested length)")
    p.add_argument("--depths", help="niah needle depths, e.g. 0,25,50,75,100 (default: --samples evenly spaced)")
    p.add_argument("--ppl-text", help="ppl text: a file or hf:DATASET[:CONFIG] (default: the shipped haystack)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)
