"""Any OpenAI-compatible upstream (vLLM, SGLang, llama.cpp server, Ollama, hosted APIs) over one shared
HTTP client session per backend (`backends.http_upstream`). The client's JSON is passed on, limited to the
fields margin knows and prices (`protocol.FORWARDED`; `model` is replaced, stream usage is asked for, and an
assistant's `thinking_blocks`, an anthropic backend's, are left out);
answers are forwarded byte for byte, and parsed only to read usage and content."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from margin import jsonload
from margin.backend_config import OpenAIBackendConfig
from margin.backends.deadline import StreamDeadline
from margin.backends.http_upstream import HttpBackend, Lines, event_data
from margin.backends.upstream_errors import log_upstream, upstream_message
from margin.errors import BackendError
from margin.jsonload import MIN_DEEP_BYTES
from margin.protocol import FORWARDED, Endpoint
from margin.thinking import OBJECT_ARGUMENTS, object_arguments, text_arguments, without_thinking
from margin.types import Call, Chunk, Completion, Prompt, Usage, choices_text, finish_reason_of

log = logging.getLogger("margin.backends")

PATHS = {
    Endpoint.CHAT: "/chat/completions",
    Endpoint.COMPLETIONS: "/completions",
    Endpoint.EMBEDDINGS: "/embeddings",
    Endpoint.COMPACT: "/responses/compact",  # only where the route allowed it (`responses_compact`)
}

FINISHED = re.compile(rb'"finish_reason"\s*:\s*"[^"]')  # a finish named by a stream event (`_finished`)

# how an answer's usage is read, by endpoint (the rest: OpenAI's chat usage)
READERS = {Endpoint.COMPACT: Usage.from_responses, Endpoint.EMBEDDINGS: Usage.from_openai_embeddings}


def limit_field_for(base_url: str) -> str:
    """The output-limit field an upstream takes when its config does not say: OpenAI's and Azure OpenAI's
    reasoning models refuse `max_tokens` (400), and their other models take `max_completion_tokens` too."""
    host = urlsplit(base_url).hostname or ""
    return "max_completion_tokens" if host == "api.openai.com" or host.endswith(".openai.azure.com") else "max_tokens"


def delta_text(payload: dict[str, Any]) -> str:
    return choices_text(payload, "delta")


def message_text(payload: dict[str, Any]) -> str:
    return choices_text(payload, "message")


class OpenAIBackend(HttpBackend):
    """An OpenAI-compatible upstream; the time limits and retries are `HttpBackend`'s."""

    kind = "openai"
    config: OpenAIBackendConfig

    def __init__(self, name: str, config: OpenAIBackendConfig, services: Any = None) -> None:
        super().__init__(name, config)
        self._limit_field = config.output_limit_field or limit_field_for(config.base_url)
        # the `service_tier` values it is sent: none unless it lists tiers (a server that knows them); the route
        # step refused a request for a tier it does not allow, this is the same rule once more
        self._tiers = frozenset(("auto", "default", *config.service_tiers)) if config.service_tiers else frozenset()

    def _headers(self) -> dict[str, str]:
        headers = super()._headers()
        if self.config.api_key_env and (key := os.environ.get(self.config.api_key_env)):
            headers["authorization"] = f"Bearer {key}"
        return headers

    def _request(self, call: Call, *, stream: bool) -> tuple[str, bytes]:
        return self._base + PATHS[call.endpoint], self._body(call, stream=stream)

    def _fields(self, raw: dict[str, Any], endpoint: Endpoint, upstream_model: str) -> dict[str, Any]:
        """The fields of a client's request this upstream is sent, with its model name."""
        known = FORWARDED[endpoint]  # a null is the field left out (OpenAI's meaning; some servers differ)
        body = {name: value for name, value in raw.items() if name in known and value is not None}
        body["model"] = upstream_model
        if "messages" in body:  # an anthropic backend's thinking blocks, sent back: most upstreams do not take them
            body["messages"] = without_thinking(body["messages"], keep_thinking=self.config.thinking_blocks)
        return body

    def _body(self, call: Call, *, stream: bool) -> bytes:
        body = self._fields(call.raw, call.endpoint, call.upstream_model)
        if "service_tier" in body and body["service_tier"] not in self._tiers:
            del body["service_tier"]
        if call.endpoint is Endpoint.CHAT and self._limit_field == "max_completion_tokens" and "max_tokens" in body:
            limits = [v for v in (body.pop("max_tokens"), body.get("max_completion_tokens")) if isinstance(v, int)]
            if limits:  # both mean the answer's limit (the lower one is what was priced and capped)
                body["max_completion_tokens"] = min(limits)
        if stream and self.config.request_usage:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        elif not stream:  # it means nothing without a stream, and OpenAI (vLLM too) refuses it there: a 400 that
            body.pop("stream_options", None)  # the local model and the fake never gave for the same request
        return orjson.dumps(body)

    def _completion(self, call: Call, payload: dict[str, Any], content: bytes) -> Completion:
        # an error under a 200, alone or beside `choices`: its text goes to the log, never to the caller
        usage = READERS.get(call.endpoint, Usage.from_openai)(payload.get("usage"))
        if _is_error(payload):  # its usage (OpenRouter's beside a half answer) is what was billed: the row's
            log_upstream(self.name, "answered 200 with an error", upstream_message(content)[0])
            call.stats.closed_usage = usage
            raise BackendError("the upstream failed (an error under HTTP 200)")
        call.stats.finish_reason = finish_reason_of(payload)  # a cache hit replays it (`length`: a cut answer)
        rewritten = object_arguments(content) and text_arguments(payload)  # arguments as an object: as their text
        return Completion(payload=payload, raw=None if rewritten else content, text=message_text(payload), usage=usage)

    async def complete(self, call: Call) -> Completion:
        return await self._post(call)

    async def embed(self, call: Call) -> Completion:
        return await self._post(call)

    def _events(
        self, call: Call, response: aiohttp.ClientResponse, deadline: StreamDeadline
    ) -> AsyncIterator[list[Chunk]]:
        return self._reads(response, deadline)

    async def _reads(
        self, response: aiohttp.ClientResponse, deadline: StreamDeadline | None = None
    ) -> AsyncIterator[list[Chunk]]:
        """SSE events as they arrive: every read takes all the bytes already received, so the events of one
        read are handed over together (one generator step per read, not per event), marked `more` (all but
        the last chunk), which lets the responder write them to the client at once (`_batch`). Nothing waits
        for more data than the first event needs. `deadline` hears when a read starts and ends (only those
        waits count towards the stream's idle limit). An event that does not parse fails after the good ones
        before it."""
        content, lines, first, done = response.content, Lines(self.config.max_response_bytes), True, False
        before: list[bytes] = []  # the events of the last two reads with any, for a stream ended without `[DONE]`
        last: list[bytes] = []
        while True:
            if deadline is not None:
                deadline.waiting()
            data = await content.readany()
            if not data:
                break
            complete = lines.feed(data)
            if complete is None:
                raise self._too_large(response)
            events = [event for line in complete if line and (event := event_data(line)) is not None]
            if deadline is not None:
                deadline.received(event=bool(events))
            if events:
                before, last = last, events
            batch: list[Chunk] = []
            try:
                done = self._batch(events, batch, first=first)
            except BackendError:
                if batch:  # the good events before the bad one are delivered first
                    yield batch
                raise
            first = first and not batch
            if batch:
                yield batch
            if done:
                break
        async for batch in self._ended(lines.rest(), [*before, *last], first=first, done=done):
            yield batch

    async def _ended(self, rest: bytes, tail: list[bytes], *, first: bool, done: bool) -> AsyncIterator[list[Chunk]]:
        """A stream's end: before `[DONE]`, the event left without its line end; then a failure if no event came
        (an empty body, `[DONE]` alone, a JSON error body: no answer, not an empty one), or if the connection
        ended before `[DONE]` and none of the last events names a finish reason (it ended mid-answer, a reset a
        proxy turned into a clean end: the client is told, as for a reset, instead of `[DONE]` after half an
        answer; a server that omits `[DONE]` still names its finish, and passes)."""
        event = None if done else event_data(rest)
        done = done or event == b"[DONE]"
        if event is not None and not done:
            yield [self._chunk(event)]
            tail.append(event)
            first = False
        if first:
            log_upstream(self.name, "sent a stream without events", upstream_message(rest)[0])
            raise BackendError(f"upstream {self.name} sent a stream without events", code="upstream_bad_response")
        if not done and not _finished(tail):
            log_upstream(self.name, "ended a stream before its finish", "")
            raise BackendError(f"upstream {self.name} ended its stream before finishing", code="upstream_bad_response")

    def _batch(self, events: list[bytes], batch: list[Chunk], *, first: bool) -> bool:
        """One read's events into `batch`, in order; True at `[DONE]`. A run of events whose bytes name neither
        usage nor an error is one chunk (`Chunk.events`: forwarded as they came, no Python per event beyond
        this check); an event that names either is parsed into its own chunk, and the stream's first is a
        chunk of its own too (the call step parses it before anything is sent). Each chunk but the last is
        marked `more`. An event not shaped like a JSON object raises, once the good ones before it are in
        `batch`."""
        run: list[bytes] = []
        try:
            for event in events:
                if event == b"[DONE]":
                    return True
                if (
                    first
                    or _names_usage_or_error(event)
                    or (len(event) >= MIN_DEEP_BYTES and jsonload.may_nest(event))  # `len` first: most are short
                    or (b'"arguments"' in event and OBJECT_ARGUMENTS.search(event) is not None)
                ):  # as `_parsed_here`, inline: this runs for each event
                    if run:
                        batch.append(Chunk(events=run) if len(run) > 1 else Chunk(raw=run[0]))
                        run = []
                    batch.append(self._chunk(event))
                    first = False
                elif event.startswith(b"{") and event.endswith(b"}"):
                    run.append(event)
                else:
                    raise self._invalid_event()
            return False
        finally:
            if run:
                batch.append(Chunk(events=run) if len(run) > 1 else Chunk(raw=run[0]))
            for chunk in batch[:-1]:
                chunk.more = True

    def _invalid_event(self) -> BackendError:
        return BackendError(f"upstream {self.name} sent an invalid stream event", code="upstream_bad_response")

    def _chunk(self, data: bytes) -> Chunk:
        """One event, parsed here only when its bytes name usage or an error, hold enough brackets to nest past
        `jsonload.MAX_DEPTH`, or may hold tool call arguments as an object (forwarded as their text: `_parsed_here`;
        the rest is parsed on first use: the text of the first token, or when a guard
        or the cache reads it). An event that is not even shaped like a JSON object (cut, garbled) or nests too
        deep fails here, before it is forwarded; one that is shaped like one but does not parse fails where it
        is first parsed. An event with an `error` is a failure even beside `choices` (OpenRouter's mid-stream error,
        whose choice finishes with `error`): the OpenAI SDK raises on it, and its text is the upstream's (the log's,
        never the client's)."""
        if not _parsed_here(data):
            if not (data.startswith(b"{") and data.endswith(b"}")):
                raise self._invalid_event()
            return Chunk(raw=data)
        try:
            payload = jsonload.loads(data)  # nested past jsonload.MAX_DEPTH: not forwarded, like invalid JSON
        except orjson.JSONDecodeError as exc:
            raise self._invalid_event() from exc
        if not isinstance(payload, dict):
            raise self._invalid_event()
        if _is_error(payload):  # beside `choices` too: OpenRouter's mid-stream error
            log_upstream(self.name, "failed mid-stream", upstream_message(data)[0])
            raise BackendError("the upstream failed mid-stream")
        rewritten = object_arguments(data) and text_arguments(payload)  # arguments as an object: as their text
        reported = payload.get("usage")
        usage = Usage.from_openai(reported) if reported else None
        if reported and usage is None:  # usage that counts no prompt: metered as none came, so not forwarded either
            payload = {key: value for key, value in payload.items() if key != "usage"}
            return Chunk(payload=payload, text=delta_text(payload))
        return Chunk(payload=payload, raw=None if rewritten else data, text=delta_text(payload), usage=usage)


def _finished(events: list[bytes]) -> bool:
    """Whether one of a stream's last events (the last reads') names a finish reason: read only when it ended
    without `[DONE]`, by a look at the bytes (an event of any size, a finish among many events after it); a
    `"finish_reason"` inside a string is escaped (`\\"`), so it never matches."""
    return any(FINISHED.search(event) is not None for event in events)


class VllmCountingBackend(OpenAIBackend):
    """An `openai` backend in front of a vLLM server, with `count_tokens: vllm`: it counts a prompt by asking
    vLLM's `POST /tokenize` (at the server's root, beside `/v1`) for the chat request a completion would send."""

    def __init__(self, name: str, config: OpenAIBackendConfig, services: Any = None) -> None:
        super().__init__(name, config, services)
        self._tokenize = self._base.removesuffix("/v1") + "/tokenize"

    async def count_input_tokens(self, prompt: Prompt) -> int:
        """vLLM's count (`count` of its `TokenizeResponse`) of the prompt a chat completion of `prompt` is: its
        messages and tools as `complete` would send them, the upstream's model name, and the generation prompt
        the chat endpoint adds; with the session, key, retries, time limit and body bound every call has."""
        sent = self._fields(prompt.raw, Endpoint.CHAT, prompt.upstream_model)
        body = {name: sent[name] for name in ("model", "messages", "tools") if name in sent}
        data = orjson.dumps({**body, "add_generation_prompt": True})
        return await self._post_count(self._tokenize, data, "count")


def openai_backend(name: str, config: OpenAIBackendConfig, services: Any = None) -> OpenAIBackend:
    """The backend of `kind: openai`: one that counts (`margin.types.InputCounter`) when `count_tokens` says how."""
    if config.count_tokens == "vllm":
        return VllmCountingBackend(name, config, services)
    return OpenAIBackend(name, config, services)


def _is_error(payload: dict[str, Any]) -> bool:
    """An answer (or event) that is an OpenAI error object rather than an answer, or that carries one beside its
    `choices` (OpenRouter's error mid-answer, whose choice finishes with `error`, in a stream's event or a whole
    answer alike: the answer it holds is not one). Before, a whole answer of that shape was an `ok` answer of
    whatever its choice held, while the same in a stream was the upstream's failure."""
    error = payload.get("error")
    return error is not None and (bool(error) or ("choices" not in payload and "data" not in payload))


def _parsed_here(event: bytes) -> bool:
    """Whether an event is parsed as it arrives: it names usage or an error, may nest past `jsonload.MAX_DEPTH`
    (`len` first: a stream's events are mostly too short to nest that deep, and this runs for each), or may hold
    tool call arguments that are not text (`margin.thinking.object_arguments`, rewritten as their text)."""
    return (
        _names_usage_or_error(event)
        or (len(event) >= MIN_DEEP_BYTES and jsonload.may_nest(event))
        or object_arguments(event)
    )


def _names_usage_or_error(event: bytes) -> bool:
    """Whether an event's bytes name an error, or usage that is not null (OpenAI puts `"usage":null` in every
    chunk once usage is asked for; only the last one holds it)."""
    if b'"error"' in event:
        return True
    return b'"usage"' in event and b'"usage":null' not in event and b'"usage": null' not in event
