"""Anthropic's Messages API (`POST /v1/messages`), request side: the body validated strictly (an unknown field or
a wrong type is a 400 naming it, as Anthropic's API does) and translated (`margin.messages_chat`) to the chat
request margin's request path runs (`margin.pipeline.flow`), so that a Messages call is admitted, guarded,
cached, routed, metered and written to the ledger as a chat is. The answer is translated back in `margin.api.messages`.

What margin cannot honour is refused with a message that says why, before anything is reserved or sent: tools
Anthropic's servers run (web search, code execution, bash, …: margin runs no tools), MCP servers, containers,
`search_result` blocks, documents other than a base64 PDF or plain text, citations and images by file id.
`cache_control` (anywhere) and `context_management` are accepted and ignored: prompt caching is the upstream's
own (what it reports as cached input is `cache_read_input_tokens`), and the conversation is sent as it came. This
module holds the body's schema and those refusals; its translation to the chat request is `margin.messages_chat`."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from margin.errors import InvalidRequest
from margin.parsing import content_parts, error_param
from margin.protocol import (
    INT32,
    MAX_CONTENT_PARTS,
    MAX_MESSAGES,
    MAX_STOP,
    MAX_TOOLS,
    Flag,
    ModelName,
    TokenLimit,
    UserId,
)

Body = TypeVar("Body", bound="CountTokensRequest")
# Fields margin cannot honour, refused whatever their value (a null is the field left out)
UNSUPPORTED = {
    "container": "margin runs no tools, so it has no containers for them",
    "mcp_servers": "MCP servers are not supported through this gateway: margin runs no tools (send custom tools)",
    "diagnostics": "margin stores no earlier message to compare a prompt cache with",
    "inference_geo": "margin chooses where a request runs by its own routing (`residency`), not per request",
}
USER_BLOCKS = ("text", "image", "tool_result", "document")
RESULT_BLOCKS = ("text", "image", "document")  # what a tool result's content may hold
ASSISTANT_BLOCKS = ("text", "tool_use", "thinking", "redacted_thinking")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# Accepted anywhere Anthropic takes it, and ignored: the upstream's prompt cache is its own (any keys: the
# SDKs add new ones, `ttl`, `scope`, under betas, and none of them changes what margin does)
CacheControl = dict[str, Any]


class Text(_Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: None = None  # citations are refused earlier, with the reason


class Base64Source(_Strict):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class UrlSource(_Strict):
    type: Literal["url"]
    url: str


class Image(_Strict):
    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]
    cache_control: CacheControl | None = None


class PdfSource(_Strict):
    type: Literal["base64"]
    media_type: Literal["application/pdf"]
    data: str


class PlainTextSource(_Strict):
    type: Literal["text"]
    media_type: Literal["text/plain"]
    data: str


class Document(_Strict):
    """A PDF (base64) or a plain text document: a chat's `file` part, or its text (`margin.messages_chat`)."""

    type: Literal["document"]
    source: Annotated[
        Annotated[PdfSource, Tag("source:base64")] | Annotated[PlainTextSource, Tag("source:text")],
        Discriminator(lambda value: f"source:{value.get('type') if isinstance(value, dict) else None}"),
    ]
    title: str | None = None
    context: str | None = None
    cache_control: CacheControl | None = None
    citations: None = None  # citations are refused earlier, with the reason


class DirectCaller(_Strict):
    type: Literal["direct"]


class ToolUse(_Strict):
    type: Literal["tool_use"]
    id: Annotated[str, Field(min_length=1, max_length=256)]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    caller: DirectCaller | None = None  # an answer's block sent back: only a direct call (margin makes no others)
    toolset_name: None = None  # an answer's block sent back (the SDK's `model_dump()` has it null): margin runs no
    # toolsets (an MCP toolset's call names one), so null only


def _tagged(prefix: str, field: str) -> Any:
    """A union's discriminator whose tags (`block:text`, `role:user`) never collide with a field's name in an
    error's location (a block's `text` field, the request's `system`)."""

    def tag(value: Any) -> str:
        kind = value.get(field) if isinstance(value, dict) else getattr(value, field, None)
        return f"{prefix}:{kind}"

    return Discriminator(tag)


ResultBlock = Annotated[
    Annotated[Text, Tag("block:text")] | Annotated[Image, Tag("block:image")]
    | Annotated[Document, Tag("block:document")],
    _tagged("block", "type"),
]  # fmt: skip


class ToolResult(_Strict):
    type: Literal["tool_result"]
    tool_use_id: Annotated[str, Field(min_length=1, max_length=256)]
    content: str | Annotated[list[ResultBlock], Field(max_length=MAX_CONTENT_PARTS, fail_fast=True)] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class Thinking(_Strict):
    """An earlier answer's thinking, sent back: the chat message's `thinking_blocks` (bounded there), which reach
    an anthropic backend as they came and no other backend."""

    type: Literal["thinking"]
    thinking: str
    signature: str
    cache_control: CacheControl | None = None


class RedactedThinking(_Strict):
    type: Literal["redacted_thinking"]
    data: str
    cache_control: CacheControl | None = None


UserBlock = Annotated[
    Annotated[Text, Tag("block:text")] | Annotated[Image, Tag("block:image")]
    | Annotated[ToolResult, Tag("block:tool_result")] | Annotated[Document, Tag("block:document")],
    _tagged("block", "type"),
]  # fmt: skip
AssistantBlock = Annotated[
    Annotated[Text, Tag("block:text")] | Annotated[ToolUse, Tag("block:tool_use")]
    | Annotated[Thinking, Tag("block:thinking")] | Annotated[RedactedThinking, Tag("block:redacted_thinking")],
    _tagged("block", "type"),
]  # fmt: skip
Blocks = Annotated[list[Text], Field(max_length=MAX_CONTENT_PARTS, fail_fast=True)]


class UserMessage(_Strict):
    role: Literal["user"]
    content: str | Annotated[list[UserBlock], Field(max_length=MAX_CONTENT_PARTS, fail_fast=True)]


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: str | Annotated[list[AssistantBlock], Field(max_length=MAX_CONTENT_PARTS, fail_fast=True)]


class SystemMessage(_Strict):
    role: Literal["system"]
    content: str | Blocks


Message = Annotated[
    Annotated[UserMessage, Tag("role:user")] | Annotated[AssistantMessage, Tag("role:assistant")]
    | Annotated[SystemMessage, Tag("role:system")],
    _tagged("role", "role"),
]  # fmt: skip


class Tool(_Strict):
    """A custom tool (Anthropic's `type` is `custom` or left out); the tools Anthropic runs are refused earlier."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    input_schema: dict[str, Any]
    description: str | None = None
    type: Literal["custom"] | None = None
    strict: bool | None = None
    cache_control: CacheControl | None = None
    # hints Claude Code sends that change nothing a chat can carry: accepted, not passed on
    eager_input_streaming: bool | None = None
    defer_loading: bool | None = None
    input_examples: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    allowed_callers: Annotated[list[Literal["direct"]], Field(max_length=1)] | None = None


class ToolChoice(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(_Strict):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[int, Field(ge=1024, le=INT32)] | None = None
    # passed on to an anthropic backend with the rest of `thinking` (`margin.messages_chat`); no other takes it
    display: Literal["summarized", "omitted"] | None = None


class OutputFormat(_Strict):
    type: Literal["json_schema"]
    schema_: Annotated[dict[str, Any], Field(alias="schema")]


class OutputConfig(_Strict):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class Metadata(_Strict):
    user_id: UserId | None = None


class CountTokensRequest(_Strict):
    """The prompt of a Messages request: `POST /v1/messages/count_tokens`'s body, and the part of a Messages
    body that `MessagesRequest` adds the output limit and sampling to."""

    model: ModelName
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES, fail_fast=True)]
    system: str | Blocks | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS, fail_fast=True)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    cache_control: CacheControl | None = None
    speed: Literal["standard"] | None = None  # `fast` is refused earlier
    # Claude Code sends it on every request (clearing old tool results and thinking as the context fills):
    # accepted and not applied, the conversation goes to the upstream as it was sent
    context_management: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: TokenLimit
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, le=INT32)
    stop_sequences: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)] | None = None
    stream: Flag = False
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None  # margin's tier is the model's: changes nothing


def _refuse(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {message}", param=param, code="unsupported_parameter")


def _unsupported(data: dict[str, Any]) -> None:
    """What margin cannot honour, refused with the reason (before validation, so the message says why rather
    than that the field or block type is unknown)."""
    for name, why in UNSUPPORTED.items():
        if data.get(name) is not None:
            raise _refuse(why, name)
    if data.get("speed") == "fast":
        raise _refuse("fast mode is Anthropic's own capacity; margin serves the model's", "speed")
    tools = data.get("tools")
    if type(tools) is list:
        for index, tool in enumerate(tools[:MAX_TOOLS]):
            if isinstance(tool, dict) and isinstance(kind := tool.get("type"), str) and kind != "custom":
                why = f"server tool `{kind[:40]}` is not supported through this gateway: margin runs no tools"
                raise _refuse(why + " (send custom tools, with `input_schema`)", f"tools.{index}.type")
    _messages(data.get("messages"))
    system = data.get("system")
    if type(system) is list:
        _blocks(system, "system", ("text",))


def _messages(messages: Any) -> None:
    content_parts(messages, nested=True, what="content blocks")  # counted first, as on the chat path (loop stalls)
    if type(messages) is not list or len(messages) > MAX_MESSAGES:  # not a list, or too long: pydantic says so
        return
    for index, message in enumerate(messages):
        if type(message) is dict and type(content := message.get("content")) is list:
            allowed = ASSISTANT_BLOCKS if message.get("role") == "assistant" else USER_BLOCKS
            _blocks(content, f"messages.{index}.content", allowed)


def _blocks(blocks: list[Any], where: str, allowed: tuple[str, ...]) -> None:
    for number, block in enumerate(blocks):
        if not isinstance(block, dict):
            continue
        kind, at = block.get("type"), f"{where}.{number}"
        if isinstance(kind, str) and kind not in allowed:
            shown = kind[:40]
            if kind == "search_result":
                why = f"`{kind}` blocks are not supported through this gateway: send their text as `text` blocks"
            elif allowed == ("text",):
                why = f"`{shown}` blocks are not supported here: only `text` (a chat's system message is text)"
            elif allowed == RESULT_BLOCKS:
                why = f"`{shown}` blocks are not supported in a tool result: only `text`, `image` and `document`"
            elif kind in USER_BLOCKS + ASSISTANT_BLOCKS:
                why = f"`{kind}` blocks are not allowed in this role's messages"
            else:
                why = f"`{shown}` blocks are not supported through this gateway: margin runs no server tools"
            raise _refuse(why, f"{at}.type")
        if block.get("citations") is not None:
            raise _refuse("citations are not supported through this gateway", f"{at}.citations")
        source = block.get("source")
        if kind == "image" and isinstance(source, dict) and source.get("type") == "file":
            raise _refuse("images by file id are not supported: send a base64 or url source", f"{at}.source.type")
        if kind == "document" and isinstance(source, dict) and source.get("type") not in ("base64", "text"):
            why = "documents are supported as a base64 PDF or plain text (not by url, file id or content blocks)"
            raise _refuse(why, f"{at}.source.type")
        inner = block.get("content")
        if kind == "tool_result" and type(inner) is list:
            _blocks(inner, f"{at}.content", RESULT_BLOCKS)


UNION_TAGS = frozenset(
    {"block:text", "block:image", "block:tool_result", "block:tool_use", "block:thinking",
     "block:redacted_thinking", "block:document", "role:user", "role:assistant", "role:system", "base64", "url",
     "source:base64", "source:text"}
)  # fmt: skip


def parse_messages(data: Any) -> MessagesRequest:
    """The Messages body, validated (a 400 naming the field)."""
    return _validated(MessagesRequest, data)


def parse_count_tokens(data: Any) -> CountTokensRequest:
    """A count_tokens body (the prompt of a Messages request), validated as `parse_messages` validates one."""
    return _validated(CountTokensRequest, data)


def _validated(model: type[Body], data: Any) -> Body:
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    _unsupported(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error_param(exc, UNION_TAGS) from exc
