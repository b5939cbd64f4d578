"""What a request can be billed for, where budgets reserved for it: usage an upstream reports (or margin counts
in what it sent) beyond that is held at it, so no upstream, lying or broken, can spend past a hard budget.

- Output: at most what the request asked for, as the reservation priced it (`max_tokens`, set to the reserved
  amount when the caller sent none, × `n`/`best_of` × prompts). An OpenAI-compatible server cannot produce
  more; one that reports more (10^9 completion tokens) or streams past it is not believed. A Predicted Output
  (`prediction`) sent to an `openai` backend adds `prediction_bound`: OpenAI bills the prediction's rejected
  tokens as completion tokens, on top of what the answer generated.
- Input: at most `input_bound`, which the reservation priced: the bytes of the JSON the route step saw
  (every token of text or token ids is at least one byte of it), not the prompt's estimate (the tokenizer's,
  or one token per 3 characters), which an honest count may pass (text of 1 token a character: emoji, CJK).
  A part given by reference may bill up to `NON_TEXT_PART_CEILING`, or up to a candidate's `context_length`.
  A file part (a PDF: billed by the page, ~1.5-3K tokens each, a 10 KB file of 100 pages ~150K) may fill the
  context: its request is bounded by the candidates' `context_length`; where one has none, refused under a
  hard budget, and bounded at `UNKNOWN_CONTEXT` under soft ones (which never refuse).
  The guard redacts after the reservation; a placeholder longer than what it replaced can push an honest
  count past the bound, and that row is held too (logged).
- A known cost: providers whose `max_tokens` leaves out reasoning tokens can honestly report more output; such
  a row is held at the limit and reads `clamped` (the upstream's figures are in the log).
- Answers from the cache are margin's own and are never held.
A held row says so (`usage_source: clamped`), the upstream's figures go to the log, and what the client is told
says the held counts (a stream's usage event, a whole answer's `usage`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson

from margin.backends.payloads import file_parts, non_text_parts
from margin.errors import PermissionDenied
from margin.pipeline.values import Request
from margin.protocol import ChatCompletionRequest, Endpoint
from margin.types import Target, Usage

log = logging.getLogger("margin.call")

NON_TEXT_PART_CEILING = 8192  # tokens an image or audio part may bill (providers' largest images: ~1-3k)
UNHELD = ("cache", "clamped")
UNKNOWN_CONTEXT = 2_000_000  # tokens: the largest context window sold (a file's bound on a model without one)


def held(usage: Usage, request: Request, target: Target) -> Usage:
    """`usage`, or the most the request could be billed for where budgets reserved for it."""
    decision = request.decision
    if decision is None or not decision.budgets or usage.source in UNHELD:
        return usage
    most = output_ceiling(request)
    output = usage.output_tokens if most is None else min(usage.output_tokens, most)
    input_tokens = min(usage.input_tokens, decision.prompt_bound)
    if input_tokens == usage.input_tokens and output == usage.output_tokens:
        return usage
    log.warning(
        "backend %s: usage of %d input and %d output tokens (%s) is more than request %s could use; held at %d and %d",
        target.backend_name,
        usage.input_tokens,
        usage.output_tokens,
        usage.source,
        request.id,
        input_tokens,
        output,
    )
    cached = min(usage.cached_tokens, input_tokens)
    writes = min(usage.cache_write_tokens, input_tokens - cached)
    return Usage(input_tokens, output, cached, source="clamped", cache_write_tokens=writes)


def output_ceiling(request: Request) -> int | None:
    """The most output tokens the upstream was allowed: the limit it was sent (the caller's, lowered by
    `cap_max_tokens`, or set by the route when it sent none) × answers per prompt × prompts, and what a
    prediction may add (`RouteDecision.predicted`); none for embeddings.
    From what was sent, not the reservation's count: that is 0 where a prompt's upper-bound estimate fills the
    context (the request still goes with `max_tokens: 1`), and 0 held nothing. None: no limit was sent."""
    if request.endpoint is Endpoint.EMBEDDINGS:
        return 0
    body = request.body
    limit = getattr(body, "output_limit", None)
    if limit is None:
        return None
    most = int(limit) * int(getattr(body, "choices", 1)) * int(getattr(body, "prompts", 1))
    return most + request.decision.predicted if request.decision is not None else most


def prediction_bound(request: Request) -> int:
    """The most output tokens a Predicted Output can add to what the request is billed: OpenAI bills the
    prediction's tokens that the answer did not use (`rejected_prediction_tokens`) as completion tokens, at
    most all of them, for each answer. Each token is at least one byte of the prediction's JSON (as the input
    bound counts the body's). 0 without one."""
    body = request.body
    if not isinstance(body, ChatCompletionRequest) or body.prediction is None:
        return 0
    return len(orjson.dumps(request.raw["prediction"])) * body.choices


def input_bound(request: Request, estimate: int, candidates: Sequence[Target], hard: bool = True) -> int:
    """The most input tokens `request` can be billed for: its budgets reserve this and `held` holds a reported
    count at it. Every token of text or token ids is at least one byte of the request's JSON, whose framing of
    a message outweighs its template tokens; a part given by reference (an image URL) may bill up to
    `NON_TEXT_PART_CEILING`, or, when there is one, up to the largest context length the config gives a
    candidate (a video on a long-context model). A file part (a PDF) has no bound of its own: with one, the
    bound is a candidate's whole `context_length` as prompt (the most it can bill); where a candidate has none,
    a request under a `hard` budget is refused (held at the bytes, its row would say less than the upstream
    billed, and the budget overspend), one under soft budgets alone is bounded at `UNKNOWN_CONTEXT`."""
    parts = non_text_parts(request.body)
    bound = max(estimate, len(orjson.dumps(request.raw)) + NON_TEXT_PART_CEILING * parts)
    if parts:
        bound = max(bound, *(c.model.context_length or 0 for c in candidates))
    unknown = [c.public for c in candidates if not c.model.context_length] if file_parts(request.body) else []
    if unknown and not hard:
        return max(bound, UNKNOWN_CONTEXT)
    if unknown:
        names = ", ".join(f"`{name}`" for name in dict.fromkeys(unknown))
        raise PermissionDenied(
            f"no `context_length` in the config for {names}, so a hard budget cannot bound what a file (billed by "
            "the page) costs there: set the model's `context_length`, or send the file's text",
            code="context_length_unknown",
        )
    return bound
