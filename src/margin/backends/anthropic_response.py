"""An Anthropic Messages answer as an OpenAI chat completion, whole (`completion`) or streamed (`Translator`):
text, tool calls (a streamed `input_json_delta` becomes a function-arguments delta), `stop_reason` →
`finish_reason` (the `stop_sequence` that matched as the choice's `stop_reason`, as vLLM names it, so that
`/v1/messages` answers with it again), usage (`Usage.from_anthropic`).

Thinking, as LiteLLM gives it: the message's `reasoning_content` (the thinking text, joined) and
`thinking_blocks` (each `thinking` block with its `signature`, each `redacted_thinking` block with its `data`, in
order), which a client sends back in the assistant message (Anthropic needs them before a tool call's result);
where the blocks interleave (thinking after text or a tool call), their order in `block_order` (`margin.interleaving`,
which the Messages and Responses translations follow). A
stream has `delta.reasoning_content` for each thinking delta, and a `delta.thinking_blocks` entry holding one
whole block (text and signature) when the block ends, a redacted one when it starts. Thinking tokens are in
Anthropic's output count: metered and billed as output."""

from __future__ import annotations

from typing import Any

import orjson

from margin import interleaving
from margin.backends import payloads
from margin.backends.upstream_errors import log_upstream
from margin.errors import BackendError, UpstreamOverloaded
from margin.thinking import start_usage
from margin.types import Call, Chunk, Usage

FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: Any) -> str:
    return FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def matched(stop_reason: Any, stop_sequence: Any) -> dict[str, str]:
    """The stop sequence that ended the answer, as vLLM names it on a chat choice (`stop_reason`), where
    `/v1/messages` reads it back as Anthropic's `stop_sequence`; nothing when no sequence matched."""
    if stop_reason == "stop_sequence" and isinstance(stop_sequence, str) and stop_sequence:
        return {"stop_reason": stop_sequence}
    return {}


def bad_response(backend: str, what: str) -> BackendError:
    return BackendError(f"upstream {backend} sent {what}", code="upstream_bad_response")


def upstream_failed(backend: str, payload: dict[str, Any], when: str) -> BackendError:
    """An `error` object (under a 200, or a stream's `error` event): its text to the log, never to the caller."""
    error = payload.get("error")
    message = str(error.get("message") if isinstance(error, dict) else error)
    log_upstream(backend, f"failed {when}", message[:300])
    kind = error.get("type") if isinstance(error, dict) else None
    detail = f" ({kind})" if isinstance(kind, str) and kind.isidentifier() and len(kind) <= 64 else ""
    if kind == "overloaded_error":  # Anthropic's overload, as its 529 is (margin.backends.upstream_errors)
        return UpstreamOverloaded(f"the upstream is overloaded: it failed {when}{detail}")
    return BackendError(f"the upstream failed {when}{detail}")


def completion(call: Call, message: dict[str, Any], backend: str) -> tuple[dict[str, Any], str, Usage | None]:
    """(the chat completion, its text, its usage) for an Anthropic `message` object."""
    if message.get("type") == "error":
        raise upstream_failed(backend, message, "under HTTP 200")
    blocks = message.get("content")
    if message.get("type") != "message" or not isinstance(blocks, list):
        raise bad_response(backend, "an answer that is not a message")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thoughts: list[dict[str, Any]] = []
    kinds: list[tuple[str, int]] = []  # each block's kind, in order (`margin.interleaving`)
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
            kinds.append((interleaving.TEXT, len(block["text"])))
        elif kind == "tool_use":
            calls.append(_tool_call(block, backend))
            kinds.append((interleaving.TOOL_USE, 0))
        elif kind in ("thinking", "redacted_thinking"):
            thoughts.append(_thought(block, backend))
            kinds.append((interleaving.THINKING, 0))
    text = "".join(texts)
    finish = finish_reason(message.get("stop_reason"))
    usage = Usage.from_anthropic(message.get("usage"))
    payload = payloads.completion(call, text, finish, usage or Usage())
    if usage is None:  # counted or estimated instead, as an `openai` upstream's answer without usage is
        del payload["usage"]
    payload["choices"][0].update(matched(message.get("stop_reason"), message.get("stop_sequence")))
    reply = payload["choices"][0]["message"]
    if calls:
        reply["tool_calls"] = calls
        reply["content"] = text or None
    if thoughts:
        reply["reasoning_content"] = "".join(t["thinking"] for t in thoughts if t["type"] == "thinking")
        reply["thinking_blocks"] = thoughts
        if (order := interleaving.block_order(kinds)) is not None:  # thinking after text or a tool call
            reply[interleaving.KEY] = order
    return payload, text, usage


def _thought(block: dict[str, Any], backend: str) -> dict[str, Any]:
    """A thinking block as it came (its text and signature, or a redacted block's data), checked for its shape."""
    if block["type"] == "redacted_thinking":
        if not isinstance(data := block.get("data"), str):
            raise bad_response(backend, "a redacted_thinking block without its data")
        return {"type": "redacted_thinking", "data": data}
    thinking, signature = block.get("thinking"), block.get("signature")
    if not isinstance(thinking, str) or not isinstance(signature, str):
        raise bad_response(backend, "a thinking block without its text or signature")
    return {"type": "thinking", "thinking": thinking, "signature": signature}


def _tool_call(block: dict[str, Any], backend: str) -> dict[str, Any]:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, dict):
        raise bad_response(backend, "a tool_use block without its id, name or input")
    function = {"name": name, "arguments": orjson.dumps(arguments).decode()}
    return {"id": call_id, "type": "function", "function": function}


class Translator:
    """One stream's Anthropic events, in order, as OpenAI chunks. `ended()` once `message_stop` came."""

    __slots__ = ("backend", "call", "counts", "done", "finish", "started", "thoughts", "tools")

    def __init__(self, call: Call, backend: str) -> None:
        self.call, self.backend = call, backend
        self.tools: dict[int, int] = {}  # content block index → tool call index
        self.thoughts: dict[int, tuple[list[str], list[str]]] = {}  # an open thinking block's index → its pieces
        # of text and of signature so far
        self.counts: dict[str, Any] = {}  # the usage so far (message_start's, updated by message_delta's)
        self.finish: str | None = None
        self.started = self.done = False

    def event(self, event: Any) -> list[Chunk]:
        if not isinstance(event, dict) or not isinstance(kind := event.get("type"), str):
            raise bad_response(self.backend, "an invalid stream event")
        if kind == "error":
            raise upstream_failed(self.backend, event, "mid-stream")
        if kind == "ping":
            return []
        if not self.started:
            if kind != "message_start":
                raise bad_response(self.backend, f"a stream whose first event is not message_start ({kind[:40]})")
            return self._start(event)
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "content_block_delta":
            return self._delta(event)
        if kind == "message_delta":
            return self._message_delta(event)
        if kind == "message_stop":
            self.done = True
            usage = Usage.from_anthropic(self.counts)
            return [] if usage is None else [Chunk(payload=payloads.usage_chunk(self.call, usage), usage=usage)]
        if kind == "content_block_stop":
            return self._block_stop(event)
        return []  # event types Anthropic may add (its versioning policy)

    def ended(self) -> bool:
        return self.done

    def _chunk(
        self, delta: dict[str, Any], text: str = "", finish: str | None = None, choice: dict[str, str] | None = None
    ) -> Chunk:
        body = payloads.chunk(self.call, "", finish)
        body["choices"][0]["delta"] = delta
        if choice:
            body["choices"][0].update(choice)
        return Chunk(payload=body, text=text)

    def _start(self, event: dict[str, Any]) -> list[Chunk]:
        self.started = True
        message = event.get("message")
        usage = message.get("usage") if isinstance(message, dict) else None
        if isinstance(usage, dict):
            self.counts.update(usage)
        first = self._chunk({"role": "assistant", "content": ""})
        if (counts := start_usage(self.counts)) is not None:  # the counts so far, for a Messages client's message_start
            first.start_usage = counts  # beside the event, never in its JSON (`Chunk.start_usage`)
        return [first]

    def _block_start(self, event: dict[str, Any]) -> list[Chunk]:
        block, index = event.get("content_block"), event.get("index")
        if not isinstance(block, dict) or not isinstance(index, int):
            raise bad_response(self.backend, "an invalid content_block_start")
        kind = block.get("type")
        if kind == "text" and isinstance(text := block.get("text"), str) and text:
            return [self._chunk({"content": text}, text)]
        if kind in ("thinking", "redacted_thinking"):  # a thinking block starts without its signature
            return self._thinking_start(index, _thought({"signature": "", **block}, self.backend))
        if kind != "tool_use":
            return []  # blocks of tools margin never sends
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise bad_response(self.backend, "a tool_use block without its id or name")
        self.tools[index] = position = len(self.tools)
        function = {"name": block["name"], "arguments": ""}
        call = {"index": position, "id": block["id"], "type": "function", "function": function}
        return [self._chunk({"tool_calls": [call]})]

    def _delta(self, event: dict[str, Any]) -> list[Chunk]:
        delta, index = event.get("delta"), event.get("index")
        if not isinstance(delta, dict):
            raise bad_response(self.backend, "an invalid content_block_delta")
        kind, text = delta.get("type"), delta.get("text")
        if kind == "text_delta" and isinstance(text, str):
            return [self._chunk({"content": text}, text)] if text else []
        if kind in ("thinking_delta", "signature_delta"):
            return self._thinking_delta(index, delta)
        position = self.tools.get(index) if isinstance(index, int) else None
        if kind != "input_json_delta" or position is None:
            return []  # citation deltas
        partial = delta.get("partial_json")
        if not isinstance(partial, str):
            raise bad_response(self.backend, "an input_json_delta without its partial_json")
        call = {"index": position, "function": {"arguments": partial}}
        return [self._chunk({"tool_calls": [call]})] if partial else []

    def _thinking_start(self, index: int, block: dict[str, Any]) -> list[Chunk]:
        """A redacted block is whole at its start: delivered now. A thinking block is kept until it stops (its
        signature comes last); text it starts with is delivered as reasoning."""
        if block["type"] == "redacted_thinking":
            return [self._chunk({"thinking_blocks": [block]})]
        self.thoughts[index] = ([block["thinking"]], [block["signature"]])
        return [self._chunk({"reasoning_content": block["thinking"]})] if block["thinking"] else []

    def _thinking_delta(self, index: Any, delta: dict[str, Any]) -> list[Chunk]:
        held = self.thoughts.get(index) if isinstance(index, int) else None
        if held is None:
            raise bad_response(self.backend, "a thinking delta outside a thinking block")
        if delta["type"] == "signature_delta":
            if not isinstance(signature := delta.get("signature"), str):
                raise bad_response(self.backend, "a signature_delta without its signature")
            held[1][:] = [signature]  # a later signature replaces an earlier one (Anthropic's SDKs do the same)
            return []
        if not isinstance(thinking := delta.get("thinking"), str):
            raise bad_response(self.backend, "a thinking_delta without its thinking")
        held[0].append(thinking)
        return [self._chunk({"reasoning_content": thinking})] if thinking else []

    def _block_stop(self, event: dict[str, Any]) -> list[Chunk]:
        """A thinking block's end: the whole block (text and signature), for the client to send back."""
        index = event.get("index")
        held = self.thoughts.pop(index) if isinstance(index, int) and index in self.thoughts else None
        if held is None:
            return []
        block = {"type": "thinking", "thinking": "".join(held[0]), "signature": "".join(held[1])}
        return [self._chunk({"thinking_blocks": [block]})]

    def _message_delta(self, event: dict[str, Any]) -> list[Chunk]:
        usage = event.get("usage")
        if isinstance(usage, dict):  # cumulative: its counts replace the ones so far
            self.counts.update({key: value for key, value in usage.items() if value is not None})
        delta = event.get("delta")
        if not isinstance(delta, dict) or (stop := delta.get("stop_reason")) is None:
            return []
        self.finish = self.call.stats.finish_reason = finish_reason(stop)
        sequence = matched(stop, delta.get("stop_sequence"))
        self.call.stats.stop_sequence = sequence.get("stop_reason")
        return [self._chunk({}, finish=self.finish, choice=sequence)]
