"""OpenAI's Responses API, the request's translation: a validated Responses body (`margin.responses`) as the chat
request margin's request path runs (`chat_data`, `parse`), and its input as the items stored and listed for a
stored response (`input_items`, `expand`, `margin.ledger.stored`)."""

from __future__ import annotations

from typing import Any

from margin import interleaving
from margin.parsing import parse_request
from margin.protocol import DEFAULT_FILENAME, MAX_BLOCK_ORDER, ChatCompletionRequest, Endpoint
from margin.responses import (
    AllowedTools,
    FunctionCall,
    FunctionTool,
    InputFile,
    InputImage,
    InputText,
    Message,
    NamedFunction,
    OutputText,
    Refusal,
    ResponsesRequest,
    Text,
    parse_responses,
    refuse,
)
from margin.responses_reasoning import ReasoningItem
from margin.thinking import REASONING_DETAILS


def _part(part: InputText | OutputText | Refusal | InputImage | InputFile) -> dict[str, Any]:
    if isinstance(part, InputFile):  # OpenAI's chat file part (an anthropic backend sends a PDF as a document)
        return {"type": "file", "file": {"file_data": part.file_data, "filename": part.filename or DEFAULT_FILENAME}}
    if isinstance(part, InputImage):
        image: dict[str, Any] = {"url": part.image_url or ""}
        if part.detail is not None:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    if isinstance(part, Refusal):
        return {"type": "refusal", "refusal": part.refusal}
    return {"type": "text", "text": part.text}


def _message(item: Message, index: int) -> dict[str, Any]:
    if isinstance(item.content, str):
        return {"role": item.role, "content": item.content}
    for number, part in enumerate(item.content):
        if isinstance(part, InputImage) and part.image_url is None:
            raise refuse("an image needs `image_url`", f"input.{index}.content.{number}.image_url", "invalid_value")
        if isinstance(part, InputImage | InputFile) and item.role != "user":
            what = "images" if isinstance(part, InputImage) else "files"
            raise refuse(
                f"{what} are only supported in user messages", f"input.{index}.content.{number}", "unsupported_value"
            )
        if isinstance(part, OutputText | Refusal) and item.role != "assistant":
            why = f"`{part.type}` parts are only supported in assistant messages"
            raise refuse(why, f"input.{index}.content.{number}.type", "unsupported_value")
    return {"role": item.role, "content": [_part(part) for part in item.content]}


def _add_message(out: list[dict[str, Any]], message: dict[str, Any]) -> None:
    """An assistant message right after function calls (whose message has no content: a streamed answer's order,
    calls then text) is their message's content; any other message is a message of its own."""
    last = out[-1] if out else None
    if message["role"] == "assistant" and last is not None and last["role"] == "assistant" and last["content"] is None:
        last["content"] = message["content"]
    else:
        out.append(message)


def _add_call(out: list[dict[str, Any]], item: FunctionCall) -> None:
    """A function call: a tool call of the assistant message just before it, else of an assistant message of its
    own."""
    call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
    last = out[-1] if out else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        out.append({"role": "assistant", "content": None, "tool_calls": [call]})


def messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    """The chat messages: `instructions` first (a system message), then the items in order; consecutive
    function calls are one assistant message's tool calls (joined to an assistant message just before them;
    an assistant message just after them is that message's content, as a chat carries no order between text and
    calls: never an assistant message between the calls and their `tool` messages), a call's output a `tool`
    message. Reasoning items in margin's encoding are the `thinking_blocks` (or, an OpenRouter answer's, the
    `reasoning_details`) of the assistant message the next assistant item (message or function call) is part of (others
    are left out, as are blocks no assistant item follows); where such a block follows a call or text of its message
    (interleaved thinking: reasoning, function_call, reasoning, message), the items' order is its `block_order`."""
    out: list[dict[str, Any]] = []
    if body.instructions is not None:
        out.append({"role": "system", "content": body.instructions})
    items = [Message(role="user", content=body.input)] if isinstance(body.input, str) else body.input
    thoughts: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []  # OpenRouter's `reasoning_details`, for the next assistant message
    kinds: dict[int, list[tuple[str, int]]] = {}  # an assistant message's (its index in `out`) items, in order
    for index, item in enumerate(items):
        if isinstance(item, ReasoningItem):
            if (block := item.block()) is not None:
                thoughts.append(block)
            details.extend(item.details() or ())
            continue
        if isinstance(item, Message):
            _add_message(out, _message(item, index))
        elif isinstance(item, FunctionCall):
            _add_call(out, item)
        else:
            output = item.output if isinstance(item.output, str) else [_part(part) for part in item.output]
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
        if out[-1]["role"] == "assistant":
            if thoughts:
                out[-1].setdefault("thinking_blocks", []).extend(thoughts)
            if details:
                out[-1].setdefault(REASONING_DETAILS, []).extend(details)
            kinds.setdefault(len(out) - 1, []).extend([(interleaving.THINKING, 0)] * len(thoughts) + _kinds(item))
        thoughts, details = [], []
    for at, held in kinds.items():
        order = interleaving.block_order(held)
        if order is not None and len(order) <= MAX_BLOCK_ORDER:  # longer: sent back in the plain order, as before
            out[at][interleaving.KEY] = order
    return out


def _kinds(item: Any) -> list[tuple[str, int]]:
    """What an assistant item adds to its chat message, for `interleaving.block_order`: a call, or its text parts
    (each with its length: a refusal's too, sent back as text)."""
    if isinstance(item, FunctionCall):
        return [(interleaving.TOOL_USE, 0)]
    if isinstance(item.content, str):
        return [(interleaving.TEXT, len(item.content))]
    return [(interleaving.TEXT, len(_text(part))) for part in item.content]


def _text(part: InputText | OutputText | Refusal | InputImage | InputFile) -> str:
    """A part's text, as the chat message holds it (a refusal's is its text; an image or a file, in no assistant
    message, none)."""
    if isinstance(part, Refusal):
        return part.refusal
    return "" if isinstance(part, InputImage | InputFile) else part.text


def _tool(tool: FunctionTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    for name in ("description", "parameters", "strict"):
        if (value := getattr(tool, name)) is not None:
            function[name] = value
    return {"type": "function", "function": function}


def _tool_choice(choice: str | NamedFunction | AllowedTools, tools: list[FunctionTool]) -> str | dict[str, Any]:
    """Chat's tool choice; each tool `allowed_tools` names must be one of the request's `tools`."""
    if isinstance(choice, str):
        return choice
    if isinstance(choice, NamedFunction):
        return {"type": "function", "function": {"name": choice.name}}
    names = {tool.name for tool in tools}
    for index, tool in enumerate(choice.tools):
        if tool.name not in names:
            why = f"`{tool.name[:128]}` is not one of the request's `tools`"
            raise refuse(why, f"tool_choice.tools.{index}.name", "invalid_value")
    allowed = [{"type": "function", "function": {"name": tool.name}} for tool in choice.tools]
    return {"type": "allowed_tools", "allowed_tools": {"mode": choice.mode, "tools": allowed}}


def response_format(text: Text | None) -> dict[str, Any] | None:
    form = text.format if text is not None else None
    if form is None or form.type == "text":
        return None
    if form.type == "json_object":
        return {"type": "json_object"}
    if form.name is None or form.schema_ is None:
        raise refuse("a json_schema format needs `name` and `schema`", "text.format", "invalid_value")
    schema: dict[str, Any] = {"name": form.name, "schema": form.schema_}
    if form.description is not None:
        schema["description"] = form.description
    if form.strict is not None:
        schema["strict"] = form.strict
    return {"type": "json_schema", "json_schema": schema}


# Settings passed to the chat request under the same name. Not `metadata`: on the Responses API it is the
# Response's own (echoed, stored), while a chat's `metadata` asks OpenAI to store the completion (a 400 there
# without `store: true`) and is refused by anthropic backends
SAME_NAME = (
    "temperature", "top_p", "parallel_tool_calls", "user", "service_tier", "prompt_cache_key",
    "prompt_cache_retention", "safety_identifier",
)  # fmt: skip


def chat_data(body: ResponsesRequest, sent: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chat request (its JSON) that answers this Responses request (`sent`: its JSON, whose values of the
    settings passed on are passed as sent, `0` not `0.0`). A stream always asks for usage (the Responses API
    always reports it)."""
    data: dict[str, Any] = {"model": body.model, "messages": messages(body)}
    for name in SAME_NAME:
        if (value := getattr(body, name)) is not None:
            data[name] = sent[name] if sent is not None else value
    if body.max_output_tokens is not None:
        data["max_tokens"] = body.max_output_tokens
    if body.tools:
        data["tools"] = [_tool(tool) for tool in body.tools]
    if body.tool_choice is not None:
        data["tool_choice"] = _tool_choice(body.tool_choice, body.tools or [])
    if (form := response_format(body.text)) is not None:
        data["response_format"] = form
    if body.text is not None and body.text.verbosity is not None:
        data["verbosity"] = body.text.verbosity
    if body.reasoning is not None and body.reasoning.effort is not None:
        data["reasoning_effort"] = body.reasoning.effort
    if body.logprobs:
        data["logprobs"] = True
        if body.top_logprobs is not None:
            data["top_logprobs"] = body.top_logprobs
    if body.stream:
        data["stream"] = True
        data["stream_options"] = {"include_usage": True}
    return data


def parse(data: Any, storing: bool = False) -> tuple[ResponsesRequest, dict[str, Any], ChatCompletionRequest]:
    """A Responses body: validated, its chat request's JSON, and that chat request validated as the chat path
    validates it (a 400 naming the chat field is a translation margin could not run)."""
    body = parse_responses(data, storing)
    chat = chat_data(body, data)
    request = parse_request(Endpoint.CHAT, chat, translated=True)
    assert isinstance(request, ChatCompletionRequest)
    return body, chat, request


ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def input_items(data: dict[str, Any], request_id: str) -> list[dict[str, Any]]:
    """A (validated) body's input as the items stored and listed (`input_items`): each with its `type` and an
    id of its own, the one it came with unless it is null or an earlier item's (the list pages `after` an id)
    else `<kind>_<request id>_in<n>`; a message's text as a content part."""
    raw = data["input"]
    listed = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
    items: list[dict[str, Any]] = []
    ids: set[str] = set()
    for index, item in enumerate(listed):
        kind = item.get("type", "message")
        stored = {"type": kind, "id": None, **item}
        if not stored["id"] or stored["id"] in ids:
            stored["id"] = f"{ID_PREFIX[kind]}_{request_id}_in{index}"
        ids.add(stored["id"])
        if kind == "message" and isinstance(text := item["content"], str):
            part = "output_text" if item["role"] == "assistant" else "input_text"
            stored["content"] = [{"type": part, "text": text, **({"annotations": []} if part == "output_text" else {})}]
        items.append(stored)
    return items


def expand(data: dict[str, Any], prior: list[dict[str, Any]]) -> dict[str, Any]:
    """The body continuing a stored conversation: its turns' items (`margin.ledger.stored.chain`), then this
    request's input; validated again by `parse` (the whole conversation is the prompt, bounded as any input)."""
    raw = data["input"]
    current = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
    return {**data, "input": [*prior, *current]}
