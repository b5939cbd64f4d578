"""A chat completion request as an Anthropic Messages request (`POST /v1/messages`), for `kind: anthropic`.

What maps: `system`/`developer` messages → the top-level `system` (their text, in order, wherever they stood); user and
assistant turns with text and image parts (a data URL → a base64 image, an http(s) URL → a url image; a `file` part's
PDF → a base64 document; a part marked `margin.thinking.DOCUMENT`, a translated Messages document, → a document block
with its title and context, a plain text one too); a tool message's `RESULT_MEDIA` count → that many of the next user
message's first parts, back inside its `tool_result`; an assistant's `thinking_blocks` (an earlier answer's, signatures
as they came) → its first blocks, and its `tool_calls` → `tool_use` blocks after its text, or all of them in its
`block_order` (an interleaved answer's order, `margin.interleaving`) where that accounts for them; `tool` messages →
`tool_result` blocks in a user turn (consecutive turns of one role are merged into one, as Anthropic wants roles to
alternate);
`tools` (functions) → Anthropic tools; `tool_choice` auto/none/required/named → auto/none/any/tool, and
`parallel_tool_calls: false` → `disable_parallel_tool_use`; `max_tokens`/`max_completion_tokens` (the lower, as
budgets capped it) → `max_tokens`, else the backend's `default_max_tokens`; temperature (0..1), top_p, top_k, stop →
`stop_sequences`, `user` → `metadata.user_id`; `reasoning_effort` → extended thinking with the budget in
`THINKING_BUDGETS`, unless the request has Anthropic's own `thinking` (a Messages request's): that, as sent; a
function's `strict: true` → the tool's `strict`, and `response_format` json_schema → `output_config.format`
(Anthropic's structured outputs). Anything else the request asks for that Anthropic cannot do is a 400
(`unsupported_parameter`) that names the field, unless the backend's `drop_unsupported` lists it: then it is left
out, and the answer's `x-margin-dropped-params` names it."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

import orjson

from margin import interleaving, jsonload
from margin.errors import InvalidRequest
from margin.protocol import MAX_CONTENT_PARTS, ChatCompletionRequest, ChatMessage, ContentPart, ThinkingBlock
from margin.thinking import DOCUMENT, ERROR_PREFIX, ERROR_PREFIXED, IS_ERROR, RESULT_MEDIA

# `reasoning_effort` → thinking `budget_tokens` (Anthropic's minimum is 1,024; the budget must stay below
# `max_tokens`, so it is lowered to `max_tokens - 1` and refused under 1,024). `none` sends no thinking.
THINKING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}
THINKING_MIN = 1024
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
DATA_URL = re.compile(r"data:(image/[a-z]+);base64,(.+)", re.DOTALL)
PDF_URL = re.compile(r"data:application/pdf;base64,(.+)", re.DOTALL)
# chat fields with no Anthropic counterpart: refused when set to anything but their default
REFUSED = {
    "logprobs": "logprobs",
    "top_logprobs": "logprobs",
    "logit_bias": "logit_bias",
    "seed": "a seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "prediction": "Predicted Outputs",
    "functions": "legacy `functions` (send `tools`)",
    "function_call": "legacy `function_call` (send `tool_choice`)",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "repeat_penalty": "repeat_penalty",
    "ignore_eos": "ignore_eos",
    "min_tokens": "min_tokens",
    "skip_special_tokens": "skip_special_tokens",
    "include_stop_str_in_output": "include_stop_str_in_output",
    "metadata": "OpenAI's stored-completion metadata",
    "store": "stored completions",
}
DEFAULTS: dict[str, Any] = {
    "logprobs": False,
    "top_logprobs": 0,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "store": False,
}


def unsupported(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(
        f"{param}: {what} is not supported by anthropic backends", param=param, code="unsupported_parameter"
    )


def messages_body(
    call_raw: dict[str, Any],
    request: ChatCompletionRequest,
    model: str,
    default_max: int,
    drop: Collection[str] = (),
) -> dict[str, Any]:
    """The Messages API body for `request` (`call_raw`: the client's JSON, budgets' changes included); the fields
    named in `drop` (the backend's `drop_unsupported`) are left out instead of refused (`dropped` says which)."""
    _refuse(call_raw, request, drop)
    system, turns = _turns(request.messages, names="name" in drop)
    body: dict[str, Any] = {"model": model, "max_tokens": _max_tokens(call_raw, default_max), "messages": turns}
    if system:
        body["system"] = system
    body.update(_sampling(call_raw, request))
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if request.tools:
        body["tools"] = [_tool(tool, i) for i, tool in enumerate(request.tools)]
        if (choice := _tool_choice(request.tool_choice, call_raw.get("parallel_tool_calls"))) is not None:
            body["tool_choice"] = choice
    elif request.tool_choice not in (None, "none", "auto"):
        raise InvalidRequest("tool_choice needs tools", param="tool_choice")
    raw_thinking = call_raw.get("thinking")
    if raw_thinking is not None:  # Anthropic's own config (a Messages request's, as sent): it wins over the effort
        thinking = _thinking_config(raw_thinking, body["max_tokens"])
    else:
        thinking = _thinking(call_raw.get("reasoning_effort"), body["max_tokens"])
    if thinking is not None:
        body["thinking"] = thinking
    if (output_format := _output_format(request.response_format)) is not None:
        body["output_config"] = {"format": output_format}
    return body


def _sampling(raw: dict[str, Any], request: ChatCompletionRequest) -> dict[str, Any]:
    """temperature (0 to 1), top_p, top_k and the stop sequences, where the request sets them."""
    out: dict[str, Any] = {}
    if request.temperature is not None:
        if request.temperature > 1:
            raise unsupported("temperature", "a temperature above 1 (Anthropic's range is 0 to 1)")
        out["temperature"] = request.temperature
    if request.top_p is not None:
        out["top_p"] = request.top_p
    if (top_k := raw.get("top_k")) is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise InvalidRequest("top_k must be a positive integer", param="top_k")
        out["top_k"] = top_k
    if stops := request.stop_list():
        out["stop_sequences"] = stops
    return out


def _set(raw: dict[str, Any], field: str) -> bool:
    """Whether the client set a refused field (to anything but its default or an empty value)."""
    value = raw.get(field)
    return value is not None and value != DEFAULTS.get(field) and value not in ({}, [])


def dropped(raw: dict[str, Any], request: ChatCompletionRequest, drop: Collection[str]) -> list[str]:
    """The fields of `drop` this request set, which `messages_body` left out (in `REFUSED`'s order, then `name`)."""
    found = [field for field in REFUSED if field in drop and _set(raw, field)]
    if "name" in drop and any(m.name is not None and m.role != "tool" for m in request.messages):
        found.append("name")
    return found


def _refuse(raw: dict[str, Any], request: ChatCompletionRequest, drop: Collection[str]) -> None:
    if request.n > 1:
        raise unsupported("n", "more than one choice")
    for field, what in REFUSED.items():
        if field not in drop and _set(raw, field):
            raise unsupported(field, what)
    fmt = request.response_format
    if fmt is not None and fmt.get("type") not in ("text", "json_schema"):
        raise unsupported("response_format", f"response_format {str(fmt.get('type'))[:40]!r} (send a json_schema)")


def _output_format(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """`response_format: {type: json_schema, json_schema: {schema}}` → `output_config.format`, Anthropic's
    structured outputs (the answer's text is JSON that matches the schema)."""
    if fmt is None or fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise InvalidRequest("response_format.json_schema.schema must be an object", param="response_format")
    return {"type": "json_schema", "schema": schema}


def _max_tokens(raw: dict[str, Any], default: int) -> int:
    """The lower of the two output limits sent (the one budgets priced and capped), else `default`."""
    limits = [v for v in (raw.get("max_tokens"), raw.get("max_completion_tokens")) if isinstance(v, int)]
    return min(limits) if limits else default


THINKING_TYPES = ("enabled", "adaptive", "disabled")


def _thinking_config(raw: Any, max_tokens: int) -> dict[str, Any] | None:
    """A request's own `thinking` (Anthropic's shape, as `/v1/messages` passes it on and LiteLLM's chat clients
    send it): `enabled` with its `budget_tokens` (lowered to `max_tokens` - 1, as budgets may have capped the
    limit), `adaptive`, or `disabled` (nothing sent); `display` kept. Anything else is a 400 naming it."""
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind not in THINKING_TYPES:
        raise InvalidRequest(f"thinking.type must be one of {', '.join(THINKING_TYPES)}", param="thinking.type")
    assert isinstance(raw, dict)
    if kind == "disabled":
        return None
    out: dict[str, Any] = {"type": kind}
    if kind == "enabled":
        budget = raw.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < THINKING_MIN:
            why = f"thinking.budget_tokens must be an integer of at least {THINKING_MIN}"
            raise InvalidRequest(why, param="thinking.budget_tokens")
        out["budget_tokens"] = min(budget, max_tokens - 1)
        if out["budget_tokens"] < THINKING_MIN:
            why = f"thinking needs max_tokens above {THINKING_MIN} on anthropic backends (budgets stay below it)"
            raise InvalidRequest(why, param="thinking.budget_tokens")
    if isinstance(display := raw.get("display"), str) and display in ("summarized", "omitted"):
        out["display"] = display
    return out


def _thinking(effort: Any, max_tokens: int) -> dict[str, Any] | None:
    if effort is None or effort == "none":
        return None
    if not isinstance(effort, str) or effort not in THINKING_BUDGETS:
        raise InvalidRequest(
            f"reasoning_effort must be one of none, {', '.join(THINKING_BUDGETS)}", param="reasoning_effort"
        )
    budget = min(THINKING_BUDGETS[effort], max_tokens - 1)
    if budget < THINKING_MIN:
        raise InvalidRequest(
            f"reasoning_effort needs max_tokens above {THINKING_MIN} on anthropic backends (thinking budgets start "
            f"at {THINKING_MIN} tokens and stay below max_tokens)",
            param="reasoning_effort",
        )
    return {"type": "enabled", "budget_tokens": budget}


def _turns(messages: list[ChatMessage], *, names: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, turns): consecutive turns of one role become one (tool results first, as sent); a
    participant name is refused unless `names` (dropped: Anthropic's messages have none)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    results: list[tuple[dict[str, Any], int]] = []  # tool results whose media open the next user message
    for index, message in enumerate(messages):
        if message.name is not None and message.role != "tool" and not names:
            raise unsupported(f"messages[{index}].name", "a participant name")
        if message.role in ("system", "developer"):
            system.extend(_content_blocks(message, index, images=False))
            continue
        rest: ChatMessage | None = message
        if message.role == "user" and results:
            rest, results = _media_back(results, message, index), []
        if rest is None:  # it held only the tool results' media, put back inside them
            continue
        role, blocks = _turn(rest, index)
        if message.role != "tool":
            results = []
        elif count := _media_count(message):
            results.append((blocks[0], count))
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise InvalidRequest("messages: anthropic backends need a user message besides system ones", param="messages")
    return system, turns


def _media_count(message: ChatMessage) -> int:
    """A tool message's `RESULT_MEDIA`: how many of the next user message's first parts are its result's images and
    documents (a Messages `tool_result`'s, moved there for upstreams whose tool messages hold text only)."""
    count = (message.model_extra or {}).get(RESULT_MEDIA) if message.role == "tool" else None
    return count if type(count) is int and 0 < count <= MAX_CONTENT_PARTS else 0


def _media_back(results: list[tuple[dict[str, Any], int]], message: ChatMessage, index: int) -> ChatMessage | None:
    """The user message after tool results whose images and documents open it, less them (None: nothing is left):
    each result's put back at the end of its `tool_result`'s content (Anthropic's Messages API takes them there).
    Counts that do not match the message (no such parts there) leave it as it is."""
    parts = message.content if isinstance(message.content, list) else []
    total = sum(count for _block, count in results)
    if total > len(parts) or not all(
        part.type in ("image_url", "file") or _marked(part) is not None for part in parts[:total]
    ):
        return message
    at = 0
    for block, count in results:
        media = [_user_part(part, f"messages[{index}].content[{at + n}]") for n, part in enumerate(parts[at:][:count])]
        at += count
        held = block["content"]
        text = ([{"type": "text", "text": held}] if held else []) if isinstance(held, str) else held
        block["content"] = [*text, *media]
    return message.model_copy(update={"content": parts[total:]}) if total < len(parts) else None


def _turn(message: ChatMessage, index: int) -> tuple[str, list[dict[str, Any]]]:
    extra = message.model_extra or {}
    if message.thinking_blocks is not None and message.role != "assistant":
        where = f"messages[{index}].thinking_blocks"
        raise InvalidRequest(f"{where}: only an assistant message holds thinking blocks", param=where)
    if message.role == "tool":
        return "user", [_tool_result(message, extra.get("tool_call_id"), index)]
    if message.role == "user":
        blocks = _content_blocks(message, index, images=True)
    elif message.role == "assistant":
        blocks = _assistant_blocks(message, index, extra.get("tool_calls"))
    else:
        raise unsupported(f"messages[{index}].role", f"the role {message.role!r}")
    if not blocks:
        raise InvalidRequest(f"messages[{index}]: a {message.role} message needs content", param=f"messages[{index}]")
    return message.role, blocks


def _assistant_blocks(message: ChatMessage, index: int, calls: Any) -> list[dict[str, Any]]:
    """An assistant turn's blocks: in its `block_order` where that accounts for every thinking block, text piece
    and tool call (`interleaving.in_order`), else its thinking blocks, then its text, then its tool uses."""
    thoughts = _thinking_blocks(message)
    texts = _content_blocks(message, index, images=False)
    uses = _tool_uses(calls, index)
    parts = None
    if message.block_order is not None:
        held = {"thinking_blocks": thoughts, "tool_calls": uses, "content": "".join(block["text"] for block in texts)}
        parts = interleaving.in_order({**held, interleaving.KEY: [entry.model_dump() for entry in message.block_order]})
    if parts is None:
        return [block for block in thoughts if block is not None] + texts + uses
    blocks: list[dict[str, Any] | None] = [
        {"type": "text", "text": value}
        if kind == interleaving.TEXT
        else (thoughts if kind == interleaving.THINKING else uses)[value]
        for kind, value in parts
    ]
    return [block for block in blocks if block is not None]


def _thinking_blocks(message: ChatMessage) -> list[dict[str, Any] | None]:
    """An assistant's thinking blocks as Anthropic sent them (the signature is opaque: passed on as it came). A
    thinking block with no signature (reasoning from an upstream that signs none, shown by `/v1/messages`) is
    None, left out: Anthropic refuses it. `cache_control` is not passed on (Anthropic takes none on a thinking
    block)."""
    return [
        block.model_dump(exclude={"cache_control"}) if not isinstance(block, ThinkingBlock) or block.signature else None
        for block in message.thinking_blocks or ()
    ]


def _content_blocks(message: ChatMessage, index: int, *, images: bool) -> list[dict[str, Any]]:
    content = message.content
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for number, part in enumerate(content):
        where = f"messages[{index}].content[{number}]"
        document = images and _marked(part) is not None  # a Messages document's text: a document block again
        if part.type in ("text", "refusal") and not document:  # an assistant's refusal, sent back, is its text
            text = part.text if part.type == "text" else (part.model_extra or {}).get("refusal")
            if not isinstance(text, str):
                raise InvalidRequest(f"{where}: a {part.type} part needs its text", param=where)
            if text:
                blocks.append({"type": "text", "text": text})
        elif part.type in ("image_url", "file", "text") and images:
            blocks.append(_user_part(part, where))
        else:
            raise unsupported(where, f"a {part.type[:40]!r} part in a {message.role} message")
    return blocks


def _marked(part: ContentPart) -> dict[str, Any] | None:
    """A part's `DOCUMENT` mark (a Messages document block's title and context), None without one."""
    mark = (part.model_extra or {}).get(DOCUMENT)
    return mark if type(mark) is dict else None


def _user_part(part: ContentPart, where: str) -> dict[str, Any]:
    """A user's image, PDF or plain text document part as its block; a document with its `title` and `context`."""
    extra = part.model_extra or {}
    if part.type == "image_url":
        return _image(extra.get("image_url"), where)
    if part.type == "file":
        block = _document(extra.get("file"), where)
    elif isinstance(part.text, str):
        block = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": part.text}}
    else:
        raise InvalidRequest(f"{where}: a text part needs its text", param=where)
    for name, value in (_marked(part) or {}).items():
        if name in ("title", "context") and isinstance(value, str):
            block[name] = value
    return block


def _image(image_url: Any, where: str) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, dict) else None
    if not isinstance(url, str):
        raise InvalidRequest(f"{where}: image_url.url must be a string", param=where)
    if url.startswith("data:"):
        found = DATA_URL.fullmatch(url)
        if found is None or found.group(1) not in IMAGE_TYPES:
            raise unsupported(where, f"an image that is not a base64 data URL of {', '.join(sorted(IMAGE_TYPES))}")
        return {"type": "image", "source": {"type": "base64", "media_type": found.group(1), "data": found.group(2)}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise unsupported(where, "an image URL that is neither http(s) nor a data URL")


def _document(file: Any, where: str) -> dict[str, Any]:
    """A `file` part holding a PDF (its `file_data` a base64 data URL) as a document block."""
    data = file.get("file_data") if isinstance(file, dict) else None
    found = PDF_URL.fullmatch(data) if isinstance(data, str) else None
    if found is None:
        raise unsupported(where, "a file that is not a PDF as a base64 data URL in `file_data`")
    return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": found.group(1)}}


def _tool_uses(calls: Any, index: int) -> list[dict[str, Any]]:
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise InvalidRequest(f"messages[{index}].tool_calls must be a list", param=f"messages[{index}].tool_calls")
    blocks = []
    for number, call in enumerate(calls):
        where = f"messages[{index}].tool_calls[{number}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise unsupported(where, "a tool call that is not a function call")
        call_id, name, arguments = call.get("id"), function.get("name"), function.get("arguments")
        if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, str):
            raise InvalidRequest(f"{where}: id, function.name and function.arguments must be strings", param=where)
        try:
            parsed = jsonload.loads(arguments) if arguments else {}  # past jsonload.MAX_DEPTH: refused (400)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"{where}: function.arguments must be a JSON object", param=where) from exc
        if not isinstance(parsed, dict):
            raise InvalidRequest(f"{where}: function.arguments must be a JSON object", param=where)
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": parsed})
    return blocks


def _tool_result(message: ChatMessage, call_id: Any, index: int) -> dict[str, Any]:
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(
            f"messages[{index}].tool_call_id: a tool message needs the id of its call",
            param=f"messages[{index}].tool_call_id",
        )
    content = message.content
    result: Any = content if isinstance(content, str) else _content_blocks(message, index, images=False)
    block = {"type": "tool_result", "tool_use_id": call_id, "content": result}
    extra = message.model_extra or {}
    if extra.get(IS_ERROR) is True:  # a Messages tool_result's flag, or a chat client's: the text as it came
        block["is_error"] = True
        if isinstance(result, str) and extra.get(ERROR_PREFIXED) is True:  # the prefix margin added, taken off
            block["content"] = "" if result == "Error" else result.removeprefix(ERROR_PREFIX)
    return block


def _tool(tool: dict[str, Any], index: int) -> dict[str, Any]:
    where = f"tools[{index}]"
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict):
        raise unsupported(where, "a tool that is not a function")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{where}.function.name must be a string", param=f"{where}.function.name")
    schema = function.get("parameters")
    if schema is None:
        schema = {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise InvalidRequest(f"{where}.function.parameters must be an object", param=f"{where}.function.parameters")
    out: dict[str, Any] = {"name": name, "input_schema": schema}
    if isinstance(description := function.get("description"), str):
        out["description"] = description
    if function.get("strict") is True:  # Anthropic's strict tool use: inputs validated against the schema
        out["strict"] = True
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        return None if parallel is not False else {"type": "auto", "disable_parallel_tool_use": True}
    if choice in ("auto", "none", "required"):
        mapped: dict[str, Any] = {"type": {"auto": "auto", "none": "none", "required": "any"}[choice]}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidRequest("tool_choice.function.name must be a string", param="tool_choice")
        mapped = {"type": "tool", "name": name}
    else:
        raise unsupported("tool_choice", "this tool_choice")
    if parallel is False and mapped["type"] != "none":
        mapped["disable_parallel_tool_use"] = True
    return mapped
