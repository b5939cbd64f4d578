"""The official openai SDK against the gateway (in-process ASGI) with fake backends."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

import openai
import pytest

from margin.economics.money import from_nanousd
from tests.helpers import Gateway

if TYPE_CHECKING:
    import httpx2


def sdk(gw: Gateway, **kwargs: Any) -> openai.AsyncOpenAI:
    # the SDK takes an httpx.AsyncClient too (it checks for either at runtime); its annotation names only httpx2's
    http = cast("httpx2.AsyncClient", gw.http)
    return openai.AsyncOpenAI(
        api_key="unused", base_url="http://localhost/v1", http_client=http, max_retries=0, **kwargs
    )


async def test_chat_completion_returns_answer_and_usage(gw: Gateway) -> None:
    client = sdk(gw)
    raw = await client.chat.completions.with_raw_response.create(
        model="fake-chat", messages=[{"role": "user", "content": "one two three"}]
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == "tok " * 5
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 5)
    request_id = raw.headers["x-margin-request-id"]
    assert reply.id == f"chatcmpl-{request_id}"
    assert Decimal(raw.headers["x-margin-cost-usd"]) > 0
    assert float(raw.headers["x-margin-overhead-ms"]) >= 0
    rows = await gw.rows()
    assert len(rows) == 1
    row = rows[0]
    assert (row.request_id, row.status, row.http_status, row.stream) == (request_id, "ok", 200, False)
    assert (row.input_tokens, row.output_tokens, row.usage_source) == (3, 5, "backend")
    assert from_nanousd(row.cost_nanousd) == Decimal(raw.headers["x-margin-cost-usd"])
    assert row.cost_method == "tco" and row.energy_method == "modelled"
    assert row.region == "eu" and row.grid_source.startswith("table:FRA")


async def test_alias_resolves_to_public_model(gw: Gateway) -> None:
    reply = await sdk(gw).chat.completions.create(model="fc", messages=[{"role": "user", "content": "x"}])
    assert reply.model == "fake-chat"
    assert (await gw.rows())[0].requested_model == "fc"


async def test_stream_with_usage_chunk(gw: Gateway) -> None:
    stream = await sdk(gw).chat.completions.create(
        model="fake-chat",
        messages=[{"role": "user", "content": "a b"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "tok " * 5
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (2, 5)
    row = (await gw.rows())[0]
    assert row.stream and row.status == "ok" and row.output_tokens == 5 and row.ttft_ms is not None


async def test_stream_without_usage_option_hides_usage_chunk(gw: Gateway) -> None:
    stream = await sdk(gw).chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": "a b"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    assert (await gw.rows())[0].output_tokens == 5


async def test_text_completion(gw: Gateway) -> None:
    reply = await sdk(gw).completions.create(model="fake-chat", prompt="hello there", max_tokens=3)
    assert reply.choices[0].text == "tok " * 3
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert (await gw.rows())[0].endpoint == "completions"


async def test_embeddings(gw: Gateway) -> None:
    reply = await sdk(gw).embeddings.create(model="fake-embed", input=["alpha beta", "gamma"])
    assert [d.index for d in reply.data] == [0, 1]
    assert len(reply.data[0].embedding) == 8
    assert reply.usage.prompt_tokens == 3
    as_floats = await sdk(gw).embeddings.create(model="fake-embed", input="alpha beta", encoding_format="float")
    assert as_floats.data[0].embedding == pytest.approx(reply.data[0].embedding, abs=1e-6)


async def test_models_list_and_get(gw: Gateway) -> None:
    client = sdk(gw)
    ids = {m.id async for m in client.models.list()}
    assert {"fake-chat", "fc", "fake-embed", "priced", "gpt-4o-mini"} <= ids
    model = await client.models.retrieve("fc")
    assert model.id == "fc"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")


async def test_unknown_model_is_404_model_not_found(gw: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk(gw).chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found"
    row = (await gw.rows())[0]
    assert (row.status, row.http_status, row.error_code, row.cost_nanousd) == ("error", 404, "model_not_found", 0)


async def test_list_price_from_config_and_genai_prices(gw: Gateway) -> None:
    client = sdk(gw)
    await client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "a b c d"}])
    await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a b"}])
    await client.chat.completions.create(model="mystery", messages=[{"role": "user", "content": "a"}])
    priced, mini, mystery = await gw.rows()
    # config price: 4 input × $1/M + 4 output × $2/M
    assert from_nanousd(priced.cost_nanousd) == Decimal("0.000012")
    assert priced.price_version == "config:t1" and priced.cost_method == "list"
    # genai-prices: gpt-4o-mini is $0.15/M input, $0.60/M output
    assert from_nanousd(mini.cost_nanousd) == Decimal("0.0000027")
    assert mini.price_version.startswith("genai-prices@")
    assert mystery.cost_nanousd is None and mystery.cost_status == "unknown_price"
    assert mystery.energy_j is None  # a hosted API without hardware figures has no energy estimate


async def test_async_concurrency_each_request_gets_one_row(gw: Gateway) -> None:
    import asyncio

    client = sdk(gw)
    replies = await asyncio.gather(
        *(
            client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": f"q {i}"}])
            for i in range(20)
        )
    )
    rows = await gw.rows()
    assert len(rows) == 20
    assert {r.request_id for r in rows} == {reply.id.removeprefix("chatcmpl-") for reply in replies}
