"""POST /v1/messages/count_tokens: the token count of a Messages prompt (the SDKs' `client.messages.count_tokens`,
Claude Code sizing its context). The body is validated as a Messages prompt and translated to the chat request a
completion of it would be (`margin.messages_chat`); the caller is authenticated and held to its policy as
on `/v1/messages` (margin.api.counting). A model on an `anthropic` backend is counted by Anthropic: the body as
the client sent it, with the upstream's model name (`{"input_tokens": N}` as Anthropic counted it). A model on an
`openai` backend with `count_tokens: vllm` is counted by vLLM (`/tokenize`): the chat request a completion would
send it. A model on a
`llamacpp` backend is counted by margin, exactly: the chat template and tokenizer a completion's prompt is built
with, so the count is the completion's `input_tokens`. Any other model answers 400 (`count_tokens_unavailable`):
margin does not estimate a count it cannot make exactly.

A count is not a completion: it writes no ledger row, reserves no budget and is not charged to TPM, but it is one
request for RPM limits (it uses the upstream's request rate too) and is counted in /metrics
(`margin_count_tokens`). The guard does not run on a count, so a caller whose policy redacts or blocks PII is
refused (403) rather than having its prompt counted unscanned."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import Response

from margin.api.counting import Count, answer
from margin.api.errors import anthropic_error_body
from margin.api.inference import arrive
from margin.api.messages import REQUEST_ID
from margin.messages_chat import parse_prompt


def _tokens(count: int) -> dict[str, Any]:
    return {"input_tokens": count}


async def count_tokens(request: HttpRequest) -> Response:
    arrived = await arrive(request, lambda data: (data, parse_prompt(data)), anthropic_error_body, x_api_key=True)
    if isinstance(arrived, Response):
        return arrived
    arrival, (data, (body, chat_json, chat)) = arrived
    headers = {REQUEST_ID: arrival.request_id}
    count = Count(body.model, chat_json, chat, _tokens, anthropic_error_body, messages=data, headers=headers)
    return await answer(arrival, count)
