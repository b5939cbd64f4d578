"""The `anthropic` backend's translations, both ways, without a network: a chat request as the Messages body
Anthropic receives (every mapping, and every refusal: a 400 naming the field, never a field dropped), and
Anthropic's answers and stream events (taken from the fake upstream, in Anthropic's wire format) as the
OpenAI completion and chunks the pipeline gets from the `openai` backend."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, get_args

import orjson
import pytest
from pydantic import ValidationError

from margin.backend_config import AnthropicBackendConfig, AnthropicDroppable
from margin.backends.anthropic import AnthropicBackend
from margin.backends.anthropic_request import REFUSED
from margin.backends.anthropic_response import Translator, completion
from margin.backends.upstream_errors import upstream_error
from margin.config import parse_settings
from margin.economics.carbon import GridTable
from margin.economics.meter import Meter
from margin.economics.prices import ListPrice, PriceBook
from margin.errors import (
    BackendClientError,
    BackendError,
    InvalidRequest,
    ResponseTooLarge,
    UpstreamOverloaded,
    UpstreamRateLimited,
)
from margin.parsing import parse_request
from margin.protocol import Endpoint
from margin.types import Call, Chunk, Usage
from tests.backends.anthropic_upstream import (
    ARGUMENTS_PIECES,
    INPUT,
    STOP_SEQUENCE,
    THINKING,
    USAGE,
    WEATHER,
    events,
    message,
)
from tests.backends.test_openai_compat import _Response

CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
PNG = "iVBORw0KGgo="
HI = [{"role": "user", "content": "hi"}]


def _call(endpoint: Endpoint = Endpoint.CHAT, **body: Any) -> Call:
    data = {"model": "claude", "messages": [{"role": "user", "content": "hi"}], **body}
    request = parse_request(endpoint, data)
    return Call(endpoint, request, data, "claude", "claude-sonnet-4-5", "r1")


def _sent(as_stream: bool = False, **body: Any) -> dict[str, Any]:
    backend = AnthropicBackend("claude", AnthropicBackendConfig(default_max_tokens=777))
    url, data = backend._request(_call(**body), stream=as_stream)
    assert url == "https://api.anthropic.com/v1/messages"
    sent: dict[str, Any] = orjson.loads(data)
    return sent


def _refused(param: str, **body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        _sent(**body)
    assert caught.value.param == param, caught.value.message
    return caught.value


def test_a_plain_chat_has_the_model_the_default_max_tokens_and_nothing_else() -> None:
    assert _sent() == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 777,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    assert _sent(as_stream=True, stream=True)["stream"] is True
    assert "stream" not in _sent(as_stream=False, stream=True)  # the call's kind decides, not the body


def test_system_and_developer_messages_become_the_top_level_system_and_turns_of_one_role_merge() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one"},
        {"role": "developer", "content": [{"type": "text", "text": "in French"}]},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "un"},
    ]
    sent = _sent(messages=messages)
    assert sent["system"] == [{"type": "text", "text": "be brief"}, {"type": "text", "text": "in French"}]
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "un"}]},
    ]


def test_images_data_urls_become_base64_and_http_urls_url_sources() -> None:
    parts = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
    ]
    content = _sent(messages=[{"role": "user", "content": parts}])["messages"][0]["content"]
    assert content == [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    bmp = [{"type": "image_url", "image_url": {"url": f"data:image/bmp;base64,{PNG}"}}]
    _refused("messages[0].content[0]", messages=[{"role": "user", "content": bmp}])
    ftp = [{"type": "image_url", "image_url": {"url": "ftp://example.com/cat.jpg"}}]
    _refused("messages[0].content[0]", messages=[{"role": "user", "content": ftp}])
    audio = [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]
    assert _refused("messages[0].content[0]", messages=[{"role": "user", "content": audio}]).code == (
        "unsupported_parameter"
    )


def test_tool_calls_become_tool_use_and_consecutive_tool_messages_one_user_turn_of_tool_results() -> None:
    second = {**CALL, "id": "call_2", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}
    messages = [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL, second]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
        {"role": "user", "content": "thanks"},
    ]
    sent = _sent(messages=messages, tools=[WEATHER])
    assert sent["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
                {"type": "text", "text": "thanks"},
            ],
        },
    ]
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER["function"]["parameters"],
            "description": "The weather in a city",
        }
    ]
    assert "tool_choice" not in sent


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ],
)
def test_tool_choice_maps(choice: Any, parallel: Any, expected: dict[str, Any]) -> None:
    extra = {} if parallel is None else {"parallel_tool_calls": parallel}
    assert _sent(tools=[WEATHER], tool_choice=choice, **extra)["tool_choice"] == expected


def test_sampling_fields_limits_and_user_map() -> None:
    sent = _sent(temperature=0.5, top_p=0.9, top_k=40, stop=["END", "STOP"], user="u-7", max_tokens=100)
    assert (sent["temperature"], sent["top_p"], sent["top_k"]) == (0.5, 0.9, 40)
    assert sent["stop_sequences"] == ["END", "STOP"]
    assert sent["metadata"] == {"user_id": "u-7"}
    assert sent["max_tokens"] == 100
    assert _sent(stop="END")["stop_sequences"] == ["END"]
    assert _sent(max_completion_tokens=50)["max_tokens"] == 50
    assert _sent(max_tokens=80, max_completion_tokens=60)["max_tokens"] == 60  # the lower: what budgets priced


def test_a_requests_own_thinking_is_sent_with_its_exact_budget_and_wins_over_the_effort() -> None:
    """`thinking` as Anthropic takes it (what `/v1/messages` passes on, and LiteLLM's chat clients send): its budget
    as asked, not an effort's (before: ignored, so a Messages budget of 10,000 reached Anthropic as 8,192, Claude
    Code's 31,999 as 16,384, and `adaptive` as no thinking at all)."""
    enabled = {"type": "enabled", "budget_tokens": 10000}
    assert _sent(thinking=enabled, reasoning_effort="medium", max_tokens=20000)["thinking"] == enabled
    assert _sent(thinking={**enabled, "budget_tokens": 31999}, max_tokens=8000)["thinking"]["budget_tokens"] == 7999
    assert _sent(thinking={"type": "adaptive", "display": "omitted"})["thinking"] == {
        "type": "adaptive",
        "display": "omitted",
    }
    assert "thinking" not in _sent(thinking={"type": "disabled"}, reasoning_effort="high", max_tokens=20000)
    _refused("thinking.type", thinking={"type": "on"})
    _refused("thinking.type", thinking="enabled")
    _refused("thinking.budget_tokens", thinking={"type": "enabled"})
    _refused("thinking.budget_tokens", thinking={"type": "enabled", "budget_tokens": "2000"})
    _refused("thinking.budget_tokens", thinking={"type": "enabled", "budget_tokens": 512}, max_tokens=4000)
    _refused("thinking.budget_tokens", thinking=enabled, max_tokens=1024)  # no budget of 1,024 fits below it


def test_a_pdf_file_part_becomes_a_document_block_and_other_files_are_refused() -> None:
    """OpenAI's chat `file` part holding a PDF (`/v1/messages`' document blocks arrive so); before, any `file` part
    was a 400."""
    pdf = {"type": "file", "file": {"filename": "r.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}
    sent = _sent(messages=[{"role": "user", "content": [pdf, {"type": "text", "text": "sum up"}]}])
    assert sent["messages"][0]["content"] == [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}},
        {"type": "text", "text": "sum up"},
    ]
    for file in ({"file_id": "file-1"}, {"file_data": "data:text/csv;base64,YQ=="}, "x"):
        _refused("messages[0].content[0]", messages=[{"role": "user", "content": [{"type": "file", "file": file}]}])


def test_reasoning_effort_becomes_a_thinking_budget_below_max_tokens() -> None:
    assert _sent(reasoning_effort="medium", max_tokens=20000)["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert _sent(reasoning_effort="high", max_tokens=5000)["thinking"] == {"type": "enabled", "budget_tokens": 4999}
    assert _sent(reasoning_effort="minimal", max_tokens=2000)["thinking"]["budget_tokens"] == 1024
    assert "thinking" not in _sent(reasoning_effort="none")
    _refused("reasoning_effort", reasoning_effort="low", max_tokens=1024)  # no budget of 1,024 fits below it
    _refused("reasoning_effort", reasoning_effort="extreme")


@pytest.mark.parametrize(
    ("param", "body"),
    [
        ("n", {"n": 2}),
        ("logprobs", {"logprobs": True}),
        ("top_logprobs", {"top_logprobs": 3}),
        ("seed", {"seed": 7}),
        ("presence_penalty", {"presence_penalty": 0.5}),
        ("frequency_penalty", {"frequency_penalty": 0.5}),
        ("logit_bias", {"logit_bias": {"12": 5}}),
        ("response_format", {"response_format": {"type": "json_object"}}),
        ("response_format", {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
        ("temperature", {"temperature": 1.5}),
        ("min_p", {"min_p": 0.1}),
        ("store", {"store": True}),
        ("functions", {"functions": [{"name": "f"}]}),
        ("tools[0]", {"tools": [{"type": "web_search"}]}),
        ("tool_choice", {"tool_choice": "required"}),
        ("messages[0].name", {"messages": [{"role": "user", "content": "hi", "name": "ann"}]}),
        ("messages[0].role", {"messages": [{"role": "function", "content": "x", "name": None}]}),
        ("messages", {"messages": [{"role": "system", "content": "only a system prompt"}]}),
        (
            "messages[1].tool_call_id",
            {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]},
        ),
        (
            "messages[1].tool_calls[0]",
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}]},
                ]
            },
        ),
        ("messages[1]", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}),
    ],
)
def test_what_anthropic_cannot_do_is_a_400_naming_the_field(param: str, body: dict[str, Any]) -> None:
    _refused(param, **body)


def test_strict_tools_and_json_schema_answers_are_anthropic_s_structured_outputs() -> None:
    """OpenAI's strict function schemas (the Agents SDK's default) and `response_format: json_schema` map to
    Anthropic's `strict` tools and `output_config.format`."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    sent = _sent(
        tools=[{**WEATHER, "function": {**WEATHER["function"], "strict": True}}],
        response_format={"type": "json_schema", "json_schema": {"name": "count", "schema": schema, "strict": True}},
    )
    assert sent["tools"][0]["strict"] is True
    assert sent["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    loose = _sent(tools=[{**WEATHER, "function": {**WEATHER["function"], "strict": False}}])
    assert "strict" not in loose["tools"][0] and "output_config" not in loose


def test_defaults_of_refused_fields_are_not_refusals() -> None:
    sent = _sent(
        n=1,
        logprobs=False,
        presence_penalty=0,
        store=False,
        response_format={"type": "text"},
        metadata={},
        functions=[],
    )
    assert set(sent) == {"model", "max_tokens", "messages"}


def _dropping(drop: list[str], **body: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """What Anthropic is sent by a backend with `drop_unsupported: drop`, and the headers the call adds."""
    backend = AnthropicBackend("claude", AnthropicBackendConfig.model_validate({"drop_unsupported": drop}))
    call = _call(**body)
    _, data = backend._request(call, stream=False)
    sent: dict[str, Any] = orjson.loads(data)
    return sent, call.stats.notices


def test_drop_unsupported_leaves_the_listed_fields_out_and_names_them() -> None:
    named = [{"role": "user", "content": "hi", "name": "ann"}]
    sent, notices = _dropping(
        ["name", "frequency_penalty", "seed", "presence_penalty"],
        seed=7, presence_penalty=0.5, frequency_penalty=0, messages=named, temperature=0.2,
    )  # fmt: skip
    assert sent == {"model": "claude-sonnet-4-5", "max_tokens": 4096, "temperature": 0.2,
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}  # fmt: skip
    # what was set, in the refusals' order; a default (frequency_penalty 0) is not a drop
    assert notices == {"x-margin-dropped-params": "seed,presence_penalty,name"}
    assert _dropping(["seed"])[1] == {}  # listed but not sent: nothing dropped, no header


def test_drop_unsupported_drops_only_what_it_lists() -> None:
    with pytest.raises(InvalidRequest) as refused:
        _dropping(["seed"], seed=7, presence_penalty=0.5)
    assert refused.value.param == "presence_penalty"
    with pytest.raises(InvalidRequest) as named:
        _dropping(["seed"], messages=[{"role": "user", "content": "hi", "name": "ann"}])
    assert named.value.param == "messages[0].name"
    with pytest.raises(InvalidRequest) as many:  # `n` cannot be dropped: the answer would have one choice
        _dropping(["seed"], n=2)
    assert many.value.param == "n"


def test_drop_unsupported_takes_only_refusable_names() -> None:
    for bad in (["n"], ["temperature"], ["sed"], "seed"):
        with pytest.raises(ValidationError):
            AnthropicBackendConfig.model_validate({"drop_unsupported": bad})
    # every field the backend refuses may be listed, and nothing else
    assert set(get_args(AnthropicDroppable)) == set(REFUSED) | {"name"}
    assert AnthropicBackendConfig().drop_unsupported == []  # default: today's refusals


async def test_text_completions_and_embeddings_are_refused() -> None:
    backend = AnthropicBackend("claude", AnthropicBackendConfig())
    text = Call(
        Endpoint.COMPLETIONS, parse_request(Endpoint.COMPLETIONS, {"model": "c", "prompt": "x"}), {}, "c", "c", "r"
    )
    with pytest.raises(InvalidRequest, match="chat completions only"):
        backend._request(text, stream=False)
    embed = Call(
        Endpoint.EMBEDDINGS, parse_request(Endpoint.EMBEDDINGS, {"model": "c", "input": "x"}), {}, "c", "c", "r"
    )
    with pytest.raises(InvalidRequest, match="embeddings"):
        await backend.embed(embed)


def test_anthropic_usage_is_the_whole_prompt_with_cache_reads_as_cached_and_writes_apart() -> None:
    usage = Usage.from_anthropic(USAGE)
    assert usage is not None
    assert (usage.input_tokens, usage.cached_tokens, usage.cache_write_tokens, usage.output_tokens) == (
        21 + 3000 + 1000,
        3000,
        1000,
        9,
    )
    # the chat answer carries the writes too (not an OpenAI field: only where there are some), read back alike
    assert usage.to_openai()["prompt_tokens_details"] == {"cached_tokens": 3000, "cache_write_tokens": 1000}
    assert Usage.from_openai(usage.to_openai()) == usage
    assert "prompt_tokens_details" not in Usage(10, 2).to_openai()
    over = {"prompt_tokens": 100, "prompt_tokens_details": {"cached_tokens": 70, "cache_write_tokens": 50}}
    assert Usage.from_openai(over) == Usage(100, 0, 70, cache_write_tokens=30)  # never more than the prompt
    # junk or no counts: no usage (the request is counted or estimated), not 0 tokens at $0
    assert Usage.from_anthropic({"input_tokens": -5, "output_tokens": "x"}) is None
    assert Usage.from_anthropic({"input_tokens": 5, "output_tokens": "x"}) is None
    assert Usage.from_anthropic(None) is None


def test_a_cache_write_is_priced_at_its_rate_and_a_read_at_its_own() -> None:
    price = ListPrice(Decimal(3), Decimal(15), Decimal("0.3"), "v", cache_write_per_mtok=Decimal("3.75"))
    cost = price.cost(4021, 9, 3000, 1000)
    assert cost == (21 * Decimal(3) + 3000 * Decimal("0.3") + 1000 * Decimal("3.75") + 9 * Decimal(15)) / 10**6
    plain = ListPrice(Decimal(3), Decimal(15), None, "v")  # no write rate: writes at the input rate
    assert plain.cost(100, 0, 0, 40) == plain.cost(100, 0) == Decimal(300) / 10**6


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, "stop"),
    ],
)
def test_stop_reasons_become_finish_reasons(stop_reason: Any, finish: str) -> None:
    answer = {**message({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]})}
    payload, _, _ = completion(_call(), {**answer, "stop_reason": stop_reason}, "claude")
    assert payload["choices"][0]["finish_reason"] == finish


def test_a_whole_answer_is_a_chat_completion_with_tool_calls_and_its_thinking() -> None:
    body = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}], "tools": [{"name": "w"}]}
    payload, text, usage = completion(_call(), message(body), "claude")
    reply = payload["choices"][0]
    assert reply["finish_reason"] == "tool_calls" and text == "Let me look."
    assert reply["message"]["tool_calls"] == [
        {"id": "toolu_01A", "type": "function", "function": {"name": "w", "arguments": orjson.dumps(INPUT).decode()}}
    ]
    assert usage is not None and payload["usage"]["prompt_tokens"] == usage.input_tokens == 4021
    thinking, text, _ = completion(_call(), message({"model": "thinker", "messages": HI}), "claude")
    assert text == "hello world" and thinking["choices"][0]["message"]["content"] == "hello world"
    assert thinking["choices"][0]["message"]["reasoning_content"] == THINKING  # LiteLLM's shape
    assert thinking["choices"][0]["message"]["thinking_blocks"] == [
        {"type": "thinking", "thinking": THINKING, "signature": "c2ln"}
    ]
    with pytest.raises(BackendError, match="under HTTP 200"):
        completion(_call(), {"type": "error", "error": {"type": "api_error", "message": "x"}}, "claude")
    with pytest.raises(BackendError, match="not a message"):
        completion(_call(), {"type": "message"}, "claude")


def _translated(body: dict[str, Any]) -> tuple[Translator, list[Chunk]]:
    translator = Translator(_call(stream=True), "claude")
    chunks = [chunk for event in events(body) for chunk in translator.event(orjson.loads(orjson.dumps(event)))]
    return translator, chunks


def test_a_text_stream_becomes_openai_chunks_then_usage() -> None:
    translator, chunks = _translated({"model": "thinker", "messages": HI})
    assert translator.done and translator.call.stats.finish_reason == "stop"
    deltas = [c.payload["choices"][0]["delta"] for c in chunks if c.payload["choices"]]
    block = {"type": "thinking", "thinking": THINKING, "signature": "c2ln"}
    assert deltas == [{"role": "assistant", "content": ""}, {"reasoning_content": THINKING},
                      {"thinking_blocks": [block]}, {"content": "hello"}, {"content": " world"}, {}]  # fmt: skip
    assert "".join(c.text for c in chunks) == "hello world"  # the content: thinking is reasoning
    assert chunks[-2].payload["choices"][0]["finish_reason"] == "stop"
    last = chunks[-1]
    assert last.is_usage_only and last.usage == Usage.from_anthropic(USAGE)  # output from message_delta
    assert all(c.payload["object"] == "chat.completion.chunk" and c.payload["id"] == "chatcmpl-r1" for c in chunks)


def test_the_matched_stop_sequence_is_the_choices_stop_reason_whole_and_streamed() -> None:
    """As vLLM names it (`choices[0].stop_reason`), where /v1/messages reads its `stop_sequence` back; no field when
    no sequence matched. Before: the sequence was dropped."""
    body = {"model": "claude-sonnet-4-5", "messages": HI, "stop_sequences": [STOP_SEQUENCE]}
    payload, text, _ = completion(_call(), message(body), "claude")
    choice = payload["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"], text) == ("stop", STOP_SEQUENCE, "hello")
    _, chunks = _translated(body)
    (last,) = [
        c.payload["choices"][0] for c in chunks if c.payload["choices"] and c.payload["choices"][0]["finish_reason"]
    ]
    assert (last["finish_reason"], last["stop_reason"]) == ("stop", STOP_SEQUENCE)
    plain, _, _ = completion(_call(), message({**body, "stop_sequences": ["never"]}), "claude")
    assert "stop_reason" not in plain["choices"][0]
    _, chunks = _translated({**body, "stop_sequences": ["never"]})
    assert all("stop_reason" not in c.payload["choices"][0] for c in chunks if c.payload["choices"])


def test_a_tool_use_stream_becomes_tool_call_deltas() -> None:
    body = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}], "tools": [{"name": "w"}]}
    _, chunks = _translated(body)
    calls = [
        d["tool_calls"][0]
        for c in chunks
        if c.payload["choices"] and "tool_calls" in (d := c.payload["choices"][0]["delta"])
    ]
    assert calls[0] == {"index": 0, "id": "toolu_01A", "type": "function", "function": {"name": "w", "arguments": ""}}
    assert [c["function"]["arguments"] for c in calls[1:]] == list(ARGUMENTS_PIECES)
    assert orjson.loads("".join(ARGUMENTS_PIECES)) == INPUT
    assert [c.payload["choices"][0]["finish_reason"] for c in chunks if c.payload["choices"]][-1] == "tool_calls"


def test_stream_errors_fail_as_backend_errors() -> None:
    translator = Translator(_call(stream=True), "claude")
    with pytest.raises(BackendError, match="message_start"):
        translator.event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    assert translator.event({"type": "ping"}) == []
    with pytest.raises(BackendError, match=r"mid-stream \(overloaded_error\)") as caught:
        list(_translated({"model": "midstream", "messages": HI}))
    assert "secret-host" not in caught.value.message
    with pytest.raises(BackendError, match="invalid stream event"):
        translator.event(["not", "an", "object"])


def test_anthropic_error_bodies_map_like_openai_s() -> None:
    def body(kind: str) -> bytes:
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": "secret internal text"}})

    limited = upstream_error("claude", 429, body("rate_limit_error"), {"retry-after": "30"})
    assert isinstance(limited, UpstreamRateLimited)
    assert (limited.code, limited.headers) == ("rate_limit_error", {"retry-after": "30"})
    rejected = upstream_error("claude", 400, body("invalid_request_error"), {})
    assert isinstance(rejected, BackendClientError) and rejected.code == "invalid_request_error"
    overloaded = upstream_error("claude", 529, body("overloaded_error"), {})
    assert isinstance(overloaded, UpstreamOverloaded) and "secret" not in overloaded.message
    assert (overloaded.code, overloaded.unsent) == ("upstream_overloaded", True)  # a 502 to chat; nothing billed
    assert 529 in AnthropicBackend.retry_statuses


def test_a_budget_reservation_on_an_anthropic_backend_prices_the_prompt_as_cache_writes() -> None:
    """Admission's worst case (`Meter.cost_usd`): Anthropic may write the whole prompt to its cache (1.25× the
    input rate for Claude Haiku 4.5: $1.25 against $1 per million), so the reservation covers that. So does an
    `openai` backend's (an OpenAI-compatible proxy in front of Claude reports `cache_write_tokens`, charged at that
    rate: reserved at the input rate, it spent a hard budget past its cap)."""
    settings = parse_settings(
        {
            "backends": {"claude": {"kind": "anthropic"}, "compat": {"kind": "openai", "base_url": "http://x/v1"}},
            "models": {
                "claude-haiku-4-5": {"backend": "claude"},
                "via-compat": {"backend": "compat", "upstream_model": "claude-haiku-4-5"},
            },
        }
    )
    meter = Meter(settings, GridTable.bundled(), PriceBook())
    reserve = Usage(1_000_000, 0, source="estimated")
    assert meter.cost_usd("claude-haiku-4-5", settings.models["claude-haiku-4-5"], reserve, 0) == Decimal("1.25")
    assert meter.cost_usd("via-compat", settings.models["via-compat"], reserve, 0) == Decimal("1.25")


class _Deadline:
    """What `_events` tells a stream's deadline: how many reads it waited for and how many brought events."""

    def __init__(self) -> None:
        self.waits = self.events = 0

    def waiting(self) -> None:
        self.waits += 1

    def received(self, *, event: bool) -> None:
        self.events += event


def _sse(body: dict[str, Any]) -> list[bytes]:
    return [f"event: {e['type']}\ndata: {orjson.dumps(e).decode()}\n\n".encode() for e in events(body)]


async def _streamed(reads: list[bytes], **config: Any) -> tuple[list[list[Chunk]], Exception | None, Any]:
    backend = AnthropicBackend("claude", AnthropicBackendConfig(**config))
    response, deadline = _Response(reads), _Deadline()
    batches: list[list[Chunk]] = []
    try:
        async for batch in backend._events(_call(stream=True), response, deadline):  # type: ignore[arg-type]
            batches.append(batch)
    except Exception as exc:  # what the stream ended with
        return batches, exc, response
    return batches, None, response


async def test_a_read_s_events_are_one_batch_and_an_event_split_over_reads_is_joined() -> None:
    events_ = _sse({"model": "claude-sonnet-4-5", "messages": HI})
    joined = b"".join(events_)
    batches, failed, _ = await _streamed([joined[:7], joined[7:100], joined[100:]])
    assert failed is None
    texts = "".join(c.text for batch in batches for c in batch)
    assert texts == "hello world" and batches[-1][-1].usage == Usage.from_anthropic(USAGE)
    assert all(c.more for batch in batches for c in batch[:-1]) and not any(batch[-1].more for batch in batches)


async def test_a_bad_event_fails_after_the_good_ones_of_its_read_and_a_big_stream_is_cut() -> None:
    good = _sse({"model": "claude-sonnet-4-5", "messages": HI})[:4]  # message_start, ping, a block, "hello"
    batches, failed, _ = await _streamed([b"".join(good) + b"data: {oops\n\n"])
    assert isinstance(failed, BackendError) and "invalid stream event" in failed.message
    assert [c.text for c in batches[0]] == ["", "hello"]
    batches, failed, response = await _streamed([b"".join(good), b"data: " + b"x" * 600], max_response_bytes=800)
    assert isinstance(failed, ResponseTooLarge) and response.closed and len(batches) == 1
