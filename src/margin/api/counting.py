"""What the token-count endpoints share (`POST /v1/messages/count_tokens`, margin.api.count_tokens; `POST
/v1/responses/input_tokens`, margin.api.responses): the model a count is for, resolved and allowed as the
request path would (the key's models and jurisdictions, a routed name refused, a `force_model` flag's model
counted instead, a `disable` flag refusing it, a PII policy refusing it), one request's room in the caller's RPM
limits, then the count by the model's backend if it can count (`InputCounter`): a 400
(`count_tokens_unavailable`) if it cannot, never an estimate. Each count is in /metrics (`margin_count_tokens`);
none writes a ledger row."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.responses import Response

from margin.api.errors import error_response, json_response, unspent_headers
from margin.api.inference import Arrival
from margin.errors import InvalidRequest, MarginError, PermissionDenied
from margin.governance.rules import Rules, Subject
from margin.pipeline.steps.admit import admit_rpm
from margin.pipeline.steps.auth import caller
from margin.pipeline.steps.call import translate
from margin.pipeline.steps.route import disabled, not_allowed, residency, resolve
from margin.protocol import ChatCompletionRequest, Endpoint
from margin.types import InputCounter, Prompt, Target

UNAVAILABLE = "count_tokens_unavailable"


class Count:
    """A validated count request: the model asked for, the prompt's chat request (its JSON and validated), the
    client's Anthropic Messages body where it came as one; and how the endpoint answers (`shape`: the count's
    JSON; `body_of`: an error's; `headers`: added to both)."""

    __slots__ = ("body_of", "chat", "headers", "messages", "model", "raw", "shape")

    def __init__(
        self,
        model: str,
        raw: dict[str, Any],
        chat: ChatCompletionRequest,
        shape: Callable[[int], dict[str, Any]],
        body_of: Callable[[MarginError], dict[str, Any]],
        messages: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.model, self.raw, self.chat, self.messages = model, raw, chat, messages
        self.shape, self.body_of, self.headers = shape, body_of, dict(headers or {})


async def answer(arrival: Arrival, count: Count) -> Response:
    """The count's answer: the model's backend's count, or the error in the endpoint's shape."""
    metrics = arrival.services.telemetry.metrics
    target: Target | None = None
    try:
        target = await _target(arrival, count.model)
        backend = target.backend
        if not isinstance(backend, InputCounter):
            raise InvalidRequest(
                f"token counting is not available for the model `{target.public}`: margin counts only models "
                "served by an anthropic backend (Anthropic counts them), an openai backend with `count_tokens: vllm` "
                "(vLLM counts them) or a llamacpp backend (margin tokenizes the prompt as a completion would), and "
                "does not estimate",
                param="model",
                code=UNAVAILABLE,
            )
        upstream = target.model.upstream_model or target.public
        try:
            tokens = await backend.count_input_tokens(Prompt(count.raw, count.chat, upstream, count.messages))
        except MarginError:
            raise
        except Exception as exc:  # a chat template's own refusal (jinja's `raise_exception`): as a completion's
            raise translate(target.backend_name, exc) from exc
    except MarginError as exc:
        return refused(arrival, exc, count.body_of, target.public if target else None, count.headers)
    if metrics is not None:
        metrics.count_tokens(target.public, "ok")
    headers = {**unspent_headers(arrival.request_id, arrival.started), **count.headers}
    return json_response(count.shape(tokens), headers=headers)


def refused(
    arrival: Arrival,
    exc: MarginError,
    body_of: Callable[[MarginError], dict[str, Any]],
    model: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A count's error, counted once under its outcome (`margin_count_tokens_total`): not in
    margin_rejections_total too (nor under an upstream's code); with the headers every answer carries."""
    metrics = arrival.services.telemetry.metrics
    if metrics is not None:
        metrics.count_tokens(model, exc.code)
    response = error_response(exc, arrival.request_id, body_of=body_of, count=False)
    response.headers.update({**unspent_headers(arrival.request_id, arrival.started), **(headers or {})})
    return response


def _flagged(rules: Rules, subject: Subject, target: Target, targets: Mapping[str, Target]) -> Target:
    """The model a request for `target` would be served by, as the route step's flags decide: a `force_model`
    flag's model instead; a `disable` flag on it refuses the count as it would refuse the request."""
    flags = rules.flags_for(subject.serving(target.public, target.backend_name))
    forced = next((flag for flag in flags if flag.action == "force_model" and flag.model), None)
    if forced is not None and forced.model:
        target = resolve(targets, forced.model, Endpoint.CHAT)
        flags = rules.flags_for(subject.serving(target.public, target.backend_name))
    if (off := next((flag for flag in flags if flag.action == "disable"), None)) is not None:
        raise disabled(off)
    return target


async def _target(arrival: Arrival, model: str) -> Target:
    """The model the count is for, as the request path would resolve and allow it (the key's policy: its models,
    its jurisdictions), after one request's room in the caller's RPM limits."""
    services: Any = arrival.services
    governance, principal = services.governance, arrival.principal
    assert principal is not None  # authenticated (a count is no batch endpoint)
    _, subject = caller(principal, arrival.headers.get("x-margin-tags"), set(services.settings.tags.header_keys))
    policy = governance.rules.policy_for(subject, principal.policy)
    if model in services.settings.routes:
        raise InvalidRequest(
            f"token counting is not available for the routed name `{model}` (the model is chosen per request): "
            "count with a model's own name",
            param="model",
            code=UNAVAILABLE,
        )
    target: Target = resolve(services.targets, model, Endpoint.CHAT)
    allowed = policy.allowed_models if policy is not None and policy.models is not None else None
    if allowed is not None and target.public not in allowed:
        raise not_allowed(model, allowed)
    if governance.rules.flags:
        target = _flagged(governance.rules, subject, target, services.targets)
        if allowed is not None and target.public not in allowed:  # forced to a model the policy does not list
            raise not_allowed(model, allowed, [target.public])
    residency(policy, model, [target])
    if policy is not None and policy.pii in ("redact", "block"):  # the guard does not run on a count
        raise PermissionDenied(
            f"token counting is not available to this key: its policy {policy.pii}s PII before a prompt reaches a "
            "model, and a count's prompt is not scanned (it would be counted, or sent upstream, as it came)",
            code=UNAVAILABLE,
        )
    await admit_rpm(governance, arrival.request_id, subject)
    return target
