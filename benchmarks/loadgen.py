"""A small open-loop load generator (used by the gateway benchmarks): requests start on a fixed schedule
(rate × duration, or Poisson arrivals), whatever happened to earlier ones, so a slow server shows up as
latency and errors instead of a lower offered rate. Latency is taken from the scheduled start."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass
class Result:
    offered_rps: float
    duration_s: float
    latencies_ms: list[float]
    errors: int
    late_starts: int  # requests the client itself could not start within 5 ms of schedule

    def summary(self) -> dict[str, Any]:
        ok = sorted(self.latencies_ms)
        total = len(ok) + self.errors
        return {
            "offered_rps": self.offered_rps,
            "achieved_rps": round(len(ok) / self.duration_s, 1),
            "requests": total,
            "errors": self.errors,
            "success_pct": round(100 * len(ok) / total, 3) if total else 0.0,
            "p50_ms": round(_pct(ok, 50), 4) if ok else None,
            "p90_ms": round(_pct(ok, 90), 4) if ok else None,
            "p99_ms": round(_pct(ok, 99), 4) if ok else None,
            "mean_ms": round(statistics.fmean(ok), 4) if ok else None,
            "late_starts": self.late_starts,
        }


def _pct(values: list[float], q: float) -> float:
    rank = max(1, min(len(values), round(q / 100 * len(values) + 0.5)))
    return values[rank - 1]


def session(base_url: str, connections: int = 512) -> aiohttp.ClientSession:
    """The client session the benchmarks use: aiohttp (costs ~1/3 of httpx per request), keep-alive."""
    return aiohttp.ClientSession(base_url, connector=aiohttp.TCPConnector(limit=connections))


async def open_loop(
    client: aiohttp.ClientSession,
    path: str,
    body: bytes,
    rate: float,
    duration_s: float,
    *,
    poisson: bool = False,
    seed: int = 0,
    timeout_s: float = 10.0,
) -> Result:
    rng = random.Random(seed)
    latencies: list[float] = []
    errors = late = 0
    headers = {"content-type": "application/json"}

    async def one(scheduled: float) -> None:
        nonlocal errors, late
        if time.perf_counter() - scheduled > 0.005:
            late += 1
        try:
            async with client.post(
                path, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                await response.read()
                if response.status == 200:
                    latencies.append((time.perf_counter() - scheduled) * 1000)
                else:
                    errors += 1
        except (aiohttp.ClientError, TimeoutError):
            errors += 1

    tasks = []
    start = time.perf_counter() + 0.05
    offset, count = 0.0, int(rate * duration_s)
    for _ in range(count):
        offset += rng.expovariate(rate) if poisson else 1 / rate
        scheduled = start + offset
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    return Result(rate, duration_s, latencies, errors, late)
