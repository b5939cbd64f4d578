"""Hard budgets hold against what an honest upstream may report and whatever the candidates are priced at; the
names budgets carry reach headers safely; a request the server cancels is recorded as such."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.helpers import Gateway, fake_settings, gateway, live_server

CHAT = "/v1/chat/completions"
PER_MILLION = {"input": "500", "output": "0", "version": "t"}  # $0.0005 an input token


async def two_tokens_a_character(request: Request) -> JSONResponse:
    """An upstream whose tokenizer honestly spends 2 tokens on each character (emoji, some CJK text)."""
    body = await request.json()
    prompt = 2 * sum(len(m["content"]) for m in body["messages"])
    usage = {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1}
    choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [choice], "usage": usage})  # fmt: skip


async def test_an_honest_count_past_the_estimate_cannot_pass_a_hard_budget(db_path: Path) -> None:
    """60 emoji: one token per 3 characters estimates 20, the upstream bills 120 ($0.06 against $0.05). The
    reservation is the JSON's bytes (310: no honest count passes them), so the request is refused before it
    runs; 5 emoji (90 bytes, $0.045) fit, and are charged their 10 tokens."""
    upstream = Starlette(routes=[Route("/v1/chat/completions", two_tokens_a_character, methods=["POST"])])
    async with live_server(upstream) as url:
        settings = fake_settings(
            db_path,
            backends={"api": {"kind": "openai", "base_url": url + "/v1"}},
            models={"m": {"backend": "api", "price": PER_MILLION}},
            budgets=[{"name": "g", "scope": {"kind": "global"}, "usd": "0.05", "period": "month"}],
        )
        async with gateway(settings) as gw:
            emoji = {"model": "m", "messages": [{"role": "user", "content": "\U0001f642" * 60}], "max_tokens": 1}
            refused = await gw.http.post(CHAT, json=emoji)
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
            small = {"model": "m", "messages": [{"role": "user", "content": "\U0001f642" * 5}], "max_tokens": 1}
            assert (await gw.http.post(CHAT, json=small)).status_code == 200  # 10 tokens, within what it reserved
            rows = await gw.rows()
            assert sum(r.cost_nanousd or 0 for r in rows) <= 50_000_000
            assert [(r.input_tokens, r.usage_source) for r in rows if r.status == "ok"] == [(10, "backend")]


async def test_a_fallback_without_a_price_does_not_stop_the_reservation_of_a_priced_model(db_path: Path) -> None:
    """`unknown_price: allow`, a priced model whose fallback has no price: the priced model's worst case is
    still reserved, so concurrent requests cannot spend past the hard budget together."""
    settings = fake_settings(
        db_path,
        backends={"api": {"kind": "fake", "output_tokens": 40}},
        models={
            "m": {
                "backend": "api",
                "price": {"input": "0", "output": "1000", "version": "t"},
                "fallbacks": ["mystery"],
            },
            "x": {"backend": "api"},
        },
        budgets=[{"name": "g", "scope": {"kind": "global"}, "usd": "0.05", "period": "month"}],
        admission={"unknown_price": "allow"},
    )
    async with gateway(settings) as gw:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}
        replies = await asyncio.gather(*(gw.http.post(CHAT, json=body) for _ in range(5)))
        assert sorted(r.status_code for r in replies) == [200, 429, 429, 429, 429]
        assert sum(r.cost_nanousd or 0 for r in await gw.rows()) == 40_000_000  # $0.04 of $0.05


async def test_reject_names_the_candidate_without_a_price(db_path: Path) -> None:
    settings = fake_settings(
        db_path,
        models={"m": {"backend": "api", "price": PER_MILLION, "fallbacks": ["mystery"]}, "mystery": {"backend": "api"}},
        budgets=[{"name": "g", "scope": {"kind": "global"}, "usd": "5", "period": "month"}],
    )
    async with gateway(settings) as gw:
        reply = await gw.http.post(CHAT, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        error = reply.json()["error"]
        assert reply.status_code == 403 and error["code"] == "price_unknown" and "`mystery`" in error["message"]


async def test_a_budget_named_in_any_script_reaches_the_warning_header(db_path: Path) -> None:
    """Budget names may be Unicode; the warning header's value is Latin-1 on the wire, so what it cannot hold
    is percent-encoded. It used to fail the answer (500) after its row was written as a success."""
    budget = {"name": "budżet", "scope": {"kind": "global"}, "usd": "0.01", "mode": "soft", "alert_pct": 1}
    models: dict[str, Any] = {"priced": {"backend": "api", "price": {"input": "0", "output": "1000", "version": "t"}}}
    async with gateway(fake_settings(db_path, budgets=[budget], models=models)) as gw:
        body = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        whole = await gw.http.post(CHAT, json=body)
        assert whole.status_code == 200 and whole.headers["x-margin-budget-warning"].startswith("bud%C5%BCet=")
        async with gw.http.stream("POST", CHAT, json={**body, "stream": True}) as stream:
            text = b"".join([chunk async for chunk in stream.aiter_bytes()])
        assert stream.status_code == 200 and text.endswith(b"data: [DONE]\n\n")
        assert stream.headers["x-margin-budget-warning"].startswith("bud%C5%BCet=")
        assert [r.http_status for r in await gw.rows()] == [200, 200]


async def test_a_request_the_server_cancels_is_recorded_as_cancelled(db_path: Path) -> None:
    async with gateway(fake_settings(db_path, backends={"fake": {"kind": "fake", "ttft_ms": 5000}})) as gw:
        body = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
        call = asyncio.create_task(gw.http.post(CHAT, json=body))
        await asyncio.sleep(0.5)
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        await gw.services.drain()
        assert [(r.status, r.http_status, r.error_code) for r in await gw.rows()] == [("cancelled", 499, "cancelled")]


CENT = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}  # $0.01 each


@asynccontextmanager
async def _three_cents_on_redis(db_path: Path, redis_url: str) -> AsyncIterator[tuple[Gateway, Any]]:
    """A gateway on an empty Redis with a $0.03 hard global budget on `priced` (CENT costs $0.01), and a client
    of that Redis."""
    from redis import asyncio as aioredis

    budget = {"name": "three", "scope": {"kind": "global"}, "usd": "0.03", "period": "lifetime"}
    models: dict[str, Any] = {"priced": {"backend": "api", "price": {"input": "0", "output": "2500", "version": "t"}}}
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    try:
        settings = fake_settings(db_path, budgets=[budget], models=models, storage={"redis": redis_url})
        async with gateway(settings) as gw:
            yield gw, client
    finally:
        await client.aclose()


async def test_counters_a_redis_restart_lost_are_reconciled_from_the_ledger(db_path: Path, redis_url: str) -> None:
    """Redis restarted without persistence after two requests: this process had reconciled the counter once
    and would have gone on from 0. The admit script finds it gone, the counter is reconciled from the ledger
    again, and the hard budget still holds: one more request fits, the next does not."""
    async with _three_cents_on_redis(db_path, redis_url) as (gw, client):
        assert [(await gw.http.post(CHAT, json=CENT)).status_code for _ in range(2)] == [200, 200]
        assert len(await gw.rows()) == 2  # in the ledger (rows still in the outbox would not be counted)
        await client.flushdb()  # the restart
        assert [(await gw.http.post(CHAT, json=CENT)).status_code for _ in range(2)] == [200, 429]
        assert sum(r.cost_nanousd or 0 for r in await gw.rows()) == 30_000_000


async def test_a_ledger_that_cannot_be_read_to_reconcile_a_budget_is_a_503_to_retry(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request of a counter reconciles it from the ledger; a locked or unreachable ledger used to be an
    internal error (500, a traceback). It is a 503 with retry-after, nothing is reserved, and the retry works."""
    from margin.governance import service

    reconcile = service.ledger_spent

    async def locked(*args: Any) -> int:
        raise sa.exc.OperationalError("SELECT …", {}, Exception("database is locked"))

    budget = {"name": "g", "scope": {"kind": "global"}, "usd": "5", "period": "month"}
    body = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with gateway(fake_settings(db_path, budgets=[budget])) as gw:
        monkeypatch.setattr(service, "ledger_spent", locked)
        refused = await gw.http.post(CHAT, json=body)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "governance_unavailable"
        assert await gw.services.governance.store.pending() == 0
        monkeypatch.setattr(service, "ledger_spent", reconcile)
        assert (await gw.http.post(CHAT, json=body)).status_code == 200


async def test_an_admit_whose_answer_was_lost_is_released_not_charged(db_path: Path, redis_url: str) -> None:
    """Redis ran the admit script, then the connection broke before its answer came back: the client got a 503,
    and the reservation stayed for the reaper to charge in full, a request that never happened spending the
    budget. It is released at once; if Redis is still down then, on the reaper's next pass."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    async with _three_cents_on_redis(db_path, redis_url) as (gw, _):
        body = CENT
        governance = gw.services.governance
        store: Any = governance.store
        assert (await gw.http.post(CHAT, json=body)).status_code == 200  # the counter is seeded
        scripts, real_admit, real_settle = store._scripts, store._scripts["admit"], store._scripts["settle"]
        down = {"settle": 0}

        async def answer_lost(**kwargs: Any) -> Any:
            await real_admit(**kwargs)  # it ran in Redis...
            raise RedisConnectionError("Connection reset by peer")  # ...and its answer was lost

        async def settle_while_down(**kwargs: Any) -> Any:
            if down["settle"]:
                down["settle"] -= 1
                raise RedisConnectionError("Connection refused")
            return await real_settle(**kwargs)

        scripts["admit"], scripts["settle"] = answer_lost, settle_while_down
        lost = await gw.http.post(CHAT, json=body)
        assert lost.status_code == 503 and lost.json()["error"]["code"] == "governance_unavailable"
        await gw.services.drain()  # the first request's settle
        assert await store.pending() == 0  # released
        down["settle"] = 1  # the next answer is lost, and Redis stays down for the release
        assert (await gw.http.post(CHAT, json=body)).status_code == 503
        scripts["admit"] = real_admit
        await gw.services.drain()
        assert await store.pending() == 1  # the second one: kept for the reaper's pass
        await governance._release_unanswered()
        assert await store.pending() == 0 and await store.reap() == 0  # nothing left to charge
        # the budget holds what was spent: $0.01 of $0.03, so two more fit and the next does not
        assert [(await gw.http.post(CHAT, json=body)).status_code for _ in range(3)] == [200, 200, 429]
