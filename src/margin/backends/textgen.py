"""Pieces of text generation that need no engine: stop sequences and the sampling plan from a request."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from margin.backends.grammar import check_schema
from margin.errors import InvalidRequest
from margin.protocol import ChatCompletionRequest, CompletionRequest


class StopMatcher:
    """Cuts streamed text at the first stop sequence, holding back only what could still become one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit now, whether a stop sequence was reached)."""
        buffer = self.held + text
        if not self.stops:
            self.held = ""
            return buffer, False
        hits = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return buffer[: min(hits)], True
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(buffer)), keep, -1):
                if buffer.endswith(stop[:k]):
                    keep = k
                    break
        self.held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


@dataclass(slots=True)
class SamplingPlan:
    """How to sample, translated from OpenAI fields (defaults follow OpenAI: temperature 1, top_p 1).

    top_k, min_p and repeat_penalty are vendor fields (as in vLLM and llama.cpp server); their defaults
    are llama.cpp's (40, 0.05, 1.0)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = 0
    stops: list[str] = field(default_factory=list)
    max_new_tokens: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    json_schema: dict[str, Any] | None = None
    json_object: bool = False


def _extra_number(request: Any, name: str, default: float, low: float, high: float) -> float:
    """A vendor sampling field, checked here: the engine takes C ints and floats."""
    value = (request.model_extra or {}).get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{name} must be a number", param=name)
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}", param=name)
    return float(value)


def _unsupported(request: ChatCompletionRequest | CompletionRequest, backend: str) -> None:
    checks: list[tuple[bool, str]] = [(request.n > 1, "n")]
    if isinstance(request, ChatCompletionRequest):
        # `functions`: the tools of OpenAI's older API (a vendor field: it was answered as if none were given)
        functions = bool(request.tools), bool((request.model_extra or {}).get("functions"))
        checks += [(functions[0], "tools"), (functions[1], "functions"), (bool(request.logprobs), "logprobs")]
        # `required` or a named tool asks for a tool call it cannot make (it answered in text)
        checks += [(request.tool_choice not in (None, "none", "auto"), "tool_choice")]
        checks += [(any(m.has_non_text() for m in request.messages), "messages")]
    else:
        # `logprobs: 0` asks for the chosen tokens' log probabilities (it was answered with `logprobs: null`)
        checks += [(request.suffix is not None, "suffix"), (request.logprobs is not None, "logprobs")]
        checks += [((request.best_of or 1) > 1, "best_of")]
    for failed, param in checks:
        if failed:
            raise InvalidRequest(
                f"{param} is not supported by backend {backend!r}", param=param, code="unsupported_parameter"
            )


def _response_format(request: ChatCompletionRequest | CompletionRequest, plan: SamplingPlan) -> None:
    fmt = getattr(request, "response_format", None)
    if not fmt or fmt.get("type") == "text":
        return
    if fmt.get("type") == "json_object":
        plan.json_object = True
    elif fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("response_format.json_schema.schema must be an object", param="response_format")
        check_schema(schema)
        plan.json_schema = schema
    else:
        raise InvalidRequest(f"unknown response_format type {fmt.get('type')!r}", param="response_format")


def sampling_plan(request: ChatCompletionRequest | CompletionRequest, backend: str) -> SamplingPlan:
    _unsupported(request, backend)
    plan = SamplingPlan(
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=int(_extra_number(request, "top_k", 40, 0, 2**31 - 1)),
        min_p=_extra_number(request, "min_p", 0.05, 0, 1),
        repeat_penalty=_extra_number(request, "repeat_penalty", 1.0, 0, 100),
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        seed=request.seed if request.seed is not None else random.SystemRandom().randrange(2**31),
        stops=request.stop_list(),
        max_new_tokens=request.output_limit,
    )
    try:
        plan.logit_bias = {int(k): float(v) for k, v in (request.logit_bias or {}).items()}
    except ValueError as exc:
        raise InvalidRequest("logit_bias keys must be token ids", param="logit_bias") from exc
    _response_format(request, plan)
    return plan
