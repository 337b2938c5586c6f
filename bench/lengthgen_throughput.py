"""Are the task generators a bottleneck? Sequences/s of each generator vs one training step of the paper's
model (5 layers, width 64, 8 heads), both at batch 128, at a training length (40) and the longest test
length (500). Run: PYTHONPATH=src python bench/lengthgen_throughput.py [--lengths 40,500] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from longseq.lengthgen.chomsky import CHOMSKY_TASKS, get_task, sample_batch
from longseq.lengthgen.protocol import make_protocol
from longseq.lengthgen.run import build_encoder, make_tape, token_loss


def rate(fn, batch: int, min_time: float = 0.3) -> float:
    fn()  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_time:
        fn()
        n += 1
    return n * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="40,500")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tasks", default=",".join(CHOMSKY_TASKS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = make_protocol(tasks=["parity_check"], pes=["rope"])
    print(f"{'task':30s} {'n':>4s} {'generator seq/s':>16s} {'train step seq/s':>17s} {'ratio':>7s}")
    for name in args.tasks.split(","):
        task = get_task(name)
        model = build_encoder(name, "randomized_rope", p, "cpu")
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        for n in (int(x) for x in args.lengths.split(",")):
            gen = rate(lambda: sample_batch(name, n, args.batch, seed=0), args.batch)
            x, y, m = sample_batch(name, n, args.batch, seed=0)
            tape = make_tape(x, y.shape[1], model.blank, "cpu")
            yt, mt = torch.from_numpy(y), torch.from_numpy(m)

            def step() -> None:
                logits = model(tape)[:, -y.shape[1]:]
                loss = token_loss(logits, yt, mt, p.loss)  # the reference's loss, as in training
                opt.zero_grad()
                loss.backward()
                opt.step()

            train = rate(step, args.batch, min_time=0.5 if n < 100 else 0.01)
            print(f"{name:30s} {n:4d} {gen:16.0f} {train:17.0f} {gen / train:6.0f}x", flush=True)


if __name__ == "__main__":
    main()
