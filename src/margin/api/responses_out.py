"""OpenAI's Responses API, answer side: a chat completion (margin's answer to the translated request,
`margin.responses`) as a Response object, and a chat stream's chunks as the Responses stream's typed events
(`response.created` … `response.completed`, each with its `sequence_number`). Pure translation: the client
that applies it to the request path's output is `margin.api.responses`."""

from __future__ import annotations

import time
from typing import Any

import orjson

from margin import interleaving
from margin.responses import ResponsesRequest
from margin.responses_reasoning import DetailsMerge, ReasoningEvents, block_item, output_items
from margin.responses_reasoning import copy_item as _copy
from margin.thinking import REASONING_DETAILS, arguments_text, reasoning_of
from margin.types import Usage, choices_of

# a chat's finish_reason that ends a response early: OpenAI's `incomplete_details.reason`
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
# an open message's `response.output_text.delta` event around its sequence number, fields and delta (`_text_delta`)
DELTA_HEAD = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":'
EMPTY_LOGPROBS_END = b',"logprobs":[]}\n\n'


def usage_of(chat: Any) -> dict[str, Any] | None:
    """A chat's usage as the Responses API reports it."""
    if not isinstance(chat, dict):
        return None
    prompt, completion = _int(chat.get("prompt_tokens")), _int(chat.get("completion_tokens"))
    prompt_details, completion_details = chat.get("prompt_tokens_details"), chat.get("completion_tokens_details")
    cached = _int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
    reasoning = _int(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _tool(tool: Any) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": True if tool.strict is None else tool.strict,
    }


def _text(body: ResponsesRequest) -> dict[str, Any]:
    form = body.text.format if body.text is not None else None
    shown: dict[str, Any] = {"type": "text"} if form is None else form.model_dump(by_alias=True, exclude_none=True)
    verbosity = body.text.verbosity if body.text is not None else None
    return {"format": shown, "verbosity": verbosity or "medium"}


def skeleton(body: ResponsesRequest, response_id: str, store: bool = False) -> dict[str, Any]:
    """The Response object before its output: the request's settings echoed as OpenAI returns them (`store`:
    whether it is to be stored)."""
    choice = body.tool_choice
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": body.model,
        "output": [],
        "parallel_tool_calls": True if body.parallel_tool_calls is None else body.parallel_tool_calls,
        "previous_response_id": body.previous_response_id,
        "prompt_cache_key": body.prompt_cache_key,
        "reasoning": {"effort": body.reasoning.effort if body.reasoning else None, "summary": body.summary},
        "safety_identifier": body.safety_identifier,
        "service_tier": body.service_tier or "auto",
        "store": store,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "text": _text(body),
        "tool_choice": choice.model_dump() if choice is not None and not isinstance(choice, str) else choice or "auto",
        "tools": [_tool(tool) for tool in body.tools or []],
        "top_logprobs": body.top_logprobs or 0,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "truncation": "disabled",
        "usage": None,
        "user": body.user,
        "metadata": body.metadata or {},
    }


def _ended(response: dict[str, Any], finish_reason: Any, chat: dict[str, Any]) -> None:
    """Status, incomplete details, the served model and tier, from the chat's finish reason and answer."""
    reason = INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    if isinstance(model := chat.get("model"), str):
        response["model"] = model
    if isinstance(tier := chat.get("service_tier"), str):
        response["service_tier"] = tier


def message_item(item_id: str, text: str, logprobs: list[Any], refusal: str | None, status: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text or refusal is None:
        content.append({"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs})
    if refusal is not None:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def call_item(item_id: str, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") if isinstance(call.get("function"), dict) else {}
    assert isinstance(function, dict)
    name = function.get("name")
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call.get("id") if isinstance(call.get("id"), str) else item_id,
        "name": name if isinstance(name, str) else "",
        "arguments": arguments_text(function.get("arguments")),
    }


def _logprobs(choice: dict[str, Any]) -> list[Any]:
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    return content if isinstance(content, list) else []


def from_chat(chat: Any, response: dict[str, Any], ids: str, metered: Usage | None = None) -> dict[str, Any]:
    """A whole chat completion as the Response (`response`: its skeleton, whose `reasoning.summary` asks for
    summaries; `ids`: the suffix of item ids; `metered`: the usage the request was metered at, the
    Response's when the chat has none)."""
    chat = chat if isinstance(chat, dict) else {}
    choices = choices_of(chat)
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    finish = choice.get("finish_reason")
    _ended(response, finish, chat)
    status = "incomplete" if response["status"] == "incomplete" else "completed"
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    assert isinstance(message, dict)
    if (parts := interleaving.in_order(message)) is not None:
        output = _in_order(message, parts, ids, status, _summarize(response))
    else:
        output = output_items(message, ids, status, _summarize(response))
        text, refusal = message.get("content"), message.get("refusal")
        if (isinstance(text, str) and text) or isinstance(refusal, str):
            refused = refusal if isinstance(refusal, str) else None
            output.append(message_item(f"msg_{ids}", text or "", _logprobs(choice), refused, status))
        calls = message.get("tool_calls")
        for number, call in enumerate(calls if isinstance(calls, list) else []):
            if isinstance(call, dict):
                output.append(call_item(f"fc_{ids}_{number}", call))
    if not any(item["type"] != "reasoning" for item in output):
        output.append(message_item(f"msg_{ids}", "", [], None, status))
    response["output"] = output
    response["usage"] = usage_of(Usage.reported_or(chat.get("usage"), metered))
    return response


def _in_order(
    message: dict[str, Any], parts: list[tuple[str, Any]], ids: str, status: str, summarize: bool
) -> list[dict[str, Any]]:
    """An anthropic backend's interleaved answer as output items in its blocks' order (`margin.interleaving`):
    ids as a stream numbers them (the first message `msg_<ids>`, a later one `msg_<ids>_<n>`)."""
    blocks, calls = message["thinking_blocks"], message.get("tool_calls") or []
    output: list[dict[str, Any]] = []
    for kind, part in parts:
        if kind == interleaving.THINKING:
            number = sum(item["type"] == "reasoning" for item in output)
            item = block_item(blocks[part], f"rs_{ids}_{number}", status, summarize)
        elif kind == interleaving.TOOL_USE:
            item = call_item(f"fc_{ids}_{part}", calls[part]) if isinstance(calls[part], dict) else None
        else:
            opened = sum(item["type"] == "message" for item in output)
            item = message_item(f"msg_{ids}_{opened}" if opened else f"msg_{ids}", part, [], None, status)
        if item is not None:
            output.append(item)
    if isinstance(refusal := message.get("refusal"), str):
        output.append(message_item(f"msg_{ids}_refusal", "", [], refusal, status))
    return output


def _summarize(response: dict[str, Any]) -> bool:
    reasoning = response.get("reasoning")
    return isinstance(reasoning, dict) and reasoning.get("summary") is not None


class StreamEvents(ReasoningEvents):
    """One stream's translation: chat chunks in, Responses events out (as SSE bytes). Items are opened as their
    first delta arrives and closed when the next kind of output starts or the stream ends."""

    def __init__(self, response: dict[str, Any], ids: str) -> None:
        self.response, self.ids = response, ids
        self.summarize = _summarize(response)
        self.sequence = 0
        self.items: list[dict[str, Any]] = []  # in output order; the open ones are still being written
        self.text: dict[str, Any] | None = None  # the open message item
        self.texts: list[str] = []
        self.logprobs: list[Any] = []
        self.refusal: list[str] | None = None  # its pieces, joined when its item is written
        self.arguments: dict[int, list[str]] = {}  # a call's index → its arguments' pieces not yet joined (`calls`)
        self.calls: dict[int, dict[str, Any]] = {}  # a chat tool call's index → its item
        self.open_calls: list[dict[str, Any]] = []  # open together: an upstream may interleave their deltas
        self.finish: Any = None
        self.chat: dict[str, Any] = {}
        self.failed = False
        self.failure_sent = False  # `response.failed`, sent by `end`
        self.closing: bytes | None = None  # the events that closed the open items, once `close` ran
        self.reasoning: dict[str, Any] | None = None  # the open reasoning item (`ReasoningEvents`)
        self.reasoning_texts: list[str] = []
        self.details = DetailsMerge()  # `ReasoningEvents`: OpenRouter's `reasoning_details`, merged
        self.delta_fields = b""  # the open message's item_id, output_index, content_index as JSON (`_text_delta`)

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def start(self) -> bytes:
        return self.event("response.created", response=dict(self.response)) + self.event(
            "response.in_progress", response=dict(self.response)
        )

    def chunk(self, payload: Any) -> bytes:
        """The events of one chat chunk."""
        if not isinstance(payload, dict):
            return b""
        get = payload.get
        if (usage := get("usage")) is not None:
            self.response["usage"] = usage_of(usage)
        if isinstance(model := get("model"), str):
            self.chat["model"] = model
        if isinstance(tier := get("service_tier"), str):
            self.chat["service_tier"] = tier
        choices = get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choice := choices[0], dict):
            return b""
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = {}
        if len(delta) == 1 and isinstance(content := delta.get("content"), str):  # the usual chunk: text alone
            out = (
                self._text_delta(content, _logprobs(choice) if choice.get("logprobs") is not None else [])
                if content
                else b""
            )
        else:
            out = self._deltas(delta, choice)
        if (finish := choice.get("finish_reason")) is not None:
            self.finish = finish
        return out

    def _deltas(self, delta: dict[str, Any], choice: dict[str, Any]) -> bytes:
        """A delta's reasoning, text, refusal and tool calls, in that order."""
        out = b""
        if thought := reasoning_of(delta):
            out = self._reasoning_delta(thought)
        if isinstance(blocks := delta.get("thinking_blocks"), list):
            out += b"".join(self._thinking_block(block) for block in blocks)
        if isinstance(details := delta.get(REASONING_DETAILS), list) and not self.details.dropped:
            self._details(details)
        if isinstance(content := delta.get("content"), str) and content:
            out += self._text_delta(content, _logprobs(choice) if choice.get("logprobs") is not None else [])
        if isinstance(refusal := delta.get("refusal"), str):
            self.refusal = self.refusal if self.refusal is not None else []
            self.refusal.append(refusal)
        if isinstance(calls := delta.get("tool_calls"), list):
            out += b"".join(self._call_delta(call) for call in calls if isinstance(call, dict))
        return out

    def _text_delta(self, content: str, logprobs: list[Any]) -> bytes:
        if self.text is not None:  # the usual event: its bytes laid out as `event` lays them, without the dict
            self.texts.append(content)
            self.logprobs.extend(logprobs)
            sequence = self.sequence
            self.sequence += 1
            tail = b',"logprobs":' + orjson.dumps(logprobs) + b"}\n\n" if logprobs else EMPTY_LOGPROBS_END
            return DELTA_HEAD + str(sequence).encode() + self.delta_fields + orjson.dumps(content) + tail
        self.texts, self.logprobs = [content], list(logprobs)  # a message item's own text (one after a tool call too)
        out = self._close_reasoning() + self._close_call()
        opened = sum(item["type"] == "message" for item in self.items)  # a later one (after a tool call): its own id
        item_id = f"msg_{self.ids}" if not opened else f"msg_{self.ids}_{opened}"
        self.text = message_item(item_id, "", [], None, "in_progress")
        self.text["content"] = []  # its part is added next
        self.items.append(self.text)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        index = len(self.items) - 1
        out += self.event("response.output_item.added", output_index=index, item=_copy(self.text))
        out += self.event(
            "response.content_part.added", item_id=self.text["id"], output_index=index, content_index=0, part=part
        )
        self.delta_fields = (
            b',"item_id":' + orjson.dumps(self.text["id"]) + b',"output_index":' + str(index).encode()
            + b',"content_index":0,"delta":'
        )  # fmt: skip
        return out + self.event(
            "response.output_text.delta",
            item_id=self.text["id"],
            output_index=index,
            content_index=0,
            delta=content,
            logprobs=logprobs,
        )

    def _call_delta(self, call: dict[str, Any]) -> bytes:
        number = call.get("index") if isinstance(call.get("index"), int) else len(self.calls)
        assert isinstance(number, int)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        assert isinstance(function, dict)
        out = b""
        item = self.calls.get(number)
        if item is None:  # the calls before it stay open: their deltas may come after its (index 0, 1, 0, 1)
            out = self._close_reasoning() + self._close_text()
            item = call_item(f"fc_{self.ids}_{number}", call, "in_progress")
            item["arguments"] = ""
            self.calls[number] = item
            self.open_calls.append(item)
            self.items.append(item)
            out += self.event("response.output_item.added", output_index=len(self.items) - 1, item=_copy(item))
        if arguments := arguments_text(function.get("arguments")):
            self.arguments.setdefault(number, []).append(arguments)
            out += self.event(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=self.items.index(item),
                delta=arguments,
            )
        return out

    def _close_text(self) -> bytes:
        item = self.text
        if item is None:
            return b""
        self.text = None
        index, text = self.items.index(item), "".join(self.texts)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": self.logprobs}
        item["content"], item["status"] = [part], self._item_status()
        return (
            self.event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=text,
                logprobs=self.logprobs,
            )
            + self.event(
                "response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part
            )
            + self.event("response.output_item.done", output_index=index, item=_copy(item))
        )

    def _close_call(self) -> bytes:
        """The open calls' ends, in their order, once their arguments are whole (another kind of output starts,
        or the stream ends)."""
        out = b""
        self._join_arguments()
        for item in self.open_calls:
            index = self.items.index(item)
            item["status"] = self._item_status()
            out += self.event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            ) + self.event("response.output_item.done", output_index=index, item=_copy(item))
        self.open_calls = []
        return out

    def _join_arguments(self) -> None:
        """The calls' arguments, the pieces since the last join joined to them (each piece copied once)."""
        for number, pieces in self.arguments.items():
            item = self.calls[number]
            item["arguments"] = "".join([item["arguments"], *pieces])
        self.arguments.clear()

    def _close_others(self) -> bytes:
        return self._close_text() + self._close_call()

    def _item_status(self) -> str:
        return "incomplete" if isinstance(self.finish, str) and self.finish in INCOMPLETE else "completed"

    def _refusal(self) -> bytes:
        if self.refusal is None:
            return b""
        item = message_item(f"msg_{self.ids}_refusal", "", [], "".join(self.refusal), self._item_status())
        self.items.append(item)
        index = len(self.items) - 1
        return self.event("response.output_item.added", output_index=index, item=_copy(item)) + self.event(
            "response.output_item.done", output_index=index, item=_copy(item)
        )

    def close(self) -> None:
        """Close the open items (their events kept for `end`): the Response is then whole (its output, status)."""
        if self.failed or self.closing is not None:
            return
        self.closing = self._close_reasoning() + self._close_text() + self._close_call() + self._refusal()
        self._last_details()
        _ended(self.response, self.finish, self.chat)
        self.response["output"] = [_copy(item) for item in self.items]

    def end(self) -> bytes:
        """The stream's last events: open items closed, then `response.completed` (or `.incomplete`); after a
        failure, `response.failed` (sent once)."""
        if self.failed:
            if self.failure_sent:
                return b""
            self.failure_sent = True
            return self.event("response.failed", response=self.response)
        self.close()
        response = self.response
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return (self.closing or b"") + self.event(kind, response=response)

    def fail(self, error: Any) -> bytes:
        """An error once streaming: OpenAI's `error` event; `response.failed` follows at the stream's `end`, once
        the request is metered, with the usage its row bills (`margin.api.responses`)."""
        if self.failed:
            return b""
        self.failed = True
        error = error if isinstance(error, dict) else {}
        code, message = error.get("code"), error.get("message")
        message = message if isinstance(message, str) else "the request failed"
        out = self.event("error", code=code, message=message, param=error.get("param"))
        response = self.response
        self._join_arguments()
        response["status"], response["output"] = "failed", [_copy(item) for item in self.items]
        response["error"] = {"code": code if isinstance(code, str) else "server_error", "message": message}
        return out
