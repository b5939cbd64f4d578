"""Anthropic's Messages API as a backend (`kind: anthropic`): chat completions are translated to Messages
requests (`anthropic_request`) and the answers back to chat completions (`anthropic_response`), so the
pipeline, the meter and the client see what the `openai` backend gives them. The session, retries, time
limits and body bounds are `HttpBackend`'s; 529 (`overloaded_error`) is retried like 502/503/504.

Usage: Anthropic's `input_tokens` leave out cache reads and writes; margin's input is the whole prompt, with
cache reads as `cached_tokens` and cache writes as `cache_write_tokens` (priced at the cache-write rate)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from margin import jsonload
from margin.backend_config import AnthropicBackendConfig
from margin.backends.anthropic_request import dropped, messages_body
from margin.backends.anthropic_response import Translator, bad_response, completion
from margin.backends.deadline import StreamDeadline
from margin.backends.http_upstream import HttpBackend, Lines, event_data
from margin.backends.retry import RETRY_STATUSES
from margin.backends.upstream_errors import OVERLOADED  # Anthropic's 529: nothing was generated, safe to repeat
from margin.errors import BackendError, InvalidRequest
from margin.protocol import ChatCompletionRequest, Endpoint
from margin.types import Call, Chunk, Completion, Prompt

DROPPED_HEADER = "x-margin-dropped-params"  # the fields `drop_unsupported` left out of this request
# the fields of a Messages body that `/messages/count_tokens` takes (the rest are a completion's)
COUNTED = frozenset({"messages", "system", "tools", "tool_choice", "thinking", "output_config"})


class AnthropicBackend(HttpBackend):
    kind = "anthropic"
    retry_statuses = RETRY_STATUSES | {OVERLOADED}
    config: AnthropicBackendConfig

    def __init__(self, name: str, config: AnthropicBackendConfig, services: Any = None) -> None:
        super().__init__(name, config)

    def _headers(self) -> dict[str, str]:
        headers = {**super()._headers(), "anthropic-version": self.config.anthropic_version}
        if self.config.api_key_env and (key := os.environ.get(self.config.api_key_env)):
            headers["x-api-key"] = key
        return headers

    def _request(self, call: Call, *, stream: bool) -> tuple[str, bytes]:
        if call.endpoint is not Endpoint.CHAT or not isinstance(call.request, ChatCompletionRequest):
            raise InvalidRequest(
                f"model {call.public_model!r} serves chat completions only (its backend is Anthropic's Messages API)",
                param="model",
            )
        drop = self.config.drop_unsupported
        body = messages_body(call.raw, call.request, call.upstream_model, self.config.default_max_tokens, drop)
        if drop and (left_out := dropped(call.raw, call.request, drop)):  # never silently
            call.stats.notices[DROPPED_HEADER] = ",".join(left_out)
        if stream:
            body["stream"] = True
        else:
            body.pop("stream", None)
        return self._base + "/messages", orjson.dumps(body)

    def _completion(self, call: Call, payload: dict[str, Any], content: bytes) -> Completion:
        answer, text, usage = completion(call, payload, self.name)
        choice = answer["choices"][0]
        call.stats.finish_reason, call.stats.stop_sequence = choice["finish_reason"], choice.get("stop_reason")
        return Completion(payload=answer, text=text, usage=usage)

    async def complete(self, call: Call) -> Completion:
        return await self._post(call)

    async def count_input_tokens(self, prompt: Prompt) -> int:
        """Anthropic's own count of a prompt (`POST {base_url}/messages/count_tokens`, free and exact for its
        models), with the upstream's model name, through the session, retries, time limit and body bound every
        call has: a Messages body as the client sent it; any other prompt as the Messages body a completion of
        it would send (`messages_body`), less what only a completion takes (its output limit and sampling)."""
        body = prompt.messages
        if body is None:
            drop = self.config.drop_unsupported
            sent = messages_body(prompt.raw, prompt.chat, prompt.upstream_model, self.config.default_max_tokens, drop)
            body = {name: value for name, value in sent.items() if name in COUNTED}
        data = orjson.dumps({**body, "model": prompt.upstream_model})
        return await self._post_count(self._base + "/messages/count_tokens", data, "input_tokens")

    async def embed(self, call: Call) -> Completion:
        raise InvalidRequest(f"model {call.public_model!r} does not serve embeddings", param="model")

    async def _events(
        self, call: Call, response: aiohttp.ClientResponse, deadline: StreamDeadline
    ) -> AsyncIterator[list[Chunk]]:
        """Each read's events as one batch of chunks (all but the last marked `more`); an event that fails (an
        `error` event, one that does not parse) fails after the good ones before it. The stream must end with
        `message_stop`: one that breaks off before it failed (its usage is not known)."""
        translator, lines = Translator(call, self.name), Lines(self.config.max_response_bytes)
        while not translator.ended():
            deadline.waiting()
            data = await response.content.readany()
            if not data:
                break
            complete = lines.feed(data)
            if complete is None:
                raise self._too_large(response)
            events = [event for line in complete if (event := event_data(line)) is not None]
            deadline.received(event=bool(events))
            batch: list[Chunk] = []
            try:
                for event in events:
                    batch.extend(translator.event(_parsed(event, self.name)))
                    if translator.ended():
                        break
            except BackendError:
                if batch:  # the good events before the bad one are delivered first
                    yield batch
                raise
            for chunk in batch[:-1]:
                chunk.more = True
            if batch:
                yield batch
        if not translator.ended():
            raise bad_response(self.name, "a stream that ended before message_stop")


def _parsed(event: bytes, backend: str) -> Any:
    try:
        return jsonload.loads(event)  # nested past jsonload.MAX_DEPTH: an invalid event, as for openai backends
    except orjson.JSONDecodeError as exc:
        raise bad_response(backend, "an invalid stream event") from exc
