"""Memory-stream performance: retrieval latency p50/p99 at 10k and 100k items, and ingest throughput.

    PYTHONPATH=src python bench/memory.py                       # 10k and 100k items, 200 queries each
    PYTHONPATH=src python bench/memory.py --sizes 10k --queries 50 --ingest-kb 50

Retrieval is ``MemoryStream.search(k=5)`` (sqlite-vec bit-index KNN, exact float re-scoring, recency term),
timed without the query embedding, against two baselines on the same vectors: brute-force numpy over a
float32 matrix already in RAM, and sqlite-vec's own float ``vec0`` KNN. Recall@5 is measured against exact
numpy ranking with the same score (cosine + recency). Vectors are 384-d, clustered (500 centres), so that
neighbours are meaningful; the target is p99 < 50 ms at 100k items.

Ingest throughput runs the real ``ingest_file`` path (SmolLM2 tokenizer for token counts, all-MiniLM-L6-v2 or
the hashing embedder) on a generated text file and reports tokens/s.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from longseq.core.parsing import parse_csv
from longseq.memory.embedders import HashingEmbedder, load_embedder
from longseq.memory.ingest import ingest_file, token_counter
from longseq.memory.store import MemoryStream, Ranking, connect

DIM = 384


def clustered(n: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    x = centers[rng.integers(0, len(centers), n)] + 0.8 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def parse_counts(text: str) -> list[int]:
    """``"10k,100k"`` -> [10000, 100000] (decimal k: these are item counts, not token lengths)."""
    return [int(float(p[:-1]) * 1000) if p.lower().endswith("k") else int(p) for p in parse_csv(text)]


def pct(ts: list[float]) -> tuple[float, float]:
    return float(np.percentile(ts, 50) * 1e3), float(np.percentile(ts, 99) * 1e3)


def bench_retrieval(n: int, queries: int, tmp: Path, rng: np.random.Generator) -> dict[str, float]:
    centers = rng.standard_normal((500, DIM))
    x = clustered(n, rng, centers)
    ranking = Ranking()
    s = MemoryStream(tmp / f"r{n}.db", HashingEmbedder(DIM), ranking)
    t0 = time.perf_counter()
    for i in range(0, n, 2000):
        j = min(n, i + 2000)
        s.add([f"item {k}" for k in range(i, j)], [f"k{k}" for k in range(i, j)], [8] * (j - i),
              embeddings=x[i:j])
    insert_s = time.perf_counter() - t0
    q = clustered(queries, rng, centers)
    ids = np.arange(1, n + 1)
    rec = ranking.recency((n + 1 - ids).astype(np.float64))
    ours, brute, recall = [], [], []
    s.search(q[0], k=5)  # warm the page cache
    for v in q:
        t = time.perf_counter()
        hits = s.search(v, k=5)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        scores = x @ v + rec
        top = np.argpartition(-scores, 5)[:5]
        brute.append(time.perf_counter() - t)
        recall.append(len({h.item.id for h in hits} & set((top + 1).tolist())) / 5)
    # sqlite-vec's float index on the same vectors
    conn = connect(tmp / f"f{n}.db")
    conn.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{DIM}] distance_metric=cosine)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)", ((i + 1, x[i].tobytes()) for i in range(n)))
    conn.execute("COMMIT")
    flt = []
    for v in q[: max(10, queries // 4)]:
        t = time.perf_counter()
        conn.execute("SELECT rowid FROM v WHERE embedding MATCH ? AND k = 20", (v.tobytes(),)).fetchall()
        flt.append(time.perf_counter() - t)
    conn.close()
    s.close()
    (o50, o99), (b50, b99), (f50, f99) = pct(ours), pct(brute), pct(flt)
    return {"n": n, "ours_p50": o50, "ours_p99": o99, "numpy_p50": b50, "numpy_p99": b99, "vec0_float_p50": f50,
            "vec0_float_p99": f99, "recall@5": float(np.mean(recall)), "insert_items_per_s": n / insert_s}


def bench_ingest(kb: int, embedder_name: str, tmp: Path) -> dict[str, float]:
    r = random.Random(0)
    words = ("the committee discussed budget library schedule river mountain castle code number engineer "
             "harbour winter garden station museum").split()
    doc = tmp / f"doc-{embedder_name}.txt"
    with open(doc, "w") as fh:
        while fh.tell() < kb * 1024:
            fh.write(" ".join(r.choice(words) for _ in range(r.randint(6, 20))).capitalize() + ". ")
    count = token_counter("smollm2-135m")
    embedder = load_embedder(embedder_name)
    s = MemoryStream(tmp / f"ingest-{embedder_name}.db", embedder)
    t = time.perf_counter()
    res = ingest_file(s, doc, count, block_tokens=256, progress=False)
    dt = time.perf_counter() - t
    tokens = s.stats()["tokens"]
    s.close()
    return {"embedder": embedder_name, "kb": kb, "items": res["items"], "tokens": tokens, "seconds": dt,
            "tokens_per_s": tokens / dt}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="item counts (e.g. 10k,100k)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ingest-kb", type=int, default=200, help="size of the generated text for ingest throughput")
    ap.add_argument("--embedders", default="hash-384,all-minilm-l6-v2")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("| items | ours p50 ms | ours p99 ms | numpy brute p50 / p99 ms | vec0 float KNN p50 / p99 ms | "
              "recall@5 vs exact | insert items/s |")
        print("|---|---|---|---|---|---|---|")
        for n in parse_counts(args.sizes):
            m = bench_retrieval(n, args.queries, tmp, rng)
            print(f"| {n:,} | {m['ours_p50']:.1f} | {m['ours_p99']:.1f} | {m['numpy_p50']:.1f} / {m['numpy_p99']:.1f} | "
                  f"{m['vec0_float_p50']:.1f} / {m['vec0_float_p99']:.1f} | {m['recall@5']:.3f} | "
                  f"{m['insert_items_per_s']:,.0f} |", flush=True)
        print()
        print("| embedder | text | items | tokens | seconds | ingest tokens/s |")
        print("|---|---|---|---|---|---|")
        for name in args.embedders.split(","):
            m = bench_ingest(args.ingest_kb, name.strip(), tmp)
            print(f"| {m['embedder']} | {m['kb']} KiB | {m['items']} | {m['tokens']:,} | {m['seconds']:.1f} | "
                  f"{m['tokens_per_s']:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
