"""Anthropic's Messages API (`POST /v1/messages`), request side: the body validated strictly (an unknown field or
a wrong type is a 400 naming it, as Anthropic's API does) and translated to the chat request margin's request
path runs (`margin.pipeline.flow`), so that a Messages call is admitted, guarded, cached, routed, metered and
written to the ledger as a chat is. The answer is translated back in `margin.api.messages`.

What margin cannot honour is refused with a message that says why, before anything is reserved or sent: tools
Anthropic's servers run (web search, code execution, bash, …: margin runs no tools), MCP servers, containers,
`document` / `search_result` blocks, citations and images by file id. `cache_control` (anywhere) and
`context_management` are accepted and ignored: prompt caching is the upstream's own (what it reports as cached
input is `cache_read_input_tokens`), and the conversation is sent as it came."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from margin.errors import InvalidRequest
from margin.protocol import (
    INT32,
    MAX_CONTENT_PARTS,
    MAX_MESSAGES,
    MAX_STOP,
    MAX_TOOLS,
    ChatCompletionRequest,
    Endpoint,
    Flag,
    ModelName,
    TokenLimit,
    UserId,
    content_parts,
    error_param,
    parse_request,
)

Body = TypeVar("Body", bound="CountTokensRequest")
# Fields margin cannot honour, refused whatever their value (a null is the field left out)
UNSUPPORTED = {
    "container": "margin runs no tools, so it has no containers for them",
    "mcp_servers": "MCP servers are not supported through this gateway: margin runs no tools (send custom tools)",
    "diagnostics": "margin stores no earlier message to compare a prompt cache with",
    "inference_geo": "margin chooses where a request runs by its own routing (`residency`), not per request",
}
USER_BLOCKS = ("text", "image", "tool_result")
ASSISTANT_BLOCKS = ("text", "tool_use", "thinking", "redacted_thinking")
# thinking budgets → OpenAI's reasoning effort: up to 4K tokens low, up to 16K medium, more high
EFFORT_BUDGETS = ((4_096, "low"), (16_384, "medium"))
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}


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
    Annotated[Text, Tag("block:text")] | Annotated[Image, Tag("block:image")], _tagged("block", "type")
]


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
    | Annotated[ToolResult, Tag("block:tool_result")],
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
    # accepted and not passed on: a chat request has no field for it (the backend's thinking shows its default)
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
            if kind in ("document", "search_result"):
                why = f"`{kind}` blocks are not supported through this gateway: send their text as `text` blocks"
            elif allowed == ("text",):
                why = f"`{shown}` blocks are not supported here: only `text` (a chat's system message is text)"
            elif allowed == ("text", "image"):
                why = f"`{shown}` blocks are not supported in a tool result: only `text` and `image`"
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
        inner = block.get("content")
        if kind == "tool_result" and type(inner) is list:
            _blocks(inner, f"{at}.content", ("text", "image"))


UNION_TAGS = frozenset(
    {"block:text", "block:image", "block:tool_result", "block:tool_use", "block:thinking",
     "block:redacted_thinking", "role:user", "role:assistant", "role:system", "base64", "url"}
)  # fmt: skip


def parse_messages(data: Any) -> MessagesRequest:
    """The Messages body, validated (a 400 naming the field)."""
    return _validated(MessagesRequest, data)


def _validated(model: type[Body], data: Any) -> Body:
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    _unsupported(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error_param(exc, UNION_TAGS) from exc


def _text(blocks: str | list[Text]) -> str:
    return blocks if isinstance(blocks, str) else "\n\n".join(block.text for block in blocks)


def _image(image: Image) -> dict[str, Any]:
    source = image.source
    url = source.url if isinstance(source, UrlSource) else f"data:{source.media_type};base64,{source.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _user(message: UserMessage, out: list[dict[str, Any]]) -> None:
    """Tool results first (tool messages, in order), then the rest of the user's content. A chat's tool message
    holds text only: a result's images open the user message that follows (before the user's own content)."""
    if isinstance(message.content, str):
        out.append({"role": "user", "content": message.content})
        return
    carried: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, ToolResult):
            content = block.content if block.content is not None else ""
            if isinstance(content, str):
                text = content
            else:
                text = "\n\n".join(item.text for item in content if isinstance(item, Text))
                carried.extend(_image(item) for item in content if isinstance(item, Image))
            if block.is_error:
                text = f"Error: {text}" if text else "Error"
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
        elif isinstance(block, Image):
            parts.append(_image(block))
        else:
            parts.append({"type": "text", "text": block.text})
    if carried or parts:
        out.append({"role": "user", "content": carried + parts})


def _arguments(block: ToolUse, at: str) -> str:
    try:
        return orjson.dumps(block.input).decode()
    except orjson.JSONEncodeError as exc:  # it parsed (up to 1,024 levels) but nests past what orjson writes (255)
        raise InvalidRequest(f"{at}.input: nests too deeply (at most 255 levels)", param=f"{at}.input") from exc


def _assistant(message: AssistantMessage, index: int) -> dict[str, Any]:
    """Text blocks as the content, tool uses as tool calls, thinking blocks (in order, without `cache_control`)
    as the message's `thinking_blocks`."""
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    parts = [{"type": "text", "text": block.text} for block in message.content if isinstance(block, Text)]
    thoughts = [
        block.model_dump(exclude={"cache_control"})
        for block in message.content
        if isinstance(block, Thinking | RedactedThinking)
    ]
    calls = [
        {
            "id": block.id,
            "type": "function",
            "function": {"name": block.name, "arguments": _arguments(block, f"messages.{index}.content.{number}")},
        }
        for number, block in enumerate(message.content)
        if isinstance(block, ToolUse)
    ]
    out: dict[str, Any] = {"role": "assistant", "content": parts or None}
    if calls:
        out["tool_calls"] = calls
    if thoughts:
        out["thinking_blocks"] = thoughts
    return out


def messages(body: CountTokensRequest) -> list[dict[str, Any]]:
    """The chat messages: `system` first (one system message, its blocks' text joined by a blank line), then
    the messages in order."""
    out: list[dict[str, Any]] = []
    if body.system is not None:
        out.append({"role": "system", "content": _text(body.system)})
    for index, message in enumerate(body.messages):
        if isinstance(message, UserMessage):
            _user(message, out)
        elif isinstance(message, AssistantMessage):
            out.append(_assistant(message, index))
        else:
            out.append({"role": "system", "content": _text(message.content)})
    return out


def _tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = tool.input_schema
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _tool_choice(choice: ToolChoice, data: dict[str, Any]) -> None:
    if choice.type == "tool":
        if choice.name is None:
            raise InvalidRequest("tool_choice.name: field required", param="tool_choice.name")
        data["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        if choice.name is not None:
            raise InvalidRequest("tool_choice.name: only a `tool` choice names one", param="tool_choice.name")
        data["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    if choice.disable_parallel_tool_use:
        data["parallel_tool_calls"] = False


def effort(body: CountTokensRequest) -> str | None:
    """OpenAI's reasoning effort: `output_config.effort` (`max` is `xhigh`), else a thinking budget's."""
    if body.output_config is not None and body.output_config.effort is not None:
        return EFFORTS[body.output_config.effort]
    thinking = body.thinking
    if thinking is None or thinking.type != "enabled":
        return None
    if thinking.budget_tokens is None:
        raise InvalidRequest("thinking.budget_tokens: field required", param="thinking.budget_tokens")
    return next((name for limit, name in EFFORT_BUDGETS if thinking.budget_tokens <= limit), "high")


def prompt_data(body: CountTokensRequest) -> dict[str, Any]:
    """The prompt's part of the chat request (its JSON) that answers a Messages request: the model, the messages,
    the tools and tool choice, the reasoning effort and the output format."""
    data: dict[str, Any] = {"model": body.model, "messages": messages(body)}
    if body.tools:
        data["tools"] = [_tool(tool) for tool in body.tools]
    if body.tool_choice is not None:
        _tool_choice(body.tool_choice, data)
    if (reasoning := effort(body)) is not None:
        data["reasoning_effort"] = reasoning
    form = body.output_config.format if body.output_config is not None else None
    if form is not None:
        data["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": form.schema_}}
    return data


def chat_data(body: MessagesRequest, sent: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chat request (its JSON) that answers this Messages request (`sent`: its JSON, whose sampling values
    are passed as sent, `0` not `0.0`): its prompt (`prompt_data`), then its output limit and sampling. A stream
    always asks for usage (Anthropic's always reports it)."""
    data = {**prompt_data(body), "max_tokens": body.max_tokens}
    for name in ("temperature", "top_p", "top_k"):
        if (value := getattr(body, name)) is not None:
            data[name] = sent[name] if sent is not None else value
    if body.stop_sequences:
        data["stop"] = body.stop_sequences
    if body.metadata is not None and body.metadata.user_id is not None:
        data["user"] = body.metadata.user_id
    if body.stream:
        data["stream"] = True
        data["stream_options"] = {"include_usage": True}
    return data


def parse(data: Any) -> tuple[MessagesRequest, dict[str, Any], ChatCompletionRequest]:
    """A Messages body: validated, its chat request's JSON, and that chat request validated as the chat path
    validates it (a 400 naming the chat field is a translation margin could not run)."""
    body = parse_messages(data)
    return body, *_chat(chat_data(body, data))


def parse_prompt(data: Any) -> tuple[CountTokensRequest, dict[str, Any], ChatCompletionRequest]:
    """A count_tokens body, as `parse` parses a Messages body (its chat request is the prompt's: `prompt_data`)."""
    body = _validated(CountTokensRequest, data)
    return body, *_chat(prompt_data(body))


def _chat(data: dict[str, Any]) -> tuple[dict[str, Any], ChatCompletionRequest]:
    request = parse_request(Endpoint.CHAT, data)
    assert isinstance(request, ChatCompletionRequest)
    return data, request
