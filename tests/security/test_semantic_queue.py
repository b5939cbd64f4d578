"""The semantic cache embeds each lookup on one thread (the real MiniLM). Before, its queue had no bound: one
client's burst of 300 distinct chats queued 300 lookups, and every other caller's chat waited behind them (32 s
on a 2-core machine). Past `cache.semantic.max_queued_lookups` a request now skips the lookup and goes on as a
miss, through a running `margin serve` over HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.security.conftest import ServeFactory

CONFIG = {"cache": {"semantic": {"enabled": True, "max_queued_lookups": 4}}}
FLOOD = 300


def chat(tag: str) -> dict[str, Any]:
    question = f"question {tag}: " + "about the weather and the tides of the northern sea " * 16  # ~850 characters
    return {"model": "fake-chat", "temperature": 0, "messages": [{"role": "user", "content": question}]}


def test_a_burst_of_lookups_does_not_hold_other_callers_chats(served: ServeFactory) -> None:
    async def attack(url: str) -> tuple[int, float, set[int]]:
        limits = httpx.Limits(max_connections=FLOOD + 10)
        async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
            assert (await client.post("/v1/chat/completions", json=chat("warm-up"))).status_code == 200  # loads MiniLM
            flood = [asyncio.create_task(client.post("/v1/chat/completions", json=chat(str(i)))) for i in range(FLOOD)]
            await asyncio.sleep(0.5)
            started = time.perf_counter()
            probe = await client.post("/v1/chat/completions", json=chat("another caller"))
            waited = time.perf_counter() - started
            answers = await asyncio.gather(*flood)
            return probe.status_code, waited, {answer.status_code for answer in answers}

    with served(CONFIG) as gw:
        status, waited, flood = asyncio.run(attack(gw.url))
    assert status == 200 and flood == {200}
    assert waited < 8, f"another caller's chat waited {waited:.1f}s behind the burst's lookups"
