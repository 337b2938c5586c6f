"""``longseq lengthgen``: the length-generalization benchmark of Ruoss et al. (ACL 2023, arXiv 2305.16843).

Train the encoder of :mod:`longseq.lengthgen.randpe` on short inputs of a Chomsky-hierarchy task
(:mod:`longseq.lengthgen.chomsky`), test it on longer ones, and compare positional encodings with their
randomized variants. Protocol (reference ``experiments/``; settings in :mod:`longseq.lengthgen.protocol`):
each step draws one length uniformly from the training lengths for the whole batch; Adam with global-norm
clipping at 1.0; masked token cross-entropy; the score of a run is the per-sequence accuracy (every
unmasked output token right) averaged over *all* test lengths (the reference example silently drops the
first one). A (task, PE) cell reports the mean over seeds at its best learning rate and the best single
run (:mod:`longseq.lengthgen.report`).

Output folder: ``runs.jsonl`` (one record per finished (task, pe, seed, lr) run, appended as it finishes,
so an interrupted benchmark resumes where it stopped), ``summary.json``, ``report.md`` and
``accuracy_vs_length.png``, rewritten after every run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from longseq.core.errors import UserError
from longseq.core.fsutil import append_jsonl, read_jsonl
from longseq.lengthgen.chomsky import get_task, sample_batch
from longseq.lengthgen.protocol import Protocol, make_protocol, run_key, validate
from longseq.lengthgen.randpe import Encoder, ModelConfig
from longseq.lengthgen.report import write_outputs

EVAL_SEED = 2**40  # evaluation batches use their own seed stream, the same for every run


def make_tape(x: np.ndarray, out_len: int, blank: int, device: Any) -> torch.Tensor:
    """The model's input: the task input ``(B, n_in)`` followed by ``out_len`` blank slots -> ``(B, n_in +
    out_len)`` LongTensor on ``device``."""
    blanks = np.full((x.shape[0], out_len), blank, dtype=np.int64)
    return torch.from_numpy(np.concatenate([x, blanks], axis=1)).to(device)


def build_encoder(task_name: str, pe: str, p: Protocol, device: Any) -> Encoder:
    """A fresh :class:`~longseq.lengthgen.randpe.Encoder` sized by ``p`` for ``task_name``, on ``device``."""
    task = get_task(task_name)
    cfg = ModelConfig(vocab_size=task.input_size + 1, output_size=task.output_size, pe=pe, d_model=p.d_model,
                      n_layers=p.n_layers, n_heads=p.n_heads, d_ff=p.d_ff, dropout=p.dropout, max_len=p.max_len)
    # vocab_size + 1 above: the Solve Equation degenerate tapes use id input_size; the model adds the blank.
    return Encoder(cfg).to(device)


def _all_right(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence correctness ``(B,)`` bool: every unmasked output token predicted. logits ``(B, T_out, C)``,
    y and mask ``(B, T_out)``."""
    return ((logits.argmax(-1) == y) | ~mask).all(dim=1)


def train_encoder(task_name: str, pe: str, seed: int, lr: float, p: Protocol, device: str = "cpu",
                  progress: bool = True) -> tuple[Encoder, dict[str, float]]:
    """Train one model; returns ``(model, stats)`` with the final training accuracy and throughput."""
    torch.manual_seed(seed)
    model = build_encoder(task_name, pe, p, device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    lengths = np.random.default_rng([seed, 7]).choice(np.array(p.train_lengths), p.steps)
    window: list[float] = []
    start = time.perf_counter()
    bar = tqdm(range(p.steps), desc=f"{task_name}/{pe}/s{seed}", leave=False, disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    model.train()
    for step in bar:
        x, y, mask = sample_batch(task_name, int(lengths[step]), p.batch_size, seed=seed * 2**32 + step)
        out_len = y.shape[1]
        logits = model(make_tape(x, out_len, model.blank, device))[:, -out_len:]
        y_t, m_t = torch.from_numpy(y).to(device), torch.from_numpy(mask).to(device)
        loss = F.cross_entropy(logits[m_t], y_t[m_t])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.clip)
        opt.step()
        window = (window + [_all_right(logits, y_t, m_t).float().mean().item()])[-100:]
        if step % 20 == 0 or step == p.steps - 1:
            rate = (step + 1) * p.batch_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{np.mean(window):.2f}", seq_s=f"{rate:.0f}")
    seconds = time.perf_counter() - start
    stats = {"train_accuracy": float(np.mean(window)), "train_seconds": seconds,
             "train_seq_per_s": p.steps * p.batch_size / seconds}
    return model, stats


def evaluate_model(model: Encoder, task_name: str, lengths: Sequence[int], p: Protocol, device: str = "cpu",
                   progress: bool = True) -> dict[int, float]:
    """Per-sequence accuracy at each length (dropout off; randomized positions still drawn, reproducibly)."""
    task = get_task(task_name)
    model.eval()
    result: dict[int, float] = {}
    try:
        with torch.no_grad():
            for n in tqdm(lengths, desc="eval", leave=False, disable=not progress, file=sys.stderr):
                # randomized positions: fresh at every forward pass, the same sequence of draws for every run
                model.position_generator = torch.Generator().manual_seed(EVAL_SEED + n)
                out_len, tape = task.output_length(n), task.tape_length(n)
                # Cap the attention scores of one forward at ~2^27 floats (0.5 GB) on long tapes.
                chunk = max(1, min(p.eval_batch, 2**27 // (p.n_heads * tape * tape)))
                right = total = 0
                for i in range(0, p.eval_samples, p.eval_batch):
                    b = min(p.eval_batch, p.eval_samples - i)
                    x, y, mask = sample_batch(task_name, n, b, seed=EVAL_SEED + i)
                    for j in range(0, b, chunk):
                        xs, ys, ms = x[j:j + chunk], y[j:j + chunk], mask[j:j + chunk]
                        logits = model(make_tape(xs, out_len, model.blank, device))[:, -out_len:]
                        ys_t, ms_t = torch.from_numpy(ys).to(device), torch.from_numpy(ms).to(device)
                        right += int(_all_right(logits, ys_t, ms_t).sum())
                        total += len(xs)
                result[n] = right / total
    finally:
        model.position_generator = None
        model.train()
    return result


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; other names are checked (one-line errors)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device here; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise UserError(f"--device '{device}' is not a device; use cpu, cuda, cuda:N or auto")
    return device


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    out.mkdir(parents=True, exist_ok=True)


def _run_one(task: str, pe: str, seed: int, lr: float, p: Protocol, device: str,
             progress: bool) -> dict[str, Any]:
    """Train and test one (task, PE, seed, lr) run; returns its ``runs.jsonl`` record."""
    model, stats = train_encoder(task, pe, seed, lr, p, device, progress)
    t0 = time.perf_counter()
    per_length = evaluate_model(model, task, p.test_lengths, p, device, progress)
    eval_seconds = time.perf_counter() - t0
    acc = float(np.mean(list(per_length.values())))
    return {"key": run_key(task, pe, seed, lr, p), "fingerprint": p.fingerprint(), "task": task, "pe": pe,
            "seed": seed, "lr": lr, "accuracy": acc, "per_length": {str(k): v for k, v in per_length.items()},
            **stats, "eval_seconds": eval_seconds,
            "eval_seq_per_s": len(p.test_lengths) * p.eval_samples / eval_seconds}


def run_benchmark(out: str | Path, protocol: Protocol | None = None, device: str = "auto",
                  progress: bool = True, threads: int | None = 1, **overrides: Any) -> dict[str, Any]:
    """Run (or resume) the benchmark into ``out``; returns the summary dict.

    Pass a :class:`~longseq.lengthgen.protocol.Protocol`, or ``preset=`` and overrides (``tasks``, ``pes``,
    ``steps``, ...). Finished runs already in ``out/runs.jsonl`` with the same protocol fingerprint are not
    redone. ``threads``: torch CPU threads (``None`` keeps torch's default). One is the default because the
    matrices of a width-64 model are too small to split: on this shared 2-core machine one thread trained
    35x faster than two.
    """
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
    _prepare_out(out)
    log = out / "runs.jsonl"
    records = read_jsonl(log)
    done = {r["key"] for r in records}
    todo = [(t, pe, s, lr) for t in p.tasks for pe in p.pes for lr in p.lrs for s in range(p.seeds)
            if run_key(t, pe, s, lr, p) not in done]
    total = len(p.tasks) * len(p.pes) * len(p.lrs) * p.seeds
    print(f"lengthgen: {total - len(todo)}/{total} runs cached in {out}, {len(todo)} to do on {dev}",
          file=sys.stderr)
    for task, pe, seed, lr in tqdm(todo, desc="runs", disable=not progress, file=sys.stderr):
        record = _run_one(task, pe, seed, lr, p, dev, progress)
        append_jsonl(log, record)
        records.append(record)
        print(f"lengthgen: {task} {pe} seed {seed} lr {lr:g}: test acc {100 * record['accuracy']:.1f}%, train acc "
              f"{100 * record['train_accuracy']:.1f}%, train {record['train_seq_per_s']:.0f} seq/s, "
              f"eval {record['eval_seq_per_s']:.0f} seq/s", file=sys.stderr)
        write_outputs(out, records, p)
    return write_outputs(out, records, p)
