"""`margin.pipeline.ceiling.held`: usage past what a request could be billed for, where budgets reserved for it,
is held there (the attack through a running gateway: tests/security/test_upstream_answers.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from margin.config import ModelConfig
from margin.errors import PermissionDenied
from margin.parsing import parse_request
from margin.pipeline.ceiling import NON_TEXT_PART_CEILING, UNKNOWN_CONTEXT, held, input_bound, prediction_bound
from margin.pipeline.values import Record, Request, RouteDecision
from margin.protocol import Endpoint
from margin.specs import BudgetSpec
from margin.types import ANONYMOUS, Target, Usage

BUDGET = BudgetSpec.model_validate({"name": "b", "scope": {"kind": "global"}, "usd": "1", "period": "day"})
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}}


def request(
    raw: dict[str, Any],
    prompt: int,
    output: int,
    budgets: bool = True,
    endpoint: Endpoint = Endpoint.CHAT,
    target: Target | None = None,
) -> Request:
    """A request as the route step leaves it: its decision holds the estimate and `input_bound`."""
    body = parse_request(endpoint, raw)
    record = Record("r1", endpoint, raw["model"], False, principal=ANONYMOUS)
    asked = Request("r1", endpoint, {}, raw, body, ANONYMOUS, None, record, 0.0)  # type: ignore[arg-type]
    candidates = (target or TARGET,)
    decision = RouteDecision(
        candidates,
        raw["model"],
        prompt_tokens=prompt,
        prompt_bound=input_bound(asked, prompt, candidates, hard=budgets),
        output_tokens=output,
        budgets=(BUDGET,) * budgets,
    )
    return asked._replace(decision=decision)


TARGET = Target("m", ModelConfig(backend="b"), "b", None, "eu")  # type: ignore[arg-type]
LONG = Target("m", ModelConfig(backend="b", context_length=128_000), "b", None, "eu")  # type: ignore[arg-type]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 16}


def test_output_is_held_at_what_was_asked_and_input_at_the_bytes_sent() -> None:
    ask = request(CHAT, prompt=13, output=16)
    assert held(Usage(10, 12), ask, TARGET) == Usage(10, 12)  # within the reservation: as reported
    assert held(Usage(40, 12), ask, TARGET) == Usage(40, 12)  # past the estimate, within the bytes: an honest count
    sent = len(orjson.dumps(CHAT))
    assert ask.decision is not None and ask.decision.prompt_bound == sent
    assert held(Usage(10**9, 10**9, 10**9), ask, TARGET) == Usage(sent, 16, sent, source="clamped")
    counted = held(Usage(10, 500, source="tokenizer"), ask, TARGET)  # margin's count of a stream past max_tokens
    assert (counted.output_tokens, counted.source) == (16, "clamped")


def test_cache_answers_requests_without_budgets_and_non_text_parts() -> None:
    ask = request(CHAT, prompt=13, output=16)
    assert held(Usage(10**6, 10**6, source="cache"), ask, TARGET).source == "cache"  # margin's own answer
    assert held(Usage(10**6, 10**6), request(CHAT, 13, 16, budgets=False), TARGET) == Usage(10**6, 10**6)
    image = {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, IMAGE]}]}
    with_image = request(image, 2061, 16).decision
    assert with_image is not None and with_image.prompt_bound == len(orjson.dumps(image)) + NON_TEXT_PART_CEILING
    embed = request({"model": "e", "input": "one two"}, prompt=3, output=0, endpoint=Endpoint.EMBEDDINGS)
    assert held(Usage(3, 50), embed, TARGET) == Usage(3, 0, source="clamped")  # embeddings produce no tokens


def test_output_is_held_at_the_limit_sent_even_where_the_reservation_counted_none() -> None:
    """The reservation counts 0 output where the prompt's upper-bound estimate fills the context (the route
    still sends `max_tokens: 1`) or a completion asks for `max_tokens: 0`; 0 used to mean "not held", so an
    upstream reporting 10^9 completion tokens for either was priced as reported."""
    full = request({**CHAT, "max_tokens": 1}, prompt=4096, output=0)  # as route.capped left it
    assert held(Usage(5, 10**9), full, TARGET) == Usage(5, 1, source="clamped")
    none = {"model": "m", "prompt": ["one", "two"], "max_tokens": 0, "n": 2}
    assert held(Usage(3, 10**9), request(none, 3, 0, endpoint=Endpoint.COMPLETIONS), TARGET).output_tokens == 0
    many = {"model": "m", "prompt": ["one", "two"], "max_tokens": 5, "n": 2, "best_of": 3}
    assert held(Usage(3, 10**9), request(many, 3, 30, endpoint=Endpoint.COMPLETIONS), TARGET).output_tokens == 30
    assert held(Usage(3, 30), request(many, 3, 30, endpoint=Endpoint.COMPLETIONS), TARGET) == Usage(3, 30)


def test_a_long_context_models_input_is_held_at_its_context_not_at_the_bytes() -> None:
    """An image URL or a video may honestly bill more than the bytes sent + 8,192 a part; where the config gives
    a candidate's context length, no honest count passes it, so that is the bound (and the reservation)."""
    image = {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "what?"}, IMAGE]}]}
    bytes_bound = len(orjson.dumps(image)) + NON_TEXT_PART_CEILING
    assert held(Usage(20_000, 16), request(image, 2061, 16), TARGET).input_tokens == bytes_bound
    long = request(image, 2061, 16, target=LONG)
    assert long.decision is not None and long.decision.prompt_bound == 128_000
    assert held(Usage(20_000, 16), long, LONG) == Usage(20_000, 16)  # within 128k: as reported
    assert held(Usage(10**9, 16), long, LONG) == Usage(128_000, 16, source="clamped")
    text_only = request(CHAT, 13, 16, target=LONG).decision  # no part by reference: the bytes bound it
    assert text_only is not None and text_only.prompt_bound == len(orjson.dumps(CHAT))


def test_text_of_more_tokens_than_its_estimate_is_within_the_bound_that_was_reserved() -> None:
    """60 emoji: an estimate of one token per 3 characters says 20, a tokenizer may honestly say 2 or more a
    character; each is 4 bytes of the JSON, so the bound (what the budgets reserved) covers the honest count."""
    emoji = {**CHAT, "messages": [{"role": "user", "content": "\U0001f600" * 60}]}
    ask = request(emoji, prompt=20 + 8, output=16)
    assert ask.decision is not None and ask.decision.prompt_bound >= 240
    assert held(Usage(180, 16), ask, TARGET) == Usage(180, 16)


def test_a_predictions_rejected_tokens_are_believed_up_to_its_bound() -> None:
    """OpenAI bills a Predicted Output's rejected tokens as completion tokens, on top of what the answer
    generated: the reservation adds the prediction's bound (its JSON's bytes, each answer), and so does the
    ceiling, else an honest bill of 16 generated and 40 rejected tokens was held at 16 (what the budget paid
    was less than what the upstream charged)."""
    code = "def total(xs):\n    return sum(xs)\n"  # 35 characters: at most 35 tokens, fewer than its JSON's bytes
    predicted = {**CHAT, "prediction": {"type": "content", "content": code}}
    ask = request(predicted, prompt=13, output=16)
    bound = prediction_bound(ask)
    assert bound == len(orjson.dumps(predicted["prediction"])) > len(code)
    assert held(Usage(10, 16 + 35), ask, TARGET) == Usage(10, 16, source="clamped")  # the decision says none
    assert ask.decision is not None
    reserved = ask._replace(decision=ask.decision._replace(output_tokens=16 + bound, predicted=bound))
    assert held(Usage(10, 16 + 35), reserved, TARGET) == Usage(10, 16 + 35)  # as reported
    assert held(Usage(10, 10**9), reserved, TARGET) == Usage(10, 16 + bound, source="clamped")
    parts = {**CHAT, "n": 2, "prediction": {"type": "content", "content": [{"type": "text", "text": code}] * 2}}
    assert prediction_bound(request(parts, 13, 32)) == 2 * len(orjson.dumps(parts["prediction"]))  # each answer
    assert prediction_bound(ask._replace(raw=CHAT, body=parse_request(Endpoint.CHAT, CHAT))) == 0


def test_a_file_part_is_bounded_by_the_context_or_refused_without_one() -> None:
    """A PDF is billed by the page (~1.5-3K tokens each): 100 pages sharing one content stream, ~10 KB, are billed
    ~150K tokens. Before, its request was bounded by its bytes plus 8,192 tokens a part, so a row reporting 150K
    was held at ~18K (the ledger under what was billed, a hard budget overspent). Now its candidates' context is
    the bound; a candidate with no `context_length` refuses it under a hard budget, and bounds it at
    `UNKNOWN_CONTEXT` (2M tokens) under soft ones (which never refuse)."""
    pdf = {"type": "file", "file": {"filename": "r.pdf", "file_data": "data:application/pdf;base64," + "A" * 10_000}}
    chat = {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "sum up"}, pdf]}]}
    window = Target("m", ModelConfig(backend="b", context_length=200_000), "b", None, "eu")  # type: ignore[arg-type]
    ask = request(chat, prompt=2000, output=16, target=window)
    assert held(Usage(150_000, 16), ask, window) == Usage(150_000, 16)
    with pytest.raises(PermissionDenied) as refused:
        request(chat, prompt=2000, output=16)
    assert refused.value.code == "context_length_unknown"
    soft = request(chat, prompt=2000, output=16, budgets=False).decision  # as under soft budgets alone
    assert soft is not None and soft.prompt_bound == UNKNOWN_CONTEXT
    image = {**CHAT, "messages": [{"role": "user", "content": [IMAGE]}]}  # an image: its 8,192 tokens, as before
    assert request(image, prompt=2000, output=16).decision is not None


def test_a_compactions_file_part_is_bounded_the_same() -> None:
    """The same PDF in a compaction's item (`/v1/responses/compact`: open items, an `input_file` part in an item's
    content or a tool output's `output`): refused under a hard budget without `context_length`, bounded by the
    context with one (second review: before, it was bounded by its bytes, ~10K tokens)."""
    pdf = {"type": "input_file", "filename": "r.pdf", "file_data": "data:application/pdf;base64," + "A" * 10_000}
    items: list[Any] = [
        [{"role": "user", "content": [{"type": "input_text", "text": "sum up"}, pdf]}],
        [{"type": "function_call_output", "call_id": "c", "output": [pdf]}],
    ]
    window = Target("m", ModelConfig(backend="b", context_length=200_000), "b", None, "eu")  # type: ignore[arg-type]
    for held_in in items:
        raw = {"model": "m", "input": held_in}
        with pytest.raises(PermissionDenied) as refused:
            request(raw, prompt=2000, output=16, endpoint=Endpoint.COMPACT)
        assert refused.value.code == "context_length_unknown"
        ask = request(raw, prompt=2000, output=16, endpoint=Endpoint.COMPACT, target=window)
        assert held(Usage(150_000, 16), ask, window) == Usage(150_000, 16)
    text = {"model": "m", "input": [{"role": "user", "content": "sum up"}]}  # no part: as before
    assert request(text, prompt=2000, output=16, endpoint=Endpoint.COMPACT).decision is not None
