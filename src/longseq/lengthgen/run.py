"""``longseq lengthgen``: the length-generalization benchmark of Ruoss et al. (ACL 2023, arXiv 2305.16843).

Train the encoder of :mod:`longseq.lengthgen.randpe` on short inputs of a Chomsky-hierarchy task
(:mod:`longseq.lengthgen.chomsky`), test it on longer ones, and compare positional encodings with their
randomized variants. Protocol (reference ``experiments/``; settings in :mod:`longseq.lengthgen.protocol`):
each step draws one length uniformly from the training lengths for the whole batch; Adam with global-norm
clipping at 1.0; token cross-entropy over every output slot (the reference's, ``loss="full"``) or only the
slots up to the end token (``loss="masked"``). Two metrics per test length: the reference's per-token
accuracy (output tokens up to the end token, averaged within each evaluation batch of 64, then over the
batches) and the per-sequence accuracy (every such token right). The score of a run is the per-token
accuracy averaged over *all* test lengths (the reference example silently drops the first one). A
(task, PE) cell reports the mean over seeds at its best learning rate and the best single run
(:mod:`longseq.lengthgen.report`).

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
from longseq.core.fsutil import append_jsonl, output_errors
from longseq.core.rundir import claim_kind
from longseq.lengthgen.chomsky import get_task, sample_batch
from longseq.lengthgen.guard import check_memory, eval_chunk, load_records
from longseq.lengthgen.protocol import Protocol, make_protocol, run_key, validate
from longseq.lengthgen.randpe import Encoder, ModelConfig
from longseq.lengthgen.report import write_outputs
from longseq.models.loading import check_output_path

EVAL_SEED = 2**40  # evaluation batches use their own seed stream, the same for every run


def make_tape(x: np.ndarray, out_len: int, blank: int, device: Any) -> torch.Tensor:
    """The model's input: the task input ``(B, n_in)`` followed by ``out_len`` blank slots -> ``(B, n_in +
    out_len)`` LongTensor on ``device``."""
    blanks = np.full((x.shape[0], out_len), blank, dtype=np.int64)
    return torch.from_numpy(np.concatenate([x, blanks], axis=1)).to(device)


def build_encoder(task_name: str, pe: str, p: Protocol, device: Any) -> Encoder:
    """A fresh :class:`~longseq.lengthgen.randpe.Encoder` sized by ``p`` for ``task_name``, on ``device``."""
    task = get_task(task_name)
    cfg = ModelConfig(vocab_size=task.input_size, output_size=task.output_size, pe=pe, d_model=p.d_model,
                      n_layers=p.n_layers, n_heads=p.n_heads, d_ff=p.d_ff, dropout=p.dropout, max_len=p.max_len)
    return Encoder(cfg).to(device)


def token_loss(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean token cross-entropy. logits ``(B, T_out, C)``, y and mask ``(B, T_out)``.

    ``"full"``: over every output slot, the 0-padding after an end token included, as the reference's
    ``experiments/example.py`` (``mean`` over batch and slots of the summed one-hot cross-entropy);
    ``"masked"``: only over the slots up to the end token.
    """
    if loss == "masked":
        return F.cross_entropy(logits[mask], y[mask])
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def hits(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[int, int, int]:
    """``(right tokens, counted tokens, right sequences)`` of a batch: tokens up to the end token (the
    reference's ``accuracy_mask``); a sequence is right when all of them are. Shapes as in :func:`token_loss`."""
    right = (logits.argmax(-1) == y) & mask
    return int(right.sum()), int(mask.sum()), int((right | ~mask).all(dim=1).sum())


def train_encoder(task_name: str, pe: str, seed: int, lr: float, p: Protocol, device: str = "cpu",
                  progress: bool = True) -> tuple[Encoder, dict[str, float]]:
    """Train one model; returns ``(model, stats)``: the per-token and per-sequence training accuracy over the
    last 100 steps (``train_accuracy``, ``train_sequence_accuracy``) and the throughput."""
    torch.manual_seed(seed)
    model = build_encoder(task_name, pe, p, device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    lengths = np.random.default_rng([seed, 7]).choice(np.array(p.train_lengths), p.steps)
    window: list[tuple[float, float]] = []  # (per-token, per-sequence) accuracy of the last 100 steps
    start = time.perf_counter()
    bar = tqdm(range(p.steps), desc=f"{task_name}/{pe}/s{seed}", leave=False, disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    model.train()
    for step in bar:
        x, y, mask = sample_batch(task_name, int(lengths[step]), p.batch_size, seed=seed * 2**32 + step)
        out_len = y.shape[1]
        logits = model(make_tape(x, out_len, model.blank, device))[:, -out_len:]
        y_t, m_t = torch.from_numpy(y).to(device), torch.from_numpy(mask).to(device)
        loss = token_loss(logits, y_t, m_t, p.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.clip)
        opt.step()
        tok_right, tok_total, seq_right = hits(logits, y_t, m_t)
        window = (window + [(tok_right / tok_total, seq_right / len(x))])[-100:]
        if step % 20 == 0 or step == p.steps - 1:
            rate = (step + 1) * p.batch_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{np.mean([w[0] for w in window]):.2f}",
                            seq_s=f"{rate:.0f}")
    seconds = time.perf_counter() - start
    stats = {"train_accuracy": float(np.mean([w[0] for w in window])),
             "train_sequence_accuracy": float(np.mean([w[1] for w in window])), "train_seconds": seconds,
             "train_seq_per_s": p.steps * p.batch_size / seconds}
    return model, stats


def _evaluate_length(model: Encoder, task_name: str, n: int, p: Protocol, device: str) -> tuple[float, float]:
    """(per-token, per-sequence) accuracy at input length ``n`` over ``p.eval_samples`` sequences.

    Per-token accuracy as the reference's ``range_evaluation``: the share of right tokens (up to the end
    token) within each batch of ``p.eval_batch`` sequences, averaged over the batches."""
    task = get_task(task_name)
    out_len, tape = task.output_length(n), task.tape_length(n)
    chunk = eval_chunk(p, tape)  # fewer sequences per forward on long tapes (memory)
    batch_acc, seq_right = [], 0
    for i in range(0, p.eval_samples, p.eval_batch):
        b = min(p.eval_batch, p.eval_samples - i)
        x, y, mask = sample_batch(task_name, n, b, seed=EVAL_SEED + i)
        tok_right = tok_total = 0
        for j in range(0, b, chunk):
            logits = model(make_tape(x[j:j + chunk], out_len, model.blank, device))[:, -out_len:]
            r, t, s = hits(logits, torch.from_numpy(y[j:j + chunk]).to(device),
                           torch.from_numpy(mask[j:j + chunk]).to(device))
            tok_right, tok_total, seq_right = tok_right + r, tok_total + t, seq_right + s
        batch_acc.append(tok_right / tok_total)
    return float(np.mean(batch_acc)), seq_right / p.eval_samples


def evaluate_model(model: Encoder, task_name: str, lengths: Sequence[int], p: Protocol, device: str = "cpu",
                   progress: bool = True) -> dict[str, dict[int, float]]:
    """Accuracy at each length: ``{"token": {n: acc}, "sequence": {n: acc}}`` (dropout off; randomized
    positions still drawn, reproducibly: the same draws for every run)."""
    model.eval()
    result: dict[str, dict[int, float]] = {"token": {}, "sequence": {}}
    try:
        with torch.no_grad():
            for n in tqdm(lengths, desc="eval", leave=False, disable=not progress, file=sys.stderr):
                model.position_generator = torch.Generator().manual_seed(EVAL_SEED + n)
                result["token"][n], result["sequence"][n] = _evaluate_length(model, task_name, n, p, device)
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
    out.mkdir(parents=True, exist_ok=True)
    claim_kind(out, "lengthgen")  # refuses a folder of another command, else marks it as a lengthgen folder


def _run_one(task: str, pe: str, seed: int, lr: float, p: Protocol, device: str,
             progress: bool) -> dict[str, Any]:
    """Train and test one (task, PE, seed, lr) run; returns its ``runs.jsonl`` record."""
    model, stats = train_encoder(task, pe, seed, lr, p, device, progress)
    t0 = time.perf_counter()
    acc = evaluate_model(model, task, p.test_lengths, p, device, progress)
    eval_seconds = time.perf_counter() - t0
    return {"key": run_key(task, pe, seed, lr, p), "fingerprint": p.fingerprint(), "task": task, "pe": pe,
            "seed": seed, "lr": lr, "loss": p.loss,
            "accuracy": float(np.mean(list(acc["token"].values()))),
            "sequence_accuracy": float(np.mean(list(acc["sequence"].values()))),
            "per_length": {str(k): v for k, v in acc["token"].items()},
            "per_length_sequence": {str(k): v for k, v in acc["sequence"].items()},
            **stats, "eval_seconds": eval_seconds,
            "eval_seq_per_s": len(p.test_lengths) * p.eval_samples / eval_seconds}


def run_benchmark(out: str | Path, protocol: Protocol | None = None, device: str = "auto",
                  progress: bool = True, threads: int | None = 1, **overrides: Any) -> dict[str, Any]:
    """Run (or resume) the benchmark into ``out``; returns the summary dict.

    Pass a :class:`~longseq.lengthgen.protocol.Protocol`, or ``preset=`` and overrides (``tasks``, ``pes``,
    ``steps``, ``loss``, ...). Finished runs already in ``out/runs.jsonl`` with the same protocol fingerprint
    are not redone. ``threads``: torch CPU threads (``None`` keeps torch's default). One is the default
    because the matrices of a width-64 model are too small to split: on this shared 2-core machine one
    thread trained 35x faster than two. Everything is checked (protocol, device, memory, ``out`` and its
    ``runs.jsonl``) before anything is written.
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
    check_memory(p, dev)
    out = Path(out)
    check_output_path(out)
    log = out / "runs.jsonl"
    records = load_records(log, p)
    _prepare_out(out)
    done = {r["key"] for r in records}
    todo = [(t, pe, s, lr) for t in p.tasks for pe in p.pes for lr in p.lrs for s in range(p.seeds)
            if run_key(t, pe, s, lr, p) not in done]
    total = len(p.tasks) * len(p.pes) * len(p.lrs) * p.seeds
    print(f"lengthgen: {total - len(todo)}/{total} runs cached in {out}, {len(todo)} to do on {dev}",
          file=sys.stderr)
    for task, pe, seed, lr in tqdm(todo, desc="runs", disable=not progress, file=sys.stderr):
        record = _run_one(task, pe, seed, lr, p, dev, progress)
        with output_errors(out):
            append_jsonl(log, record)
            records.append(record)
            write_outputs(out, records, p)
        print(f"lengthgen: {task} {pe} seed {seed} lr {lr:g}: test acc {100 * record['accuracy']:.1f}% per token, "
              f"{100 * record['sequence_accuracy']:.1f}% per sequence; train acc "
              f"{100 * record['train_accuracy']:.1f}% per token, train {record['train_seq_per_s']:.0f} seq/s, "
              f"eval {record['eval_seq_per_s']:.0f} seq/s", file=sys.stderr)
    with output_errors(out):
        return write_outputs(out, records, p)
