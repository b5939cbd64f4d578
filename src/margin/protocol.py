"""OpenAI request schemas: unknown vendor fields are accepted (only `FORWARDED_EXTRAS` travel upstream), bad
types are rejected. Every value that reaches the ledger or a backend is bounded here, at parse time: a
400 naming the field, instead of a ledger batch the database refuses or a backend that fails."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from margin.errors import InvalidRequest


class Endpoint(StrEnum):
    CHAT = "chat.completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


INT32 = 2**31 - 1  # token counts and ids are 32-bit in every engine (and in the ledger's integer columns)
MAX_LOGIT_BIAS = 1024  # entries; OpenAI documents -100..100 per token


# What the ledger stores of these fits its columns (String(128) / String(256)), without NUL or other control
# characters (PostgreSQL text refuses NUL; names never need them). Checked by pydantic's Rust regex.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
ModelName = Annotated[str, Field(min_length=1, max_length=128, pattern=PRINTABLE)]
UserId = Annotated[str, Field(max_length=256, pattern=PRINTABLE)]
TokenId = Annotated[int, Field(ge=0, le=INT32)]
TokenLimit = Annotated[int, Field(ge=1, le=INT32)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class StreamOptions(_Open):
    include_usage: bool = False


class ContentPart(_Open):
    type: str
    text: str | None = None


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text; non-text parts are refused by backends that cannot take them."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text or "" for part in self.content if part.type == "text")

    def has_non_text(self) -> bool:
        return isinstance(self.content, list) and any(p.type != "text" for p in self.content)


class _Sampling(_Open):
    model: ModelName
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    user: UserId | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        """Keys are token ids (decimal), values -100..100: checked here; the vocabulary by the backend."""
        if value is None:
            return None
        if len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries")
        for key, bias in value.items():
            if not (key.isascii() and key.isdigit() and len(key) <= 10 and int(key) <= INT32):
                raise ValueError(f"keys must be token ids (0..{INT32}), got {key[:20]!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"biases must be between -100 and 100 (token {key}: {bias})")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_limit(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
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
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: TokenLimit | None = None
    max_completion_tokens: TokenLimit | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @property
    def output_limit(self) -> int | None:
        """The larger of the two output limits a client may send: an upstream may honour either."""
        completion, tokens = self.max_completion_tokens, self.max_tokens
        if completion is None or tokens is None:
            return tokens if completion is None else completion
        return max(completion, tokens)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    max_tokens: int | None = Field(16, ge=0, le=INT32)
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1, le=128)

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
    input: str | list[str] | list[TokenId] | list[list[TokenId]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=65_536)
    user: UserId | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be empty")
        return value

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(item, str) for item in self.input):
            return [str(item) for item in self.input]
        raise InvalidRequest(
            "token-id input is not supported: send text, the embedding model uses its own tokenizer",
            param="input",
        )


ApiRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest
SCHEMAS: dict[Endpoint, type[ApiRequest]] = {
    Endpoint.CHAT: ChatCompletionRequest,
    Endpoint.COMPLETIONS: CompletionRequest,
    Endpoint.EMBEDDINGS: EmbeddingRequest,
}


# Vendor fields an upstream may receive besides the declared ones: sampling knobs that buy no work beyond
# the priced output limit. Anything else (`service_tier`, `best_of` on chat, beam search, audio output,
# chat templates, web search…) is not forwarded, so no unpriced field can buy work upstream.
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
    Endpoint.COMPLETIONS: frozenset(CompletionRequest.model_fields) | FORWARDED_EXTRAS,
    Endpoint.EMBEDDINGS: frozenset(EmbeddingRequest.model_fields),
}


def parse_request(endpoint: Endpoint, data: Any) -> ApiRequest:
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return SCHEMAS[endpoint].model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"] if first["type"] != "missing" else "field required"
        extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InvalidRequest(f"{param}: {message}{extra}", param=param) from exc
