"""The backends' configuration (`backends:` in the config file): one class per kind, told apart by `kind`,
and the self-hosted cost inputs a backend may carry. margin.config composes them into the settings."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from margin.specs import MAX_OVERHEAD, MAX_USD_PER_HOUR, MAX_WATTS, Spec


class HardwareConfig(Spec):
    """Self-hosted cost inputs (DESIGN §4). Every default is an assumption and is labelled as one."""

    usd_per_hour: Decimal = Field(
        ge=0, le=MAX_USD_PER_HOUR, description="All-in hourly cost of the hardware (amortized, hosting)."
    )
    watts_busy: float | None = Field(
        None, ge=0, le=MAX_WATTS, description="Power while serving; energy is modelled from it."
    )
    watts_idle: float | None = Field(None, ge=0, le=MAX_WATTS)
    energy_overhead: Decimal = Field(
        Decimal("0"), ge=0, le=MAX_OVERHEAD, description="Energy & cooling as a share of hourly."
    )
    network_overhead: Decimal = Field(
        Decimal("0"), ge=0, le=MAX_OVERHEAD, description="Networking as a share of hourly."
    )
    tokens_per_s: float | None = Field(
        None, gt=0, description="Throughput used to price a budget reservation (worst case) before the call."
    )
    note: str | None = Field(None, description="Where these numbers come from (shown in reports).")


class _BackendBase(Spec):
    # whether the upstream may write the whole prompt to a prompt cache that costs more than input (Anthropic's):
    # admission then prices a prompt at the dearer rate
    writes_prompt_cache: ClassVar[bool] = False
    region: str = "default"
    hardware: HardwareConfig | None = Field(
        None, description="Set for self-hosted backends: cost comes from TCO, not list prices."
    )


class LlamaCppBackendConfig(_BackendBase):
    kind: Literal["llamacpp"] = "llamacpp"
    model_file: str = Field("builtin:smollm2-135m-q4_1", description="GGUF path, or builtin:<name>.")
    n_ctx: int = Field(4096, ge=256)
    threads: int | None = Field(None, ge=1, description="Defaults to the number of CPU cores.")
    n_batch: int = Field(512, ge=1)
    max_queue: int = Field(32, ge=0, description="Requests waiting beyond the running one; more get 503.")


class RetryConfig(Spec):
    """Retries inside one backend call, before any byte of the answer exists: connection refused, HTTP
    502/503/504, and 429 whose Retry-After is within `retry_after_max_s`. Waits grow exponentially with full
    jitter (a random wait between 0 and `backoff_s` × 2^attempt, capped at `backoff_max_s`); no retry starts
    when it could not finish within the backend's `timeout_s`. Timeouts and broken streams are never retried
    on the same backend (the upstream may be generating): they go to the model's fallbacks."""

    attempts: int = Field(2, ge=0, le=10, description="Retries after the first try (0: none).")
    backoff_s: float = Field(0.05, ge=0, description="Base of the exponential backoff.")
    backoff_max_s: float = Field(2.0, ge=0, description="Longest wait between two tries (before jitter).")
    retry_after_max_s: float = Field(
        2.0, ge=0, description="A 429 is retried only when its Retry-After (seconds) is at most this."
    )


class HttpBackendConfig(_BackendBase):
    """What every backend that calls a hosted HTTP upstream takes (`openai`, `anthropic`)."""

    base_url: str = Field(description="Base URL ending in /v1.")
    api_key_env: str | None = Field(None, description="Environment variable holding the upstream key.")
    provider: str | None = Field(None, description="genai-prices provider id; guessed from base_url if unset.")
    timeout_s: float = Field(600.0, gt=0, description="Total: the whole call, retries and stream included.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Opening the TCP (and TLS) connection.")
    first_token_timeout_s: float = Field(
        60.0, gt=0, description="Streams: from sending the request to the upstream's first event (headers included)."
    )
    idle_timeout_s: float = Field(30.0, gt=0, description="Streams: longest silence between two events.")
    retries: RetryConfig = RetryConfig()
    max_connections: int = Field(512, ge=1)
    max_response_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        description="The most an answer may hold: a JSON body (declared, or as read after decompression) or a "
        "stream's bytes in all. Past it the call fails as `upstream_response_too_large` (502; a stream that "
        "began gets an error event). 256 MiB: a full batch of 2,048 float embeddings of 3,072 dimensions is "
        "~70-190 MiB of JSON.",
    )


class OpenAIBackendConfig(HttpBackendConfig):
    # an OpenAI-compatible upstream may report `prompt_tokens_details.cache_write_tokens` (a proxy in front of
    # Anthropic, another margin), charged at the model's cache-write rate: reserved at it too
    writes_prompt_cache: ClassVar[bool] = True
    kind: Literal["openai"] = "openai"
    request_usage: bool = Field(True, description="Ask the upstream for stream usage (stream_options).")
    output_limit_field: Literal["max_tokens", "max_completion_tokens"] | None = Field(
        None,
        description="The field a chat's output limit is sent in (the one budgets set when the caller sent none, "
        "or the caller's `max_tokens`): OpenAI's reasoning models refuse `max_tokens`, some servers know only "
        "it. Unset: `max_completion_tokens` for api.openai.com and Azure OpenAI, else `max_tokens`.",
    )
    service_tiers: tuple[Literal["flex", "priority"], ...] = Field(
        (),
        description="OpenAI processing tiers this upstream may be asked for (a request's `service_tier`). `auto` "
        "and `default` need nothing; `flex` or `priority` to a backend that does not list it is refused (400). "
        "List the tiers your upstream project may serve at (its default tier too): a request that leaves the "
        "tier to the upstream (`auto`, or none) is reserved at the dearest of them.",
    )
    thinking_blocks: bool = Field(
        False,
        description="Pass an assistant message's `thinking_blocks` on (LiteLLM's shape of Anthropic's signed "
        "thinking), for an OpenAI-compatible upstream in front of Claude that takes them (a LiteLLM proxy). "
        "Off: they are left out, as an upstream that does not know the field may refuse it.",
    )
    count_tokens: Literal["none", "vllm"] = Field(
        "none",
        description="How a model on this backend is counted (`/v1/messages/count_tokens`, "
        "`/v1/responses/input_tokens`). `none`: it is not (a 400 `count_tokens_unavailable`). `vllm`: the "
        "upstream is a vLLM server, asked `POST /tokenize` (at `base_url` less its `/v1`) for the chat request a "
        "completion would send, so the count is that completion's `prompt_tokens`.",
    )

    responses_compact: bool | None = Field(
        None,
        description="Whether `POST /v1/responses/compact` is passed on to this upstream (`{base_url}/responses/"
        "compact`): an upstream that serves OpenAI's Responses API and compacts. Unset: on for api.openai.com only.",
    )

    @property
    def compacts(self) -> bool:
        if self.responses_compact is not None:
            return self.responses_compact
        return urlsplit(self.base_url).hostname == "api.openai.com"

    @model_validator(mode="after")
    def _tokenize_beside_v1(self) -> OpenAIBackendConfig:
        if self.count_tokens == "vllm" and not self.base_url.rstrip("/").endswith("/v1"):
            raise ValueError("count_tokens: vllm needs a base_url ending in /v1 (vLLM's /tokenize is beside it)")
        return self


# chat fields an anthropic backend refuses (margin.backends.anthropic_request.REFUSED, and a message's `name`)
# that `drop_unsupported` may list: dropped from what is sent instead
AnthropicDroppable = Literal[
    "logprobs", "top_logprobs", "logit_bias", "seed", "presence_penalty", "frequency_penalty", "prediction",
    "functions", "function_call", "min_p", "repetition_penalty", "repeat_penalty", "ignore_eos", "min_tokens",
    "skip_special_tokens", "include_stop_str_in_output", "metadata", "store", "name",
]  # fmt: skip


class AnthropicBackendConfig(HttpBackendConfig):
    """Anthropic's Messages API (`POST {base_url}/messages`), called natively: chat requests are translated
    (margin.backends.anthropic_request, anthropic_response), answers come back as OpenAI chat completions."""

    writes_prompt_cache: ClassVar[bool] = True
    kind: Literal["anthropic"] = "anthropic"
    base_url: str = Field("https://api.anthropic.com/v1", description="Base URL ending in /v1.")
    api_key_env: str | None = Field(
        "ANTHROPIC_API_KEY", description="Environment variable holding the key (sent as `x-api-key`)."
    )
    provider: str | None = Field("anthropic", description="genai-prices provider id.")
    anthropic_version: str = Field(
        "2023-06-01", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$", description="`anthropic-version`."
    )
    default_max_tokens: int = Field(
        4096,
        ge=1,
        le=2**31 - 1,
        description="`max_tokens` sent when the request has no output limit (Anthropic requires one, chat does not).",
    )
    drop_unsupported: list[AnthropicDroppable] = Field(
        default_factory=list,
        max_length=32,
        description="Chat fields Anthropic has no counterpart for that are dropped instead of refused (400); the "
        "answer names what was dropped in `x-margin-dropped-params`. `name`: a message's participant name.",
    )


class FakeBackendConfig(_BackendBase):
    """A scripted backend for tests and benchmarks: latency, tokens and errors are configured."""

    kind: Literal["fake"] = "fake"
    ttft_ms: float = Field(0.0, ge=0)
    tokens_per_s: float | None = Field(None, gt=0, description="Decode pace; None streams instantly.")
    output_tokens: int = Field(8, ge=0)
    word: str = Field("tok", description="Each output token is this word plus a space.")
    echo: bool = Field(False, description="Answer with the prompt's words instead (up to output_tokens).")
    report_usage: bool = True
    fail_status: int | None = Field(None, description="Fail every request with this status (e.g. 502).")
    fail_after_tokens: int | None = Field(None, ge=0, description="Cut the stream after N tokens.")
    embedding_dim: int = Field(8, ge=1)


class SentenceTransformersBackendConfig(_BackendBase):
    kind: Literal["sentence_transformers"] = "sentence_transformers"
    model: str = Field("builtin:all-minilm-l6-v2", description="Model folder, or builtin:<name>.")
    threads: int | None = Field(None, ge=1)
    max_batch: int = Field(256, ge=1)
    max_queue: int = Field(32, ge=0, description="Requests waiting beyond the running one; more get 503.")


BackendConfig = Annotated[
    LlamaCppBackendConfig
    | OpenAIBackendConfig
    | AnthropicBackendConfig
    | FakeBackendConfig
    | SentenceTransformersBackendConfig,
    Field(discriminator="kind"),
]
