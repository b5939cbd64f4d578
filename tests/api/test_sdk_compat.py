"""Client code written against the OpenAI API, unchanged, against a running `margin serve`: the official SDK and
raw HTTP through the `fake` backend and an `openai` upstream that records what margin forwards
(`tests/api/compat_upstream.py`). Each test is a request class that broke before: a 400 where OpenAI answers,
a ledger row that disagreed with what the answer cost, an error that lost what the SDK reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from tests.api.compat_upstream import ARGUMENTS, REASONING, Upstream, compat_upstream
from tests.helpers import free_port, margin_serve, wait_ledger_row

USER: Any = [{"role": "user", "content": "hi there"}]  # the SDK's TypedDicts, as client code passes them
TOOLS: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
UPSTREAM_MODELS = ("plain", "nousage", "reasoning", "reject")


@dataclass
class Live:
    url: str
    db: Path
    upstream: Upstream
    client: openai.OpenAI  # the official SDK, as client code makes it (no retries: each call is one request)

    def row(self, request_id: str) -> Any:
        return wait_ledger_row(self.db, self.url, request_id)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("compat")
    with compat_upstream() as upstream:
        price = {"input": "1", "output": "2"}
        closed_port = f"http://127.0.0.1:{free_port()}/v1"
        config = {
            "storage": {"flush_interval_ms": 10},
            "backends": {
                "fake": {"kind": "fake", "output_tokens": 5},
                "up": {"kind": "openai", "base_url": upstream.url, "timeout_s": 10, "retries": {"attempts": 0}},
                # nothing listens there: every request to it is refused at the connection, never sent
                "down": {"kind": "openai", "base_url": closed_port, "retries": {"attempts": 0}},
            },
            "models": {
                "fake-chat": {"backend": "fake", "price": price},
                "fake-embed": {"backend": "fake", "kind": "embedding", "price": price},
                "down": {"backend": "down", "price": price},
                **{name: {"backend": "up", "upstream_model": name, "price": price} for name in UPSTREAM_MODELS},
            },
        }
        (folder / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(folder / "ledger.db", folder / "serve.log", config=folder / "margin.yaml", ready_s=60)
        with serving as (url, _process), openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0) as client:
            yield Live(url, folder / "ledger.db", upstream, client)


@pytest.mark.parametrize("model", ["fake-chat", "plain"])
def test_null_for_an_optional_field_means_its_default(live: Live, model: str) -> None:
    """OpenAI's schema makes every optional parameter nullable (`"n": null` is `n` left out); code that builds
    its body from a dict of optional values sends them. They were 400 (`n`, `stream`, `echo`,
    `stream_options.include_usage`); an upstream now receives none of them (a null is not forwarded: some
    servers take `null` for a value)."""
    nulls = {"n": None, "stream": None, "temperature": None, "stop": None, "max_tokens": None, "tools": None,
             "tool_choice": None, "response_format": None, "seed": None, "user": None, "logprobs": None}  # fmt: skip
    answer = httpx.post(live.url + "/v1/chat/completions", json={"model": model, "messages": USER, **nulls})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["choices"]) == 1
    if model == "plain":
        assert live.upstream.last == {"model": "plain", "messages": USER}
    streamed = {"model": model, "messages": USER, "stream": True, "stream_options": {"include_usage": None}}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=streamed) as stream:
        assert stream.status_code == 200
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and '"usage":{' not in "".join(events).replace(" ", "")
    completion = {"model": model, "prompt": "hi", "n": None, "echo": None, "stream": None, "best_of": None}
    assert httpx.post(live.url + "/v1/completions", json=completion).status_code == 200


def _estimate(text: str) -> int:
    return round(len(text) / 4)  # margin's estimate for an upstream without usage (4 characters a token)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_and_reasoning_are_billed_when_the_upstream_reports_no_usage(live: Live, stream: bool) -> None:
    """An upstream without usage is metered from the answer; a tool-calling answer has no content, so it was
    billed 0 output tokens (and a stream's usage chunk told the client `completion_tokens: 0`), its tool
    definitions were not counted as input, and reasoning a server returned beside the content was free."""
    client, calls = live.client, ("get_weather" + ARGUMENTS) * 2
    for model, tools, generated in (("nousage", TOOLS, calls), ("reasoning", None, "hello there" + REASONING)):
        extra: dict[str, Any] = {"tools": tools} if tools else {}
        if stream:
            extra |= {"stream": True, "stream_options": {"include_usage": True}}
        raw = client.chat.completions.with_raw_response.create(model=model, messages=USER, **extra)
        if stream:
            chunks = list(raw.parse())
            usage = chunks[-1].usage
            if tools:  # the tool calls arrived whole, in deltas the SDK parses
                deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
                assert "".join(d[0].function.arguments or "" for d in deltas) == ARGUMENTS * 2
        else:
            usage = raw.parse().usage  # the row's (before: none, nothing to pass on)
        row = live.row(raw.headers["x-margin-request-id"])
        assert row.usage_source == "estimated"
        assert row.output_tokens == _estimate(generated) > 30
        if tools:
            assert row.input_tokens >= _estimate(str(TOOLS)) + 1
        assert usage is not None  # what the client was told is what the ledger says
        assert (usage.prompt_tokens, usage.completion_tokens) == (row.input_tokens, row.output_tokens)


@pytest.mark.parametrize("stream", [False, True])
def test_a_message_from_an_upstream_that_reports_no_usage_has_the_usage_the_row_holds(live: Live, stream: bool) -> None:
    """Anthropic's Message always has usage: where the upstream reported none, it is what the request was metered
    at (the row's, counted), as a stream's final message already said. Before: a whole Message said 0 tokens in
    and out while its row billed the counted ones."""
    asked: Any = {"max_tokens": 50, "messages": [{"role": "user", "content": "hi there"}]}
    with anthropic.Anthropic(base_url=live.url, api_key="-", max_retries=0) as client:
        tools: Any = {"tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]}
        for model, extra in (("nousage", tools), ("reasoning", {})):
            if stream:
                with client.messages.stream(model=model, **asked, **extra) as events:
                    message, request_id = events.get_final_message(), events.response.headers["x-request-id"]
            else:
                raw = client.messages.with_raw_response.create(model=model, **asked, **extra)
                message, request_id = raw.parse(), raw.headers["x-request-id"]
            assert message.content and live.upstream.bodies[-1]["model"] == model
            row = live.row(request_id)
            assert row.usage_source == "estimated" and row.output_tokens > 30
            usage = message.usage
            assert (usage.input_tokens, usage.output_tokens) == (row.input_tokens, row.output_tokens)
            assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (0, 0)


@pytest.mark.parametrize("stream", [False, True])
def test_a_response_from_an_upstream_that_reports_no_usage_has_the_usage_the_row_holds(
    live: Live, stream: bool
) -> None:
    """The Responses API's Response has usage, as its stream's `response.completed` already did: where the upstream
    reported none, what the request was metered at (the row's, counted). Before: a whole Response said
    `usage: null` while its row billed the counted tokens."""
    for model in ("nousage", "reasoning"):
        if stream:
            with live.client.responses.stream(model=model, input="hi there") as events:
                response = events.get_final_response()
        else:
            response = live.client.responses.create(model=model, input="hi there")  # type: ignore[assignment]
        assert live.upstream.bodies[-1]["model"] == model
        row = live.row(response.id.removeprefix("resp_"))
        assert row.usage_source == "estimated" and row.output_tokens > 0
        assert response.usage is not None
        assert (response.usage.input_tokens, response.usage.output_tokens) == (row.input_tokens, row.output_tokens)


@pytest.mark.parametrize("stream", [False, True])
def test_a_deterministic_request_the_cache_cannot_replay_is_answered_by_the_upstream(live: Live, stream: bool) -> None:
    """The exact cache is on by default for temperature 0, and replays one choice of text. The second of two
    identical requests for `n: 2` got one choice holding both texts run together; with `logprobs`, no
    logprobs; an answer with reasoning (or tool calls beside its content) lost them. Each now reaches the
    upstream again, and the answer is the same both times."""
    client = live.client
    for model, extra in (("plain", {"n": 2}), ("plain", {"logprobs": True}), ("reasoning", {})):
        answers: list[Any] = []
        for _ in range(2):
            sent = len(live.upstream.bodies)
            kwargs: dict[str, Any] = {"model": model, "messages": USER, "temperature": 0, **extra}
            if stream:
                chunks = list(client.chat.completions.create(stream=True, **kwargs))
                texts: dict[int, str] = {}
                for chunk in chunks:
                    for choice in chunk.choices:
                        texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
                        reasoning = (choice.delta.model_extra or {}).get("reasoning_content")
                        texts[choice.index] += f"[{reasoning}]" if reasoning else ""
                answers.append(texts)
            else:
                answer = client.chat.completions.create(**kwargs)
                answers.append([(c.message.content, c.logprobs, c.message.model_extra) for c in answer.choices])
            assert len(live.upstream.bodies) == sent + 1, f"{model} {extra}: answered from the cache"
        assert answers[0] == answers[1]
        assert len(answers[0]) == extra.get("n", 1)


def test_an_upstreams_refusal_keeps_the_parameter_it_names(live: Live) -> None:
    """An upstream 4xx reaches the caller with its status and code, its text withheld (it can hold the
    upstream's internals); the `param` it named was dropped too, so `BadRequestError.param` was None and the
    caller had nothing to go on. A plain field path is passed on."""
    with pytest.raises(openai.BadRequestError) as refused:
        live.client.chat.completions.create(model="reject", messages=USER, temperature=1.5)
    error = refused.value
    assert (error.status_code, error.code, error.param) == (400, "unsupported_value", "temperature")
    assert "temperature is not supported" not in str(error.body)  # the upstream's own words stay in the log


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_refused_before_any_work_costs_nothing(live: Live, stream: bool) -> None:
    """An attempt that did no work (the upstream refused it with a 4xx, the upstream could not be reached,
    the backend's own check refused it) was charged its prompt, counted or estimated, at the model's price:
    the 400 or 502 said `x-margin-cost-usd: 0.000275…` and its budget paid it, for a request no provider
    bills. It counts no tokens now (`usage_source: refused`)."""
    long_prompt: Any = [{"role": "user", "content": "tell me about the weather " * 40}]
    for model, status in (("reject", 400), ("down", 502)):
        answer = httpx.post(
            live.url + "/v1/chat/completions", json={"model": model, "messages": long_prompt, "stream": stream}
        )
        assert answer.status_code == status, answer.text
        assert answer.headers["x-margin-cost-usd"] == "0.000000000"
        row = live.row(answer.headers["x-request-id"])
        assert (row.http_status, row.input_tokens, row.output_tokens, row.cost_nanousd) == (status, 0, 0, 0)
        assert (row.usage_source, row.cost_status) == ("refused", "priced")
    # the fake embedder refuses token ids itself, before embedding anything
    with pytest.raises(openai.BadRequestError) as refused:
        live.client.embeddings.create(model="fake-embed", input=[[1, 2, 3], [4, 5]])
    row = live.row(refused.value.request_id or "")
    assert (row.input_tokens, row.output_tokens, row.cost_nanousd, row.usage_source) == (0, 0, 0, "refused")
    # work that was done is still charged: the same long prompt answered costs its tokens
    answered = live.client.chat.completions.with_raw_response.create(model="fake-chat", messages=long_prompt)
    assert live.row(answered.headers["x-request-id"]).cost_nanousd > 0


def test_the_sdks_request_id_is_margins(live: Live) -> None:
    """The SDK reads OpenAI's `x-request-id` (`completion._request_id`, `APIStatusError.request_id`), which
    client code logs to trace a call; margin sent only `x-margin-request-id`, so it was None everywhere. It is
    the ledger row's id, on answers, streams and errors."""
    client = live.client
    raw = client.chat.completions.with_raw_response.create(model="fake-chat", messages=USER)
    assert raw.parse()._request_id == raw.headers["x-margin-request-id"]
    live.row(raw.headers["x-request-id"])  # the ledger row it names
    with client.chat.completions.with_streaming_response.create(model="plain", messages=USER, stream=True) as stream:
        assert stream.request_id == stream.headers["x-margin-request-id"]
    for model in ("no-such-model", "reject"):  # refused by margin, and by the upstream
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model=model, messages=USER)
        assert refused.value.request_id == refused.value.response.headers["x-margin-request-id"]


def test_an_output_limit_set_by_margin_reaches_a_reasoning_model_in_the_field_it_takes(tmp_path: Path) -> None:
    """Under a budget, a chat without an output limit gets one (what the reservation priced), which margin
    sent as `max_tokens`: OpenAI's reasoning models refuse that field, so every such call to them failed with
    400 once a budget applied. An upstream configured with `output_limit_field: max_completion_tokens` (the
    default for api.openai.com and Azure OpenAI) gets the limit, the caller's own `max_tokens` included, in
    `max_completion_tokens`."""
    with compat_upstream() as upstream:
        backend = {"kind": "openai", "base_url": upstream.url, "output_limit_field": "max_completion_tokens"}
        config = {
            "storage": {"flush_interval_ms": 10},
            "backends": {"oai": backend},
            "models": {"o-series": {"backend": "oai", "price": {"input": "1", "output": "2"}}},
            "budgets": [{"name": "o", "scope": {"kind": "model", "value": "o-series"}, "usd": 100, "period": "day"}],
        }
        (tmp_path / "margin.yaml").write_text(yaml.safe_dump(config))
        serving = margin_serve(tmp_path / "ledger.db", tmp_path / "serve.log", config=tmp_path / "margin.yaml")
        with serving as (url, _process), openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0) as client:
            cases: list[tuple[dict[str, Any], int | None]] = [
                ({}, None),
                ({"max_tokens": 50}, 50),
                ({"max_tokens": 50, "max_completion_tokens": 70}, 50),
            ]
            for sent, limit in cases:
                answer = client.chat.completions.create(model="o-series", messages=USER, **sent)
                assert answer.choices[0].message.content == "hello there"
                assert "max_tokens" not in upstream.last
                assert upstream.last["max_completion_tokens"] == (limit or upstream.last["max_completion_tokens"]) > 0


def test_the_output_limit_field_defaults_to_what_the_upstream_takes() -> None:
    from margin.backends.openai_compat import limit_field_for  # here: the module's other tests run on older code

    assert limit_field_for("https://api.openai.com/v1") == "max_completion_tokens"
    assert limit_field_for("https://acme.openai.azure.com/openai/v1") == "max_completion_tokens"
    assert (
        limit_field_for("http://vllm.internal:8000/v1") == limit_field_for("https://openai.com.evil/v1") == "max_tokens"
    )


@pytest.mark.parametrize("model", ["fake-chat", "plain"])
def test_a_chat_asking_for_audio_or_web_search_is_refused_not_answered_in_plain_text(live: Live, model: str) -> None:
    """margin forwards only the fields it prices; `audio`, `modalities: ["audio"]` and `web_search_options` were
    dropped, so the caller got a text answer with no `message.audio` (client code reading it then fails) and no
    search. They are a 400 naming the field; `modalities: ["text"]` is fine."""
    sent = len(live.upstream.bodies)
    for extra, param in (
        ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["audio"]}, "modalities"),
        ({"web_search_options": {}}, "web_search_options"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            live.client.chat.completions.create(model=model, messages=USER, **extra)
        assert (refused.value.param, refused.value.code) == (param, "unsupported_parameter")
    assert len(live.upstream.bodies) == sent
    answer = live.client.chat.completions.create(model=model, messages=USER, modalities=["text"], audio=None)
    assert answer.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_the_fake_backend_answers_n_choices_and_bills_them(live: Live, stream: bool) -> None:
    """Test code written for `n > 1` against the fake backend got one choice, and usage for one answer."""
    kwargs: dict[str, Any] = {"model": "fake-chat", "messages": USER, "n": 3, "max_tokens": 2}
    if stream:
        raw = live.client.chat.completions.with_raw_response.create(
            stream=True, stream_options={"include_usage": True}, **kwargs
        )
        chunks = list(raw.parse())
        texts: dict[int, str] = {}
        for chunk in chunks:
            for choice in chunk.choices:
                texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
        usage = chunks[-1].usage
    else:
        raw = live.client.chat.completions.with_raw_response.create(**kwargs)
        answer = raw.parse()
        texts = {choice.index: choice.message.content or "" for choice in answer.choices}
        usage = answer.usage
    assert texts == {0: "tok tok ", 1: "tok tok ", 2: "tok tok "}
    assert usage is not None and usage.completion_tokens == 6
    assert live.row(raw.headers["x-request-id"]).output_tokens == 6
    completion = live.client.completions.create(model="fake-chat", prompt=["a", "b"], n=2, max_tokens=1)
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    assert completion.usage is not None and completion.usage.completion_tokens == 4


@pytest.mark.parametrize("stream", [False, True])
def test_the_fake_backend_counts_a_prompt_of_token_ids(live: Live, stream: bool) -> None:
    """A completion prompt of token ids is tokens already (README, "Usage"); the fake backend counted only the
    words of its text, so `prompt: [[1, 2, 3], [4, 5]]` reported, recorded and was charged 0 input tokens."""
    kwargs: dict[str, Any] = {"model": "fake-chat", "prompt": [[1, 2, 3], [4, 5]], "max_tokens": 1}
    if stream:
        kwargs.update(stream=True, stream_options={"include_usage": True})
    raw = live.client.completions.with_raw_response.create(**kwargs)
    parsed: Any = raw.parse()
    usage = [chunk.usage for chunk in parsed if chunk.usage][-1] if stream else parsed.usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (5, 2)
    row = live.row(raw.headers["x-request-id"])
    assert (row.input_tokens, row.output_tokens, row.cost_nanousd) == (5, 2, 5 * 1000 + 2 * 2000)


def test_stream_options_without_a_stream_are_not_sent_upstream(live: Live) -> None:
    """`stream_options` on a request that does not stream means nothing, and OpenAI and vLLM refuse it (400):
    margin forwarded it, so code written against the local model or the fake (which answer it) failed on an
    `openai` backend. It is left out of a JSON request; a stream's are sent (with usage asked for)."""
    options: Any = {"include_usage": True}
    answer = live.client.chat.completions.create(model="plain", messages=USER, stream_options=options)
    assert answer.choices[0].message.content == "hello there"
    assert "stream_options" not in live.upstream.last
    list(live.client.chat.completions.create(model="plain", messages=USER, stream=True, stream_options=options))
    assert live.upstream.last["stream_options"] == {"include_usage": True}


def test_an_echoed_prompt_is_not_billed_as_output(live: Live) -> None:
    """A completion with `echo` repeats its prompt before what it generated; from an upstream without usage the
    answer's whole text was counted as output, so a 1,200-character prompt echoed in 2 answers billed ~600
    output tokens for 6 generated. The echo is taken off; the prompt is input, once."""
    prompt = "tell me about the weather " * 48
    answer = live.client.completions.with_raw_response.create(model="nousage", prompt=prompt, echo=True, n=2)
    assert [choice.text for choice in answer.parse().choices] == [prompt + " hello there"] * 2
    row = live.row(answer.headers["x-request-id"])
    assert (row.usage_source, row.output_tokens) == ("estimated", _estimate(" hello there" * 2))
    assert row.input_tokens == _estimate(prompt)


def test_the_usage_event_margin_adds_belongs_to_the_upstreams_stream(live: Live) -> None:
    """An upstream without usage gets a usage event from margin at the end of its stream; it carried margin's
    own id and time (`chatcmpl-01a2…`, now) where every other event said the upstream's (`chatcmpl-up`, 1):
    one stream, two ids, for clients that key a stream's events by id. It repeats the stream's now."""
    body = {"model": "nousage", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body) as stream:
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0
    identities = {tuple(event.get(key) for key in ("id", "created", "model", "system_fingerprint")) for event in events}
    assert identities == {("chatcmpl-up", 1, "nousage", "fp_up")}


def test_an_embedder_of_fixed_width_refuses_other_dimensions(live: Live) -> None:
    """The fake embedder answered 8 numbers to `dimensions: 2`, as if it had been honoured (the local embedder
    refuses it); both refuse now, before any work, and its own width is answered."""
    with pytest.raises(openai.BadRequestError) as refused:
        live.client.embeddings.create(model="fake-embed", input="a cat", dimensions=2)
    assert (refused.value.code, refused.value.param) == ("unsupported_parameter", "dimensions")
    assert live.row(refused.value.request_id or "").cost_nanousd == 0
    answer = live.client.embeddings.create(model="fake-embed", input="a cat", dimensions=8)
    assert len(answer.data[0].embedding) == 8


def test_a_refused_field_is_named_as_the_request_spells_it(live: Live) -> None:
    """A field that may take several shapes (`content`: text or parts; `stop`: one or a list) was named with
    the shape pydantic tried first (`messages.0.content.str`, `stop.list[str].0`), and described by it: a bad
    part of a list of parts was reported as "should be a valid string". The param is the request's path, and
    the error the one of the shape that was sent."""
    for extra, param, says in (
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages.0.content.0.text", ""),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", ""),
        ({"stop": ["ok", 1]}, "stop.1", "valid string"),
        ({"tool_choice": 5}, "tool_choice", ""),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            live.client.chat.completions.create(**{"model": "fake-chat", "messages": USER, **extra})
        body = refused.value.body
        assert refused.value.param == param and isinstance(body, dict)
        assert body["message"].startswith(f"{param}: ") and says in body["message"]


def test_a_streamed_tool_call_has_a_time_to_first_token(live: Live) -> None:
    """TTFT was taken at the first event with content, so a stream of tool calls (no content) had none: its
    row's `ttft_ms` was empty, and the latency reports left out every tool-calling stream."""
    raw = live.client.chat.completions.with_raw_response.create(model="plain", messages=USER, tools=TOOLS, stream=True)
    assert [chunk.choices[0].finish_reason for chunk in raw.parse() if chunk.choices][-1] == "tool_calls"
    row = live.row(raw.headers["x-margin-request-id"])
    assert row.ttft_ms is not None and 0 <= row.ttft_ms <= row.e2e_ms
