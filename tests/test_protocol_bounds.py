"""Values from the client are bounded at parse time (400 naming the field), and what multiplies work is
visible to admission: answers per prompt, prompts, token ids."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat.completion_create_params import CompletionCreateParamsBase

from margin.backends.payloads import non_text_parts, token_id_count
from margin.errors import InvalidRequest
from margin.parsing import UNSUPPORTED_CHAT, parse_request
from margin.protocol import (
    FORWARDED,
    MAX_CONTENT_PARTS,
    MAX_INPUTS,
    MAX_LOGIT_BIAS,
    MAX_MESSAGES,
    MAX_STOP,
    MAX_TOOLS,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Endpoint,
    service_tier,
)

MESSAGES = [{"role": "user", "content": "hi"}]
HINTS = {
    "prompt_cache_key": "tenant-42",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "explicit", "ttl": "30m"},
    "safety_identifier": "c2f1e0b8a7d6",
}


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        (Endpoint.CHAT, {"model": "m" * 129, "messages": MESSAGES}, "model"),
        (Endpoint.CHAT, {"model": "a\x00", "messages": MESSAGES}, "model"),
        (Endpoint.CHAT, {"model": "m", "messages": MESSAGES, "user": "u" * 257}, "user"),
        (Endpoint.CHAT, {"model": "m", "messages": MESSAGES, "user": "a\nb"}, "user"),
        (Endpoint.CHAT, {"model": "m", "messages": MESSAGES, "logit_bias": {"-1": 1}}, "logit_bias"),
        (Endpoint.CHAT, {"model": "m", "messages": MESSAGES, "logit_bias": {"word": 1}}, "logit_bias"),
        (Endpoint.CHAT, {"model": "m", "messages": MESSAGES, "logit_bias": {"5": 101}}, "logit_bias"),
        (
            Endpoint.CHAT,
            {"model": "m", "messages": MESSAGES, "logit_bias": {str(i): 1 for i in range(1025)}},
            "logit_bias",
        ),
        (Endpoint.CHAT, {"model": "m", "messages": MESSAGES, "max_tokens": 2**31}, "max_tokens"),
        (Endpoint.CHAT, {"model": "m", "messages": MESSAGES, "seed": 2**64}, "seed"),
        (Endpoint.COMPLETIONS, {"model": "m", "prompt": [2**31]}, "prompt"),
        (Endpoint.COMPLETIONS, {"model": "m", "prompt": "x", "best_of": 129}, "best_of"),
        (Endpoint.EMBEDDINGS, {"model": "m", "input": [[-1]]}, "input"),
    ],
)
def test_out_of_bounds_values_name_their_field(endpoint: Endpoint, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(endpoint, body)
    assert (caught.value.param or "").split(".")[0] == param


def test_multipliers_and_token_ids_are_counted() -> None:
    chat = parse_request(
        Endpoint.CHAT, {"model": "m", "messages": MESSAGES, "n": 3, "max_tokens": 5, "max_completion_tokens": 9}
    )
    assert isinstance(chat, ChatCompletionRequest)  # narrows the union: the chat endpoint parses to its schema
    assert chat.choices == 3 and chat.output_limit == 9  # the larger limit: an upstream may honour either
    many = parse_request(Endpoint.COMPLETIONS, {"model": "m", "prompt": [[1, 2], [3]], "n": 2, "best_of": 4})
    assert isinstance(many, CompletionRequest)
    assert many.prompts == 2 and many.choices == 4 and token_id_count(many) == 3
    ids = parse_request(Endpoint.COMPLETIONS, {"model": "m", "prompt": [1, 2, 3]})
    assert isinstance(ids, CompletionRequest)
    assert ids.prompts == 1 and token_id_count(ids) == 3
    assert token_id_count(parse_request(Endpoint.EMBEDDINGS, {"model": "m", "input": [[1] * 7, [2] * 3]})) == 10
    image = {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {}}]}
    assert non_text_parts(parse_request(Endpoint.CHAT, {"model": "m", "messages": [image]})) == 1


def test_only_known_fields_are_forwarded() -> None:
    assert {"messages", "max_tokens", "max_completion_tokens", "n", "top_k"} <= FORWARDED[Endpoint.CHAT]
    for unpriced in ("best_of", "use_beam_search", "chat_template", "audio", "moderation", "web_search_options"):
        assert unpriced not in FORWARDED[Endpoint.CHAT]
    # hints that buy nothing, and a prediction the reservation prices (margin.pipeline.ceiling.prediction_bound)
    assert set(HINTS) | {"verbosity", "prediction"} <= FORWARDED[Endpoint.CHAT]
    assert not (set(HINTS) | {"verbosity", "prediction"}) & FORWARDED[Endpoint.COMPLETIONS]  # chat fields
    # priced per tier on chat (and sent only to a backend that allows the tier: margin.economics.tiers);
    # OpenAI documents no tiers for the legacy completions
    assert "service_tier" in FORWARDED[Endpoint.CHAT] and "service_tier" not in FORWARDED[Endpoint.COMPLETIONS]
    assert "best_of" in FORWARDED[Endpoint.COMPLETIONS]  # priced there
    assert FORWARDED[Endpoint.EMBEDDINGS] == {"model", "input", "encoding_format", "dimensions", "user"}


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": MESSAGES, **fields}


def _parts(per_message: int, messages: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "x"}] * per_message}] * messages


LISTS = [  # endpoint, a body whose list is at its limit, the same one element over it, the field
    (
        Endpoint.CHAT,
        {"model": "m", "messages": MESSAGES * MAX_MESSAGES},
        {"model": "m", "messages": MESSAGES * (MAX_MESSAGES + 1)},
        "messages",
    ),
    (Endpoint.CHAT, _chat(tools=[{}] * MAX_TOOLS), _chat(tools=[{}] * (MAX_TOOLS + 1)), "tools"),
    (Endpoint.CHAT, _chat(stop=["a"] * MAX_STOP), _chat(stop=["a"] * (MAX_STOP + 1)), "stop"),
    (
        Endpoint.CHAT,
        _chat(logit_bias={str(i): 1 for i in range(MAX_LOGIT_BIAS)}),
        _chat(logit_bias={str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}),
        "logit_bias",
    ),
    (
        Endpoint.CHAT,
        _chat(prediction={"type": "content", "content": [{"type": "text", "text": "x"}] * MAX_CONTENT_PARTS}),
        _chat(prediction={"type": "content", "content": [{"type": "text", "text": "x"}] * (MAX_CONTENT_PARTS + 1)}),
        "prediction",
    ),
    (
        Endpoint.CHAT,
        {"model": "m", "messages": _parts(MAX_CONTENT_PARTS, 1)},
        {"model": "m", "messages": _parts(MAX_CONTENT_PARTS + 1, 1)},
        "messages",
    ),
    (
        Endpoint.COMPLETIONS,
        {"model": "m", "prompt": ["p"] * MAX_INPUTS},
        {"model": "m", "prompt": ["p"] * (MAX_INPUTS + 1)},
        "prompt",
    ),
    (
        Endpoint.COMPLETIONS,
        {"model": "m", "prompt": [[1]] * MAX_INPUTS},
        {"model": "m", "prompt": [[1]] * (MAX_INPUTS + 1)},
        "prompt",
    ),
    (
        Endpoint.EMBEDDINGS,
        {"model": "m", "input": ["i"] * MAX_INPUTS},
        {"model": "m", "input": ["i"] * (MAX_INPUTS + 1)},
        "input",
    ),
]


@pytest.mark.parametrize(("endpoint", "at_limit", "over", "param"), LISTS)
def test_every_list_has_a_length_limit(
    endpoint: Endpoint, at_limit: dict[str, Any], over: dict[str, Any], param: str
) -> None:
    parse_request(endpoint, at_limit)
    with pytest.raises(InvalidRequest) as caught:
        parse_request(endpoint, over)
    assert (caught.value.param or "").split(".")[0] == param, caught.value.message


def test_content_parts_are_counted_over_all_messages() -> None:
    """10,000 messages of 10,000 parts each would pass each list's own limit: the parts are counted together."""
    half = MAX_CONTENT_PARTS // 2
    parse_request(Endpoint.CHAT, {"model": "m", "messages": _parts(half, 2)})
    with pytest.raises(InvalidRequest) as caught:
        parse_request(Endpoint.CHAT, {"model": "m", "messages": _parts(half + 1, 2)})
    assert caught.value.param == "messages" and "content parts" in caught.value.message


def test_a_list_over_its_limit_is_refused_with_openais_code() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(Endpoint.CHAT, {"model": "m", "messages": MESSAGES * 1_000_000})
    assert caught.value.code == "array_above_max_length" and caught.value.param == "messages"
    assert "more)" not in caught.value.message  # validation stopped at the limit, with one error


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        (Endpoint.EMBEDDINGS, {"model": "m", "input": [[-1] * 100_000]}),
        (Endpoint.COMPLETIONS, {"model": "m", "prompt": [{}] * 100_000}),
        (Endpoint.CHAT, {"model": "m", "messages": [{"role": "user", "content": [{}] * 9_000}]}),
        (Endpoint.CHAT, _chat(stop=[1, 2])),
    ],
)
def test_a_list_stops_at_its_first_wrong_element(endpoint: Endpoint, body: dict[str, Any]) -> None:
    """One error per member of a union at most (4 for a prompt), not one per wrong element."""
    with pytest.raises(InvalidRequest) as caught:
        parse_request(endpoint, body)
    message = caught.value.message
    assert "more)" not in message or int(message.rsplit("(and ", 1)[1].split()[0]) <= 3, message


def test_service_tier_is_one_of_openais_tiers() -> None:
    """`service_tier` was an unknown extra, dropped whatever it held; it is now validated (400 naming it)."""
    for tier in ("auto", "default", "flex", "priority"):
        chat = parse_request(Endpoint.CHAT, _chat(service_tier=tier))
        assert service_tier(chat) == tier
    assert service_tier(parse_request(Endpoint.CHAT, _chat(service_tier=None))) is None
    for bad in ("fast", "scale", "FLEX", "", 1, ["flex"]):
        with pytest.raises(InvalidRequest) as caught:
            parse_request(Endpoint.CHAT, _chat(service_tier=bad))
        assert caught.value.param == "service_tier", bad
    embedding = parse_request(Endpoint.EMBEDDINGS, {"model": "m", "input": "x", "service_tier": {"any": "thing"}})
    assert isinstance(embedding, EmbeddingRequest) and service_tier(embedding) is None  # not theirs: never read


def test_every_chat_field_of_the_sdk_is_forwarded_or_refused() -> None:
    """No field of OpenAI's chat completions (the SDK's `completion_create_params`) is accepted and dropped
    without a word: each is forwarded (declared and validated, or a known extra) or refused by name.
    `modalities` is refused unless it is `["text"]`, what every answer is (so leaving that out changes nothing)."""
    fields = set(CompletionCreateParamsBase.__annotations__)
    assert fields - FORWARDED[Endpoint.CHAT] - set(UNSUPPORTED_CHAT) == {"modalities"}


def test_upstream_hints_are_validated_as_the_sdk_types_them() -> None:
    """`verbosity`, the prompt-cache and safety hints and `prediction` were unknown extras, dropped whatever
    they held; now each is validated (400 naming it) and kept as sent, for an `openai` upstream."""
    chat = parse_request(Endpoint.CHAT, _chat(verbosity="low", **HINTS))
    assert isinstance(chat, ChatCompletionRequest) and chat.verbosity == "low"
    assert (chat.prompt_cache_key, chat.safety_identifier) == (HINTS["prompt_cache_key"], HINTS["safety_identifier"])
    assert chat.prompt_cache_options is not None and chat.prompt_cache_options.mode == "explicit"
    at_limits = parse_request(Endpoint.CHAT, _chat(prompt_cache_key="k" * 64, safety_identifier="s" * 128))
    assert isinstance(at_limits, ChatCompletionRequest) and at_limits.verbosity is None
    nulls = dict.fromkeys((*HINTS, "verbosity", "prediction", "moderation"))
    parse_request(Endpoint.CHAT, _chat(**nulls))  # null: the field left out


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"verbosity": "terse"}, "verbosity"),
        ({"verbosity": ""}, "verbosity"),
        ({"verbosity": 1}, "verbosity"),
        ({"prompt_cache_key": "k" * 65}, "prompt_cache_key"),
        ({"prompt_cache_key": 7}, "prompt_cache_key"),
        ({"safety_identifier": "s" * 129}, "safety_identifier"),
        ({"safety_identifier": {"id": "x"}}, "safety_identifier"),
        ({"prompt_cache_retention": "in-memory"}, "prompt_cache_retention"),
        ({"prompt_cache_retention": 24}, "prompt_cache_retention"),
        ({"prompt_cache_options": {"ttl": "1h"}}, "prompt_cache_options"),
        ({"prompt_cache_options": {"mode": None}}, "prompt_cache_options"),
        ({"prompt_cache_options": {"mode": "implicit", "extra": True}}, "prompt_cache_options"),
        ({"prediction": {"content": "x"}}, "prediction"),
        ({"prediction": {"type": "content", "content": None}}, "prediction"),
        ({"prediction": {"type": "content", "content": [{"type": "text"}]}}, "prediction"),
        ({"prediction": {"type": "content", "content": [{"type": "text", "text": 5}]}}, "prediction"),
        ({"prediction": {"type": "content", "content": [{"type": "image_url", "image_url": {}}]}}, "prediction"),
        ({"prediction": ["x"]}, "prediction"),
    ],
)
def test_bad_upstream_hints_name_their_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(Endpoint.CHAT, _chat(**fields))
    assert (caught.value.param or "").split(".")[0] == param, caught.value.message


def test_moderation_is_refused_before_the_body_is_validated() -> None:
    """OpenAI's moderated completions cannot be honoured: 400 `unsupported_parameter` naming the field, before
    anything else is read (a request that is wrong in other ways too is refused for it first)."""
    with pytest.raises(InvalidRequest) as caught:
        parse_request(Endpoint.CHAT, {"model": "m", "messages": [], "moderation": {"model": "omni-moderation-latest"}})
    assert (caught.value.param, caught.value.code) == ("moderation", "unsupported_parameter")
