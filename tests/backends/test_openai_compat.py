"""The openai backend against a real upstream: another margin process-in-loop serving a fake model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from margin.api.errors import status_of
from margin.app import build_app
from margin.backends.openai_compat import delta_text, message_text
from margin.backends.upstream_errors import upstream_error
from margin.config import parse_settings
from margin.errors import BackendClientError, BackendError, RateLimited, ResponseTooLarge
from tests.helpers import free_port, gateway, live_server


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[str]:
    settings = parse_settings(
        {
            "storage": {"ledger": f"sqlite:///{tmp_path / 'upstream.db'}"},
            "backends": {
                "gen": {"kind": "fake", "output_tokens": 4},
                "slow": {"kind": "fake", "ttft_ms": 400},
                "broken": {"kind": "fake", "fail_status": 503},
            },
            "models": {
                "upstream-model": {"backend": "gen"},
                "upstream-embed": {"backend": "gen", "kind": "embedding"},
                "slow-model": {"backend": "slow"},
                "broken-model": {"backend": "broken"},
            },
        }
    )
    async with live_server(build_app(settings)) as url:
        yield f"{url}/v1"


def gateway_settings(tmp_path: Path, base_url: str, **backend: Any) -> Any:
    return parse_settings(
        {
            "storage": {"ledger": f"sqlite:///{tmp_path / 'gw.db'}", "flush_interval_ms": 10},
            "backends": {"up": {"kind": "openai", "base_url": base_url, "timeout_s": 5, **backend}},
            "models": {
                "public": {
                    "backend": "up",
                    "upstream_model": "upstream-model",
                    "price": {"input": "10", "output": "20"},
                },
                "embed": {
                    "backend": "up",
                    "upstream_model": "upstream-embed",
                    "kind": "embedding",
                    "price": {"input": "1", "output": "0"},
                },
                "slow": {"backend": "up", "upstream_model": "slow-model"},
                "broken": {"backend": "up", "upstream_model": "broken-model"},
            },
        }
    )


def client_for(gw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="x", base_url="http://localhost/v1", http_client=gw.http, max_retries=0)


async def test_proxy_whole_answer_and_usage(tmp_path: Path, upstream: str) -> None:
    async with gateway(gateway_settings(tmp_path, upstream)) as gw:
        reply = await client_for(gw).chat.completions.create(
            model="public", messages=[{"role": "user", "content": "a b c"}]
        )
        assert reply.choices[0].message.content == "tok " * 4
        assert reply.model == "upstream-model"  # the upstream's answer is passed on byte for byte
        row = (await gw.rows())[0]
        assert (row.input_tokens, row.output_tokens, row.usage_source) == (3, 4, "backend")
        assert row.cost_nanousd == 3 * 10_000 + 4 * 20_000  # $10/M in, $20/M out, in nano-USD


async def test_proxy_stream_asks_usage_but_only_forwards_it_when_asked(tmp_path: Path, upstream: str) -> None:
    async with gateway(gateway_settings(tmp_path, upstream)) as gw:
        client = client_for(gw)
        plain = [
            c
            async for c in await client.chat.completions.create(
                model="public", messages=[{"role": "user", "content": "a"}], stream=True
            )
        ]
        assert all(c.usage is None for c in plain)
        with_usage = [
            c
            async for c in await client.chat.completions.create(
                model="public",
                messages=[{"role": "user", "content": "a"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
        assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens == 4
        rows = await gw.rows()
        assert [(r.output_tokens, r.usage_source) for r in rows] == [(4, "backend"), (4, "backend")]


async def test_proxy_embeddings(tmp_path: Path, upstream: str) -> None:
    async with gateway(gateway_settings(tmp_path, upstream)) as gw:
        reply = await client_for(gw).embeddings.create(model="embed", input=["x y", "z"])
        assert len(reply.data) == 2
        assert (await gw.rows())[0].input_tokens == 3


async def test_upstream_errors_and_timeouts(tmp_path: Path, upstream: str) -> None:
    async with gateway(gateway_settings(tmp_path, upstream, timeout_s=0.25)) as gw:  # "slow" answers in 0.4 s
        client = client_for(gw)
        with pytest.raises(openai.InternalServerError) as timeout:
            await client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "x"}])
        assert timeout.value.status_code == 504
    # the broken upstream's 502 is retried first: under a 0.25 s limit a loaded machine ran out of time (504)
    (tmp_path / "broken").mkdir()
    async with gateway(gateway_settings(tmp_path / "broken", upstream, timeout_s=30)) as gw:
        client = client_for(gw)
        with pytest.raises(openai.InternalServerError) as broken:
            await client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
        assert broken.value.status_code == 502 and "HTTP 502" in broken.value.message
        assert "scripted" not in broken.value.message  # the upstream's own text stays in the log


async def test_upstream_down_is_502(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    async with gateway(gateway_settings(tmp_path, dead)) as gw:
        for stream in (False, True):
            response = await gw.http.post(
                "/v1/chat/completions",
                json={"model": "public", "messages": [{"role": "user", "content": "x"}], "stream": stream},
            )
            assert response.status_code == 502
            assert "unreachable" in response.json()["error"]["message"]


def test_upstream_error_translation() -> None:
    headers = {"retry-after": "7"}
    limited = upstream_error("up", 429, b'{"error": {"message": "slow down", "code": "rate"}}', headers)
    assert isinstance(limited, RateLimited) and limited.headers == {"retry-after": "7"}
    rejected = upstream_error("up", 422, b'{"error": {"message": "bad field"}}', {})
    assert isinstance(rejected, BackendClientError) and rejected.upstream_status == 422
    failed = upstream_error("up", 500, b"<html>oops</html>", {})
    assert type(failed) is BackendError and status_of(failed) == 502 and "oops" not in failed.message
    leaky = b'{"error": {"message": "Incorrect API key provided: sk-abc***xyz", "code": "invalid_api_key"}}'
    credentials = upstream_error("up", 401, leaky, {})  # margin's upstream key: the operator's fault
    assert type(credentials) is BackendError and status_of(credentials) == 502 and "sk-" not in credentials.message
    odd = upstream_error("up", 400, b'{"error": {"message": "no", "code": "x\\r\\nSet-Cookie: a=b"}}', {})
    assert odd.code == "upstream_rejected" and "Set-Cookie" not in odd.message
    assert upstream_error("up", 429, b"", {"retry-after": "7\\r\\nX: y"}).headers == {}
    for digits in ("\u0663", "\uff17"):  # Arabic-Indic 3, fullwidth 7: `isdigit`, but no header value
        assert upstream_error("up", 429, b"", {"retry-after": digits}).headers == {}


def test_delta_text_reads_chat_and_completion_chunks() -> None:
    assert delta_text({"choices": [{"delta": {"content": "hi"}}]}) == "hi"
    assert delta_text({"choices": [{"text": "yo"}]}) == "yo"
    assert delta_text({"choices": [], "usage": {}}) == ""
    odd: list[object] = [5, "abc", ["x", 5, None], {"a": 1}, [{"delta": 3}], [{"delta": {"content": 7}}]]
    assert [delta_text({"choices": choices}) for choices in odd] == [""] * len(odd)  # no text, never an exception
    assert delta_text([1, 2]) == "" and message_text({"choices": ["x", {"message": {"content": "ok"}}]}) == "ok"  # type: ignore[arg-type]


class _Content:
    def __init__(self, reads: list[bytes]) -> None:
        self.reads = list(reads)

    async def readany(self) -> bytes:
        return self.reads.pop(0) if self.reads else b""


class _Response:
    def __init__(self, reads: list[bytes]) -> None:
        self.content = _Content(reads)
        self.closed = False

    def close(self) -> None:
        self.closed = True


async def _events(reads: list[bytes]) -> list[tuple[bytes | None, bool]]:
    from margin.backend_config import OpenAIBackendConfig
    from margin.backends.openai_compat import OpenAIBackend

    backend = OpenAIBackend("up", OpenAIBackendConfig(base_url="http://127.0.0.1:1/v1"))
    reads_of = backend._reads(_Response(reads))  # type: ignore[arg-type]
    return [(chunk.raw, chunk.more) async for batch in reads_of for chunk in batch]


async def test_stream_events_of_one_read_are_marked_more_except_the_last() -> None:
    one, two, three = (b'{"choices":[{"delta":{"content":"%d"}}]}' % i for i in (1, 2, 3))
    reads = [
        b"data: " + one + b"\n\n: keep-alive comment\r\ndata: " + two + b"\r\n\r\ndata: " + three[:10],
        three[10:] + b"\n\n",
        b"data: [DONE]\n\ndata: " + one + b"\n\n",  # nothing after [DONE] is read
    ]
    assert await _events(reads) == [(one, True), (two, False), (three, False)]


async def test_stream_event_without_final_newline_and_without_done() -> None:
    """A server that omits `[DONE]` still names a finish reason: its stream is whole, the last event read from
    the bytes left at the connection's end too."""
    one = b'{"choices":[{"delta":{"content":"x"}}]}'
    end = b'{"choices":[{"delta":{},"finish_reason":"stop"}]}'
    usage = b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
    assert await _events([b"data: " + one + b"\n\ndata: " + end]) == [(one, False), (end, False)]
    assert await _events([b"data: " + one + b"\n\n", b"data: " + end + b"\n\n"]) == [(one, False), (end, False)]
    # the finish in one read, the usage event in the next
    got = await _events([b"data: " + end + b"\n\n", b"data: " + usage + b"\n\n"])
    assert [raw for raw, _ in got] == [end, usage]


async def test_a_finish_is_found_in_a_big_event_and_before_many_events() -> None:
    """Without `[DONE]`, a finish in one event of over 64 KiB (a whole answer sent as one chunk), or followed by
    ten more events, still makes the stream whole (review: the first look parsed 8 events of at most 64 KiB)."""
    big = b'{"choices":[{"delta":{"content":"%s"},"finish_reason":"stop"}]}' % (b"x" * 100_000)
    assert [raw for raw, _ in await _events([b"data: " + big + b"\n\n"])] == [big]
    end = b'{"choices":[{"delta":{},"finish_reason":"length"}]}'
    after = b'{"choices":[{"delta":{"content":""}}]}'
    got = await _events([b"data: " + end + b"\n\n", b"".join(b"data: " + after + b"\n\n" for _ in range(10))])
    assert got[0] == (end, False) and len(got) == 2  # the ten after it are one run (raw None)


async def test_a_finish_named_inside_a_string_is_not_a_finish() -> None:
    text = b'{"choices":[{"delta":{"content":"say \\"finish_reason\\": \\"stop\\""}}]}'
    from margin.backend_config import OpenAIBackendConfig
    from margin.backends.openai_compat import OpenAIBackend

    backend = OpenAIBackend("up", OpenAIBackendConfig(base_url="http://127.0.0.1:1/v1"))
    with pytest.raises(BackendError, match="ended its stream before finishing"):
        async for _ in backend._reads(_Response([b"data: " + text + b"\n\n"])):  # type: ignore[arg-type]
            pass


@pytest.mark.parametrize("framed", ["rest", "whole"])
async def test_a_stream_ended_without_done_or_a_finish_is_cut(framed: str) -> None:
    """A connection that ends mid-answer (no `[DONE]`, no finish reason in the last events: a reset a proxy
    turned into a clean end) fails after the events it delivered, as a reset does, not as a whole answer."""
    one = b'{"choices":[{"delta":{"content":"x"}}]}'
    last = b"data: " + one if framed == "rest" else b"data: " + one + b"\n\n"
    from margin.backend_config import OpenAIBackendConfig
    from margin.backends.openai_compat import OpenAIBackend

    backend = OpenAIBackend("up", OpenAIBackendConfig(base_url="http://127.0.0.1:1/v1"))
    seen: list[bytes | None] = []
    with pytest.raises(BackendError, match="ended its stream before finishing"):
        async for batch in backend._reads(_Response([b"data: " + one + b"\n\n", last])):  # type: ignore[arg-type]
            seen.extend(chunk.raw for chunk in batch)
    assert seen == [one, one]


async def test_invalid_stream_event_is_a_backend_error_after_the_good_ones() -> None:
    one = b'{"choices":[{"delta":{"content":"x"}}]}'
    seen: list[bytes | None] = []
    with pytest.raises(BackendError, match="invalid stream event"):
        from margin.backend_config import OpenAIBackendConfig
        from margin.backends.openai_compat import OpenAIBackend

        backend = OpenAIBackend("up", OpenAIBackendConfig(base_url="http://127.0.0.1:1/v1"))
        async for batch in backend._reads(_Response([b"data: " + one + b"\n\ndata: {oops\n\n"])):  # type: ignore[arg-type]
            seen.extend(chunk.raw for chunk in batch)
    assert seen == [one]


async def test_an_event_in_many_reads_is_joined_once_and_a_stream_is_cut_at_its_size_limit() -> None:
    """Bytes without a line end are kept in parts (an event byte by byte arrives whole); the stream's bytes in
    all are bounded by `max_response_bytes`: past it, after the events before, `ResponseTooLarge`, and the
    connection is dropped."""
    from margin.backend_config import OpenAIBackendConfig
    from margin.backends.http_upstream import Lines
    from margin.backends.openai_compat import OpenAIBackend

    one = b'{"choices":[{"delta":{"content":"x"}}]}'
    framed = b"data: " + one + b"\n\n"
    end = b'{"choices":[{"delta":{},"finish_reason":"stop"}]}'
    whole = framed + b"data: " + end + b"\n\ndata: [DONE]\n\n"
    assert await _events([bytes([byte]) for byte in whole]) == [(one, False), (end, False)]
    lines = Lines(10)
    assert (lines.feed(b"abc"), lines.feed(b"d\ne"), lines.rest()) == ([], [b"abcd"], b"e")
    assert lines.feed(b"fghi") == [] and lines.feed(b"j") is None  # 10 bytes in all are fine, 11 are not

    backend = OpenAIBackend("up", OpenAIBackendConfig(base_url="http://127.0.0.1:1/v1", max_response_bytes=100))
    response = _Response([framed, b"data: {" + b"0" * 40, b"0" * 40])
    seen: list[bytes | None] = []
    with pytest.raises(ResponseTooLarge, match="over its limit of 100 bytes"):
        async for batch in backend._reads(response):  # type: ignore[arg-type]
            seen.extend(chunk.raw for chunk in batch)
    assert seen == [one] and response.closed


async def test_a_reads_plain_events_are_handed_over_as_one_run() -> None:
    """After the stream's first event (parsed before anything is sent), the plain events of one read are one
    chunk (`events`, forwarded as they came); an event that names usage is parsed into its own. Every chunk of
    a read but its last is marked `more`; a run's text is its events' text, and it has no single payload."""
    from margin.backend_config import OpenAIBackendConfig
    from margin.backends.openai_compat import OpenAIBackend

    def event(text: str) -> bytes:
        return b'{"choices":[{"delta":{"content":"%s"}}]}' % text.encode()

    usage = b'{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":5}}'
    read = b"".join(b"data: " + e + b"\n\n" for e in (event("a"), event("b"), event("c"), b"{oops}", usage))
    backend = OpenAIBackend("up", OpenAIBackendConfig(base_url="http://127.0.0.1:1/v1"))
    reads = [read, b"data: " + event("d") + b"\n\ndata: " + event("e") + b"\n\ndata: [DONE]\n\n"]
    batches = [batch async for batch in backend._reads(_Response(reads))]  # type: ignore[arg-type]
    first, run, counted = batches[0]
    assert (first.raw, first.events, first.more) == (event("a"), None, True)
    assert (run.raw, run.events, run.more, run.text) == (None, [event("b"), event("c"), b"{oops}"], True, "bc")
    assert counted.usage is not None and counted.usage.output_tokens == 5 and not counted.more
    with pytest.raises(TypeError, match="no single payload"):
        _ = run.payload
    [later] = batches[1]
    assert (later.events, later.more, later.text) == ([event("d"), event("e")], False, "de")


async def test_openais_null_usage_in_every_chunk_does_not_split_runs() -> None:
    """OpenAI and Azure send `"usage":null` in every chunk once usage is asked for (margin always asks): those
    events are plain, and only the last one, whose usage is an object, is parsed on its own."""
    from margin.backend_config import OpenAIBackendConfig
    from margin.backends.openai_compat import OpenAIBackend

    def event(text: str) -> bytes:
        return b'{"choices":[{"delta":{"content":"%s"}}],"usage":null}' % text.encode()

    last = b'{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3}}'
    spaced = b'{"choices":[{"delta":{"content":"c"}}], "usage": null}'
    read = b"".join(b"data: " + e + b"\n\n" for e in (event("a"), event("b"), spaced, last)) + b"data: [DONE]\n\n"
    backend = OpenAIBackend("up", OpenAIBackendConfig(base_url="http://127.0.0.1:1/v1"))
    [[first, run, counted]] = [batch async for batch in backend._reads(_Response([read]))]  # type: ignore[arg-type]
    assert first.raw == event("a") and run.events == [event("b"), spaced] and run.text == "bc"
    assert counted.usage is not None and counted.usage.output_tokens == 3
