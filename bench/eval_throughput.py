"""Prefill throughput of the ``longseq eval`` engine vs the usual baselines, on the embedded model.

    PYTHONPATH=src python bench/eval_throughput.py [--lengths 2k,4k,8k] [--repeats 2]

Compares, in one process and on the same random token ids:
  (a) plain transformers, fp32, one forward over the full sequence with all logits, no KV cache
      (what lm-evaluation-harness's HF backend and LongChat's eval do for a prompt);
  engine: the prefill of ``longseq.models.generation.LocalLM``, the engine of ``longseq eval`` (bf16 where
      native, chunked, decoder body without the LM head, last-position logits only);
  (b) llama.cpp (llama-cpp-python) on the same GGUF file, when the package is importable.
Prints tokens/s per length and the ratios engine / (a) and engine / (b). The best of ``--repeats``
timings is kept (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from longseq.core.runtime import tune_process  # noqa: E402

tune_process()  # what every longseq command does, before torch loads; the baseline shares the process


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    import torch
    from transformers import DynamicCache

    from longseq.core.parsing import parse_lengths
    from longseq.models.generation import LocalLM
    from longseq.models.loading import ALIASES, _alias_file, load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="2k,4k,8k")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=16384)
    args = ap.parse_args()
    lengths = parse_lengths(args.lengths)

    engine = LocalLM.load(args.model, chunk_size=args.chunk_size)
    base, _ = load_model(args.model, dtype="float32")
    print(f"model {args.model}; engine dtype {next(engine.model.parameters()).dtype}, chunk {args.chunk_size}; "
          f"baseline (a) float32 full forward; torch threads {torch.get_num_threads()}")

    llama = None
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("(b) llama.cpp: skipped, llama-cpp-python is not installed")
    else:
        if args.model in ALIASES:
            gguf = str(_alias_file(args.model, ALIASES[args.model]))
            llama = llama_cpp.Llama(model_path=gguf, n_ctx=max(lengths) + 16, n_threads=os.cpu_count(), verbose=False)
        else:
            print("(b) llama.cpp: skipped, --model is not a GGUF alias")

    print(f"{'length':>7} {'(a) tok/s':>10} {'engine tok/s':>13} {'x (a)':>7} {'(b) tok/s':>10} {'x (b)':>7}")
    gen = torch.Generator().manual_seed(0)
    for length in lengths:
        ids = torch.randint(100, 40000, (1, length), generator=gen)

        def plain():
            with torch.inference_mode():
                base(input_ids=ids, use_cache=False)

        def ours():
            with torch.inference_mode():
                engine._prefill(ids, DynamicCache(config=engine.model.config), want_logits=True)

        t_a = best_of(plain, args.repeats)
        t_e = best_of(ours, args.repeats)
        row = f"{length:>7} {length / t_a:>10.0f} {length / t_e:>13.0f} {t_a / t_e:>7.2f}"
        if llama is not None:
            toks = ids[0].tolist()

            def cpp():
                llama.reset()
                llama.eval(toks)

            t_b = best_of(cpp, args.repeats)
            row += f" {length / t_b:>10.0f} {t_b / t_e:>7.2f}"
        else:
            row += f" {'-':>10} {'-':>7}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
