"""The values shared by every layer, at the bottom of the package: what crosses the backend protocol
(`Usage`, `Call`, `Completion`, `Chunk`, the `Backend` protocol itself), who and where a request is
(`Principal`, `Target`) and the trace it belongs to (`TraceContext`). Imports nothing of margin but the
request schemas and the config."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple, Protocol, runtime_checkable

import orjson

from margin.config import ModelConfig
from margin.protocol import ApiRequest, ChatCompletionRequest, Endpoint
from margin.thinking import detail_texts, reasoning_of


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0  # cache reads: a part of input_tokens
    # backend | tokenizer | token_ids | estimated | cache | clamped (pipeline.ceiling) | refused (no work: call step)
    source: str = "backend"
    # cache writes (Anthropic's `cache_creation_input_tokens`): a part of input_tokens too, never overlapping
    # cached_tokens, priced at the model's cache-write rate; the ledger's token columns count them as input
    cache_write_tokens: int = 0

    def to_openai(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }
        details = {}
        if self.cached_tokens:
            details["cached_tokens"] = self.cached_tokens
        if self.cache_write_tokens:  # not OpenAI's (it charges nothing apart for them): only where there are some
            details["cache_write_tokens"] = self.cache_write_tokens
        if details:
            body["prompt_tokens_details"] = details
        return body

    def says(self, reported: Any) -> bool:
        """Whether OpenAI-shaped `reported` usage (an upstream's, as it came) counts what this usage does: its
        prompt and completion tokens, cache reads and writes. Where it does not (the ceiling held it, or
        it was read as less than it said: cached tokens past the prompt, counts past `MAX_TOKENS`), what the
        client is told is written again with these counts, what the request is charged."""
        if not isinstance(reported, dict):
            return False
        details = reported.get("prompt_tokens_details")
        details = details if isinstance(details, dict) else {}
        # `total_tokens` is not compared: a provider whose total is not prompt + completion is honest, and its
        # usage (with its details: reasoning tokens, its own cost) goes out as it came
        return (
            reported.get("prompt_tokens") == self.input_tokens
            and reported.get("completion_tokens", self.output_tokens) == self.output_tokens
            and (details.get("cached_tokens") or 0) == self.cached_tokens
            and (details.get("cache_write_tokens") or 0) == self.cache_write_tokens
        )

    @staticmethod
    def reported_or(reported: Any, metered: Usage | None) -> Any:
        """A chat answer's usage as it came, or where it has none (an upstream that reports none), the usage the
        request was metered at (`metered`: the ledger row's, counted or estimated) in OpenAI's shape."""
        return metered.to_openai() if metered is not None and not isinstance(reported, dict) else reported

    @classmethod
    def from_openai(cls, data: Any) -> Usage | None:
        """OpenAI's usage; `prompt_tokens_details.cache_write_tokens`, where an upstream reports them (margin's
        own answers from an `anthropic` backend do), are the prompt's cache writes."""
        if not isinstance(data, dict) or not _reported(data, "prompt_tokens", "completion_tokens"):
            return None
        details = data.get("prompt_tokens_details") or {}
        if not isinstance(details, dict):
            details = {}
        input_tokens = _count(data.get("prompt_tokens"))
        # cached tokens are part of the prompt: more would price the excess at (cached − input) rates, below 0
        cached = min(_count(details.get("cached_tokens")), input_tokens)
        writes = min(_count(details.get("cache_write_tokens")), input_tokens - cached)
        output = data.get("completion_tokens")  # none named (embeddings'; an upstream that leaves it out): the rest
        output = _count(output) if output is not None else max(_count(data.get("total_tokens")) - input_tokens, 0)
        return cls(input_tokens, output, cached, cache_write_tokens=writes)

    @classmethod
    def from_openai_embeddings(cls, data: Any) -> Usage | None:
        """An embedding's usage: its input is all of it, so where `prompt_tokens` is missing, `total_tokens` (all
        some servers report) is the prompt's count, bounded and checked as any (junk is no usage, as `from_openai`).
        Before, `{"total_tokens": 7}` was no usage and the row estimated."""
        if isinstance(data, dict) and data.get("prompt_tokens") is None and data.get("total_tokens") is not None:
            data = {**data, "prompt_tokens": data["total_tokens"]}
        return cls.from_openai(data)

    @classmethod
    def from_responses(cls, data: Any) -> Usage | None:
        """The Responses API's usage (`input_tokens`, `output_tokens`, `input_tokens_details.cached_tokens`)."""
        if not isinstance(data, dict) or not _reported(data, "input_tokens", "output_tokens"):
            return None
        details = data.get("input_tokens_details")
        cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
        input_tokens = _count(data.get("input_tokens"))
        return cls(input_tokens, _count(data.get("output_tokens")), min(cached, input_tokens))

    @classmethod
    def from_anthropic(cls, data: Any) -> Usage | None:
        """Anthropic's usage (Messages API): its `input_tokens` leave out the prompt's cache reads and writes,
        which are counted apart; margin's input is the whole prompt, as OpenAI counts it. Output includes
        extended thinking. None where it counts no prompt (none at all, junk counts), as `from_openai`."""
        if not isinstance(data, dict) or not _reported(data, "input_tokens", "output_tokens"):
            return None
        reads, writes = _count(data.get("cache_read_input_tokens")), _count(data.get("cache_creation_input_tokens"))
        total = min(_count(data.get("input_tokens")) + reads + writes, MAX_TOKENS)
        reads = min(reads, total)
        return cls(total, _count(data.get("output_tokens")), reads, cache_write_tokens=min(writes, total - reads))


MAX_TOKENS = 2**30 - 1  # the ledger's 32-bit token columns are summed in pairs (input + output) in SQL


def _reported(data: dict[str, Any], prompt: str, output: str) -> bool:
    """Whether an upstream's usage counts the prompt (a number, finite, not negative) and, where it names its
    output's count, that too (embeddings' has none). Else it is no usage: the request is counted as if the upstream
    reported none. Before, `{"total_tokens": 5000}`, counts as strings ("3000") or a negative count metered the
    prompt (or answer) at 0 tokens, $0, as the backend's own count."""
    return _count_like(data.get(prompt)) and (data.get(output) is None or _count_like(data[output]))


def _count_like(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value >= 0


def _count(value: Any) -> int:
    """A token count an upstream reported, as a ledger column holds it (0..2^30-1, so that a pair's sum fits
    PostgreSQL's `integer`; junk counts 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return min(max(int(value), 0), MAX_TOKENS) if math.isfinite(value) else 0


@dataclass(slots=True)
class CallStats:
    """What a backend reports about one call besides the payload. Usage is returned (in the `Completion`, or
    a stream's usage chunk); `closed_usage` is only for a call that ends without one: a stream closed early, whose
    backend learns what it used after its consumer left (llama.cpp's cancelled generation), or a whole answer
    that is the upstream's failure yet says what it billed (an `error` beside its `choices` and `usage`)."""

    closed_usage: Usage | None = None
    busy_s: float | None = None  # exclusive compute time, when the backend knows it (embedded engines)
    queue_s: float = 0.0
    finish_reason: str | None = None
    stop_sequence: str | None = None  # the stop sequence that ended the answer, where the upstream names it
    attempts: int = 1  # tries of this call on this backend (retries after a refused connection, 5xx, 429)
    retried: str | None = None  # the error code of the last failure that was retried
    notices: dict[str, str] = field(default_factory=dict)  # headers the backend adds to the answer (the record's)


@dataclass(slots=True)
class Call:
    endpoint: Endpoint
    request: ApiRequest
    raw: dict[str, Any]  # the client's JSON, passed on by proxying backends
    public_model: str
    upstream_model: str
    request_id: str
    stats: CallStats = field(default_factory=CallStats)
    # who may reuse the prompt state this call leaves on a backend that keeps one (a local model's KV cache):
    # another tenant's reuse would tell it, in `cached_tokens` and in time, how much of its prompt this one's was
    tenant: str | None = None

    @property
    def response_id(self) -> str:
        prefix = {Endpoint.CHAT: "chatcmpl", Endpoint.COMPLETIONS: "cmpl"}.get(self.endpoint, "emb")
        return f"{prefix}-{self.request_id}"


@dataclass(slots=True)
class Completion:
    """A whole (non-streamed) answer: the OpenAI payload and, when known, its raw bytes."""

    payload: dict[str, Any]
    raw: bytes | None = None
    text: str = ""
    usage: Usage | None = None  # what the backend reported; None when it reported nothing


MAX_FINISH_REASON = 64  # OpenAI's are a word (`stop`, `length`, `tool_calls`, `content_filter`)


def choices_of(payload: Any) -> list[Any]:
    """An answer's (or a stream event's) `choices`. An upstream's answer is forwarded as it came whatever its
    shape, so code that reads or rewrites it takes the choices from here: any other shape has none."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    return choices if isinstance(choices, list) else []


def finish_reason_of(payload: Any) -> str | None:
    """The finish reason an answer (or a stream event) names: its first choice's that is a short string (any other
    shape: none)."""
    for choice in choices_of(payload):
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        if isinstance(reason, str) and 0 < len(reason) <= MAX_FINISH_REASON:
            return reason
    return None


def choices_text(payload: Any, part: str = "delta") -> str:
    """Concatenated text of every choice: `part` is "delta" (stream chunks) or "message" (whole answers);
    text completions carry `text` instead. An answer of another shape has no text (never an exception: the
    answer is still forwarded, and metered)."""
    texts = []
    for choice in choices_of(payload):
        if not isinstance(choice, dict):
            continue
        holder = choice.get(part)
        text = holder.get("content") if isinstance(holder, dict) else choice.get("text")
        if isinstance(text, str):
            texts.append(text)
    return "".join(texts)


GENERATED_KEYS = ("content", "refusal")
"""What a message or delta holds of generated text besides its reasoning (`margin.thinking.reasoning_of`: its
`reasoning_content` or `reasoning`, read once where an upstream sends both) and tool calls."""


def generated_text(payload: Any, part: str = "delta") -> str:
    """Everything an answer (or a stream event) generated, to count its tokens when the backend reported none:
    content (a completion's `text`), refusals, reasoning (without it, the text of `reasoning_details`), and tool
    calls' names and arguments, all billed as output by providers. `choices_text` is the content only (what
    guards and the cache read): a tool-calling answer counted by it was 0 output tokens."""
    texts: list[str] = []
    for choice in choices_of(payload):
        if not isinstance(choice, dict):
            continue
        holder = choice.get(part)
        if not isinstance(holder, dict):
            if isinstance(text := choice.get("text"), str):
                texts.append(text)
            continue
        texts.extend(value for key in GENERATED_KEYS if isinstance(value := holder.get(key), str))
        if reasoning := reasoning_of(holder):
            texts.append(reasoning)
        else:  # OpenRouter's `reasoning_details` repeat its `reasoning`: read where that is missing
            texts.extend(entry[key] for entry, key in detail_texts(holder))
        calls = holder.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            texts.extend(_function_texts(call.get("function") if isinstance(call, dict) else None))
        texts.extend(_function_texts(holder.get("function_call")))
    return "".join(texts)


UNREPLAYED_KEYS = ("annotations", "images", "audio")
"""What a message or delta may hold besides its text that a cache hit (one choice of text) cannot replay: citations
(`annotations`: a search model's `url_citation`s), generated images (OpenRouter's `images`), `audio`."""
_UNREPLAYED_MARKS = tuple(f'"{key}"'.encode() for key in UNREPLAYED_KEYS)


def unreplayed(payload: Any, part: str = "delta") -> bool:
    """Whether an answer (or a stream event) holds a non-empty `UNREPLAYED_KEYS` value in a choice's `part`."""
    for choice in choices_of(payload):
        holder = choice.get(part) if isinstance(choice, dict) else None
        if isinstance(holder, dict) and any(holder.get(key) for key in UNREPLAYED_KEYS):
            return True
    return False


def _event_unreplayed(raw: bytes) -> bool:
    """`unreplayed` for one event's raw JSON, parsed only where it names such a key (most events do not)."""
    if not any(mark in raw for mark in _UNREPLAYED_MARKS):
        return False
    try:
        return unreplayed(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return False


def _function_texts(function: Any) -> list[str]:
    """A tool call's (or legacy function call's) name and arguments, the strings among them."""
    if not isinstance(function, dict):
        return []
    return [value for key in ("name", "arguments") if isinstance(value := function.get(key), str)]


class Chunk:
    """One streamed event, or a run of them. `raw` is forwarded untouched when set; `text` is the new content.
    `more` says the backend already holds the next chunk (it arrived in the same read), so the responder may
    write both at once without waiting for anything. A proxying backend may hand over the raw bytes alone:
    the payload and the text are then parsed on first use (most events are only forwarded).

    `events`: a run of events that arrived together and name neither usage nor an error, handed over as one
    chunk (their raw JSON, in order): forwarded as they came, parsed only if their text is asked for. A run
    has no single payload.

    `start_usage`: what an `anthropic` backend's upstream told at its own `message_start` (its first chunk's,
    `margin.thinking.start_usage`), carried beside the event and never in its JSON: a Messages client's
    `message_start` tells it (`Record.start_usage`); no chat client sees it, and no upstream's event can set it."""

    __slots__ = ("_payload", "_text", "events", "more", "raw", "start_usage", "usage")

    def __init__(
        self,
        payload: dict[str, Any] | None = None,
        raw: bytes | None = None,
        text: str | None = None,
        usage: Usage | None = None,
        more: bool = False,
        events: list[bytes] | None = None,
    ) -> None:
        if payload is None and raw is None and events is None:
            raise ValueError("a chunk needs its payload, its raw bytes or its events")
        self._payload = payload
        self._text = text if text is not None or payload is None else ""
        self.raw = raw
        self.usage = usage
        self.more = more
        self.events = events
        self.start_usage: dict[str, int] | None = None

    @property
    def payload(self) -> dict[str, Any]:
        if self._payload is None:
            if self.raw is None:
                raise TypeError("a run of events has no single payload")
            self._payload = orjson.loads(self.raw)
        return self._payload

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = (
                "".join(map(_event_text, self.events)) if self.events is not None else choices_text(self.payload)
            )
        return self._text

    def generated(self) -> str:
        """What the event (or run) generated, tool calls and reasoning included (`generated_text`); an event
        that does not parse generated nothing (it was forwarded as the upstream sent it)."""
        if self.events is None:
            return generated_text(self.payload)
        return "".join(map(_event_generated, self.events))

    def unreplayed(self) -> bool:
        """Whether the event (or a run's event) holds what a cache hit cannot replay (`unreplayed`)."""
        if self.events is not None:
            return any(map(_event_unreplayed, self.events))
        if self._payload is None and self.raw is not None:
            return _event_unreplayed(self.raw)
        return unreplayed(self.payload)

    @property
    def is_usage_only(self) -> bool:
        return self.usage is not None and not self.payload.get("choices")


def _event_text(raw: bytes) -> str:
    """One event's text (an event that does not parse has none: it was forwarded as the upstream sent it)."""
    try:
        return choices_text(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return ""


def _event_generated(raw: bytes) -> str:
    try:
        return generated_text(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return ""


class Backend(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def complete(self, call: Call) -> Completion:
        """Chat or text completion, whole."""
        ...

    def stream(self, call: Call) -> AsyncIterator[Chunk]:
        """Chat or text completion as chunks; closing the iterator stops the generation."""
        ...

    async def embed(self, call: Call) -> Completion: ...

    def count_tokens(self, text: str) -> int | None:
        """Tokens of `text` with the model's tokenizer, or None when the backend has none."""
        ...

    def health(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt to count (`POST /v1/messages/count_tokens`, `POST /v1/responses/input_tokens`): the chat request a
    completion of it would be (its JSON `raw`, validated as `chat`), the model's `upstream_model` name, and the
    client's body where it came in Anthropic's Messages shape (`messages`: an anthropic backend counts it as sent)."""

    raw: dict[str, Any]
    chat: ChatCompletionRequest
    upstream_model: str
    messages: dict[str, Any] | None = None


@runtime_checkable
class InputCounter(Protocol):
    """A backend that can count a prompt's input tokens exactly: the `input_tokens` a completion of that prompt
    would report (a backend without this method cannot count, and margin does not estimate)."""

    async def count_input_tokens(self, prompt: Prompt) -> int: ...


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the API key's id, owner, team, org, bound tags, admin flag and policy."""

    key_id: str | None
    name: str
    team: str | None
    tags: Mapping[str, str] = field(default_factory=dict)
    org: str | None = None
    is_admin: bool = False
    policy: Mapping[str, Any] | None = None


ANONYMOUS = Principal(key_id=None, name="anonymous", team=None)


@dataclass(frozen=True, slots=True)
class BatchLine:
    """A line of a batch job run by the batch worker (margin.batches): its ledger row carries `batch_id`, and
    `discount` of its metered cost is taken off. Only the in-process call sets it (`margin.batches.inprocess`)."""

    batch_id: str
    discount: Decimal


TRACEPARENT_MAX = 128  # version 00 is 55 characters: a longer header is ignored (the request starts a trace)
TRACESTATE_MAX = 512  # what W3C asks to be kept: a longer tracestate is dropped (the traceparent still joins)


class TraceContext(NamedTuple):
    """A caller's W3C trace context (the `traceparent` and `tracestate` headers) as received: only their
    length is checked on the request path; the traces thread parses them (an invalid one starts a new trace)."""

    traceparent: str
    tracestate: str | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> TraceContext | None:
        parent = headers.get("traceparent")
        if not parent or len(parent) > TRACEPARENT_MAX:
            return None
        state = headers.get("tracestate")
        return cls(parent, state if state and len(state) <= TRACESTATE_MAX else None)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: the public model, its config and the backend that serves it."""

    public: str
    model: ModelConfig
    backend_name: str
    backend: Backend
    region: str
    jurisdiction: str | None = None
