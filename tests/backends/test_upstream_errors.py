"""An upstream's context-window refusal, in each provider's words, becomes one error clients act on: OpenAI's code
`context_length_exceeded` and Anthropic's sentence rebuilt from the numbers (Claude Code compacts on "prompt is too
long", lowers `max_tokens` on "input length and `max_tokens` exceed context limit"); nothing else of the upstream's
text reaches the client. Before, each was "the upstream rejected the request (HTTP 400, …)"."""

from __future__ import annotations

import orjson
import pytest

from margin.backends.upstream_errors import context_overflow, upstream_error
from margin.errors import BackendClientError, context_message

# (the upstream's body, what the client is told)
CASES = [
    (  # Anthropic
        {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 210118 tokens "
                                                                                "> 200000 maximum"}},
        "prompt is too long: 210118 tokens > 200000 maximum",
    ),
    (  # Anthropic, the prompt fits but not with max_tokens
        {"type": "error", "error": {"type": "invalid_request_error", "message": "input length and `max_tokens` "
                                    "exceed context limit: 180000 + 32000 > 200000, decrease input length or "
                                    "`max_tokens` and try again"}},
        "input length and `max_tokens` exceed context limit: 180000 + 32000 > 200000, decrease input length or "
        "`max_tokens` and try again",
    ),
    (  # OpenAI
        {"error": {"message": "This model's maximum context length is 128000 tokens. However, your messages "
                   "resulted in 130,512 tokens. Please reduce the length of the messages.",
                   "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}},
        "prompt is too long: 130512 tokens > 128000 maximum",
    ),
    (  # OpenAI / older vLLM: the split between messages and completion
        {"error": {"message": "This model's maximum context length is 4096 tokens. However, you requested 5000 "
                   "tokens (3000 in the messages, 2000 in the completion). Please reduce the length."}},
        "input length and `max_tokens` exceed context limit: 3000 + 2000 > 4096, decrease input length or "
        "`max_tokens` and try again",
    ),
    (  # vLLM
        {"object": "error", "type": "BadRequestError", "message": "Requested token count exceeds the model's "
         "maximum context length of 262144 tokens. You requested a total of 262462 tokens: 230462 tokens from the "
         "input messages and 32000 tokens for the completion. Please reduce the number of tokens."},
        "input length and `max_tokens` exceed context limit: 230462 + 32000 > 262144, decrease input length or "
        "`max_tokens` and try again",
    ),
    (  # OpenAI with functions: they are part of the prompt
        {"error": {"message": "This model's maximum context length is 8192 tokens. However, you requested 8500 "
                   "tokens (6000 in the messages, 500 in the functions, and 2000 in the completion). Please reduce "
                   "the length of the messages, functions, or completion.", "code": "context_length_exceeded"}},
        "input length and `max_tokens` exceed context limit: 6500 + 2000 > 8192, decrease input length or "
        "`max_tokens` and try again",
    ),
    (  # vLLM, newer: max_tokens too large for what the prompt left
        {"object": "error", "message": "'max_tokens' or 'max_completion_tokens' is too large: 2000. This model's "
         "maximum context length is 4096 tokens and your request has 3000 input tokens (2000 > 4096 - 3000)."},
        "input length and `max_tokens` exceed context limit: 3000 + 2000 > 4096, decrease input length or "
        "`max_tokens` and try again",
    ),
    (  # vLLM, a prompt alone over the window
        {"error": {"message": "This model's maximum context length is 4096 tokens. However, your request has 5001 "
                   "input tokens. Please reduce the length of the input messages."}},
        "prompt is too long: 5001 tokens > 4096 maximum",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("body", "told"), CASES)
def test_an_upstream_context_overflow_is_told_in_the_sentence_clients_act_on(body: object, told: str) -> None:
    error = upstream_error("up", 400, orjson.dumps(body), {})
    assert isinstance(error, BackendClientError)
    assert (error.message, error.code, error.upstream_status) == (told, "context_length_exceeded", 400)


def test_only_the_numbers_of_the_upstream_s_text_are_passed_on() -> None:
    text = "prompt is too long: 9 tokens > 8 maximum; key sk-ant-abc at internal-host-7"
    error = upstream_error("up", 400, orjson.dumps({"type": "error", "error": {"message": text}}), {})
    assert error.message == "prompt is too long: 9 tokens > 8 maximum"


@pytest.mark.parametrize("status", [401, 403, 500, 529])
def test_a_credential_refusal_or_a_failure_is_not_read_as_an_overflow(status: int) -> None:
    body = orjson.dumps({"error": {"message": "prompt is too long: 9 tokens > 8 maximum"}})
    assert upstream_error("up", status, body, {}).code != "context_length_exceeded"


def test_other_refusals_are_not_overflows() -> None:
    assert context_overflow("max_tokens: 300000 > 64000, which is the maximum allowed") is None
    # a total without its split is not the prompt's size (a client told so would compact needlessly)
    assert (
        context_overflow("This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.")
        is None
    )
    assert context_overflow("messages: text content blocks must be non-empty") is None


def test_margin_s_own_sentence_says_prompt_too_long_when_the_prompt_alone_is_over() -> None:
    assert context_message(5000, 4096, 100) == "prompt is too long: 5000 tokens > 4096 maximum"
    assert context_message(4000, 4096, 200).startswith("input length and `max_tokens` exceed context limit: 4000 + 200")


def test_an_upstreams_rate_limit_code_is_never_margins_own() -> None:
    """OpenAI's 429 says `rate_limit_exceeded`, margin's own limiter's code: passed on, the batch worker took an
    upstream's 429 for margin's refusal and waited it out without counting a try (up to 10,000 times a line, a
    ledger row each). An upstream's says `upstream_rate_limited`; its other codes (`insufficient_quota`) pass."""
    body = orjson.dumps({"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}})
    assert upstream_error("up", 429, body, {}).code == "upstream_rate_limited"
    quota = orjson.dumps({"error": {"message": "You exceeded your quota", "code": "insufficient_quota"}})
    assert upstream_error("up", 429, quota, {}).code == "insufficient_quota"
