"""One error hierarchy, free of HTTP: what went wrong and a machine-readable code. The HTTP status and the
OpenAI error type of each class are mapped once, in `margin.api.errors`."""

from __future__ import annotations

from typing import Any, ClassVar

SHOULD_RETRY = "x-should-retry"
"""`false` on an error that the same request would get again (`MarginError.deterministic`): OpenAI's SDKs obey it
(they retry 408, 409, 429 and 5xx otherwise), and so does the batch worker (margin.batches.runner)."""


class MarginError(Exception):
    """Base of every error margin raises on purpose. Subclasses name the kind of failure."""

    default_code: ClassVar[str | None] = None
    # True where the same request would be refused the same way if sent again (answered with `x-should-retry:
    # false`, the header OpenAI's SDKs obey, and final at once for a batch line): only where the status alone
    # (a 5xx) would say "try again"
    deterministic: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.param = param
        self.headers = headers or {}


class InternalError(MarginError):
    """A bug in margin: logged with its traceback, answered 500 without details."""

    default_code = "internal_error"


class ConfigError(MarginError):
    """Invalid configuration: raised at start-up, never for a request."""

    default_code = "invalid_config"


class LedgerRevision(ConfigError):
    """A ledger database at another migration revision than this margin's, given to a command that only reads
    it (which never migrates it)."""

    default_code = "ledger_revision"


class InvalidRequest(MarginError):
    default_code = "invalid_request"


CONTEXT_LENGTH = "context_length_exceeded"  # OpenAI's code for a request over a model's context window


def context_message(prompt: int, limit: int, max_tokens: int | None = None) -> str:
    """A request over a model's context window, in Anthropic's own sentences, which clients act on: Claude Code
    compacts its conversation on "prompt is too long: N tokens > M maximum", and lowers `max_tokens` on "input
    length and `max_tokens` exceed context limit: N + K > M" (OpenAI's clients read the code, CONTEXT_LENGTH)."""
    if max_tokens is None or prompt >= limit:
        return f"prompt is too long: {prompt} tokens > {limit} maximum"
    return (
        f"input length and `max_tokens` exceed context limit: {prompt} + {max_tokens} > {limit}, decrease input "
        "length or `max_tokens` and try again"
    )


class AuthenticationFailed(MarginError):
    default_code = "invalid_api_key"


class PermissionDenied(MarginError):
    default_code = "permission_denied"


class NotFound(MarginError):
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class MethodNotAllowed(MarginError):
    default_code = "method_not_allowed"


class PayloadTooLarge(MarginError):
    default_code = "request_too_large"


class UnsupportedMediaType(MarginError):
    """A body that is not declared `Content-Type: application/json` (browsers send text/plain cross-site)."""

    default_code = "unsupported_media_type"


class RateLimited(MarginError):
    default_code = "rate_limit_exceeded"


class UpstreamRateLimited(RateLimited):
    """The upstream answered 429. Not a fault of the backend (its circuit stays closed), but the request may
    go to a fallback; the caller gets 429 (with the upstream's numeric Retry-After) when none is left."""

    default_code = "upstream_rate_limited"


class Overloaded(MarginError):
    """A bounded queue is full: the caller may retry later."""

    default_code = "server_overloaded"


def queue_full(backend: str, in_flight: int, max_queue: int) -> Overloaded:
    """A local backend's bounded queue (`max_queue`) is full: 503 with `retry-after`."""
    return Overloaded(
        f"backend {backend!r} is busy: {in_flight} requests running or queued (max_queue={max_queue}); retry later",
        headers={"retry-after": "1"},
    )


def too_many_streams(cap: int | None, waiting: bool = False) -> RateLimited:
    """429: the key holds `admission.max_streams_per_key` streams open already (`waiting`: as many streams
    waiting for an identical request's upstream answer, a coalesced cache miss)."""
    held = f"{cap} streams waiting for an identical request's answer" if waiting else f"{cap} streams open"
    return RateLimited(
        f"this key already has {held} (admission.max_streams_per_key); finish or close one, then retry",
        code="too_many_streams",
        headers={"retry-after": "1"},
    )


class BackendError(MarginError):
    """The backend failed or answered with an error we cannot pass through as a client error. `unsent`: the
    request never reached a model (no connection, TLS failed, the upstream refused margin's own key, Anthropic's
    529 overloaded), so nothing was generated or billed (the row counts no tokens)."""

    default_code = "upstream_error"

    def __init__(self, message: str, *, unsent: bool = False, **details: Any) -> None:
        super().__init__(message, **details)  # code, param, headers: as every MarginError
        self.unsent = unsent


class UpstreamOverloaded(BackendError):
    """The upstream said it is overloaded: a 529 (Anthropic's `overloaded_error`) before an answer (`unsent`), or
    Anthropic's `error` event of that type once a stream had started. A 502 like any upstream failure; a Messages
    client gets Anthropic's `overloaded_error`, which its SDK and Claude Code retry."""

    default_code = "upstream_overloaded"


class BackendFailedUnexpectedly(BackendError):
    """A backend raised an exception it does not translate itself (an in-process engine's IndexError, say).
    Often provoked by one request's input, so it never counts against the backend's circuit breaker."""

    default_code = "backend_exception"


class BackendTimeout(BackendError):
    default_code = "upstream_timeout"


class ResponseTooLarge(BackendError):
    """The upstream's answer ran past its backend's `max_response_bytes` (a JSON body, as declared or as read
    after decompression, or a stream's bytes in all). The request can provoke that (many choices, a long
    answer, a big embedding batch), so like `StreamTimeLimit` it never counts against the circuit breaker."""

    default_code = "upstream_response_too_large"


class StreamTimeLimit(BackendTimeout):
    """A stream that was flowing ran past its backend's total time limit. It is ended like a timeout, but is
    no fault of the backend (a long answer, or a client reading slowly): its circuit does not count it."""


class BusyTimeAllowance(BackendTimeout):
    """A call under a hard USD budget, on a backend priced by busy time, used the busy time its budget reserved
    for it (`admission.hard_busy_reserve_s`): it is cut there, like a timeout, so its charge stays within the
    reservation. The request's own budget set that limit, so its backend's circuit does not count it."""

    default_code = "budget_time_allowance"


class BackendClientError(MarginError):
    """The upstream rejected the request as invalid (4xx): passed through with its status."""

    default_code = "upstream_rejected"

    def __init__(self, message: str, *, upstream_status: int, code: str | None = None, param: str | None = None):
        super().__init__(message, code=code, param=param)
        self.upstream_status = upstream_status  # the upstream's 4xx, passed on to the caller


class FeatureDisabled(PermissionDenied):
    """A feature flag or kill switch turned this route off."""

    default_code = "feature_disabled"


class ModelNotAllowed(PermissionDenied):
    """The caller's policy (`models`: key, team, tags, org) does not list the model: no retry can change that."""

    default_code = "model_not_allowed"
    deterministic = True


class BudgetExceeded(RateLimited):
    """Admitting the request's worst-case cost would overspend a hard budget."""

    default_code = "budget_exceeded"


class ResidencyUnavailable(MarginError):
    """No healthy backend inside the caller's allowed jurisdictions."""

    default_code = "residency_unavailable"


class ResidencyExcluded(ResidencyUnavailable):
    """The caller's allowed jurisdictions exclude every backend of the model and its fallbacks: no retry can
    change that (the backends' circuits being open, `ResidencyUnavailable` itself, may pass later)."""

    deterministic = True


class Conflict(MarginError):
    default_code = "conflict"
