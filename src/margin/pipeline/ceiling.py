"""What a request can be billed for, where budgets reserved for it: usage an upstream reports (or margin counts
in what it sent) beyond that is held at it, so no upstream, lying or broken, can spend past a hard budget.

- Output: at most what the request asked for, as the reservation priced it (`max_tokens`, set to the reserved
  amount when the caller sent none, × `n`/`best_of` × prompts). An OpenAI-compatible server cannot produce
  more; one that reports more (10^9 completion tokens) or streams past it is not believed.
- Input: the reservation's count (the tokenizer's, or one token per 3 characters) is an estimate, and an honest
  count may pass it (text of 1 token a character). Above it, the bound is the larger of what the upstream was
  sent (every token of text or token ids is at least one byte of the request's JSON, whose framing of a message
  outweighs its template tokens; a part given by reference, an image URL, may bill up to
  `NON_TEXT_PART_CEILING`) and the served model's `context_length` when the config gives one (no model reads
  more: a video or a large image on a long-context model is billed as reported).
- A known cost: providers whose `max_tokens` leaves out reasoning tokens can honestly report more output; such
  a row is held at the limit and reads `clamped` (the upstream's figures are in the log).
- Answers from the cache are margin's own and are never held.
A held row says so (`usage_source: clamped`) and the upstream's figures go to the log."""

from __future__ import annotations

import logging

import orjson

from margin.backends.payloads import non_text_parts
from margin.pipeline.values import Request
from margin.protocol import Endpoint
from margin.types import Target, Usage

log = logging.getLogger("margin.call")

NON_TEXT_PART_CEILING = 8192  # tokens an image or audio part may bill (providers' largest images: ~1-3k)
UNHELD = ("cache", "clamped")


def held(usage: Usage, request: Request, target: Target) -> Usage:
    """`usage`, or the most the request could be billed for where budgets reserved for it."""
    decision = request.decision
    if decision is None or not decision.budgets or usage.source in UNHELD:
        return usage
    most = output_ceiling(request)
    output = usage.output_tokens if most is None else min(usage.output_tokens, most)
    input_tokens = usage.input_tokens
    if input_tokens > decision.prompt_tokens:  # past the estimate: bounded by what the upstream was sent
        most_in = max(decision.prompt_tokens, input_ceiling(request), target.model.context_length or 0)
        input_tokens = min(input_tokens, most_in)
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
    return Usage(input_tokens, output, min(usage.cached_tokens, input_tokens), source="clamped")


def output_ceiling(request: Request) -> int | None:
    """The most output tokens the upstream was allowed: the limit it was sent (the caller's, lowered by
    `cap_max_tokens`, or set by the route when it sent none) × answers per prompt × prompts; none for embeddings.
    From what was sent, not the reservation's count: that is 0 where a prompt's upper-bound estimate fills the
    context (the request still goes with `max_tokens: 1`), and 0 held nothing. None: no limit was sent."""
    if request.endpoint is Endpoint.EMBEDDINGS:
        return 0
    body = request.body
    limit = getattr(body, "output_limit", None)
    if limit is None:
        return None
    return int(limit) * int(getattr(body, "choices", 1)) * int(getattr(body, "prompts", 1))


def input_ceiling(request: Request) -> int:
    """The most input tokens what the upstream was sent can hold (the JSON after the guard's redaction)."""
    return len(orjson.dumps(request.raw)) + NON_TEXT_PART_CEILING * non_text_parts(request.body)
