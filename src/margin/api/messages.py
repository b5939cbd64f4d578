"""POST /v1/messages: Anthropic's Messages API over margin's request path, for Claude Code, the Anthropic SDKs and
the agent frameworks built on them. The body is validated and translated to a chat request at this edge
(`margin.messages`); the request path (`margin.pipeline.flow`) runs it as a chat (keys, budgets, rate limits,
guard, cache, routing, metering), and `MessagesClient` writes its answer as Anthropic's: the chat JSON as a
Message, the chat stream's chunks as Anthropic's events. The ledger row names the endpoint `messages`.

The key may come in `x-api-key` (the SDKs' `api_key`, `ANTHROPIC_API_KEY`) or as `Authorization: Bearer`
(`ANTHROPIC_AUTH_TOKEN`). `anthropic-version` and `anthropic-beta` are accepted and ignored: the answer is
always the one version margin speaks. Errors are Anthropic's JSON (`{"type": "error", "error": {...}}`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.types import ASGIApp

from margin.api.client import AsgiClient
from margin.api.errors import anthropic_error_body
from margin.api.inference import Run, arrive
from margin.api.messages_out import MessageEvents, from_chat
from margin.api.translating import TranslatingClient
from margin.errors import MarginError
from margin.messages import MessagesRequest
from margin.messages_chat import parse
from margin.pipeline.values import Record
from margin.protocol import Endpoint

REQUEST_ID = "request-id"  # Anthropic's header: the SDKs' `_request_id` (margin's `x-request-id` is there too)


class MessagesClient(TranslatingClient):
    """The request path's `Client` for a Messages call: Anthropic's answer, events and errors."""

    __slots__ = ("body", "record", "request_id")

    def __init__(self, inner: AsgiClient, body: MessagesRequest, record: Record) -> None:
        super().__init__(inner)
        self.body, self.record, self.request_id = body, record, record.request_id

    def body_of(self, error: MarginError) -> dict[str, Any]:
        return anthropic_error_body(error)

    async def answer(self, body: bytes, headers: Mapping[str, str]) -> None:
        await super().answer(body, {**headers, REQUEST_ID: self.request_id})

    async def refuse(self, error: MarginError, headers: Mapping[str, str]) -> None:
        await super().refuse(error, {**headers, REQUEST_ID: self.request_id})

    async def start_stream(self, headers: Mapping[str, str]) -> None:
        await super().start_stream({**headers, REQUEST_ID: self.request_id})

    def whole(self, chat: Any) -> dict[str, Any]:
        return from_chat(chat, self.body, self.request_id, self.record.usage)  # the row's usage, if the chat has none

    def new_events(self) -> MessageEvents:
        # made at the stream's first write, after the call step noted its first chunk's `start_usage`
        return MessageEvents(self.body, self.request_id, self.record.start_usage)


async def messages(request: HttpRequest) -> Response | ASGIApp:
    arrived = await arrive(request, parse, anthropic_error_body, x_api_key=True)
    if isinstance(arrived, Response):
        return arrived
    (started, services, request_id, headers, principal, batch), (body, data, chat) = arrived
    user = body.metadata.user_id if body.metadata is not None else None
    record = Record(
        request_id, Endpoint.MESSAGES, body.model, body.stream, started=started, principal=principal, user=user,
        batch=batch,
    )  # fmt: skip
    args = (request_id, Endpoint.CHAT, headers, data, chat, principal, record, started)
    return Run(services.flow, services.stalls, args, lambda inner: MessagesClient(inner, body, record))
