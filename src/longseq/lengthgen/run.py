"""``longseq lengthgen``: the length-generalization benchmark of Ruoss et al. (ACL 2023).

Train the encoder of :mod:`longseq.randpe` on short inputs of a Chomsky-hierarchy task
(:mod:`longseq.chomsky`), test it on longer ones, and compare positional encodings with their randomized
variants. Protocol (reference ``experiments/``): each step draws one length uniformly from the training
lengths for the whole batch; Adam with global-norm clipping at 1.0; masked token cross-entropy; the score of
a run is the per-sequence accuracy (every unmasked output token right) averaged over *all* test lengths
(the reference example silently drops the first one). A (task, PE) cell reports the mean over seeds at its
best learning rate and the best single run.

Output folder: ``runs.jsonl`` (one record per finished (task, pe, seed, lr) run, appended as it finishes,
so an interrupted benchmark resumes where it stopped), ``summary.json``, ``report.md`` and
``accuracy_vs_length.png``, rewritten after every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from longseq.lengthgen.chomsky import TASKS, get_task, sample_batch
from longseq.core.errors import UserError, unknown_choice
from longseq.core.fsutil import append_jsonl, atomic_write_text, read_jsonl
from longseq.core.parsing import parse_csv

# The PE names live in longseq.randpe, which imports torch; it is imported inside functions here so that
# `longseq --help` and input validation stay fast.

EVAL_SEED = 2**40  # evaluation batches use their own seed stream, the same for every run


@dataclass
class Protocol:
    """Everything that decides a run's result (hashed into its cache key), plus what to run."""

    tasks: list[str] = field(default_factory=lambda: ["parity_check"])
    pes: list[str] = field(default_factory=lambda: ["rope", "randomized_rope"])
    train_lengths: list[int] = field(default_factory=lambda: list(range(1, 41)))
    test_lengths: list[int] = field(default_factory=lambda: list(range(41, 501)))
    steps: int = 10_000
    seeds: int = 1
    lrs: list[float] = field(default_factory=lambda: [1e-3])
    batch_size: int = 128
    eval_samples: int = 512
    eval_batch: int = 64
    max_len: int = 2048
    d_model: int = 64
    n_layers: int = 5
    n_heads: int = 8
    d_ff: int = 256
    dropout: float = 0.1
    clip: float = 1.0

    def fingerprint(self) -> str:
        """Hash of the fields that change a run's result (not the task/PE/seed/lr selection)."""
        keep = {k: v for k, v in asdict(self).items() if k not in ("tasks", "pes", "seeds", "lrs")}
        return hashlib.sha1(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:10]


# Presets. "default" is the reference example script (batch 128, lr 1e-3, 10k steps, L = 2048).
# "paper" is the protocol of the paper as far as the reference notes can confirm it: N = 40, test 41..500,
# 512 test samples per length, 10 seeds x lr {1e-4, 3e-4, 5e-4}; the step count (1M) is unverified.
# "quick" is sized for this shared 2-core CPU (< 30 min, measured in README): Even Pairs (the answer needs
# the first and the last token, so position handling decides it), RoPE and relative each plain vs
# randomized, train 1-15, test 16-96 (up to 6x longer). Missing Duplicate did not learn in this budget.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "quick": dict(
        tasks=["even_pairs"],
        pes=["rope", "randomized_rope", "relative", "randomized_relative"],
        train_lengths=list(range(1, 16)),
        test_lengths=list(range(16, 97, 8)),
        steps=1500,
        seeds=2,
        lrs=[1e-3],
        batch_size=64,
        eval_samples=128,
        eval_batch=64,
        max_len=256,
    ),
    "paper": dict(
        tasks=list(TASKS),
        pes=["all"],  # every PE of longseq.randpe.PES
        train_lengths=list(range(1, 41)),
        test_lengths=list(range(41, 501)),
        steps=1_000_000,
        seeds=10,
        lrs=[1e-4, 3e-4, 5e-4],
        batch_size=128,
        eval_samples=512,
        eval_batch=64,
        max_len=2048,
    ),
}

_RANGE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


def parse_length_spec(text: str, flag: str = "--test-lengths") -> list[int]:
    """``"41-500"`` -> 41..500, ``"41-500:10"`` -> 41, 51, ..., ``"5,8-10"`` -> 5, 8, 9, 10 (sorted, unique)."""
    values: set[int] = set()
    for part in parse_csv(text):
        m = _RANGE.match(part.replace(" ", ""))
        if not m:
            raise UserError(f"{flag}: '{part}' is not a length range; write e.g. 1-40, 41-500:10 or 50,100")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        step = int(m.group(3) or 1)
        if lo < 1 or hi < lo or step < 1:
            raise UserError(f"{flag}: '{part}' must be an increasing range of lengths >= 1")
        values.update(range(lo, hi + 1, step))
    if not values:
        raise UserError(f"{flag}: no lengths given; write e.g. 1-40")
    return sorted(values)


def make_protocol(preset: str | None = None, **overrides: Any) -> Protocol:
    """A :class:`Protocol` from a preset plus explicit overrides (``None`` overrides are ignored); validated."""
    name = preset or "default"
    if name not in PRESETS:
        raise unknown_choice("preset", name, PRESETS)
    from longseq.lengthgen.randpe import PES

    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    if values.get("pes") == ["all"]:
        values["pes"] = list(PES)
    unknown = set(values) - set(Protocol.__dataclass_fields__)
    if unknown:
        raise UserError(f"unknown protocol option(s) {sorted(unknown)}; see help(longseq.lengthgen.Protocol)")
    proto = Protocol(**values)
    validate(proto)
    return proto


def validate(p: Protocol) -> None:
    """Reject bad settings before any training starts (names, sizes, tapes longer than the position range)."""
    from longseq.lengthgen.randpe import split_pe
    if not p.tasks or not p.pes:
        raise UserError("no tasks or no PEs selected; pass e.g. --tasks parity_check --pe rope,randomized_rope")
    for t in p.tasks:
        get_task(t)
    for pe in p.pes:
        split_pe(pe)
    for name, value in (("--steps", p.steps), ("--seeds", p.seeds), ("--batch-size", p.batch_size),
                        ("--eval-samples", p.eval_samples), ("--eval-batch", p.eval_batch),
                        ("--max-len", p.max_len)):
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    if any(lr <= 0 for lr in p.lrs) or not p.lrs:
        raise UserError(f"--lr must be positive, got {p.lrs}")
    longest = max(p.train_lengths + p.test_lengths)
    for t in p.tasks:
        tape = get_task(t).tape_length(longest)
        needs_table = any(split_pe(pe)[1] or split_pe(pe)[0] == "learned" for pe in p.pes)
        if needs_table and tape > p.max_len:
            raise UserError(
                f"{t} at length {longest} needs a tape of {tape} positions but --max-len is {p.max_len}; "
                f"raise --max-len to at least {tape} or shorten --test-lengths"
            )


def _tape(x: np.ndarray, out_len: int, blank: int, device: Any) -> Any:
    """The model's input: the task input ``(B, n_in)`` followed by ``out_len`` blank slots -> LongTensor."""
    import torch

    blanks = np.full((x.shape[0], out_len), blank, dtype=np.int64)
    return torch.from_numpy(np.concatenate([x, blanks], axis=1)).to(device)


def _build_model(task_name: str, pe: str, p: Protocol, device: Any) -> Any:
    from longseq.lengthgen.randpe import Encoder, ModelConfig

    task = get_task(task_name)
    cfg = ModelConfig(vocab_size=task.input_size + 1, output_size=task.output_size, pe=pe, d_model=p.d_model,
                      n_layers=p.n_layers, n_heads=p.n_heads, d_ff=p.d_ff, dropout=p.dropout, max_len=p.max_len)
    # vocab_size + 1 above: the Solve Equation degenerate tapes use id input_size; the model adds the blank.
    return Encoder(cfg).to(device)


def train_model(task_name: str, pe: str, seed: int, lr: float, p: Protocol, device: str = "cpu",
                progress: bool = True) -> tuple[Any, dict[str, float]]:
    """Train one model; returns ``(model, stats)`` with the final training accuracy and throughput."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    task = get_task(task_name)
    torch.manual_seed(seed)
    model = _build_model(task_name, pe, p, device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    lengths = np.random.default_rng([seed, 7]).choice(np.array(p.train_lengths), p.steps)
    window: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(p.steps), desc=f"{task_name}/{pe}/s{seed}", leave=False, disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    model.train()
    for step in bar:
        n = int(lengths[step])
        x, y, mask = sample_batch(task_name, n, p.batch_size, seed=seed * 2**32 + step)
        out_len = y.shape[1]
        logits = model(_tape(x, out_len, model.blank, device))[:, -out_len:]
        y_t, m_t = torch.from_numpy(y).to(device), torch.from_numpy(mask).to(device)
        loss = F.cross_entropy(logits[m_t], y_t[m_t])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.clip)
        opt.step()
        correct = ((logits.argmax(-1) == y_t) | ~m_t).all(dim=1).float().mean().item()
        window = (window + [correct])[-100:]
        if step % 20 == 0 or step == p.steps - 1:
            rate = (step + 1) * p.batch_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{np.mean(window):.2f}", seq_s=f"{rate:.0f}")
    seconds = time.perf_counter() - start
    stats = {"train_accuracy": float(np.mean(window)), "train_seconds": seconds,
             "train_seq_per_s": p.steps * p.batch_size / seconds}
    return model, stats


def evaluate_model(model: Any, task_name: str, lengths: Sequence[int], p: Protocol, device: str = "cpu",
                   progress: bool = True) -> dict[int, float]:
    """Per-sequence accuracy at each length (dropout off; randomized positions still drawn, reproducibly)."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    heads = p.n_heads
    result: dict[int, float] = {}
    try:
        with torch.no_grad():
            for n in tqdm(lengths, desc="eval", leave=False, disable=not progress, file=sys.stderr):
                # randomized positions: fresh at every forward pass, the same sequence of draws for every run
                model.position_generator = torch.Generator().manual_seed(EVAL_SEED + n)
                out_len = get_task(task_name).output_length(n)
                tape = get_task(task_name).tape_length(n)
                # Cap the attention scores of one forward at ~2^27 floats (0.5 GB) on long tapes.
                chunk = max(1, min(p.eval_batch, 2**27 // (heads * tape * tape)))
                right = total = 0
                for i in range(0, p.eval_samples, p.eval_batch):
                    b = min(p.eval_batch, p.eval_samples - i)
                    x, y, mask = sample_batch(task_name, n, b, seed=EVAL_SEED + i)
                    for j in range(0, b, chunk):
                        xs, ys, ms = x[j:j + chunk], y[j:j + chunk], mask[j:j + chunk]
                        logits = model(_tape(xs, out_len, model.blank, device))[:, -out_len:]
                        pred = logits.argmax(-1).cpu().numpy()
                        right += int(((pred == ys) | ~ms).all(axis=1).sum())
                        total += len(xs)
                result[n] = right / total
    finally:
        model.position_generator = None
        model.train()
    return result


def run_key(task: str, pe: str, seed: int, lr: float, p: Protocol) -> str:
    return f"{task}|{pe}|seed={seed}|lr={lr:g}|{p.fingerprint()}"


def summarize(records: list[dict[str, Any]], p: Protocol) -> dict[str, Any]:
    """``{"results": [{"task","pe","accuracy_mean","accuracy_best","seeds", ...}]}`` over finished runs.

    ``accuracy_mean``: the mean over seeds at the learning rate whose mean is best; ``accuracy_best``: the
    best single run (the paper's number). Accuracies are fractions in [0, 1].
    """
    fp = p.fingerprint()
    results = []
    for task in p.tasks:
        for pe in p.pes:
            runs = [r for r in records if r["task"] == task and r["pe"] == pe and r["fingerprint"] == fp
                    and r["lr"] in p.lrs and r["seed"] < p.seeds]
            if not runs:
                continue
            by_lr: dict[float, list[dict[str, Any]]] = {}
            for r in runs:
                by_lr.setdefault(r["lr"], []).append(r)
            lr, group = max(by_lr.items(), key=lambda kv: np.mean([r["accuracy"] for r in kv[1]]))
            per_length = {str(n): float(np.mean([r["per_length"][str(n)] for r in group])) for n in p.test_lengths}
            results.append({
                "task": task, "pe": pe,
                "accuracy_mean": float(np.mean([r["accuracy"] for r in group])),
                "accuracy_best": float(max(r["accuracy"] for r in runs)),
                "seeds": len(group), "lr": lr,
                "train_accuracy": float(np.mean([r["train_accuracy"] for r in group])),
                "per_length": per_length,
            })
    return {"protocol": {**asdict(p), "fingerprint": fp}, "results": results}


def render_report(summary: dict[str, Any]) -> str:
    """Markdown: a task x PE table (mean over seeds, best in brackets) and each randomized variant's gain."""
    from longseq.lengthgen.randpe import split_pe
    p = summary["protocol"]
    cells = {(r["task"], r["pe"]): r for r in summary["results"]}
    tasks = [t for t in p["tasks"] if any(k[0] == t for k in cells)]
    pes = [pe for pe in p["pes"] if any(k[1] == pe for k in cells)]
    lines = [
        "# Length generalization (Ruoss et al. 2023 protocol)",
        "",
        f"Train lengths {_span(p['train_lengths'])}, test lengths {_span(p['test_lengths'])}, "
        f"{p['steps']} steps x batch {p['batch_size']}, lr {', '.join(f'{x:g}' for x in p['lrs'])}, "
        f"{p['eval_samples']} test sequences per length, L = {p['max_len']}.",
        "Per-sequence accuracy (%) averaged over the test lengths: mean over seeds (best seed).",
        "",
        "| task | level | " + " | ".join(pes) + " |",
        "|---|---|" + "---|" * len(pes),
    ]
    for t in tasks:
        row = [f"{100 * cells[t, pe]['accuracy_mean']:.1f} ({100 * cells[t, pe]['accuracy_best']:.1f})"
               if (t, pe) in cells else "" for pe in pes]
        lines.append(f"| {t} | {TASKS[t].level} | " + " | ".join(row) + " |")
    pairs = [(b, f"randomized_{b}") for b in (split_pe(pe)[0] for pe in pes if not pe.startswith("randomized_"))
             if f"randomized_{b}" in pes]
    if pairs:
        lines += ["", "Randomized gain (percentage points, mean over seeds; randomized minus plain):", "",
                  "| task | " + " | ".join(f"{r} - {b}" for b, r in pairs) + " |", "|---|" + "---|" * len(pairs)]
        gains: dict[str, list[float]] = {b: [] for b, _ in pairs}
        for t in tasks:
            row = []
            for b, r in pairs:
                if (t, b) in cells and (t, r) in cells:
                    g = 100 * (cells[t, r]["accuracy_mean"] - cells[t, b]["accuracy_mean"])
                    gains[b].append(g)
                    row.append(f"{g:+.1f}")
                else:
                    row.append("")
            lines.append(f"| {t} | " + " | ".join(row) + " |")
        lines.append("| **average** | " + " | ".join(
            f"**{np.mean(gains[b]):+.1f}**" if gains[b] else "" for b, _ in pairs) + " |")
    return "\n".join(lines) + "\n"


def _span(lengths: list[int]) -> str:
    if lengths == list(range(lengths[0], lengths[-1] + 1)):
        return f"{lengths[0]}-{lengths[-1]}"
    return f"{lengths[0]}-{lengths[-1]} ({len(lengths)} lengths)"


def plot_accuracy(summary: dict[str, Any], path: Path) -> None:
    """One panel per task: accuracy (mean over seeds) vs test length, one line per PE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in summary["results"]))
    if not tasks:
        return
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
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_outputs(out: Path, records: list[dict[str, Any]], p: Protocol) -> dict[str, Any]:
    summary = summarize(records, p)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    atomic_write_text(out / "report.md", render_report(summary))
    plot_accuracy(summary, out / "accuracy_vs_length.png")
    return summary


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device here; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise UserError(f"--device '{device}' is not a device; use cpu, cuda, cuda:N or auto")
    return device


def run_benchmark(out: str | Path, protocol: Protocol | None = None, device: str = "auto",
                  progress: bool = True, threads: int | None = 1, **overrides: Any) -> dict[str, Any]:
    """Run (or resume) the benchmark into ``out``; returns the summary dict.

    Pass a :class:`Protocol`, or ``preset=`` and overrides (``tasks``, ``pes``, ``steps``, ...). Finished
    runs already in ``out/runs.jsonl`` with the same protocol fingerprint are not redone. ``threads``: torch
    CPU threads (``None`` keeps torch's default). One is the default because the matrices of a width-64
    model are too small to split: on this shared 2-core machine one thread trained 35x faster than two.
    """
    import torch
    from tqdm.auto import tqdm

    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)

    if protocol is None:
        protocol = make_protocol(**overrides)
    else:
        validate(protocol)
    p = protocol
    dev = resolve_device(device)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    records = read_jsonl(log)
    done = {r["key"] for r in records}
    todo = [(t, pe, s, lr) for t in p.tasks for pe in p.pes for lr in p.lrs for s in range(p.seeds)
            if run_key(t, pe, s, lr, p) not in done]
    total = len(p.tasks) * len(p.pes) * len(p.lrs) * p.seeds
    print(f"lengthgen: {total - len(todo)}/{total} runs cached in {out}, {len(todo)} to do on {dev}",
          file=sys.stderr)
    for task, pe, seed, lr in tqdm(todo, desc="runs", disable=not progress, file=sys.stderr):
        model, stats = train_model(task, pe, seed, lr, p, dev, progress)
        t0 = time.perf_counter()
        per_length = evaluate_model(model, task, p.test_lengths, p, dev, progress)
        eval_seconds = time.perf_counter() - t0
        acc = float(np.mean(list(per_length.values())))
        record = {"key": run_key(task, pe, seed, lr, p), "fingerprint": p.fingerprint(), "task": task, "pe": pe,
                  "seed": seed, "lr": lr, "accuracy": acc, "per_length": {str(k): v for k, v in per_length.items()},
                  **stats, "eval_seconds": eval_seconds,
                  "eval_seq_per_s": len(p.test_lengths) * p.eval_samples / eval_seconds}
        append_jsonl(log, record)
        records.append(record)
        print(f"lengthgen: {task} {pe} seed {seed} lr {lr:g}: test acc {100 * acc:.1f}%, train acc "
              f"{100 * stats['train_accuracy']:.1f}%, train {stats['train_seq_per_s']:.0f} seq/s, "
              f"eval {record['eval_seq_per_s']:.0f} seq/s", file=sys.stderr)
        write_outputs(out, records, p)
    return write_outputs(out, records, p)


# ------------------------------------------------------------------------------------------- CLI


def _names(text: str | None, choices: Sequence[str], kind: str) -> list[str] | None:
    if text is None:
        return None
    names = list(choices) if text.strip() == "all" else parse_csv(text)
    for n in names:
        if n not in choices:
            raise unknown_choice(kind, n, choices)
    return names


def _cmd_lengthgen(args: argparse.Namespace) -> int:
    from longseq.lengthgen.randpe import PES
    lrs = None
    if args.lr is not None:
        try:
            lrs = [float(x) for x in parse_csv(args.lr)]
        except ValueError:
            raise UserError(f"--lr '{args.lr}' is not a number list; write e.g. 1e-3 or 1e-4,3e-4") from None
    proto = make_protocol(
        args.preset,
        tasks=_names(args.tasks, list(TASKS), "task"),
        pes=_names(args.pe, list(PES), "positional encoding"),
        train_lengths=parse_length_spec(args.train_lengths, "--train-lengths") if args.train_lengths else None,
        test_lengths=parse_length_spec(args.test_lengths, "--test-lengths") if args.test_lengths else None,
        steps=args.steps, seeds=args.seeds, lrs=lrs, batch_size=args.batch_size, eval_samples=args.eval_samples,
        max_len=args.max_len,
    )
    summary = run_benchmark(args.out, proto, device=args.device, progress=not args.no_progress,
                            threads=args.threads or None)
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out}/summary.json, report.md, accuracy_vs_length.png ({len(summary['results'])} cells)")
    return 0


def add_cli(sub: Any) -> None:
    """Register ``longseq lengthgen``."""
    p = sub.add_parser(
        "lengthgen", help="randomized positional encodings on the Chomsky-hierarchy length-generalization tasks",
        description="Train small encoders on short inputs, test on longer ones (Ruoss et al. 2023). "
                    f"Tasks: {', '.join(TASKS)}. PEs: none, sin_cos, learned, rope, relative, alibi, "
                    "and randomized_<pe> of each but none.")
    p.add_argument("--tasks", help="comma list of tasks, or 'all' (preset default)")
    p.add_argument("--pe", help="comma list of positional encodings, or 'all' (e.g. rope,randomized_rope)")
    p.add_argument("--train-lengths", help="training lengths, e.g. 1-40 (one length per step, uniform)")
    p.add_argument("--test-lengths", help="test lengths, e.g. 41-500 or 41-500:10 or 50,100")
    p.add_argument("--steps", type=int, help="training steps per run")
    p.add_argument("--seeds", type=int, help="number of seeds (0..K-1)")
    p.add_argument("--lr", help="Adam learning rate(s), comma list; the best is reported")
    p.add_argument("--batch-size", type=int, help="training batch size")
    p.add_argument("--eval-samples", type=int, help="test sequences per length")
    p.add_argument("--max-len", type=int, help="L: range of randomized positions (>= longest tape)")
    p.add_argument("--preset", choices=list(PRESETS), help="quick (2-core CPU, <30 min) or paper (GPU)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--out", required=True, help="output folder; re-running resumes finished runs")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: fastest for this "
                   "tiny model; 0 = torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_lengthgen)
