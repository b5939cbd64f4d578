"""Anthropic's Messages API, the request's translation: a validated Messages body (`margin.messages`) as the chat
request margin's request path runs (`chat_data`, `parse`), and a count_tokens body as its prompt's part of one
(`prompt_data`, `parse_prompt`)."""

from __future__ import annotations

from typing import Any

import orjson

from margin import interleaving
from margin.errors import InvalidRequest
from margin.messages import (
    AssistantMessage,
    CountTokensRequest,
    Document,
    Image,
    MessagesRequest,
    PdfSource,
    RedactedThinking,
    Text,
    Thinking,
    Tool,
    ToolChoice,
    ToolResult,
    ToolUse,
    UrlSource,
    UserMessage,
    parse_count_tokens,
    parse_messages,
)
from margin.parsing import parse_request
from margin.protocol import DEFAULT_FILENAME, MAX_BLOCK_ORDER, ChatCompletionRequest, Endpoint
from margin.thinking import DOCUMENT, ERROR_PREFIX, ERROR_PREFIXED, IS_ERROR, RESULT_MEDIA

# thinking budgets → OpenAI's reasoning effort: up to 4K tokens low, up to 16K medium, more high
EFFORT_BUDGETS = ((4_096, "low"), (16_384, "medium"))
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}


def _text(blocks: str | list[Text]) -> str:
    return blocks if isinstance(blocks, str) else "\n\n".join(block.text for block in blocks)


def _image(image: Image) -> dict[str, Any]:
    source = image.source
    url = source.url if isinstance(source, UrlSource) else f"data:{source.media_type};base64,{source.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _document(document: Document) -> dict[str, Any]:
    """A PDF as a chat's `file` part (OpenAI's, with its data URL; `title`, or `DEFAULT_FILENAME`, its file name), a
    plain text document as its text; either marked `DOCUMENT` with its `title` and `context`, for an anthropic
    backend (no other is sent the mark)."""
    source = document.source
    shown = {name: value for name in ("title", "context") if (value := getattr(document, name)) is not None}
    if not isinstance(source, PdfSource):
        return {"type": "text", "text": source.data, DOCUMENT: shown}
    url = f"data:application/pdf;base64,{source.data}"
    return {"type": "file", "file": {"filename": document.title or DEFAULT_FILENAME, "file_data": url}, DOCUMENT: shown}


def _media(block: Image | Document) -> dict[str, Any]:
    return _image(block) if isinstance(block, Image) else _document(block)


def _user(message: UserMessage, out: list[dict[str, Any]]) -> None:
    """Tool results first (tool messages, in order), then the rest of the user's content. A chat's tool message
    holds text only: a result's images and documents open the user message that follows (before the user's own
    content), where an OpenAI-compatible upstream gets them; their count (`RESULT_MEDIA`) lets an anthropic
    backend put them back inside the tool_result."""
    if isinstance(message.content, str):
        out.append({"role": "user", "content": message.content})
        return
    carried: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, ToolResult):
            content = block.content if block.content is not None else ""
            media = [] if isinstance(content, str) else [_media(i) for i in content if isinstance(i, Image | Document)]
            text = content if isinstance(content, str) else "\n\n".join(i.text for i in content if isinstance(i, Text))
            carried.extend(media)
            tool: dict[str, Any] = {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}
            if media:
                tool[RESULT_MEDIA] = len(media)
            if block.is_error:  # the text says so to any backend; the flag, to an anthropic backend alone
                prefixed = f"{ERROR_PREFIX}{text}" if text else ERROR_PREFIX.rstrip(": ")
                tool |= {"content": prefixed, IS_ERROR: True, ERROR_PREFIXED: True}
            out.append(tool)
        elif isinstance(block, Image | Document):
            parts.append(_media(block))
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
    as the message's `thinking_blocks`, and where a thinking block follows a text or tool use (interleaved
    thinking), their order as its `block_order`, which an anthropic backend sends them back in."""
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
    order = interleaving.block_order([_kind(block) for block in message.content])
    if order is not None and len(order) <= MAX_BLOCK_ORDER:  # longer: sent back in the plain order, as before
        out[interleaving.KEY] = order
    return out


def _kind(block: Text | ToolUse | Thinking | RedactedThinking) -> tuple[str, int]:
    """An assistant block's kind for `interleaving.block_order` (and a text block's length)."""
    if isinstance(block, Text):
        return interleaving.TEXT, len(block.text)
    return interleaving.TOOL_USE if isinstance(block, ToolUse) else interleaving.THINKING, 0


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


def _own_thinking(body: CountTokensRequest) -> bool:
    """Whether the request's `thinking` decides its thinking (`enabled` or `adaptive`, and no
    `output_config.effort`, which wins over it)."""
    if body.output_config is not None and body.output_config.effort is not None:
        return False
    return body.thinking is not None and body.thinking.type != "disabled"


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
    if _own_thinking(body):  # as sent, for an anthropic backend (no other backend is sent it): the exact budget
        assert body.thinking is not None
        data["thinking"] = body.thinking.model_dump(exclude_none=True)
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
    body = parse_count_tokens(data)
    return body, *_chat(prompt_data(body))


def _chat(data: dict[str, Any]) -> tuple[dict[str, Any], ChatCompletionRequest]:
    request = parse_request(Endpoint.CHAT, data, translated=True)
    assert isinstance(request, ChatCompletionRequest)
    return data, request
