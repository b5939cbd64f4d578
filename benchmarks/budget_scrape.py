"""What the budget gauges add to one `GET /metrics` scrape: 50 budgets (40 on shared scopes, 10 per-org team
budgets over 20 orgs, each org with spend), counters in this process and in a real redis-server.

    python benchmarks/budget_scrape.py [--scrapes 200]

Each variant is a gateway built in this process (fake backend, keys in 20 orgs); scrapes go through the ASGI
app (no sockets). Reported per variant: the whole scrape (ms, median and p99) and, alone, the budget read
(`budget_series`: the known orgs' query, one read of 250 counters) and its rendering; and the scrape of the
same gateway with no budgets. Prints a summary and writes benchmarks/results/budget_scrape.json. A rough
number on a shared machine, not a target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from admission import start_redis
from margin import keys
from margin.api.observability import budget_series
from margin.app import build_app
from margin.config import Settings, parse_settings
from margin.ledger import db
from margin.telemetry.budgets import render

RESULTS = Path(__file__).resolve().parent / "results"
ORGS = 20
CHAT = {"model": "bench", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def budgets(count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(count):
        if i % 5 == 0:  # a per-org budget: one counter per org
            scope: dict[str, Any] = {"kind": "team", "value": "t"}
        else:
            scope = {"kind": "model", "value": "bench"} if i % 2 else {"kind": "global"}
        unit = {"usd": "1000"} if i % 3 else {"tokens": 10**9}
        out.append({"name": f"b{i}", "scope": scope, **unit, "period": ("hour", "day", "month", "lifetime")[i % 4]})
    return out


def settings(workdir: Path, name: str, count: int, redis_url: str | None) -> Settings:
    storage: dict[str, Any] = {"ledger": f"sqlite:///{workdir / f'{name}.db'}"}
    if redis_url:
        storage["redis"] = redis_url
    data = {
        "storage": storage,
        "backends": {"up": {"kind": "fake", "output_tokens": 4}},
        "models": {"bench": {"backend": "up", "price": {"input": "0.15", "output": "0.60", "version": "b"}}},
        "budgets": budgets(count),
    }
    return parse_settings(data)


def make_keys(url: str) -> tuple[str, list[str]]:
    db.upgrade(url)
    engine = db.make_sync_engine(url)
    try:
        _, admin = keys.create_key(engine, keys.NewKey("ops", None, {}, None, True, None))
        members = [
            keys.create_key(engine, keys.NewKey(f"k{i}", "t", {}, f"org{i}", False, None))[1] for i in range(ORGS)
        ]
    finally:
        engine.dispose()
    return admin, members


async def timed(call: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 3),
    }


async def variant(config: Settings, scrapes: int) -> dict[str, Any]:
    admin, members = make_keys(config.storage.ledger)
    app = build_app(config)
    async with app.router.lifespan_context(app):
        services = app.state.services
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            for key in members:  # spend in every org
                answer = await http.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"})
                assert answer.status_code == 200, answer.text
            await services.drain()
            auth = {"authorization": f"Bearer {admin}"}

            async def scrape() -> None:
                assert (await http.get("/metrics", headers=auth)).status_code == 200

            await timed(scrape, 20)  # warm-up
            whole = await timed(scrape, scrapes)
            series = await budget_series(services)
            read = await timed(lambda: budget_series(services), scrapes)

            async def rendering() -> None:
                render(series)

            drawn = await timed(rendering, scrapes)
    return {"scrape": summary(whole), "budget_read": summary(read), "budget_render": summary(drawn),
            "series": len(series)}  # fmt: skip


async def run(workdir: Path, count: int, scrapes: int, redis_url: str) -> dict[str, Any]:
    out = {}
    for name, url in (("local", None), ("redis", redis_url)):
        out[name] = await variant(settings(workdir, name, count, url), scrapes)
        out[f"{name}_no_budgets"] = await variant(settings(workdir, f"{name}0", 0, url), scrapes)
        print(name, json.dumps(out[name]), "| no budgets:", json.dumps(out[f"{name}_no_budgets"]["scrape"]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=int, default=50)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "budget_scrape.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis, redis_url = start_redis(workdir)
        try:
            variants = asyncio.run(run(workdir, args.budgets, args.scrapes, redis_url))
        finally:
            redis.terminate()
            redis.wait()
    result = {
        "benchmark": "budget_scrape",
        "what": f"one /metrics scrape through the ASGI app with {args.budgets} budgets ({ORGS} orgs), and alone "
        "the budget read and its rendering; the same gateway without budgets for comparison",
        "variants": variants,
        "scrapes": args.scrapes,
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
