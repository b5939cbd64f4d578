"""OpenAI's Responses API (`POST /v1/responses`), request side: the body validated strictly (an unknown field
or a wrong type is a 400 naming it) and translated (`margin.responses_chat`) to the chat request margin's
request path runs (`margin.pipeline.flow`), so that a Responses call is admitted, guarded, cached, routed,
metered and written to the ledger as a chat is. The answer is translated back in `margin.api.responses`.

Responses are stored only when the config turns `responses.store` on (`margin.ledger.stored`): then `store`
(true unless sent false, as OpenAI's default) keeps the answer and `previous_response_id` continues a stored one,
its turns' items prepended to this request's input (`margin.responses_chat.expand`) before it is translated.
With it off, `store: true` and `previous_response_id` are refused. What needs a stored conversation
(`conversation`, `background`, `item_reference` items), a stored prompt template (`prompt`) or a tool margin
would have to run (every built-in tool) is always refused with a message that says so, before anything is
reserved or sent. This module holds the body's schema and those refusals; its translation to the chat request
is `margin.responses_chat`."""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from margin.errors import InvalidRequest
from margin.parsing import error_param
from margin.protocol import (
    MAX_CONTENT_PARTS,
    MAX_MESSAGES,
    MAX_TOOLS,
    Flag,
    ModelName,
    PromptCacheKey,
    SafetyIdentifier,
    ServiceTier,
    TokenLimit,
    UserId,
    Verbosity,
)
from margin.responses_reasoning import ReasoningItem

MAX_METADATA = 16  # OpenAI's limit: 16 pairs, keys of 64 characters, values of 512
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=MAX_METADATA)
]
LOGPROBS_INCLUDE = "message.output_text.logprobs"
# what `include` may ask for: logprobs; reasoning items' `encrypted_content` and input images' URLs (in stored
# input items), which are always included
Include = Literal["message.output_text.logprobs", "reasoning.encrypted_content", "message.input_image.image_url"]

# What a stateless gateway cannot do, by field: refused whatever its value (a null is the field left out)
TURN_ON = "margin stores responses only when its config turns `responses.store` on"
STATELESS = {
    "conversation": "margin does not store conversations: send the whole conversation as `input` items",
    "prompt": "stored prompt templates are not supported through this gateway: send the prompt as `input`",
    "context_management": "margin does not compact responses",
    "max_tool_calls": "built-in tools are not supported through this gateway (function tools are)",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# Items are strict too, but an item the client copied from an earlier answer (the SDK's output types) may carry
# its `id` and `status` (a message its `phase`, an output_text part its `annotations` and `logprobs`): accepted,
# not passed on (a chat message has no place for them)
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class InputText(_Strict):
    type: Literal["input_text"]
    text: str


class OutputText(_Strict):
    type: Literal["output_text"]
    text: str
    annotations: Annotated[list[dict[str, Any]], Field(max_length=MAX_MESSAGES)] | None = None
    logprobs: Annotated[list[dict[str, Any]], Field(max_length=MAX_MESSAGES)] | None = None


class Refusal(_Strict):
    type: Literal["refusal"]
    refusal: str


class InputImage(_Strict):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["low", "high", "auto", "original"] | None = None  # the SDK's `ImageDetail`, as chat's


class InputFile(_Strict):
    """A file sent inline (`file_data`, a base64 data URL, with its `filename`): a chat's `file` part. By `file_id`
    or `file_url` it is refused earlier, with the reason."""

    type: Literal["input_file"]
    file_data: str
    filename: Annotated[str, Field(min_length=1, max_length=256)] | None = None


Part = Annotated[InputText | OutputText | Refusal | InputImage | InputFile, Field(discriminator="type")]


class Message(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | Annotated[list[Part], Field(max_length=MAX_MESSAGES, fail_fast=True)]
    id: str | None = None
    status: ItemStatus | None = None
    phase: Literal["commentary", "final_answer"] | None = None


class FunctionCall(_Strict):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: ItemStatus | None = None


class FunctionCallOutput(_Strict):
    type: Literal["function_call_output"]
    call_id: str
    output: str | Annotated[list[InputText], Field(max_length=MAX_MESSAGES, fail_fast=True)]
    id: str | None = None
    status: ItemStatus | None = None


def _item_type(item: Any) -> str:
    """An item's kind: a message may leave its `type` out (the SDK's `EasyInputMessageParam`)."""
    kind = item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", None)
    return kind if isinstance(kind, str) else "message"


Item = Annotated[
    Annotated[Message, Tag("message")]
    | Annotated[FunctionCall, Tag("function_call")]
    | Annotated[FunctionCallOutput, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_type),
]


class FunctionTool(_Strict):
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(_Strict):
    type: Literal["function"]
    name: str


class AllowedTools(_Strict):
    """`tool_choice: {"type": "allowed_tools", ...}`: the model may call only these of `tools` (`required`: one
    of them); chat's `allowed_tools` tool choice."""

    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: Annotated[list[NamedFunction], Field(min_length=1, max_length=MAX_TOOLS, fail_fast=True)]


class Format(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    description: str | None = None
    strict: bool | None = None


class Text(_Strict):
    format: Format | None = None
    verbosity: Verbosity | None = None


SummaryKind = Literal["auto", "concise", "detailed"]


class Reasoning(_Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: SummaryKind | None = None  # the thinking as each reasoning item's `summary` (`margin.responses_reasoning`)
    generate_summary: SummaryKind | None = None  # its deprecated name


class ResponsesStreamOptions(_Strict):
    include_obfuscation: bool | None = None  # margin never pads its events: accepted, changes nothing


class ResponsesRequest(_Strict):
    model: ModelName
    input: str | Annotated[list[Item], Field(min_length=1, max_length=MAX_MESSAGES, fail_fast=True)]
    instructions: str | None = None
    max_output_tokens: TokenLimit | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS, fail_fast=True)] | None = None
    tool_choice: (
        Literal["none", "auto", "required"]
        | Annotated[NamedFunction | AllowedTools, Field(discriminator="type")]
        | None
    ) = None
    parallel_tool_calls: bool | None = None
    text: Text | None = None
    reasoning: Reasoning | None = None
    user: UserId | None = None
    metadata: Metadata | None = None  # the Response's own: echoed and stored, not sent upstream (`SAME_NAME`)
    service_tier: ServiceTier | None = None
    stream: Flag = False
    stream_options: ResponsesStreamOptions | None = None
    store: bool | None = None  # `true` with storage off is refused earlier, with the reason
    previous_response_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None  # idem
    background: Literal[False] | None = None  # idem
    truncation: Literal["disabled"] | None = None
    prompt_cache_key: PromptCacheKey | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    safety_identifier: SafetyIdentifier | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    include: Annotated[list[Include], Field(max_length=16)] | None = None

    @property
    def summary(self) -> SummaryKind | None:
        """The reasoning summary asked for (`reasoning.summary`, or its old name `generate_summary`)."""
        return (self.reasoning.summary or self.reasoning.generate_summary) if self.reasoning is not None else None

    @property
    def logprobs(self) -> bool:
        return bool(self.include and LOGPROBS_INCLUDE in self.include) or bool(self.top_logprobs)


def refuse(message: str, param: str, code: str = "unsupported_parameter") -> InvalidRequest:
    return InvalidRequest(f"{param}: {message}", param=param, code=code)


def _stateless(data: dict[str, Any], storing: bool) -> None:
    """The fields and values margin cannot honour (`storing`: `responses.store` is on), refused with the reason
    (before validation, so the message says why rather than that the field is unknown)."""
    for name, why in STATELESS.items():
        if data.get(name) is not None:
            raise refuse(why, name)
    if not storing and data.get("previous_response_id") is not None:
        why = f"{TURN_ON}, so it cannot continue one: send the whole conversation as `input` items"
        raise refuse(why, "previous_response_id")
    if not storing and data.get("store") is True:
        raise refuse(f"{TURN_ON}; send `store: false`", "store", "unsupported_value")
    if data.get("background") is True:
        raise refuse("background responses are not supported; send the request without it", "background")
    if data.get("truncation") == "auto":
        raise refuse("only `disabled` is supported: margin sends the input as it is", "truncation", "unsupported_value")
    _summary(data.get("reasoning"))
    _builtin_tools(data.get("tools"))
    _items(data.get("input"))
    choice = data.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") not in ("function", "allowed_tools"):
        why = "only `none`, `auto`, `required`, a function or `allowed_tools` (functions) is supported"
        raise refuse(why, "tool_choice", "unsupported_value")


def _summary(reasoning: Any) -> None:
    """A summary kind margin does not know: a 400 naming `reasoning.<field>` (pydantic's would not)."""
    for name in ("summary", "generate_summary"):
        value = reasoning.get(name) if isinstance(reasoning, dict) else None
        if value is not None and value not in get_args(SummaryKind):
            raise refuse("must be `auto`, `concise` or `detailed`", f"reasoning.{name}", "invalid_value")


def _builtin_tools(tools: Any) -> None:
    if type(tools) is not list:
        return
    for index, tool in enumerate(tools[:MAX_TOOLS]):
        if isinstance(tool, dict) and isinstance(kind := tool.get("type"), str) and kind != "function":
            why = f"built-in tool `{kind[:40]}` is not supported through this gateway: margin runs no tools"
            why += " (send function tools)"
            raise refuse(why, f"tools.{index}.type", "unsupported_value")


def _items(items: Any) -> None:
    """Items that need a stored response (`item_reference`) or that margin never produces and no chat can
    carry (built-in tool calls), and parts no chat message holds."""
    if type(items) is not list or len(items) > MAX_MESSAGES:  # not a list, or too long: pydantic says so
        return
    parts = sum(
        len(content) for item in items if type(item) is dict for key in ("content", "summary")
        if type(content := item.get(key)) is list
    )  # fmt: skip
    if parts > MAX_CONTENT_PARTS:  # counted first, as the chat path counts its messages' parts (loop stalls)
        message = f"input: at most {MAX_CONTENT_PARTS} content parts over all items, not {parts}"
        raise InvalidRequest(message, param="input", code="array_above_max_length")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "item_reference":
            why = "item references are not supported through this gateway: send the items themselves"
            raise refuse(why, f"input.{index}.type", "unsupported_value")
        if isinstance(kind, str) and kind not in ("message", "function_call", "function_call_output", "reasoning"):
            why = f"input items of type `{kind[:40]}` are not supported through this gateway"
            raise refuse(why, f"input.{index}.type", "unsupported_value")
        content = item.get("content")
        if type(content) is list:
            for number, part in enumerate(content):
                if isinstance(part, dict):
                    _part(part, f"input.{index}.content.{number}")


def _part(part: dict[str, Any], at: str) -> None:
    """A content part no chat message holds (audio, a file or an image by id or URL to fetch), refused."""
    kind = part.get("type")
    if kind == "input_audio":
        raise refuse("`input_audio` parts are not supported through this gateway", f"{at}.type", "unsupported_value")
    if kind == "input_file":
        for key in ("file_id", "file_url"):
            if part.get(key) is not None:
                why = f"files by `{key}` are not supported: send `file_data` (a base64 data URL)"
                raise refuse(why, f"{at}.{key}", "unsupported_value")
    if kind == "input_image" and part.get("file_id") is not None:
        why = "images by file id are not supported: send `image_url` (a URL or a data URL)"
        raise refuse(why, f"{at}.file_id", "unsupported_value")


UNION_TAGS = frozenset(
    {"message", "function_call", "function_call_output", "input_text", "output_text", "refusal", "input_image",
     "input_file", "function", "allowed_tools", "reasoning"}
)  # fmt: skip


def parse_responses(data: Any, storing: bool = False) -> ResponsesRequest:
    """The Responses body, validated (a 400 naming the field, as the chat path's; `storing`: `responses.store`)."""
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    _stateless(data, storing)
    try:
        return ResponsesRequest.model_validate(data)
    except ValidationError as exc:
        raise error_param(exc, UNION_TAGS) from exc
