"""Anthropic's Messages API, answer side: a chat completion (margin's answer to the translated request,
`margin.messages`) as a Message, and a chat stream's chunks as Anthropic's stream events (`message_start`,
`content_block_start` / `_delta` / `_stop`, `message_delta` with the stop reason and usage, `message_stop`; an
error once streaming is an `error` event). Thinking comes first, as Anthropic's blocks: the chat message's
`thinking_blocks` (an anthropic backend's, signatures as they came; `delta.reasoning_content` is a streamed
block's `thinking_delta`, the block's `delta.thinking_blocks` entry its `signature_delta`), and reasoning an
upstream gives without blocks (`reasoning_content`, or OpenRouter's and Ollama's `reasoning`) as a thinking
block with an empty signature. Pure translation: the client that applies it to the request path's output is
`margin.api.messages`.

Usage is Anthropic's: `input_tokens` excludes the input read from the upstream's prompt cache, which is
`cache_read_input_tokens`, and the writes to it, `cache_creation_input_tokens` (an `anthropic` backend's, passed
on in the chat's `prompt_tokens_details.cache_write_tokens`; 0 from an OpenAI-compatible upstream, which charges
nothing apart for writing its cache and reports no such count)."""

from __future__ import annotations

from typing import Any

import orjson

from margin import interleaving, jsonload
from margin.api.responses_out import usage_of as responses_usage
from margin.messages import MessagesRequest
from margin.thinking import arguments_text, reasoning_of
from margin.types import Usage, choices_of

# a chat's finish_reason → Anthropic's stop_reason (anything else, or none: `end_turn`)
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
TEXT_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
TEXT_DELTA_MID = b',"delta":{"type":"text_delta","text":'


def usage_of(chat_usage: Any) -> dict[str, int]:
    """A chat's usage as Anthropic reports it: its prompt less the cache reads and writes, each apart."""
    usage = responses_usage(chat_usage) or responses_usage({})
    assert usage is not None
    cached = usage["input_tokens_details"]["cached_tokens"]
    details = chat_usage.get("prompt_tokens_details") if isinstance(chat_usage, dict) else None
    written = details.get("cache_write_tokens") if isinstance(details, dict) else None
    writes = written if isinstance(written, int) and not isinstance(written, bool) and written > 0 else 0
    return {
        "input_tokens": max(usage["input_tokens"] - cached - writes, 0),
        "output_tokens": usage["output_tokens"],
        "cache_creation_input_tokens": writes,
        "cache_read_input_tokens": cached,
    }


def stop_of(finish: Any, matched: Any, body: MessagesRequest) -> tuple[str, str | None]:
    """The stop reason and the stop sequence: a `stop` finish is `stop_sequence` where the upstream says which
    of the request's sequences matched (vLLM's `stop_reason`); otherwise `end_turn`."""
    if finish == "stop" and isinstance(matched, str) and body.stop_sequences and matched in body.stop_sequences:
        return "stop_sequence", matched
    return (STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"), None


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as a tool_use block's `input` (an object; arguments that are not a JSON object
    are kept whole under `arguments`, as their JSON text). An upstream that sends them as a JSON object rather
    than its text (Ollama's way) is read as if it had sent the text."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str):
        return {"arguments": text} if (text := arguments_text(arguments)) else {}
    if not arguments.strip():
        return {}
    try:
        parsed = jsonload.loads(arguments)  # past jsonload.MAX_DEPTH: kept whole (orjson could not write it)
    except orjson.JSONDecodeError:
        return {"arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"arguments": arguments}


def _tool_use(call: dict[str, Any], fallback_id: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call.get("function"), dict) else {}
    assert isinstance(function, dict)
    name = function.get("name")
    return {
        "type": "tool_use",
        "id": call["id"] if isinstance(call.get("id"), str) and call["id"] else fallback_id,
        "name": name if isinstance(name, str) else "",
        "input": tool_input(function.get("arguments")),
    }


def thought(block: Any) -> dict[str, Any] | None:
    """A chat's thinking block as Anthropic's (None if it is not one)."""
    if not isinstance(block, dict):
        return None
    if block.get("type") == "redacted_thinking" and isinstance(data := block.get("data"), str):
        return {"type": "redacted_thinking", "data": data}
    thinking, signature = block.get("thinking"), block.get("signature")
    if block.get("type") == "thinking" and isinstance(thinking, str) and isinstance(signature, str):
        return {"type": "thinking", "thinking": thinking, "signature": signature}
    return None


def thoughts(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat message's thinking as Anthropic's blocks: its `thinking_blocks`, else its `reasoning_content` or
    `reasoning` (`margin.thinking.reasoning_of`)."""
    blocks = message.get("thinking_blocks")
    if isinstance(blocks, list) and (found := [block for item in blocks if (block := thought(item)) is not None]):
        return found
    reasoning = reasoning_of(message)
    if reasoning is None:
        return []
    return [{"type": "thinking", "thinking": reasoning, "signature": ""}]


def skeleton(message_id: str, model: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage_of(None),
    }


def from_chat(chat: Any, body: MessagesRequest, request_id: str, metered: Usage | None = None) -> dict[str, Any]:
    """A whole chat completion as the Message. `metered`: the usage the request was metered at (the ledger
    row's), the Message's usage when the chat has none (an upstream that reports none: counted or estimated)."""
    chat = chat if isinstance(chat, dict) else {}
    choices = choices_of(chat)
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    assert isinstance(message, dict)
    model = chat.get("model")
    out = skeleton(f"msg_{request_id}", model if isinstance(model, str) else body.model)
    out["content"] = _content(message, request_id)
    out["stop_reason"], out["stop_sequence"] = stop_of(choice.get("finish_reason"), choice.get("stop_reason"), body)
    out["usage"] = usage_of(Usage.reported_or(chat.get("usage"), metered))
    return out


def _content(message: dict[str, Any], request_id: str) -> list[dict[str, Any]]:
    """A chat message as content blocks: thinking, then text, then tool_use; or, where an anthropic backend's
    blocks interleaved, in their `block_order` (`margin.interleaving`)."""
    calls = message.get("tool_calls")
    calls = calls if isinstance(calls, list) else []

    def tool_use(number: int) -> list[dict[str, Any]]:
        call = calls[number]
        return [_tool_use(call, f"toolu_{request_id}_{number}")] if isinstance(call, dict) else []

    if (parts := interleaving.in_order(message)) is not None:
        blocks = message["thinking_blocks"]
        content: list[dict[str, Any]] = []
        for kind, part in parts:
            if kind == interleaving.THINKING:
                content.extend(block for block in (thought(blocks[part]),) if block is not None)
            else:
                content.extend(tool_use(part) if kind == interleaving.TOOL_USE else [{"type": "text", "text": part}])
        if isinstance(refusal := message.get("refusal"), str) and refusal:
            content.append({"type": "text", "text": refusal})
        return content
    content = thoughts(message)
    for text in (message.get("content"), message.get("refusal")):
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
    for number in range(len(calls)):
        content.extend(tool_use(number))
    return content


def _json_delta(arguments: str) -> dict[str, str]:
    return {"type": "input_json_delta", "partial_json": arguments}


def event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


class MessageEvents:
    """One stream's translation: chat chunks in, Anthropic's events out (as SSE bytes). `message_start` goes
    with the first chunk (it names the model the chunk does); a content block opens with its first delta and
    closes when the next block opens or the stream ends."""

    def __init__(self, body: MessagesRequest, request_id: str, start_usage: dict[str, int] | None = None) -> None:
        self.body, self.request_id = body, request_id
        self.start_usage = start_usage  # an anthropic backend's upstream's, beside its chunks (`Record.start_usage`)
        self.opened = self.failed = False
        self.blocks = 0  # content blocks opened so far; the open one is the last
        self.open: str | int | None = None  # "text", "thinking", a chat tool call's index, or None
        self.calls: dict[int, int] = {}  # a chat tool call's index → its block's index
        # calls that started while another call's block was open (an upstream may interleave their deltas, index 0,
        # 1, 0, 1, where Anthropic's blocks stream one at a time): each its block and arguments so far, sent whole
        # once the open block closes
        self.held: dict[int, tuple[dict[str, Any], list[str]]] = {}
        self.text_index = b""  # the open text block's index, as bytes (its deltas are laid out without a dict)
        self.usage: Any = None
        self.finish: Any = None
        self.matched: Any = None

    def start(self) -> bytes:
        return b""  # `message_start` waits for the first chunk's model

    def _open(self, first: dict[str, Any] | None = None) -> bytes:
        """`message_start`: the model the first chunk names, and the usage an anthropic backend's upstream told at
        its own message_start (`start_usage`, carried beside the chunks, never read from one: an upstream's event
        cannot set it). An OpenAI-compatible upstream tells none before the stream's end: zeros there, as the counts
        come in `message_delta`."""
        if self.opened:
            return b""
        self.opened = True
        model = first.get("model") if first is not None else None
        message = skeleton(f"msg_{self.request_id}", model if isinstance(model, str) else self.body.model)
        if self.start_usage is not None:
            message["usage"] = dict(self.start_usage)
        return event("message_start", {"message": message})

    def chunk(self, payload: Any) -> bytes:
        """The events of one chat chunk (the usual one, a text delta, with as few look-ups as it takes)."""
        if type(payload) is not dict:
            return b""
        out = b"" if self.opened else self._open(payload)
        if (usage := payload.get("usage")) is not None:
            self.usage = usage
        choices = payload.get("choices")
        if type(choices) is not list or not choices or type(choice := choices[0]) is not dict:
            return out
        delta = choice.get("delta")
        if type(delta) is dict:
            if reasoning := reasoning_of(delta):
                out += self._thinking(reasoning)
            if type(blocks := delta.get("thinking_blocks")) is list:
                out += b"".join(self._thought(block) for block in blocks)
            if (text := delta.get("content")) and type(text) is str:
                out += self._text(text)
            if (refusal := delta.get("refusal")) and type(refusal) is str:
                out += self._text(refusal)
            if type(calls := delta.get("tool_calls")) is list:
                out += b"".join(self._call(call) for call in calls if type(call) is dict)
        if (finish := choice.get("finish_reason")) is not None:
            self.finish, self.matched = finish, choice.get("stop_reason")
        return out

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        out = event("content_block_stop", {"index": self.blocks - 1})
        held, self.held = self.held, {}
        for number, (block, pieces) in held.items():  # the calls held back, each whole, in the order they started
            index = self.calls[number] = self.blocks
            self.blocks += 1
            out += event("content_block_start", {"index": index, "content_block": block})
            if arguments := "".join(pieces):
                out += event("content_block_delta", {"index": index, "delta": _json_delta(arguments)})
            out += event("content_block_stop", {"index": index})
        return out

    def _text(self, text: str) -> bytes:
        if self.open == "text":  # the usual event: its bytes laid out as `event` lays them, without the dict
            return TEXT_DELTA_HEAD + self.text_index + TEXT_DELTA_MID + orjson.dumps(text) + b"}}\n\n"
        out = self._close()
        self.open, self.blocks = "text", self.blocks + 1
        self.text_index = str(self.blocks - 1).encode()
        out += event("content_block_start", {"index": self.blocks - 1, "content_block": {"type": "text", "text": ""}})
        return out + TEXT_DELTA_HEAD + self.text_index + TEXT_DELTA_MID + orjson.dumps(text) + b"}}\n\n"

    def _start_block(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.open, self.blocks = kind, self.blocks + 1
        return out + event("content_block_start", {"index": self.blocks - 1, "content_block": block})

    def _thinking(self, text: str) -> bytes:
        """Reasoning text: a thinking block's `thinking_delta` (the block opened first, with no signature yet)."""
        out = b""
        if self.open != "thinking":
            out = self._start_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        if not text:
            return out
        delta = {"type": "thinking_delta", "thinking": text}
        return out + event("content_block_delta", {"index": self.blocks - 1, "delta": delta})

    def _thought(self, entry: Any) -> bytes:
        """A whole thinking block (its streamed text already sent, if any): its signature, and the block's end."""
        block = thought(entry)
        if block is None:
            return b""
        if block["type"] == "redacted_thinking":
            return self._start_block("redacted_thinking", block) + self._close()
        out = b"" if self.open == "thinking" else self._thinking(block["thinking"])
        if block["signature"]:
            delta = {"type": "signature_delta", "signature": block["signature"]}
            out += event("content_block_delta", {"index": self.blocks - 1, "delta": delta})
        return out + self._close()

    def _call(self, call: dict[str, Any]) -> bytes:
        number = call.get("index") if isinstance(call.get("index"), int) else len(self.calls) + len(self.held)
        assert isinstance(number, int)
        function = call.get("function")
        arguments = arguments_text(function.get("arguments")) if isinstance(function, dict) else ""
        if (held := self.held.get(number)) is not None:
            held[1].append(arguments)
            return b""
        out = b""
        index = self.calls.get(number)
        if index is None:
            named = {**function, "arguments": ""} if isinstance(function, dict) else {}
            block = _tool_use({**call, "function": named}, "")
            block["id"] = block["id"] or f"toolu_{self.request_id}_{number}"
            if isinstance(self.open, int):  # another call's block is open: this one waits for it to close
                self.held[number] = (block, [arguments])
                return b""
            out = self._close()
            self.open, self.blocks = number, self.blocks + 1
            index = self.calls[number] = self.blocks - 1
            out += event("content_block_start", {"index": index, "content_block": block})
        if arguments:
            out += event("content_block_delta", {"index": index, "delta": _json_delta(arguments)})
        return out

    def end(self) -> bytes:
        """The stream's last events: the open block closed, `message_delta` (stop reason, usage), `message_stop`."""
        if self.failed:
            return b""
        out = self._open() + self._close()
        reason, sequence = stop_of(self.finish, self.matched, self.body)
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        out += event("message_delta", {"delta": delta, "usage": usage_of(self.usage)})
        return out + event("message_stop", {})

    def fail(self, error: Any) -> bytes:
        """An error once streaming: Anthropic's `error` event (and nothing after it)."""
        if self.failed:
            return b""
        self.failed = True
        error = error if isinstance(error, dict) else {}
        kind, message = error.get("type"), error.get("message")
        body = {
            "type": kind if isinstance(kind, str) else "api_error",
            "message": message if isinstance(message, str) else "the request failed",
        }
        return event("error", {"error": body})
