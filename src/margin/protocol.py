"""OpenAI request schemas: unknown vendor fields are accepted (only `FORWARDED_EXTRAS` travel upstream), bad
types are rejected. Every value that reaches the ledger or a backend is bounded here, at parse time: a
400 naming the field, instead of a ledger batch the database refuses or a backend that fails.

Validation itself is bounded too, since it runs on the event loop: every list a request may hold has a length
limit (checked first, or, for `Field(max_length)`, as soon as one element more than it allows was read), and
stops at its first wrong element (`fail_fast`). Without them a 4 MiB body of a million small wrong elements
(`"prompt": [{}, {}, …]`) made pydantic collect an error for each, for each member of a union: seconds of
the loop for one request (tests/security/test_loop_stalls.py)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from margin.errors import InvalidRequest


class Endpoint(StrEnum):
    CHAT = "chat.completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    # OpenAI's Responses API: answered by a chat (`margin.responses`); the ledger row names this endpoint, the
    # request path sees a chat
    RESPONSES = "responses"
    MESSAGES = "messages"  # Anthropic's Messages API (`margin.messages`): the same, a chat underneath
    COMPACT = "responses.compact"  # `POST /v1/responses/compact`: passed through to an upstream that compacts


INT32 = 2**31 - 1  # token counts and ids are 32-bit in every engine (and in the ledger's integer columns)
MAX_LOGIT_BIAS = 1024  # entries; OpenAI documents -100..100 per token
MAX_MESSAGES = 10_000  # a chat's messages
MAX_CONTENT_PARTS = 10_000  # content parts over all of a chat's messages
MAX_TOOLS = 128  # OpenAI's limit
MAX_INPUTS = 2_048  # prompts of one completion request, inputs of one embedding request (OpenAI's limit)
MAX_STOP = 4
DEFAULT_FILENAME = "document.pdf"  # a translated chat `file` part's, where none was named (OpenAI expects one)
# An assistant message's thinking blocks (an Anthropic answer's, sent back: `ChatMessage.thinking_blocks`): at most
# this many in one message (interleaved thinking makes one a tool call), each's text, signature or redacted data
# at most this long (a thinking budget is at most 128K tokens, ~0.5 M characters; signatures are a few KB)
MAX_THINKING_BLOCKS = 64
MAX_THINKING_CHARS = 1_048_576
MAX_SIGNATURE_CHARS = 65_536
# An assistant message's `block_order` (margin.interleaving: its blocks' order, sent back): at most this many
# entries (64 thinking blocks, the tool calls and text pieces between them); they count as content parts too
MAX_BLOCK_ORDER = 1_024
# An assistant message's `reasoning_details` (OpenRouter's structured reasoning, sent back): at most as many entries
# as the request's content parts (they count as content parts too: a client that keeps a stream's pieces unmerged
# sends one entry a piece), each's text, summary or encrypted data as long as a thinking block's text, its
# signature as a thinking block's
MAX_REASONING_DETAILS = MAX_CONTENT_PARTS

# OpenAI's processing tiers a client may ask for (`service_tier`). `auto` (the upstream project's default tier)
# and `default` (standard processing) need nothing of a backend; `flex` and `priority` are priced apart and need
# a backend that allows them (`backends.<name>.service_tiers`). `scale` (prepaid capacity) has no list price.
ServiceTier = Literal["auto", "default", "flex", "priority"]

# Hints that change nothing margin meters (the SDK's `completion_create_params`): forwarded to `openai` backends,
# bounded as OpenAI bounds them (`prompt_cache_key`: 64 characters, OpenAI's error past it; `safety_identifier`:
# 128, its docstring); a backend that is not `openai` is sent none (it has no prompt cache or abuse detection).
PromptCacheKey = Annotated[str, Field(max_length=64)]
SafetyIdentifier = Annotated[str, Field(max_length=128)]
Verbosity = Literal["low", "medium", "high"]  # `medium`: the default; others need an `openai` backend


# What the ledger stores of these fits its columns (String(128) / String(256)), without NUL or other control
# characters (PostgreSQL text refuses NUL; names never need them). Checked by pydantic's Rust regex.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
ModelName = Annotated[str, Field(min_length=1, max_length=128, pattern=PRINTABLE)]
UserId = Annotated[str, Field(max_length=256, pattern=PRINTABLE)]
TokenId = Annotated[int, Field(ge=0, le=INT32)]
TokenLimit = Annotated[int, Field(ge=1, le=INT32)]
TokenIds = Annotated[list[TokenId], Field(fail_fast=True)]  # as long as the body allows: ~2 M ids, ~0.1 s


def _too_long(value: Any, limit: int, what: str) -> PydanticCustomError:
    return PydanticCustomError(
        "too_long", "at most {limit} {what}, not {length}", {"limit": limit, "what": what, "length": len(value)}
    )


def _at_most(limit: int, what: str) -> BeforeValidator:
    """A list's (or an object's) length, checked before the field's type: a field whose type is a union
    (`str | list[str]`) would otherwise report each member's error, not this one."""

    def check(value: Any) -> Any:
        if isinstance(value, list | dict) and len(value) > limit:
            raise _too_long(value, limit, what)
        return value

    return BeforeValidator(check)


def _inputs_limit(value: Any) -> Any:
    """Prompts (texts or token-id lists) of a request, at most MAX_INPUTS; one prompt of token ids is longer."""
    if isinstance(value, list) and len(value) > MAX_INPUTS and isinstance(value[0], str | list):
        raise _too_long(value, MAX_INPUTS, "prompts or inputs")
    return value


# a prompt or an embedding input: text, texts, token ids or lists of token ids
Inputs = Annotated[
    str | Annotated[list[str], Field(fail_fast=True)] | TokenIds | Annotated[list[TokenIds], Field(fail_fast=True)],
    BeforeValidator(_inputs_limit),
]


def _null_is(default: Any) -> BeforeValidator:
    """OpenAI's optional parameters are nullable: `null` is the parameter left out (its default)."""
    return BeforeValidator(lambda value: default if value is None else value)


Flag = Annotated[bool, _null_is(False)]  # `stream`, `echo`, `include_usage`: null is false


class _Open(BaseModel):
    # strict: the client's JSON is forwarded as sent, so a value pydantic would coerce (`"temperature": "0.5"`,
    # `"n": "2"`, `"stream": "true"`) must be refused here, not passed upstream to be refused or misread there
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)


class StreamOptions(_Open):
    include_usage: Flag = False


class ContentPart(_Open):
    type: str
    text: str | None = None


class _Closed(_Open):
    """An options object whose every key is known: an unknown one (a future option that may be billed) is a
    400 naming it, never forwarded unpriced."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PromptCacheOptions(_Closed):
    mode: Literal["implicit", "explicit"] = "implicit"
    ttl: Literal["30m"] = "30m"  # the only lifetime the SDK names


class PredictionPart(_Open):
    type: Literal["text"]
    text: str


class Prediction(_Open):
    """A Predicted Output (`prediction`): text the answer is expected to repeat. OpenAI bills the prediction's
    rejected tokens as completion tokens, so the budget reservation adds its bound (`ceiling.prediction_bound`);
    parts are as many as a chat's content parts may be."""

    type: Literal["content"]
    content: Annotated[
        str | Annotated[list[PredictionPart], Field(fail_fast=True)], _at_most(MAX_CONTENT_PARTS, "prediction parts")
    ]


class ThinkingBlock(_Closed):
    """An Anthropic answer's thinking (LiteLLM's `thinking_blocks` shape): its text and its opaque signature."""

    type: Literal["thinking"]
    thinking: Annotated[str, Field(max_length=MAX_THINKING_CHARS)]
    signature: Annotated[str, Field(max_length=MAX_SIGNATURE_CHARS)]
    cache_control: dict[str, Any] | None = None  # LiteLLM's blocks may hold one: accepted, never passed on


class RedactedThinkingBlock(_Closed):
    type: Literal["redacted_thinking"]
    data: Annotated[str, Field(min_length=1, max_length=MAX_THINKING_CHARS)]
    cache_control: dict[str, Any] | None = None


ThinkingBlockList = Annotated[
    list[Annotated[ThinkingBlock | RedactedThinkingBlock, Field(discriminator="type")]], Field(fail_fast=True)
]
ThinkingBlocks = Annotated[ThinkingBlockList, _at_most(MAX_THINKING_BLOCKS, "thinking blocks")]


class _ThinkingEntry(_Closed):
    type: Literal["thinking"]


class _ToolUseEntry(_Closed):
    type: Literal["tool_use"]


class _TextEntry(_Closed):
    type: Literal["text"]
    chars: Annotated[int, Field(ge=0, le=INT32)]


# `block_order` (margin.interleaving): each entry exactly one of its three shapes
BlockOrder = Annotated[
    Annotated[list[Annotated[_ThinkingEntry | _ToolUseEntry | _TextEntry, Field(discriminator="type")]],
              Field(min_length=1, fail_fast=True)],
    _at_most(MAX_BLOCK_ORDER, "block order entries"),
]  # fmt: skip


class ReasoningDetail(_Open):
    """An entry of OpenRouter's `reasoning_details` (`reasoning.text`, `reasoning.summary`, `reasoning.encrypted`,
    or a type yet to come: passed on as it is), its strings bounded."""

    type: Annotated[str, Field(min_length=1, max_length=64)]
    text: Annotated[str, Field(max_length=MAX_THINKING_CHARS)] | None = None
    summary: Annotated[str, Field(max_length=MAX_THINKING_CHARS)] | None = None
    data: Annotated[str, Field(max_length=MAX_THINKING_CHARS)] | None = None
    signature: Annotated[str, Field(max_length=MAX_SIGNATURE_CHARS)] | None = None
    id: Annotated[str, Field(max_length=256)] | None = None
    format: Annotated[str, Field(max_length=64)] | None = None
    index: Annotated[int, Field(ge=0, le=INT32)] | None = None


ReasoningDetails = Annotated[
    Annotated[list[ReasoningDetail], Field(fail_fast=True)], _at_most(MAX_REASONING_DETAILS, "reasoning details")
]


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | Annotated[list[ContentPart], Field(fail_fast=True)] | None = None  # parts: parsing.content_parts
    name: str | None = None
    # an assistant's earlier thinking, sent back: the first blocks of the turn at an anthropic backend (which
    # needs them before a tool call's result when thinking is on), left out for every other backend
    thinking_blocks: ThinkingBlocks | None = None
    # the order of an assistant's thinking blocks, text and tool calls (an interleaved answer's, sent back): the
    # order of the turn's blocks at an anthropic backend, left out with the thinking blocks for every other backend
    block_order: BlockOrder | None = None
    # OpenRouter's structured reasoning of an earlier answer, sent back: passed on to `openai` backends as it came
    reasoning_details: ReasoningDetails | None = None

    @field_validator("block_order", "reasoning_details")
    @classmethod
    def _assistant_only(cls, value: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        if value is not None and info.data.get("role") != "assistant":
            what = "a block order" if info.field_name == "block_order" else "reasoning details"
            raise PydanticCustomError("assistant_only", "only an assistant message holds {what}", {"what": what})
        return value

    def text(self) -> str:
        """The message's text; non-text parts are refused by backends that cannot take them."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text or "" for part in self.content if part.type == "text")

    def has_non_text(self) -> bool:
        return isinstance(self.content, list) and any(p.type != "text" for p in self.content)


class _Sampling(_Open):
    model: ModelName
    stream: Flag = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: Annotated[int, _null_is(1)] = Field(1, ge=1, le=128)
    stop: Annotated[str | Annotated[list[str], Field(fail_fast=True)] | None, _at_most(MAX_STOP, "stop sequences")] = (
        None
    )
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    user: UserId | None = None
    logit_bias: Annotated[dict[str, float], Field(max_length=MAX_LOGIT_BIAS)] | None = None
    service_tier: ServiceTier | None = None  # priced at the tier served; completions take `auto`/`default` only

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        """Keys are token ids (decimal), values -100..100: checked here; the vocabulary by the backend."""
        if value is None:
            return None
        for key, bias in value.items():
            if not (key.isascii() and key.isdigit() and len(key) <= 10 and int(key) <= INT32):
                raise ValueError(f"keys must be token ids (0..{INT32}), got {key[:20]!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"biases must be between -100 and 100 (token {key}: {bias})")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def choices(self) -> int:
        """Answers generated per prompt (what multiplies the output)."""
        return self.n

    @property
    def prompts(self) -> int:
        return 1


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES, fail_fast=True)
    max_tokens: TokenLimit | None = None
    max_completion_tokens: TokenLimit | None = None
    response_format: dict[str, Any] | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=MAX_TOOLS, fail_fast=True)] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # forwarded to `openai` backends as sent; see "Upstream fields" in the README for each one's handling
    verbosity: Verbosity | None = None
    prediction: Prediction | None = None
    prompt_cache_key: PromptCacheKey | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: PromptCacheOptions | None = None
    safety_identifier: SafetyIdentifier | None = None

    @property
    def output_limit(self) -> int | None:
        """The larger of the two output limits a client may send: an upstream may honour either."""
        completion, tokens = self.max_completion_tokens, self.max_tokens
        if completion is None or tokens is None:
            return tokens if completion is None else completion
        return max(completion, tokens)


def _not_empty(value: str | list[Any], name: str) -> str | list[Any]:
    """An empty list of prompts or inputs asks for nothing: a 400, as OpenAI answers (not an empty answer)."""
    if isinstance(value, list) and not value:
        raise ValueError(f"{name} must not be empty")
    return value


class CompletionRequest(_Sampling):
    prompt: Inputs
    max_tokens: int | None = Field(16, ge=0, le=INT32)
    echo: Flag = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1, le=128)

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value: str | list[Any]) -> str | list[Any]:
        return _not_empty(value, "prompt")

    @property
    def output_limit(self) -> int | None:
        return self.max_tokens

    @property
    def choices(self) -> int:
        """Answers generated per prompt: `best_of` candidates are all generated (and billed), `n` returned."""
        return max(self.n, self.best_of or 1)

    @property
    def prompts(self) -> int:
        """How many prompts: a list of strings or of token-id lists is one completion job each."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            return len(prompt)
        return 1


class EmbeddingRequest(_Open):
    model: ModelName
    input: Inputs
    encoding_format: Annotated[Literal["float", "base64"], _null_is("float")] = "float"
    dimensions: int | None = Field(None, ge=1, le=65_536)
    user: UserId | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[Any]) -> str | list[Any]:
        return _not_empty(value, "input")

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(item, str) for item in self.input):
            return [str(item) for item in self.input]
        raise InvalidRequest(
            "token-id input is not supported: send text, the embedding model uses its own tokenizer",
            param="input",
        )


CompactItemType = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
# an item's strings that are not its text: ids, kinds, and the opaque blobs a compaction or reasoning item carries
# (not counted: their tokens are the upstream's to report)
_NOT_TEXT = frozenset({"type", "id", "role", "status", "call_id", "encrypted_content", "name", "namespace"})


class CompactItem(_Open):
    """One input item of a compaction: typed (`type`, or a message's `role`) and bounded; its other fields are
    the upstream's to check (its item kinds, a previous compaction's `compaction` item among them)."""

    type: CompactItemType | None = None
    role: Literal["user", "assistant", "system", "developer"] | None = None


CompactItems = Annotated[list[CompactItem], Field(fail_fast=True)]


class CompactRequest(_Closed):
    """`POST /v1/responses/compact` (the SDK's `ResponseCompactParams`): every key known, an unknown one a 400."""

    model: ModelName
    input: Annotated[str | CompactItems | None, _at_most(MAX_MESSAGES, "items")] = None
    instructions: str | None = None
    previous_response_id: Annotated[str, Field(max_length=256)] | None = None
    prompt_cache_key: PromptCacheKey | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: PromptCacheOptions | None = None
    safety_identifier: SafetyIdentifier | None = None
    service_tier: ServiceTier | None = None
    image: CompactImage | None = None

    @property
    def prompt(self) -> str:
        """The text of the instructions and input (what admission estimates the prompt's tokens from)."""
        texts = [self.instructions or ""]
        if isinstance(self.input, str):
            texts.append(self.input)
        else:
            texts.extend(_texts([item.model_dump() for item in self.input or []]))
        return "\n".join(text for text in texts if text)

    @field_validator("previous_response_id")
    @classmethod
    def _no_previous(cls, value: str | None) -> None:
        if value is not None:  # a stored response's id is margin's, which the upstream does not know
            raise ValueError("not supported on /v1/responses/compact through margin; send the conversation as `input`")


class CompactImage(_Closed):
    context_compression: Literal["auto", "enabled", "disabled"] = "auto"


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _texts(item)]
    if isinstance(value, dict):
        return [text for key, item in value.items() if key not in _NOT_TEXT for text in _texts(item)]
    return []


ApiRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest | CompactRequest


def service_tier(body: ApiRequest) -> str | None:
    """The processing tier a request asked for (None: left to the upstream, as `auto`). Embeddings have none:
    the field is not theirs (an extra, never forwarded)."""
    return None if isinstance(body, EmbeddingRequest) else body.service_tier


SCHEMAS: dict[Endpoint, type[ApiRequest]] = {
    Endpoint.CHAT: ChatCompletionRequest,
    Endpoint.COMPLETIONS: CompletionRequest,
    Endpoint.EMBEDDINGS: EmbeddingRequest,
    Endpoint.COMPACT: CompactRequest,
}


# Vendor fields an upstream may receive besides the declared ones: sampling knobs that buy no work beyond
# the priced output limit. Anything else (`best_of` on chat, beam search, audio output, chat templates, web
# search…) is not forwarded, so no unpriced field can buy work upstream. `service_tier` is declared: it is
# priced (reserved at the dearest tier it may be served at, settled at the tier the upstream served), and
# reaches only a backend that allows it (margin.economics.tiers); OpenAI documents it on chat only. Declared
# chat hints that buy nothing (`prompt_cache_key`, `prompt_cache_retention`, `prompt_cache_options`,
# `safety_identifier`, `verbosity`: the answer stays within the priced output limit) travel as sent;
# `prediction` is priced too: its rejected tokens are billed as output, so the reservation adds its bound.
FORWARDED_EXTRAS = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "repeat_penalty",
        "ignore_eos",
        "min_tokens",
        "skip_special_tokens",
        "include_stop_str_in_output",
        "parallel_tool_calls",
        "reasoning_effort",
        "functions",
        "function_call",
        "metadata",
        "store",
    }
)
FORWARDED: dict[Endpoint, frozenset[str]] = {
    Endpoint.CHAT: frozenset(ChatCompletionRequest.model_fields) | FORWARDED_EXTRAS,
    Endpoint.COMPLETIONS: (frozenset(CompletionRequest.model_fields) | FORWARDED_EXTRAS) - {"service_tier"},
    Endpoint.EMBEDDINGS: frozenset(EmbeddingRequest.model_fields),
    Endpoint.COMPACT: frozenset(CompactRequest.model_fields),
}
