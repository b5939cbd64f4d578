"""One error hierarchy, mapped to OpenAI-shaped JSON and an HTTP status in exactly one place."""

from __future__ import annotations

from typing import Any, ClassVar


class MarginError(Exception):
    """Base of every error margin raises on purpose. Subclasses fix the HTTP status and OpenAI type."""

    status: int = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

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

    def to_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InternalError(MarginError):
    """A bug in margin: logged with its traceback, answered 500 without details."""

    default_code = "internal_error"


class ConfigError(MarginError):
    """Invalid configuration: raised at start-up, never for a request."""

    default_code = "invalid_config"


class InvalidRequest(MarginError):
    status = 400
    type = "invalid_request_error"
    default_code = "invalid_request"


class AuthenticationFailed(MarginError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(MarginError):
    status = 403
    type = "permission_error"
    default_code = "permission_denied"


class NotFound(MarginError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class MethodNotAllowed(MarginError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class PayloadTooLarge(MarginError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class UnsupportedMediaType(MarginError):
    """A body that is not declared `Content-Type: application/json` (browsers send text/plain cross-site)."""

    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"


class RateLimited(MarginError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class UpstreamRateLimited(RateLimited):
    """The upstream answered 429. Not a fault of the backend (its circuit stays closed), but the request may
    go to a fallback; the caller gets 429 (with the upstream's numeric Retry-After) when none is left."""

    default_code = "upstream_rate_limited"


class Overloaded(MarginError):
    """A bounded queue is full: the caller may retry later."""

    status = 503
    type = "server_error"
    default_code = "server_overloaded"


class BackendError(MarginError):
    """The backend failed or answered with an error we cannot pass through as a client error."""

    status = 502
    type = "upstream_error"
    default_code = "upstream_error"


class BackendFailedUnexpectedly(BackendError):
    """A backend raised an exception it does not translate itself (an in-process engine's IndexError, say).
    Often provoked by one request's input, so it never counts against the backend's circuit breaker."""

    default_code = "backend_exception"


class BackendTimeout(BackendError):
    status = 504
    default_code = "upstream_timeout"


class StreamTimeLimit(BackendTimeout):
    """A stream that was flowing ran past its backend's total time limit. It is ended like a timeout, but is
    no fault of the backend (a long answer, or a client reading slowly): its circuit does not count it."""


class BackendClientError(MarginError):
    """The upstream rejected the request as invalid (4xx): passed through with its status."""

    type = "invalid_request_error"
    default_code = "upstream_rejected"

    def __init__(self, message: str, *, status: int, code: str | None = None, param: str | None = None):
        super().__init__(message, code=code, param=param)
        self.status = status


class FeatureDisabled(PermissionDenied):
    """A feature flag or kill switch turned this route off."""

    default_code = "feature_disabled"


class BudgetExceeded(RateLimited):
    """Admitting the request's worst-case cost would overspend a hard budget."""

    default_code = "budget_exceeded"


class ResidencyUnavailable(MarginError):
    """No healthy backend inside the caller's allowed jurisdictions."""

    status = 503
    type = "server_error"
    default_code = "residency_unavailable"


class Conflict(MarginError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"
