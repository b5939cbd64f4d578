from __future__ import annotations

import pytest

from margin.backends.textgen import StopMatcher, sampling_plan
from margin.errors import InvalidRequest
from margin.protocol import ChatCompletionRequest, CompletionRequest


def feed_all(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher, out = StopMatcher(stops), ""
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out += text
        if stopped:
            return out, True
    return out + matcher.flush(), False


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        ([], ["a", "b"], ("ab", False)),
        (["END"], ["hello E", "N", "D tail"], ("hello ", True)),
        (["END"], ["hello E", "N", "x"], ("hello ENx", False)),
        (["<|im_end|>"], ["Hi", "<|im", "_end|>", "more"], ("Hi", True)),
        (["ab", "b"], ["xa", "b"], ("x", True)),  # earliest stop wins
        (["\n\n"], ["line\n", "\nnext"], ("line", True)),
    ],
)
def test_stop_matcher(stops: list[str], pieces: list[str], expected: tuple[str, bool]) -> None:
    assert feed_all(stops, pieces) == expected


def test_stop_matcher_holds_back_only_possible_prefixes() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("abcS") == ("abc", False)
    assert matcher.held == "S"
    assert matcher.feed("x") == ("Sx", False)


def chat(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], **fields}
    )


def test_sampling_defaults_follow_openai_and_llamacpp() -> None:
    plan = sampling_plan(chat(), "b")
    assert (plan.temperature, plan.top_p, plan.top_k, plan.min_p) == (1.0, 1.0, 40, 0.05)
    assert plan.max_new_tokens is None and plan.stops == []


def test_sampling_maps_fields() -> None:
    plan = sampling_plan(
        chat(
            temperature=0,
            top_p=0.5,
            seed=7,
            stop="##",
            max_completion_tokens=9,
            top_k=3,
            logit_bias={"15": -100},
            response_format={"type": "json_object"},
        ),
        "b",
    )
    assert (plan.temperature, plan.top_p, plan.seed, plan.stops, plan.max_new_tokens, plan.top_k) == (
        0,
        0.5,
        7,
        ["##"],
        9,
        3,
    )
    assert plan.logit_bias == {15: -100.0} and plan.json_object


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, "functions"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ({"top_k": "many"}, "top_k"),
        ({"top_k": 1e300}, "top_k"),
        ({"min_p": -1}, "min_p"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ],
)
def test_unsupported_fields_are_400(fields: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        sampling_plan(chat(**fields), "b")
    assert caught.value.param == param


def test_completion_unsupported_fields() -> None:
    request = CompletionRequest.model_validate({"model": "m", "prompt": "x", "suffix": "y"})
    with pytest.raises(InvalidRequest):
        sampling_plan(request, "b")
    request = CompletionRequest.model_validate({"model": "m", "prompt": "x", "logprobs": 0})
    with pytest.raises(InvalidRequest) as caught:  # the chosen tokens' log probabilities: asked for, not given
        sampling_plan(request, "b")
    assert caught.value.param == "logprobs"
