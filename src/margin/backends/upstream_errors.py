"""An upstream's errors translated at the boundary: its own text to the log only (escaped; it can hold key
prefixes, hosts, internals), the client gets the status, and the upstream's `code` and `param` when they are
plain identifiers. OpenAI's shape, or Anthropic's (`{"type": "error", "error": {"type": "overloaded_error",
...}}`, whose `error.type` is its code)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import orjson

from margin.errors import (
    CONTEXT_LENGTH,
    BackendClientError,
    BackendError,
    MarginError,
    RateLimited,
    UpstreamOverloaded,
    UpstreamRateLimited,
    context_message,
)
from margin.logs import printable

log = logging.getLogger("margin.backends")

SAFE_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
SAFE_PARAM = re.compile(r"[A-Za-z0-9_.\[\]-]{1,128}")  # `temperature`, `messages[0].content`, `tools.2.function`
CREDENTIALS = (401, 403, 407)  # the upstream refused margin's own key: an operator's fault, not the caller's
OVERLOADED = 529  # Anthropic's `overloaded_error`: nothing was generated (safe to repeat, billed by nobody)
N = r"(\d{1,3}(?:,?\d{3}){0,3})"  # a token count as upstreams write it (`210118`, `200,000`)
# An upstream's sentence for a request over the model's context window, and what its numbers are: (p)rompt,
# (f)unctions (part of the prompt), (l)imit, (k) the completion's tokens, (t)otal. Anthropic's two, OpenAI's two,
# vLLM's three; matched on the logged text, never passed on: the client gets margin's sentence rebuilt from the
# numbers (context_message). A total without its split is not matched (it is not the prompt's size)
CONTEXT_SENTENCES = tuple(
    (re.compile(pattern, re.IGNORECASE), roles)
    for pattern, roles in (
        (rf"prompt is too long: {N} tokens > {N} maximum", "pl"),
        (rf"input length and `?max_tokens`? exceed context limit: {N} \+ {N} > {N}", "pkl"),
        (rf"maximum context length of {N} tokens\. You requested a total of {N} tokens: {N} tokens from the "
         rf"input messages and {N} tokens for the completion", "ltpk"),
        (rf"maximum context length is {N} tokens\. However, you requested {N} tokens \({N} in the messages, "
         rf"(?:{N} in the functions, and )?{N} in the completion\)", "ltpfk"),
        (rf"maximum context length is {N} tokens\. However, your (?:messages resulted in|request has) {N} (?:input )?"
         "tokens", "lp"),
        (rf"is too large: {N}\. This model's maximum context length is {N} tokens and your request has {N} input "
         "tokens", "klp"),
    )
)  # fmt: skip


def upstream_message(body: bytes) -> tuple[str, str | None]:
    """The upstream's error message (for the log only) and its code (for the client, when it looks like one)."""
    try:
        parsed = orjson.loads(body)
        error = parsed.get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return body[:300].decode(errors="replace"), None
    if isinstance(error, dict):
        code = error.get("code")
        if code is None and parsed.get("type") == "error":  # Anthropic's errors name their kind in `type`
            code = error.get("type")
        return str(error.get("message") or error)[:300], None if code is None else str(code)[:64]
    if error is None and isinstance(message := parsed.get("message"), str):  # vLLM's `{"object": "error", ...}`
        return message[:300], None
    return str(error)[:300], None


def _upstream_param(body: bytes) -> str | None:
    """The parameter an upstream's 4xx names (OpenAI's `error.param`), when it is a plain field path: the SDK
    exposes it (`BadRequestError.param`), and it is the one hint a caller gets, the message being withheld."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) and SAFE_PARAM.fullmatch(param) else None


def context_overflow(message: str) -> tuple[int, int, int | None] | None:
    """The prompt's tokens, the context window and the completion's tokens (None if not said) of an upstream's
    context-window refusal, or None if `message` is none of CONTEXT_SENTENCES."""
    for pattern, roles in CONTEXT_SENTENCES:
        if (found := pattern.search(message)) is not None:
            numbers = {
                role: int(value.replace(",", "")) for role, value in zip(roles, found.groups(), strict=True) if value
            }
            return numbers["p"] + numbers.get("f", 0), numbers["l"], numbers.get("k")
    return None


def log_upstream(backend: str, what: str, message: str) -> None:
    """An upstream's own text, escaped, to the log only (it can hold key prefixes, hosts, internals)."""
    log.warning("upstream %s %s: %s", backend, what, printable(message))


def upstream_error(backend: str, status: int, body: bytes, headers: Mapping[str, str]) -> MarginError:
    """Translate an upstream error status at the boundary. The upstream's own text goes to the log (escaped),
    never to the client: it can hold the upstream's key prefix, hosts or internals. The client gets the status
    and the upstream's error code when it is a plain identifier. 4xx pass through (429 keeps a numeric
    Retry-After); the upstream refusing margin's credentials and 5xx become 502."""
    message, code = upstream_message(body)
    log_upstream(backend, f"answered {status}", message)
    code = code if code is not None and SAFE_CODE.fullmatch(code) else None
    if status == 429:
        retry = headers.get("retry-after", "")
        # OpenAI's own `rate_limit_exceeded` is margin's limiter's code: an upstream's says upstream_rate_limited,
        # so a caller (the batch worker, which waits out margin's own refusals but counts an upstream's as a try)
        # can tell whose limit it met
        own = code is None or code == RateLimited.default_code
        return UpstreamRateLimited(
            "the upstream is rate limiting requests; retry later",
            code=UpstreamRateLimited.default_code if own else code,
            headers={"retry-after": retry} if retry.isascii() and retry.isdigit() and len(retry) <= 6 else None,
        )
    if 400 <= status < 500 and status not in CREDENTIALS and (overflow := context_overflow(message)) is not None:
        # the one refusal clients act on by its text (Claude Code compacts): margin's sentence, from the numbers
        return BackendClientError(
            context_message(*overflow), upstream_status=400, code=CONTEXT_LENGTH, param=_upstream_param(body)
        )
    if 400 <= status < 500 and status not in CREDENTIALS:
        detail = f", code {code}" if code else ""
        param = _upstream_param(body)
        detail += f", param {param}" if param else ""
        message = f"the upstream rejected the request (HTTP {status}{detail})"
        return BackendClientError(message, upstream_status=status, code=code, param=param)
    # margin's own key refused, or Anthropic's 529 (nothing generated): the upstream bills neither
    if status == OVERLOADED:
        return UpstreamOverloaded(f"the upstream is overloaded (HTTP {status})", unsent=True)
    return BackendError(f"the upstream failed (HTTP {status})", unsent=status in CREDENTIALS)
