"""Streams over a real socket (uvicorn), client disconnects, and backend failures."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import openai
import pytest

from margin.app import build_app
from margin.config import Settings
from margin.services import Services
from tests.helpers import Gateway, fake_settings, gateway, live_server, polls

if TYPE_CHECKING:
    import httpx2

BODY = {"model": "slow", "messages": [{"role": "user", "content": "tell me a long story"}], "stream": True}


def slow_settings(db_path: Path, **backend: object) -> Settings:
    return fake_settings(
        db_path,
        backends={"slow": {"kind": "fake", "output_tokens": 200, "tokens_per_s": 50, "ttft_ms": 20, **backend}},
        models={"slow": {"backend": "slow"}},
    )


async def test_client_disconnect_mid_stream_is_settled_as_client_closed(db_path: Path) -> None:
    app = build_app(slow_settings(db_path))
    async with live_server(app) as url, httpx.AsyncClient(base_url=url) as http:
        async with http.stream("POST", "/v1/chat/completions", json=BODY) as response:
            assert response.status_code == 200
            request_id = response.headers["x-margin-request-id"]
            seen = 0
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    seen += 1
                if seen == 5:
                    break  # leave mid-stream: closing the response drops the connection
        services = app.state.services
        for _ in polls():
            await services.outbox.flush()
            rows = await _rows(services)
            if rows:
                break
            await asyncio.sleep(0.02)
        assert len(rows) == 1
        row = rows[0]
        assert row.request_id == request_id
        assert (row.status, row.http_status) == ("client_closed", 499)
        assert 5 <= row.output_tokens < 200  # what was produced before the stop, counted by the tokenizer
        assert row.usage_source == "tokenizer"
        assert row.e2e_ms < 2000  # 200 tokens at 50/s would take 4 s: the generation was stopped
        assert services.meter.clocks["slow"].active == 0


async def test_live_stream_through_openai_sdk(db_path: Path) -> None:
    app = build_app(slow_settings(db_path, output_tokens=6, tokens_per_s=500))
    async with live_server(app) as url:
        client = openai.AsyncOpenAI(api_key="x", base_url=f"{url}/v1", max_retries=0)
        stream = await client.chat.completions.create(
            model="slow",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces = [c async for c in stream]
        await client.close()
        assert pieces[-1].usage is not None and pieces[-1].usage.completion_tokens == 6
        await app.state.services.outbox.flush()
        row = (await _rows(app.state.services))[0]
        assert row.status == "ok" and row.output_tokens == 6 and row.ttft_ms >= 20


@pytest.mark.parametrize(
    ("status", "exc", "code"),
    [
        (502, openai.InternalServerError, "upstream_error"),
        (504, openai.InternalServerError, "upstream_timeout"),
        (400, openai.BadRequestError, "upstream_rejected"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_backend_errors_map_to_statuses(
    db_path: Path, status: int, exc: type[openai.APIStatusError], code: str, stream: bool
) -> None:
    async with gateway(slow_settings(db_path, fail_status=status)) as gw:
        client = openai.AsyncOpenAI(api_key="x", base_url="http://localhost/v1", http_client=_http(gw), max_retries=0)
        with pytest.raises(exc) as caught:
            await client.chat.completions.create(
                model="slow", messages=[{"role": "user", "content": "x"}], stream=stream
            )
        assert caught.value.status_code == status
        assert caught.value.code == code
        row = (await gw.rows())[0]
        assert (row.status, row.http_status, row.error_code) == (code, status, code)  # the row names the fault


async def test_mid_stream_failure_sends_error_event_and_records_delivered_tokens(db_path: Path) -> None:
    settings = slow_settings(db_path, fail_after_tokens=3, tokens_per_s=1000, report_usage=False)
    async with gateway(settings) as gw:
        client = openai.AsyncOpenAI(api_key="x", base_url="http://localhost/v1", http_client=_http(gw), max_retries=0)
        stream = await client.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "x y"}], stream=True
        )
        text = ""
        with pytest.raises(openai.APIError, match="cut the stream"):
            async for chunk in stream:
                text += chunk.choices[0].delta.content or ""
        assert text == "tok " * 3
        row = (await gw.rows())[0]
        assert (row.status, row.http_status, row.output_tokens, row.input_tokens) == ("upstream_error", 502, 3, 2)


async def test_missing_backend_usage_is_counted_for_include_usage(db_path: Path) -> None:
    settings = slow_settings(db_path, output_tokens=4, tokens_per_s=1000, report_usage=False)
    async with gateway(settings) as gw:
        client = openai.AsyncOpenAI(api_key="x", base_url="http://localhost/v1", http_client=_http(gw))
        stream = await client.chat.completions.create(
            model="slow",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [c.usage async for c in stream if c.usage is not None]
        assert len(usage) == 1
        assert (usage[0].prompt_tokens, usage[0].completion_tokens) == (3, 4)
        row = (await gw.rows())[0]
        assert (row.input_tokens, row.output_tokens, row.usage_source) == (3, 4, "tokenizer")


def _http(gw: Gateway) -> httpx2.AsyncClient:
    """The gateway's client for the SDK, which takes an httpx.AsyncClient too (it checks for either at runtime);
    its annotation names only httpx2's."""
    return cast("httpx2.AsyncClient", gw.http)


async def _rows(services: Services) -> list[Any]:
    import sqlalchemy as sa

    from margin.ledger.models import ledger

    async with services.engine.connect() as connection:
        return list(await connection.execute(sa.select(ledger)))
