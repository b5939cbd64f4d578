"""A request body read as its endpoint's schema (`margin.protocol.SCHEMAS`): what margin refuses rather than
drop silently, and a validation error as OpenAI's 400 naming the field that failed."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from margin.errors import InvalidRequest
from margin.protocol import MAX_CONTENT_PARTS, MAX_MESSAGES, SCHEMAS, ApiRequest, Endpoint

# Chat fields that ask for an answer of another shape or for unpriced work, which margin does not forward:
# dropped, the caller would get a plain text answer it did not ask for (no `message.audio`, no web search, no
# moderation).
UNSUPPORTED_CHAT = {
    "audio": "audio output is not supported through this gateway",
    "web_search_options": "web search is not supported through this gateway",
    # OpenAI's moderation of the input and the answer (`block` stops it): no backend but OpenAI runs it, and
    # margin's cache, guard and meter do not read its results (margin's own guard is the caller's policy)
    "moderation": "moderated completions are not supported through this gateway",
}


def _unsupported(data: dict[str, Any]) -> None:
    """A chat asking for what margin would otherwise drop silently is refused (400 `unsupported_parameter`)."""
    for name, why in UNSUPPORTED_CHAT.items():
        if data.get(name) is not None:
            raise InvalidRequest(f"{name}: {why}", param=name, code="unsupported_parameter")
    modalities = data.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise InvalidRequest(
            'modalities: only ["text"] is supported through this gateway',
            param="modalities",
            code="unsupported_parameter",
        )


def _type_tag(part: Any) -> bool:
    """A union member's name in an error's location (`str`, `list[ContentPart]`): not a field of the request."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


def content_parts(messages: Any, *, nested: bool = False, what: str = "content parts", orders: bool = True) -> None:
    """Content parts over all of a chat's messages, counted before any is validated (one message's limit
    alone would let 10,000 messages hold 10,000 parts each, as many as the body's bytes allow). Plain Python
    before pydantic: a validator inside the model cost ~0.9 µs a request, this ~0.2. `nested`: a part's own
    `content` list counts too (Anthropic's tool results hold blocks: `margin.messages`). An assistant's
    `thinking_blocks`, `block_order` (`orders`: not one margin made translating a Messages or Responses
    body, whose blocks or items were counted already) and `reasoning_details` entries count as its parts."""
    if type(messages) is not list or len(messages) > MAX_MESSAGES:  # not a list, or too long: pydantic says so
        return
    parts = 0
    for message in messages:
        if type(message) is not dict:
            continue
        if type(content := message.get("content")) is list:
            parts += len(content)
            if nested:
                parts += sum(len(c) for b in content if type(b) is dict and type(c := b.get("content")) is list)
        if type(thinking := message.get("thinking_blocks")) is list:
            parts += len(thinking)
        if orders and type(order := message.get("block_order")) is list:
            parts += len(order)
        if type(details := message.get("reasoning_details")) is list:
            parts += len(details)
    if parts > MAX_CONTENT_PARTS:
        raise InvalidRequest(
            f"messages: at most {MAX_CONTENT_PARTS} {what} over all messages, not {parts}",
            param="messages",
            code="array_above_max_length",
        )


def parse_request(endpoint: Endpoint, data: Any, *, translated: bool = False) -> ApiRequest:
    """`translated`: a chat margin made of a Messages or Responses body (bounded as that body already)."""
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if endpoint is Endpoint.CHAT:
        content_parts(data.get("messages"), orders=not translated)
        _unsupported(data)
    try:
        return SCHEMAS[endpoint].model_validate(data)
    except ValidationError as exc:
        raise error_param(exc) from exc


def error_param(exc: ValidationError, tags: frozenset[str] = frozenset()) -> InvalidRequest:
    """A validation error as OpenAI's 400: the field that failed (`param`), its message. `tags`: the names of
    union members (a discriminator's values, model names) that are not fields."""
    errors = exc.errors()
    first = max(errors, key=lambda error: len(error["loc"]))  # a union's: the member that went deepest
    param = ".".join(str(p) for p in first["loc"] if not _type_tag(p) and p not in tags) or None
    message = first["msg"] if first["type"] != "missing" else "field required"
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    code = "array_above_max_length" if first["type"] == "too_long" else None  # OpenAI's code for it
    return InvalidRequest(f"{param}: {message}{extra}", param=param, code=code)
